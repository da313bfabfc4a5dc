"""Reciprocal rank fusion: scores, ties, payload, single-space passthrough."""

from __future__ import annotations

import math

import pytest

from xmodal.indexer.base import Hit
from xmodal.query_api.fusion import RRF_K, fuse


def hit(item: str, score: float = 0.5, modality: str = "text", **metadata: object) -> Hit:
    return Hit(item_id=item, score=score, modality=modality, metadata=dict(metadata))


def test_single_space_keeps_cosine_scores_and_payload() -> None:
    hits = [hit("a", 0.91, "image", album="x"), hit("b", 0.52)]
    fused = fuse({"clip": hits}, k=10)
    assert [(h.id, h.score, h.modality, h.metadata) for h in fused] == [
        ("a", 0.91, "image", {"album": "x"}),
        ("b", 0.52, "text", {}),
    ]


def test_single_space_truncates_to_k() -> None:
    assert [h.id for h in fuse({"mini": [hit("a"), hit("b"), hit("c")]}, k=2)] == ["a", "b"]


def test_rrf_scores_follow_the_formula() -> None:
    fused = fuse({"clip": [hit("a"), hit("b")], "clap": [hit("b"), hit("c")]}, k=10)
    scores = {h.id: h.score for h in fused}
    assert scores["b"] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert scores["a"] == pytest.approx(1 / (RRF_K + 1))
    assert scores["c"] == pytest.approx(1 / (RRF_K + 2))
    assert [h.id for h in fused] == ["b", "a", "c"]  # agreement beats one first place


def test_cosine_scores_do_not_leak_into_the_fusion() -> None:
    # A space with high raw cosines must not outvote another: only ranks count.
    fused = fuse({"high": [hit("a", 0.99)], "low": [hit("b", 0.01)]}, k=2)
    assert fused[0].score == fused[1].score == 1 / (RRF_K + 1)


def test_ties_keep_first_seen_order_by_space_then_rank() -> None:
    fused = fuse({"s1": [hit("x"), hit("y")], "s2": [hit("z"), hit("w")]}, k=10)
    assert [h.id for h in fused] == ["x", "z", "y", "w"]
    again = fuse({"s1": [hit("x"), hit("y")], "s2": [hit("z"), hit("w")]}, k=10)
    assert again == fused


def test_equal_rank_sets_tie_exactly_whatever_the_order() -> None:
    ranked = {
        "s1": [hit("a"), hit("b"), hit("c")],
        "s2": [hit("c"), hit("a"), hit("b")],
        "s3": [hit("b"), hit("c"), hit("a")],
    }
    scores = {h.id: h.score for h in fuse(ranked, k=3)}
    assert scores["a"] == scores["b"] == scores["c"] == math.fsum(1 / (RRF_K + r) for r in (1, 2, 3))
    assert [h.id for h in fuse(ranked, k=3)] == ["a", "b", "c"]


def test_first_occurrence_gives_modality_and_metadata() -> None:
    fused = fuse({"s1": [hit("a", modality="image", v=1)], "s2": [hit("a", modality="image", v=2)]}, k=1)
    assert fused[0].metadata == {"v": 1}
    assert fused[0].modality == "image"


def test_repeated_item_in_one_list_counts_once() -> None:
    fused = fuse({"s1": [hit("a"), hit("a")], "s2": []}, k=5)
    assert [(h.id, h.score) for h in fused] == [("a", 1 / (RRF_K + 1))]


def test_empty_and_k_bounds() -> None:
    assert fuse({"s1": [], "s2": []}, k=3) == []
    assert fuse({}, k=3) == []
    with pytest.raises(ValueError):
        fuse({"s1": []}, k=0)


def test_k_cuts_after_fusion() -> None:
    ranked = {"s1": [hit(f"a{i}") for i in range(5)], "s2": [hit(f"a{i}") for i in reversed(range(5))]}
    assert len(fuse(ranked, k=2)) == 2
