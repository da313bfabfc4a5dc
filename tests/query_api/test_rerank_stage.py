"""The rerank stage through the Searcher, on both real index backends (no Kafka here; see
test_rerank_service.py for the broker path). The reranker is RuleReranker (rerank_support.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from qa_support import CORPUS, MiniText, ToySpace, make_request, open_backend
from rerank_support import GALLERY, MATCH, RuleReranker, expected_adjustment, populate_gallery

from xmodal.config import load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.errors import ConfigError, EncodeError, SchemaError
from xmodal.indexer import IndexPoint, VectorIndex
from xmodal.query_api import Searcher
from xmodal.query_api.rerank import RerankStage
from xmodal.schema import SearchHit

LIMITS = MediaLimits()


@pytest.fixture(scope="module", params=["edge", "qdrant-local"])
def gallery(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mini: MiniText) -> Iterator[VectorIndex]:
    """The rerank gallery in `toy`, and qa_support's captions in `mini` (a space with no reranker)."""
    index = open_backend(request.param, tmp_path_factory.mktemp(request.param))
    populate_gallery(index)
    index.ensure_collection("mini", mini.dim)
    ids = list(CORPUS)
    vectors = mini.encode_texts([CORPUS[i][1] for i in ids])
    index.upsert("mini", [IndexPoint(i, vectors[n], CORPUS[i][0], CORPUS[i][3]) for n, i in enumerate(ids)])
    yield index
    index.close()


def searcher_with(index: VectorIndex, mini: MiniText, reranker: RuleReranker | None = None, **stage: object) -> Searcher:
    rerankers = {"toy": reranker} if reranker is not None else {}
    rerank = RerankStage(rerankers, LIMITS, unavailable={"mini": "the test's mini has no reranker"}, **stage)  # type: ignore[arg-type]
    searcher = Searcher({"toy": ToySpace(), "mini": mini}, index, LIMITS, rerank=rerank)
    searcher.start(load_encoders=False)
    return searcher


@pytest.fixture
def rules() -> RuleReranker:
    return RuleReranker()


@pytest.fixture
def searcher(gallery: VectorIndex, mini: MiniText, rules: RuleReranker) -> Searcher:
    return searcher_with(gallery, mini, rules)


def ids(hits: list[SearchHit]) -> list[str]:
    return [hit.id for hit in hits]


def toy_search(searcher: Searcher, text: str, modality: str, **fields: object) -> list[SearchHit]:
    return searcher.search(make_request(query={"text": text}, k=4, modalities=[modality], spaces=["toy"], **fields))


@pytest.mark.parametrize(
    ("query", "modality", "first_stage_top", "reranked_top"),
    [
        ("a red thing", "image", "img/a-decoy", "img/b-red"),
        ("a high tone", "audio", "snd/a-low", "snd/b-high"),
        ("a red thing", "text", "cap/red-apple", "cap/red-thing"),
    ],
)
def test_reranking_reorders_by_first_stage_plus_adjustment(
    searcher: Searcher, query: str, modality: str, first_stage_top: str, reranked_top: str
) -> None:
    first = toy_search(searcher, query, modality)
    assert first[0].id == first_stage_top
    assert all(hit.first_stage_score is None for hit in first)
    reranked = toy_search(searcher, query, modality, rerank=True)
    assert reranked[0].id == reranked_top
    assert sorted(ids(reranked)) == sorted(ids(first))  # the same candidates, another order
    first_scores = {hit.id: hit.score for hit in first}
    for hit in reranked:
        # first_stage_score is the score the same item has without reranking: the same calibration
        assert hit.first_stage_score == pytest.approx(first_scores[hit.id])
        assert hit.score == pytest.approx(hit.first_stage_score + expected_adjustment(hit.id, query))
        assert hit.cosine is not None and hit.space == "toy"
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)


def test_a_candidate_without_a_stored_view_keeps_its_first_stage_score(searcher: Searcher) -> None:
    before = REGISTRY.get_sample_value("xmodal_rerank_unscored_total", {"space": "toy"}) or 0.0
    reranked = {hit.id: hit for hit in toy_search(searcher, "a red thing", "image", rerank=True)}
    unviewed = reranked["img/d-noview"]
    assert unviewed.score == unviewed.first_stage_score
    assert ids(list(reranked.values())) == ["img/b-red", "img/d-noview", "img/a-decoy", "img/c-green"]
    assert REGISTRY.get_sample_value("xmodal_rerank_unscored_total", {"space": "toy"}) == before + 1


def test_rerank_off_or_absent_is_the_first_stage_unchanged(gallery: VectorIndex, mini: MiniText, searcher: Searcher) -> None:
    plain = Searcher({"toy": ToySpace(), "mini": mini}, gallery, LIMITS)  # no stage at all
    for fields in ({}, {"rerank": False}, {"rerank": False, "rerank_k": 1}):
        request = make_request(query={"text": "a red thing"}, k=6, **fields)
        assert searcher.search(request) == plain.search(request)
    # with the stage on by default, a request can still turn it off
    on = searcher_with(gallery, mini, RuleReranker(), default=True)
    request = make_request(query={"text": "a red thing"}, k=6)
    assert on.search(request.model_copy(update={"rerank": False})) == plain.search(request)
    assert any(hit.first_stage_score is not None for hit in on.search(request))


def test_thumbnails_fetched_to_rerank_do_not_leak_into_replies(searcher: Searcher) -> None:
    for modality in ("image", "audio", "text"):
        assert all(hit.thumbnail is None for hit in toy_search(searcher, "a red thing", modality, rerank=True))
    asked = toy_search(searcher, "a red thing", "image", rerank=True, with_thumbnails=True)
    shown = {hit.id: hit.thumbnail for hit in asked}
    assert shown["img/d-noview"] is None
    assert all(shown[i] is not None and shown[i].image.startswith("data:image/jpeg") for i in shown if i != "img/d-noview")


def test_rerank_k_bounds_the_candidates_scored(searcher: Searcher, rules: RuleReranker) -> None:
    # k=1: with rerank_k=2 only the first stage's two best images are scored (one of them has no
    # view), and the red one in third place cannot win; with 3 it can.
    top = searcher.search(make_request(query={"text": "a red thing"}, k=1, modalities=["image"], spaces=["toy"], rerank=True, rerank_k=2))
    assert ids(top) == ["img/d-noview"] and rules.calls[-1] == ("image", 1)
    top = searcher.search(make_request(query={"text": "a red thing"}, k=1, modalities=["image"], spaces=["toy"], rerank=True, rerank_k=3))
    assert ids(top) == ["img/b-red"] and rules.calls[-1] == ("image", 2)
    # rerank_k below k: all k candidates are still scored (max(k, rerank_k)); replies hold k hits
    hits = toy_search(searcher, "a red thing", "image", rerank=True, rerank_k=1)
    assert len(hits) == 4 and rules.calls[-1] == ("image", 3)
    # the settings' rerank_k is the default
    default_2 = searcher_with(searcher._index, searcher._spaces["mini"], rules, rerank_k=2)
    request = make_request(query={"text": "a red thing"}, k=1, modalities=["image"], spaces=["toy"], rerank=True)
    assert ids(default_2.search(request)) == ["img/d-noview"]


@pytest.mark.parametrize("rerank_k", [0, 1001, 2.5, "many"])
def test_rerank_k_out_of_bounds_is_refused_by_the_protocol(rerank_k: object) -> None:
    with pytest.raises(SchemaError) as caught:
        make_request(query={"text": "x"}, rerank=True, rerank_k=rerank_k)
    assert caught.value.field == "rerank_k"


def test_rerank_must_be_a_boolean() -> None:
    with pytest.raises(SchemaError) as caught:
        make_request(query={"text": "x"}, rerank="yes")
    assert caught.value.field == "rerank"


def test_asking_to_rerank_where_nothing_can_is_rerank_unavailable(searcher: Searcher) -> None:
    with pytest.raises(EncodeError, match="the test's mini has no reranker") as caught:
        searcher.search(make_request(query={"text": "a dog"}, spaces=["mini"], rerank=True))
    assert caught.value.code == "rerank_unavailable"
    with pytest.raises(EncodeError, match=r"scores .*text->image.*, not image->") as caught:  # an image query
        searcher.search(make_request(query={"image": _png_b64()}, spaces=["toy"], rerank=True))
    assert caught.value.code == "rerank_unavailable"
    # where one space can rerank, the request is served: that space's lists reranked, the other's not
    hits = searcher.search(make_request(query={"text": "a red thing"}, k=20, rerank=True))
    assert {h.space for h in hits if h.first_stage_score is not None} == {"toy"}
    assert {h.space for h in hits if h.first_stage_score is None} == {"mini"}


def test_a_default_on_stage_answers_unrerankable_requests_first_stage(gallery: VectorIndex, mini: MiniText) -> None:
    on = searcher_with(gallery, mini, RuleReranker(), default=True)
    hits = on.search(make_request(query={"text": "a dog"}, spaces=["mini"]))
    assert hits and all(hit.first_stage_score is None for hit in hits)


def test_lazy_load_happens_once_under_concurrent_first_requests(gallery: VectorIndex, mini: MiniText) -> None:
    slow = RuleReranker(load_seconds=0.3)
    searcher = searcher_with(gallery, mini, slow)
    assert slow.loads == 0  # not at start-up: reranking is off by default
    request = make_request(query={"text": "a red thing"}, k=2, spaces=["toy"], modalities=["image"], rerank=True)
    results: list[list[SearchHit]] = []
    threads = [threading.Thread(target=lambda: results.append(searcher.search(request))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert slow.loads == 1
    assert len(results) == 6 and all(ids(r) == ["img/b-red", "img/d-noview"] for r in results)
    eager = RuleReranker()
    searcher_with(gallery, mini, eager, default=True)  # XMODAL_RERANK=true: loaded at start-up
    assert eager.loads == 1


def test_a_reranker_that_cannot_load(gallery: VectorIndex, mini: MiniText, tmp_path: Path) -> None:
    """The real BLIP reranker of the registry with weights that are not there."""
    settings = load_settings({"XMODAL_BLIP_MODEL": str(tmp_path / "no-blip"), "XMODAL_SPACES": "clip"})
    stage = RerankStage.from_settings(settings, ["clip", "clap"], LIMITS)
    with pytest.raises(EncodeError, match="the clip reranker cannot load: BLIP model directory not found") as caught:
        stage.plan(make_request(query={"text": "x"}, rerank=True), ["clip"], "text", ["image"])
    assert caught.value.code == "rerank_unavailable"
    with pytest.raises(EncodeError, match="no audio-text reranker is available for the clap space"):
        stage.plan(make_request(query={"text": "x"}, rerank=True), ["clap"], "text", ["audio"])
    on = RerankStage.from_settings(settings.model_copy(update={"rerank": True}), ["clip", "clap"], LIMITS)
    with pytest.raises(ConfigError, match="XMODAL_RERANK=true but the clip reranker cannot load") as refused:
        on.start()  # fails start-up, not the first request
    assert refused.value.code == "model_load_error"
    unset = RerankStage.from_settings(load_settings({}), ["clip"], LIMITS)
    with pytest.raises(EncodeError, match="XMODAL_BLIP_MODEL is not set"):
        unset.plan(make_request(query={"text": "x"}, rerank=True), ["clip"], "text", ["image"])


class _WrongLength(RuleReranker):
    def score(self, *args: object) -> np.ndarray:  # type: ignore[override]
        return np.zeros(1, dtype=np.float32)


class _Crashing(RuleReranker):
    def score(self, *args: object) -> np.ndarray:  # type: ignore[override]
        raise RuntimeError("the model fell over")


def test_a_reranker_crash_is_an_encode_error(gallery: VectorIndex, mini: MiniText) -> None:
    searcher = searcher_with(gallery, mini, _Crashing())
    with pytest.raises(EncodeError, match="the toy reranker rules failed on this text query: RuntimeError: the model fell over") as caught:
        toy_search(searcher, "a red thing", "image", rerank=True)
    assert caught.value.code == "encode_error"


def test_a_reranker_that_answers_the_wrong_shape_is_an_encode_error(gallery: VectorIndex, mini: MiniText) -> None:
    searcher = searcher_with(gallery, mini, _WrongLength())
    with pytest.raises(EncodeError, match="returned \\(1,\\) adjustments for 3 candidates"):
        toy_search(searcher, "a red thing", "image", rerank=True)


def test_the_gallery_is_what_the_tests_assume() -> None:
    """The adjustments worked out by hand from the gallery: one match per query, the rest mismatches."""
    assert expected_adjustment("img/b-red", "a red thing") == MATCH
    assert expected_adjustment("img/a-decoy", "a red thing") < 0
    assert expected_adjustment("snd/b-high", "a high tone") == MATCH
    assert expected_adjustment("cap/red-thing", "a red thing") == MATCH
    assert not GALLERY["img/d-noview"][3]


def _png_b64() -> str:
    import base64

    from qa_support import png_bytes

    return base64.b64encode(png_bytes((200, 10, 10))).decode()
