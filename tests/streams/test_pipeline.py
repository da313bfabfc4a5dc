"""IngestPipeline without Kafka: real MiniLM tower, real qdrant-edge index."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from xmodal.config import load_settings
from xmodal.encoders.base import Vectors
from xmodal.encoders.media import MediaLimits
from xmodal.encoders.mini.space import MiniSpace
from xmodal.errors import EncodeError
from xmodal.indexer.edge import EdgeIndex
from xmodal.streams.pipeline import IngestPipeline, SourceRecord, encode_items


@pytest.fixture(scope="module")
def mini() -> MiniSpace:
    space = MiniSpace(load_settings({}))
    space.load()
    return space


class RefusesPoison:
    """A space whose text tower fails on one input, as a real tower does on input it cannot take."""

    name = "mini"

    def __init__(self, inner: MiniSpace) -> None:
        self.inner, self.dim, self.modalities = inner, inner.dim, frozenset({"text"})
        self.calls: list[int] = []

    def load(self) -> None:
        pass

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(len(texts))
        if any("poison" in t for t in texts):
            raise EncodeError("cannot encode poison", code="encode_error")
        return self.inner.encode_texts(texts)

    def encode_images(self, images: Sequence[Any]) -> Vectors:
        raise EncodeError("no such tower", code="unsupported_modality")

    def encode_audio(self, clips: Sequence[Any]) -> Vectors:
        raise EncodeError("no such tower", code="unsupported_modality")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    idx = EdgeIndex(tmp_path / "index")
    yield idx
    idx.close()


def record(offset: int, key: str | None, value: dict[str, Any] | None) -> SourceRecord:
    return SourceRecord(
        topic="media", partition=0, offset=offset,
        key=key.encode() if key is not None else None,
        value=orjson.dumps(value) if value is not None else None,
        timestamp_ms=1_764_133_200_000,
    )


def text(item_id: str, body: str, **extra: Any) -> dict[str, Any]:
    return {"id": item_id, "modality": "text", "text": body, **extra}


def test_a_bad_item_is_isolated_and_the_rest_of_the_batch_is_indexed(mini: MiniSpace, index: EdgeIndex) -> None:
    space = RefusesPoison(mini)
    pipeline = IngestPipeline({"mini": space}, index, MediaLimits.from_settings(load_settings({})))
    pipeline.start()
    records = [record(i, f"d{i}", text(f"d{i}", f"sentence {i}")) for i in range(5)]
    records.append(record(5, "p", text("p", "poison pill")))
    result = pipeline.process(records)
    assert result.indexed == 5 and index.count("mini") == 5
    assert [(d.record.offset, d.code, d.stage) for d in result.dead] == [(5, "encode_error", "encode")]
    assert space.calls[0] == 6  # one batched call first, then one by one


def test_payload_carries_item_metadata_time_and_source(mini: MiniSpace, index: EdgeIndex) -> None:
    pipeline = IngestPipeline({"mini": mini}, index, MediaLimits.from_settings(load_settings({})))
    pipeline.start()
    pipeline.process([record(41, "a", text("a", "a red circle", metadata={"album": "summer"}, ts=5))])
    [hit] = index.search("mini", mini.encode_texts(["a red circle"])[0], 1, filter={"album": "summer"})
    assert (hit.item_id, hit.modality, hit.metadata) == ("a", "text", {"album": "summer"})


def test_last_event_of_an_item_in_a_batch_wins(mini: MiniSpace, index: EdgeIndex) -> None:
    pipeline = IngestPipeline({"mini": mini}, index, MediaLimits.from_settings(load_settings({})))
    pipeline.start()
    result = pipeline.process([
        record(0, "a", text("a", "first version")),
        record(1, "a", None),  # delete
        record(2, "b", None),
        record(3, "b", text("b", "comes back")),
        record(4, "c", text("c", "kept")),
        record(5, "c", {"id": "c", "modality": "text"}),  # bad: the good version before it still counts
    ])
    assert index.count("mini") == 2
    assert {h.item_id for h in index.search("mini", mini.encode_texts(["comes back"])[0], 5)} == {"b", "c"}
    assert [d.code for d in result.dead] == ["missing_field"]


def test_encode_items_reports_positions() -> None:
    def tower(items: Sequence[int]) -> Any:
        import numpy as np

        if any(i < 0 for i in items):
            raise ValueError("negative")
        return np.ones((len(items), 2), dtype="float32")

    good, bad = encode_items(tower, [1, -1, 2, -3])
    assert sorted(good) == [0, 2] and sorted(bad) == [1, 3]
    assert bad[1].code == "encode_error" and "negative" in bad[1].message


class ZeroFor(RefusesPoison):
    """A text tower that silently returns a zero vector for one input (a real failure mode of
    towers under half precision or on degenerate input)."""

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        vectors = self.inner.encode_texts(texts).copy()
        for i, t in enumerate(texts):
            if "void" in t:
                vectors[i] = 0.0
        return vectors


def test_a_zero_vector_is_dead_lettered_not_sent_to_the_index(mini: MiniSpace, index: EdgeIndex) -> None:
    pipeline = IngestPipeline({"mini": ZeroFor(mini)}, index, MediaLimits.from_settings(load_settings({})))
    pipeline.start()
    result = pipeline.process([record(0, "a", text("a", "fine")), record(1, "v", text("v", "void"))])
    assert index.count("mini") == 1
    assert [(d.record.offset, d.code, d.stage) for d in result.dead] == [(1, "encode_error", "encode")]


def test_a_delete_stands_when_the_upsert_after_it_fails_to_encode(mini: MiniSpace, index: EdgeIndex) -> None:
    pipeline = IngestPipeline({"mini": RefusesPoison(mini)}, index, MediaLimits.from_settings(load_settings({})))
    pipeline.start()
    pipeline.process([record(0, "a", text("a", "old version"))])
    assert index.count("mini") == 1
    result = pipeline.process([record(1, "a", None), record(2, "a", text("a", "poison version"))])
    assert index.count("mini") == 0  # the delete happened; the failed upsert went to the DLQ
    assert [d.code for d in result.dead] == ["encode_error"]
    # and an earlier good upsert stands when a later one fails
    pipeline.process([record(3, "b", text("b", "good")), record(4, "b", text("b", "poison"))])
    [hit] = index.search("mini", mini.encode_texts(["good"])[0], 1)
    assert hit.item_id == "b" and hit.score == pytest.approx(1.0, abs=1e-3)


class TextOnly(RefusesPoison):
    name = "captions"


def test_an_item_that_changes_modality_leaves_no_stale_point(mini: MiniSpace, index: EdgeIndex) -> None:
    import base64

    from xmodal.encoders.mini.corpus import image_items, image_png

    spaces = {"mini": mini, "captions": TextOnly(mini)}
    pipeline = IngestPipeline(spaces, index, MediaLimits.from_settings(load_settings({})))
    pipeline.start()
    pipeline.process([record(0, "a", text("a", "a red circle"))])
    assert (index.count("mini"), index.count("captions")) == (1, 1)
    picture = base64.b64encode(image_png(image_items(1)[0].media)).decode()
    pipeline.process([record(1, "a", {"id": "a", "modality": "image", "data": picture})])
    assert (index.count("mini"), index.count("captions")) == (1, 0)
    [hit] = index.search("mini", mini.encode_texts(["anything"])[0], 1)
    assert hit.modality == "image"


def _state(index: EdgeIndex, mini: MiniSpace, ids: Sequence[str]) -> dict[str, Any]:
    """Each id's stored text and metadata (absent ids missing), read back by searching its vector."""
    found: dict[str, Any] = {}
    for item_id in ids:
        hits = index.search("mini", mini.encode_texts([f"item {item_id}"])[0], 50, with_thumbnails=True)
        for hit in hits:
            if hit.item_id == item_id:
                found[item_id] = (hit.thumbnail, hit.metadata)
    return found


def test_a_batch_written_in_overlapped_parts_ends_as_one_pass_would(mini: MiniSpace, tmp_path: Path) -> None:
    """Parts of 3 records, the next decoded while one is written: updates, deletes, bad records and
    modality changes that straddle part boundaries leave what a single pass leaves."""
    records = []
    for n in range(40):
        item = f"i{n % 7}"
        if n % 9 == 4:
            records.append(record(n, item, None))  # a delete
        elif n % 11 == 5:
            records.append(record(n, item, {"id": item, "modality": "text"}))  # no text: dead-lettered
        else:
            records.append(record(n, item, text(item, f"item {item}", metadata={"n": n})))
    results = {}
    states = {}
    for part_size in (3, 1000):
        index = EdgeIndex(tmp_path / f"index-{part_size}")
        from xmodal.thumbnails import ThumbnailSpec

        pipeline = IngestPipeline(
            {"mini": mini}, index, MediaLimits.from_settings(load_settings({})), part_size=part_size, thumbnails=ThumbnailSpec()
        )
        pipeline.start()
        result = pipeline.process(records)
        results[part_size] = (result.indexed, result.deleted, sorted((d.record.offset, d.code) for d in result.dead))
        states[part_size] = _state(index, mini, [f"i{k}" for k in range(7)])
        index.close()
    assert results[3][2] == results[1000][2] and results[3][2]  # the same records dead, for the same reasons
    assert states[3] == states[1000]
    # Each surviving item holds its last upsert (after its last delete), as in the log.
    last = {}
    for r in records:
        body = orjson.loads(r.value) if r.value is not None else None
        if body is None:
            last[r.key.decode()] = None  # type: ignore[union-attr]
        elif "text" in body:
            last[body["id"]] = body["metadata"]["n"]
    expected = {k: n for k, n in last.items() if n is not None}
    assert {k: meta["n"] for k, (_, meta) in states[3].items()} == expected


def test_part_size_must_be_positive(mini: MiniSpace, index: EdgeIndex) -> None:
    with pytest.raises(ValueError, match="part_size must be at least 1"):
        IngestPipeline({"mini": mini}, index, MediaLimits.from_settings(load_settings({})), part_size=0)
