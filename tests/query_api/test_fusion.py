"""Calibrated fusion: pure functions, numbers one can check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.indexer.base import Hit
from xmodal.query_api.fusion import PRIOR_ITEMS, PRIOR_SCALE, SCALE_FLOOR, Calibration, RankedList, calibration, fuse


def hit(item: str, score: float, modality: str = "text") -> Hit:
    return Hit(item_id=item, score=score, modality=modality, metadata={"m": item})


def cal(cosines: list[float]) -> Calibration:
    """The calibration of a query e0 against unit vectors whose cosines with it are `cosines`."""
    query = np.eye(3, dtype=np.float32)[0]
    rows = np.array([[c, (1 - c * c) ** 0.5, 0.0] for c in cosines], dtype=np.float32).reshape(-1, 3)
    return calibration(query, rows)


def by_hand(cosine: float, background: list[float]) -> float:
    """(cosine - q95(others)) / (w max(std(all), floor) + (1 - w) prior): others = all but the best,
    w = n / (n + 4)."""
    others = sorted(background)[:-1]
    w = len(background) / (len(background) + PRIOR_ITEMS)
    return (cosine - float(np.quantile(others, 0.95))) / (
        w * max(float(np.std(background)), SCALE_FLOOR) + (1 - w) * PRIOR_SCALE
    )


def test_a_hit_is_measured_against_the_upper_tail_of_the_others_in_standard_deviations() -> None:
    cosines = [0.1, 0.2, 0.2, 0.3, 0.9]
    c = cal(cosines)
    assert c(0.9) == pytest.approx(by_hand(0.9, cosines), rel=1e-4)
    q95 = 0.2 + 0.85 * (0.3 - 0.2)  # of the four others, between the 3rd and 4th (linear interpolation)
    w = 5 / (5 + PRIOR_ITEMS)
    assert c.center == pytest.approx(q95, rel=1e-4)
    assert c.scale == pytest.approx(w * np.std(cosines) + (1 - w) * PRIOR_SCALE, rel=1e-4)


def test_a_uniform_or_tiny_background_keeps_the_floor_and_the_prior() -> None:
    c = cal([0.3] * 200)
    w = 200 / (200 + PRIOR_ITEMS)
    assert c == Calibration(pytest.approx(0.3), pytest.approx(w * SCALE_FLOOR + (1 - w) * PRIOR_SCALE))
    assert cal([])(0.25) == pytest.approx(0.25 / PRIOR_SCALE)
    lone = cal([0.8])  # no competitor: center 0, a fifth of the weight on the sample's (floored) spread
    assert lone(0.8) == pytest.approx(0.8 / (0.2 * SCALE_FLOOR + 0.8 * PRIOR_SCALE))


def test_a_cluster_of_similar_competitors_raises_the_bar() -> None:
    # 30 unrelated texts near 0.1 and a cluster of 8 similar captions near 0.6: against the median
    # every caption would look like a match; a caption must stand out of its cluster instead.
    c = cal([0.1] * 30 + [0.55, 0.57, 0.58, 0.6, 0.6, 0.62, 0.63, 0.65])
    assert c(0.6) < 0.5 < c(0.9)


def test_modalities_interleave_by_how_far_each_hit_stands_above_its_background() -> None:
    # Texts: high raw cosines everywhere; images: low, one of them right.
    text_bg = [0.55, 0.58, 0.6, 0.6, 0.61, 0.62, 0.63, 0.75]
    image_bg = [0.02, 0.04, 0.05, 0.06, 0.06, 0.07, 0.12, 0.35]
    texts = RankedList("s", "text", cal(text_bg), [hit("t1", 0.75), hit("t2", 0.63)])
    images = RankedList("s", "image", cal(image_bg), [hit("i1", 0.35, "image"), hit("i2", 0.12, "image")])
    fused = fuse([texts, images], k=4)
    assert [h.id for h in fused] == ["i1", "t1", "i2", "t2"]  # raw cosine order would be t1 t2 i1 i2
    assert fused[0].score == pytest.approx(by_hand(0.35, image_bg), rel=1e-4)
    assert fused[1].score == pytest.approx(by_hand(0.75, text_bg), rel=1e-4)
    assert [h.cosine for h in fused] == pytest.approx([0.35, 0.75, 0.12, 0.63])
    assert fused[0].modality == "image" and fused[0].metadata == {"m": "i1"} and fused[0].space == "s"


def test_an_item_in_several_spaces_takes_its_best_score_and_k_cuts() -> None:
    background = [0.0, 0.05, 0.1, 0.1, 0.15, 0.2]
    a = RankedList("a", "text", cal(background), [hit("x", 0.3), hit("y", 0.2)])
    b = RankedList("b", "text", cal(background), [hit("y", 0.5), hit("z", 0.1)])
    fused = fuse([a, b], k=2)
    assert [(h.id, h.space) for h in fused] == [("y", "b"), ("x", "a")]
    assert fused[0].score == pytest.approx(cal(background)(0.5))


def test_ties_keep_list_order_and_engine_order() -> None:
    background = [0.0, 0.1]
    a = RankedList("a", "text", cal(background), [hit("p", 0.4), hit("q", 0.4)])
    b = RankedList("b", "image", cal(background), [hit("r", 0.4, "image")])
    # p and r are their lists' best: the first round, p first (list order); then q
    assert [h.id for h in fuse([a, b], k=3)] == ["p", "r", "q"]
    with pytest.raises(ValueError):
        fuse([a], k=0)


def test_every_modality_s_best_hits_come_first_in_rounds() -> None:
    # Many captions stand out almost as much as the first; one image and one sound stand out less.
    text_bg = [0.1] * 200 + [0.7, 0.72, 0.74, 0.76, 0.78, 0.8]
    texts = RankedList("s", "text", cal(text_bg), [hit(f"t{n}", c) for n, c in enumerate([0.8, 0.78, 0.76, 0.74])])
    images = RankedList("s", "image", cal([0.01] * 30 + [0.05, 0.12]), [hit("i0", 0.12, "image"), hit("i1", 0.05, "image")])
    sounds = RankedList("s", "audio", cal([0.0] * 20 + [0.1]), [hit("a0", 0.1, "audio"), hit("a1", 0.0, "audio")])
    fused = fuse([texts, images, sounds], k=8)
    by_score = sorted(fused, key=lambda h: -h.score)
    assert [h.id for h in by_score][:3] == ["t0", "t1", "t2"]  # by score alone the captions fill the top
    order = [h.id for h in fused]
    assert set(order[:3]) == {"t0", "i0", "a0"}  # round 1: every modality's best
    assert order[:3] == [h.id for h in sorted(fused[:3], key=lambda h: -h.score)]  # by score within it
    assert order.index("t1") < order.index("t2") < order.index("t3")  # each modality keeps its own order
    outside = [h for h in fused if h.score <= 0]
    assert outside and order[-len(outside):] == [h.id for h in sorted(outside, key=lambda h: -h.score)]
