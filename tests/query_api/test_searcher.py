"""Searcher: the search path without Kafka, on the real MiniLM tower and both index backends."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from qa_support import MiniText, ToySpace, make_request, png_bytes, wav_bytes

from xmodal.encoders.media import MediaLimits
from xmodal.errors import EncodeError, MediaError, SchemaError
from xmodal.indexer import VectorIndex
from xmodal.query_api import Searcher
from xmodal.query_api.fusion import PRIOR_ITEMS, PRIOR_SCALE, SCALE_FLOOR


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    (root / "red.png").write_bytes(png_bytes((250, 10, 10)))
    (root / "tone.wav").write_bytes(wav_bytes())
    return root


@pytest.fixture(scope="module")
def searcher(index: VectorIndex, mini: MiniText, media_root: Path) -> Iterator[Searcher]:
    s = Searcher({"mini": mini, "toy": ToySpace()}, index, MediaLimits(media_roots=(media_root,)))
    s.start(load_encoders=False)  # mini is loaded once per session by its fixture
    yield s


@pytest.fixture(scope="module")
def mini_only(index: VectorIndex, mini: MiniText) -> Searcher:
    return Searcher({"mini": mini}, index, MediaLimits())


def ids(hits: list) -> list[str]:
    return [h.id for h in hits]


def test_text_query_finds_the_semantically_nearest_caption(mini_only: Searcher) -> None:
    hits = mini_only.search(make_request(query={"text": "a red circle"}, k=3, modalities=["text"]))
    assert hits[0].id == "cap/crimson-disc"
    assert hits[0].metadata == {"album": "shapes", "n": 1}
    assert hits[0].modality == "text"
    assert hits[0].cosine is not None and 0 < hits[0].cosine <= 1  # the raw similarity rides along
    assert hits[0].score > hits[1].score and hits[0].cosine > hits[1].cosine  # monotone within a modality
    assert hits[0].space == "mini"


def test_k_modalities_and_filter_reach_the_index(mini_only: Searcher) -> None:
    assert len(mini_only.search(make_request(query={"text": "a dog"}, k=2))) == 2
    images = mini_only.search(make_request(query={"text": "something red"}, modalities=["image"]))
    assert ids(images) == ["img/tomato", "img/blue-sky"]
    animals = mini_only.search(make_request(query={"text": "a red circle"}, filter={"album": "animals"}))
    assert set(ids(animals)) == {"cap/dog", "snd/bark"}
    assert ids(mini_only.search(make_request(query={"text": "x"}, filter={"n": 5}))) == ["cap/piano"]
    sounds = mini_only.search(make_request(query={"text": "x"}, modalities=["audio"], filter={"album": "weather"}))
    assert sounds == []


def calibrated(index: VectorIndex, space: str, modality: str, query: np.ndarray, cosine: float) -> float:
    """The calibrated score by hand: standard deviations (shrunk towards PRIOR_SCALE) above the
    95th percentile of the background less its best item."""
    cosines = sorted(index.sample(space, modality, 1000) @ query)
    w = len(cosines) / (len(cosines) + PRIOR_ITEMS)
    spread = max(float(np.std(cosines)), SCALE_FLOOR)
    return (cosine - float(np.quantile(cosines[:-1], 0.95))) / (w * spread + (1 - w) * PRIOR_SCALE)


def test_several_spaces_are_fused_by_their_best_calibrated_score(
    searcher: Searcher, index: VectorIndex, mini: MiniText
) -> None:
    hits = searcher.search(make_request(query={"text": "a red circle"}, k=3, modalities=["text"]))
    assert hits[0].id == "cap/crimson-disc"  # first in both spaces
    query = {"mini": mini.encode_texts(["a red circle"])[0], "toy": ToySpace().encode_texts(["a red circle"])[0]}
    top = {name: index.search(name, q, 1, modalities=["text"])[0] for name, q in query.items()}
    by_space = {name: calibrated(index, name, "text", query[name], top[name].score) for name in query}
    assert hits[0].score == pytest.approx(max(by_space.values()), rel=1e-4)
    assert hits[0].space == max(by_space, key=by_space.__getitem__)


def test_requested_spaces_restrict_the_search(searcher: Searcher) -> None:
    toy = searcher.search(make_request(query={"text": "blue"}, k=1, spaces=["toy"], modalities=["image"]))
    assert ids(toy) == ["img/blue-sky"]
    assert toy[0].cosine == pytest.approx(1 / (0.1**2 * 2 + 1 + 0.05**2) ** 0.5, rel=1e-4)  # plain cosine
    twice = searcher.search(make_request(query={"text": "blue"}, k=1, spaces=["toy", "toy"], modalities=["image"]))
    assert twice == toy


def test_unknown_space_names_the_valid_ones(searcher: Searcher) -> None:
    with pytest.raises(SchemaError) as e:
        searcher.search(make_request(query={"text": "x"}, spaces=["mini", "clipp"]))
    assert e.value.code == "unknown_space"
    assert e.value.field == "spaces"
    assert "'clipp'" in e.value.message and "mini, toy" in e.value.message


def test_unsupported_modality(mini_only: Searcher, searcher: Searcher) -> None:
    image = base64.b64encode(png_bytes((0, 0, 255))).decode()
    with pytest.raises(EncodeError) as e:
        mini_only.search(make_request(query={"image": image}))
    assert e.value.code == "unsupported_modality"
    with pytest.raises(EncodeError) as e:
        searcher.search(make_request(query={"image": image}, spaces=["mini"]))
    assert e.value.code == "unsupported_modality"
    assert "toy" in e.value.message  # says which space would have taken it


def test_image_query_base64_and_uri(searcher: Searcher, media_root: Path) -> None:
    blue = base64.b64encode(png_bytes((0, 0, 255))).decode()
    assert searcher.search(make_request(query={"image": blue}, k=1))[0].id == "img/blue-sky"
    uri = (media_root / "red.png").as_uri()
    red = searcher.search(make_request(query={"uri": uri, "modality": "image"}, k=1, modalities=["image"]))
    assert red[0].id == "img/tomato"


def test_audio_query_base64_and_uri(searcher: Searcher, media_root: Path) -> None:
    tone = base64.b64encode(wav_bytes()).decode()
    hits = searcher.search(make_request(query={"audio": tone}, k=1, modalities=["audio"]))
    assert ids(hits) == ["snd/bark"]
    uri = (media_root / "tone.wav").as_uri()
    assert ids(searcher.search(make_request(query={"uri": uri, "modality": "audio"}, k=1, modalities=["audio"]))) == [
        "snd/bark"
    ]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"image": "not base64!"}, "invalid_base64"),
        ({"image": base64.b64encode(b"%PDF-1.4 hello").decode()}, "unsupported_format"),
        ({"audio": base64.b64encode(b"just some bytes").decode()}, "unsupported_format"),
        ({"uri": "file:///etc/passwd", "modality": "image"}, "uri_outside_roots"),
        ({"uri": "gopher://x/y", "modality": "image"}, "uri_scheme_forbidden"),
    ],
)
def test_media_refusals_keep_their_codes(searcher: Searcher, query: dict[str, str], code: str) -> None:
    with pytest.raises(MediaError) as e:
        searcher.search(make_request(query=query))
    assert e.value.code == code


def test_uri_without_media_roots_is_refused(mini_only: Searcher, index: VectorIndex) -> None:
    s = Searcher({"toy": ToySpace()}, index, MediaLimits())
    with pytest.raises(MediaError) as e:
        s.search(make_request(query={"uri": "file:///tmp/x.png", "modality": "image"}))
    assert e.value.code == "uri_scheme_forbidden"


def test_a_tower_crash_is_an_encode_error(searcher: Searcher) -> None:
    with pytest.raises(EncodeError) as e:
        searcher.search(make_request(query={"text": "explode"}, spaces=["toy"]))
    assert e.value.code == "encode_error"
    assert "toy" in e.value.message and "RuntimeError" in e.value.message


def test_stages_are_timed(searcher: Searcher) -> None:
    def count(stage: str) -> float:
        return REGISTRY.get_sample_value("xmodal_stage_seconds_count", {"stage": stage}) or 0.0

    before = {s: count(s) for s in ("query_decode", "query_encode", "search")}
    searcher.search(make_request(query={"text": "a dog"}))
    assert {s: count(s) for s in before} == {s: n + 1 for s, n in before.items()}
