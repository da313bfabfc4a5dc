"""The VectorIndex contract, run on every backend (the `backend` fixture is parametrised)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from xmodal.errors import DimensionMismatch, EncodeError, VectorIndexError, SchemaError
from xmodal.indexer import IndexPoint, VectorIndex

DIM = 8


def unit(i: int, dim: int = DIM) -> NDArray[np.float32]:
    """A fixed pseudo-random unit vector per integer."""
    v = np.random.default_rng(i).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def point(item_id: str, vector: NDArray[np.float32], modality: str = "image", **metadata: Any) -> IndexPoint:
    return IndexPoint(item_id=item_id, vector=vector, modality=modality, metadata=metadata, ts=1764133200000)


@pytest.fixture
def filled(index: VectorIndex) -> VectorIndex:
    """Space `s`: ten items over three modalities with str/int/bool metadata."""
    index.ensure_collection("s", DIM)
    modalities = ["image", "text", "audio"]
    index.upsert(
        "s",
        [point(f"item{i}", unit(i), modalities[i % 3], album=f"a{i % 2}", n=i % 4, flag=i % 2 == 0) for i in range(10)],
    )
    return index


def ids(hits: list[Any]) -> list[str]:
    return [h.item_id for h in hits]


def test_ensure_collection_is_idempotent(index: VectorIndex) -> None:
    index.ensure_collection("s", DIM)
    index.upsert("s", [point("x", unit(1))])
    index.ensure_collection("s", DIM)
    assert index.count("s") == 1


def test_ensure_collection_with_another_dim_raises_dimension_mismatch(backend: Any) -> None:
    backend.index.ensure_collection("s", DIM)
    with pytest.raises(DimensionMismatch) as err:
        backend.index.ensure_collection("s", 16)
    message = str(err.value)
    assert "'s'" in message and f"{DIM}-d" in message and "16-d" in message
    assert backend.location("s") in message
    assert err.value.code == "dimension_mismatch"


def test_dimension_is_checked_again_after_reopen(backend: Any) -> None:
    backend.index.ensure_collection("s", DIM)
    backend.index.upsert("s", [point("x", unit(1))])
    index = backend.reopen()
    with pytest.raises(DimensionMismatch, match="16-d"):
        index.ensure_collection("s", 16)
    index.ensure_collection("s", DIM)
    assert index.count("s") == 1


def test_spaces_are_separate_collections(index: VectorIndex) -> None:
    index.ensure_collection("a", DIM)
    index.ensure_collection("b", 4)
    index.upsert("a", [point("x", unit(1))])
    assert (index.count("a"), index.count("b")) == (1, 0)


def test_upsert_then_search_finds_item_by_its_own_vector(filled: VectorIndex) -> None:
    hits = filled.search("s", unit(3), k=3)
    top = hits[0]
    assert top.item_id == "item3"
    assert top.score == pytest.approx(1.0, abs=1e-5)
    assert top.modality == "image"  # 3 % 3 == 0
    assert top.metadata == {"album": "a1", "n": 3, "flag": False}
    assert hits[1].score < top.score


def test_search_scores_are_cosine_similarities(filled: VectorIndex) -> None:
    query = unit(42)
    expected = sorted((float(unit(i) @ query) for i in range(10)), reverse=True)
    hits = filled.search("s", query * 3.0, k=10)  # cosine ignores the query's length
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)


def test_upsert_same_item_twice_keeps_one_point_with_the_last_write(index: VectorIndex) -> None:
    index.ensure_collection("s", DIM)
    index.upsert("s", [point("x", unit(1), album="old")])
    index.upsert("s", [point("x", unit(2), album="new")])
    assert index.count("s") == 1
    [hit] = index.search("s", unit(2), k=5)
    assert (hit.item_id, hit.metadata) == ("x", {"album": "new"})
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_delete_by_item_ids(filled: VectorIndex) -> None:
    filled.delete("s", ["item1", "item2", "never-indexed"])
    assert filled.count("s") == 8
    found = ids(filled.search("s", unit(1), k=10))
    assert len(found) == 8 and "item1" not in found and "item2" not in found
    filled.delete("s", [])
    assert filled.count("s") == 8


def test_sample_returns_stored_vectors_of_one_modality(filled: VectorIndex) -> None:
    images = filled.sample("s", "image", 100)
    assert images.shape == (4, DIM) and images.dtype == np.float32
    stored = np.stack([unit(i) for i in (0, 3, 6, 9)])
    # every sampled row is one of the image items' vectors (engines store them normalised)
    assert np.allclose(np.abs(images @ stored.T).max(axis=1), 1.0, atol=1e-5)
    assert filled.sample("s", "image", 2).shape == (2, DIM)
    assert filled.sample("s", "video", 5).shape == (0, DIM)


def test_thumbnails_are_read_only_when_asked_for(index: VectorIndex) -> None:
    index.ensure_collection("s", DIM)
    thumb = {"image": "data:image/png;base64,iVBORw0KGgo="}
    index.upsert("s", [IndexPoint("a", unit(1), "image", {"k": "v"}, thumbnail=thumb)])
    [plain] = index.search("s", unit(1), k=1)
    assert plain.thumbnail is None and plain.metadata == {"k": "v"}  # the rest of the payload is there
    [full] = index.search("s", unit(1), k=1, with_thumbnails=True)
    assert full.thumbnail == thumb


def test_modality_filter(filled: VectorIndex) -> None:
    images = filled.search("s", unit(0), k=10, modalities=["image"])
    assert ids(images) and {h.modality for h in images} == {"image"}
    assert sorted(ids(images)) == ["item0", "item3", "item6", "item9"]
    both = filled.search("s", unit(0), k=10, modalities=["text", "audio"])
    assert len(both) == 6 and {h.modality for h in both} == {"text", "audio"}
    assert filled.search("s", unit(0), k=10, modalities=[]) == []


def test_metadata_equality_filter_on_str_int_and_bool(filled: VectorIndex) -> None:
    def found(**filter: Any) -> list[str]:
        return sorted(ids(filled.search("s", unit(0), k=10, filter=filter)))

    assert found(album="a1") == ["item1", "item3", "item5", "item7", "item9"]
    assert found(n=2) == ["item2", "item6"]
    assert found(flag=True) == ["item0", "item2", "item4", "item6", "item8"]
    assert found(flag=False) == ["item1", "item3", "item5", "item7", "item9"]
    assert found(album="a0", n=2) == ["item2", "item6"]
    assert found(album="a0", n=1) == []
    assert found(missing="x") == []
    hits = filled.search("s", unit(0), k=10, modalities=["text"], filter={"flag": True})
    assert sorted(ids(hits)) == ["item4"]


def test_metadata_filter_matches_only_the_same_json_type(index: VectorIndex) -> None:
    index.ensure_collection("s", DIM)
    index.upsert(
        "s",
        [
            point("bool-true", unit(1), v=True),
            point("int-one", unit(2), v=1),
            point("str-one", unit(3), v="1"),
            point("float-one", unit(4), v=1.0),
            point("int-zero", unit(5), v=0),
            point("bool-false", unit(6), v=False),
        ],
    )

    def found(value: Any) -> list[str]:
        return sorted(ids(index.search("s", unit(0), k=10, filter={"v": value})))

    assert found(True) == ["bool-true"]
    assert found(1) == ["int-one"]
    assert found("1") == ["str-one"]
    assert found(False) == ["bool-false"]
    assert found(0) == ["int-zero"]


def test_metadata_filter_keys_with_dots_and_list_values(index: VectorIndex) -> None:
    index.ensure_collection("s", DIM)
    index.upsert(
        "s",
        [
            point("flat", unit(1), **{"a.b": "x"}),
            point("nested", unit(2), a={"b": "x"}),
            point("tagged", unit(3), tags=["red", "round"]),
        ],
    )
    assert ids(index.search("s", unit(0), k=10, filter={"a.b": "x"})) == ["flat"]
    assert ids(index.search("s", unit(0), k=10, filter={"tags": "round"})) == ["tagged"]


@pytest.mark.parametrize(
    ("filter", "field"),
    [({"v": 1.5}, "filter.v"), ({"v": None}, "filter.v"), ({"v": ["a"]}, "filter.v"), ({'q"k': 1}, "filter")],
)
def test_unsupported_filters_are_refused(filled: VectorIndex, filter: dict[str, Any], field: str) -> None:
    with pytest.raises(SchemaError) as err:
        filled.search("s", unit(0), k=3, filter=filter)
    assert err.value.field == field


def test_k_is_respected_and_hits_are_ranked(filled: VectorIndex) -> None:
    for k in (1, 3, 10):
        hits = filled.search("s", unit(7), k=k)
        assert len(hits) == k
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
    assert len(filled.search("s", unit(7), k=1000)) == 10
    with pytest.raises(SchemaError):
        filled.search("s", unit(7), k=0)


def test_equal_scores_are_ordered_by_item_id(index: VectorIndex) -> None:
    index.ensure_collection("s", DIM)
    same = unit(1)
    index.upsert("s", [point(name, same) for name in ["e", "c", "a", "d", "b"]] + [point("far", -same)])
    assert ids(index.search("s", same, k=3)) == ["a", "b", "c"]
    assert ids(index.search("s", same, k=6)) == ["a", "b", "c", "d", "e", "far"]


def test_search_on_an_empty_collection(index: VectorIndex) -> None:
    index.ensure_collection("s", DIM)
    assert index.count("s") == 0
    assert index.search("s", unit(0), k=5) == []
    assert index.search("s", unit(0), k=5, modalities=["image"], filter={"a": 1}) == []


def test_reopen_keeps_points_and_payloads(backend: Any) -> None:
    backend.index.ensure_collection("s", DIM)
    backend.index.upsert("s", [point(f"item{i}", unit(i), "audio", i=i) for i in range(5)])
    backend.index.delete("s", ["item4"])
    index = backend.reopen()
    assert index.count("s") == 4  # usable without ensure_collection: the dimension is on record
    [hit] = index.search("s", unit(2), k=1)
    assert (hit.item_id, hit.modality, hit.metadata) == ("item2", "audio", {"i": 2})


def test_unknown_space_raises_index_error(index: VectorIndex) -> None:
    with pytest.raises(VectorIndexError, match="ensure_collection"):
        index.search("nope", unit(0), k=1)
    with pytest.raises(VectorIndexError):
        index.upsert("nope", [point("x", unit(0))])


def test_vectors_of_the_wrong_length_raise_dimension_mismatch(filled: VectorIndex) -> None:
    with pytest.raises(DimensionMismatch, match="'bad'"):
        filled.upsert("s", [point("ok", unit(0)), point("bad", unit(0, dim=4))])
    with pytest.raises(DimensionMismatch):
        filled.search("s", unit(0, dim=4), k=1)
    assert filled.count("s") == 10


@pytest.mark.parametrize("vector", [np.zeros(DIM, np.float32), np.full(DIM, np.nan, np.float32)])
def test_vectors_without_a_cosine_are_refused(filled: VectorIndex, vector: NDArray[np.float32]) -> None:
    with pytest.raises(EncodeError, match="'bad'"):
        filled.upsert("s", [point("bad", vector)])
    assert filled.count("s") == 10


def test_threads_share_one_index(index: VectorIndex) -> None:
    """Ingest agents and the query consumer call one instance from different threads."""
    index.ensure_collection("s", DIM)
    errors: list[BaseException] = []
    done = threading.Event()

    def write(worker: int) -> None:
        try:
            for batch in range(10):
                seeds = [worker * 1000 + batch * 10 + j for j in range(10)]
                index.upsert("s", [point(f"w{worker}-{batch}-{j}", unit(seed)) for j, seed in enumerate(seeds)])
        except BaseException as e:
            errors.append(e)

    def read() -> None:
        try:
            while not done.is_set():
                index.search("s", unit(0), k=5, modalities=["image"])
                index.count("s")
        except BaseException as e:
            errors.append(e)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert errors == []
    assert index.count("s") == 400
    assert index.search("s", unit(3 * 1000 + 9 * 10 + 9), k=1)[0].item_id == "w3-9-9"


def test_closed_index_refuses_calls(filled: VectorIndex) -> None:
    filled.close()
    with pytest.raises(VectorIndexError, match="closed"):
        filled.count("s")
    filled.close()  # idempotent
