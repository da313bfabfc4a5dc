"""The rerank stage with the registry's real BLIP reranker (a tiny random BLIP saved by the test),
both directions: text query -> image candidates, image query -> caption candidates.

The first stage is qa_support's toy colour space standing in for `clip` (the stage does not care
which towers found the candidates); the registry maps the space name `clip` to BLIP. The expected
adjustments come from a second BlipReranker run on the thumbnails as the index stores them, decoded
here: the stage must hand BLIP exactly those views.
"""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from qa_support import ToySpace, make_request, open_backend, png_bytes
from rerank_support import populate_gallery

from xmodal.config import Settings, load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.encoders.rerank.blip import BlipReranker
from xmodal.errors import EncodeError
from xmodal.indexer import VectorIndex
from xmodal.query_api import Searcher
from xmodal.query_api.rerank import RerankStage
from xmodal.schema import SearchHit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encoders"))
from blip_support import save_tiny_blip  # noqa: E402  (tests/encoders is not a package)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    model = save_tiny_blip(tmp_path_factory.mktemp("blip") / "model")
    return load_settings({"XMODAL_BLIP_MODEL": str(model), "XMODAL_DEVICE": "cpu", "XMODAL_SPACES": "clip"})


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorIndex]:
    idx = open_backend("edge", tmp_path_factory.mktemp("edge"))
    populate_gallery(idx, space="clip")
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def searcher(settings: Settings, index: VectorIndex) -> Searcher:
    limits = MediaLimits.from_settings(settings)
    searcher = Searcher({"clip": ToySpace()}, index, limits, rerank=RerankStage.from_settings(settings, ["clip"], limits))
    searcher.start(load_encoders=False)
    return searcher


@pytest.fixture(scope="module")
def reference(settings: Settings) -> BlipReranker:
    blip = BlipReranker(settings)
    blip.load()
    return blip


def stored_views(searcher: Searcher, modality: str) -> dict[str, object]:
    hits = searcher.search(make_request(query={"text": "x"}, k=50, modalities=[modality], with_thumbnails=True))
    views: dict[str, object] = {}
    for hit in hits:
        if hit.thumbnail is None:
            continue
        if modality == "text":
            views[hit.id] = hit.thumbnail.text
        elif hit.thumbnail.image:
            views[hit.id] = Image.open(io.BytesIO(base64.b64decode(hit.thumbnail.image.split(",", 1)[1]))).convert("RGB")
    return views


def check_final_scores(hits: list[SearchHit], expected: dict[str, float]) -> None:
    assert hits
    for hit in hits:
        assert hit.first_stage_score is not None
        adjustment = expected.get(hit.id, 0.0)  # no stored view: not scored
        assert hit.score == pytest.approx(hit.first_stage_score + adjustment, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_a_text_query_reranks_images_by_blip(searcher: Searcher, reference: BlipReranker) -> None:
    query = "a red circle and a blue square"
    views = stored_views(searcher, "image")
    ids = sorted(views)
    expected = dict(zip(ids, map(float, reference.score("text", query, "image", [views[i] for i in ids]))))
    hits = searcher.search(make_request(query={"text": query}, k=4, modalities=["image"], rerank=True))
    check_final_scores(hits, expected)
    assert {h.id for h in hits} == {"img/a-decoy", "img/b-red", "img/c-green", "img/d-noview"}


def test_an_image_query_reranks_captions_by_blip(searcher: Searcher, reference: BlipReranker) -> None:
    picture = png_bytes((210, 30, 30), size=40)
    views = stored_views(searcher, "text")
    ids = sorted(views)
    query_image = Image.open(io.BytesIO(picture)).convert("RGB")
    expected = dict(zip(ids, map(float, reference.score("image", query_image, "text", [views[i] for i in ids]))))
    hits = searcher.search(
        make_request(query={"image": base64.b64encode(picture).decode()}, k=3, modalities=["text"], rerank=True)
    )
    check_final_scores(hits, expected)
    assert len(hits) == 3


def test_blip_does_not_rerank_sounds(searcher: Searcher) -> None:
    with pytest.raises(EncodeError, match="scores image->text, text->image, not text->audio") as caught:
        searcher.search(make_request(query={"text": "a high tone"}, modalities=["audio"], rerank=True))
    assert caught.value.code == "rerank_unavailable"
