"""Calibrated fusion: pure functions, numbers one can check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.indexer.base import Hit
from xmodal.query_api.fusion import PRIOR_ITEMS, PRIOR_SCALE, SCALE_FLOOR, Calibration, RankedList, calibration, fuse


def hit(item: str, score: float, modality: str = "text") -> Hit:
    return Hit(item_id=item, score=score, modality=modality, metadata={"m": item})


def unit_rows(cosines: list[float], dim: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A query e0 and unit vectors whose cosines with it are `cosines`."""
    query = np.eye(dim, dtype=np.float32)[0]
    rows = np.array([[c, (1 - c * c) ** 0.5, 0.0] for c in cosines], dtype=np.float32)
    return query, rows


def test_calibration_is_a_robust_z_score_shrunk_towards_the_prior() -> None:
    cosines = [0.1, 0.2, 0.2, 0.3, 0.9]  # median 0.2, MAD 0.1 (the 0.9 outlier does not move them)
    query, background = unit_rows(cosines)
    c = calibration(query, background)
    w = 5 / (5 + PRIOR_ITEMS)
    assert c.center == pytest.approx(w * 0.2, abs=1e-6)
    assert c.scale == pytest.approx(w * 0.1 * 1.4826 + (1 - w) * PRIOR_SCALE, abs=1e-6)
    assert c(0.9) == pytest.approx((0.9 - c.center) / c.scale)


def test_a_uniform_background_keeps_the_floor() -> None:
    query, background = unit_rows([0.3] * 200)
    c = calibration(query, background)
    w = 200 / (200 + PRIOR_ITEMS)
    assert c.scale == pytest.approx(w * SCALE_FLOOR + (1 - w) * PRIOR_SCALE, abs=1e-6)
    assert calibration(query, background[:0]) == Calibration(0.0, PRIOR_SCALE)


def test_modalities_interleave_by_how_far_each_hit_stands_above_its_background() -> None:
    # Texts: high raw cosines everywhere (background around 0.6); images: low (around 0.1), one right.
    texts = RankedList("s", "text", Calibration(0.6, 0.1), [hit("t1", 0.75), hit("t2", 0.62)])
    images = RankedList("s", "image", Calibration(0.1, 0.05), [hit("i1", 0.35, "image"), hit("i2", 0.12, "image")])
    fused = fuse([texts, images], k=4)
    assert [h.id for h in fused] == ["i1", "t1", "i2", "t2"]  # raw cosine order would be t1 t2 i1 i2
    assert [h.score for h in fused] == pytest.approx([5.0, 1.5, 0.4, 0.2])
    assert [h.cosine for h in fused] == pytest.approx([0.35, 0.75, 0.12, 0.62])
    assert fused[0].modality == "image" and fused[0].metadata == {"m": "i1"} and fused[0].space == "s"


def test_an_item_in_several_spaces_takes_its_best_score_and_k_cuts() -> None:
    a = RankedList("a", "text", Calibration(0.0, 0.1), [hit("x", 0.3), hit("y", 0.2)])
    b = RankedList("b", "text", Calibration(0.0, 0.1), [hit("y", 0.5), hit("z", 0.1)])
    fused = fuse([a, b], k=2)
    assert [(h.id, h.space) for h in fused] == [("y", "b"), ("x", "a")]
    assert fused[0].score == pytest.approx(5.0)


def test_ties_keep_list_order_and_engine_order() -> None:
    a = RankedList("a", "text", Calibration(0.0, 0.1), [hit("p", 0.2), hit("q", 0.2)])
    b = RankedList("b", "image", Calibration(0.0, 0.1), [hit("r", 0.2, "image")])
    assert [h.id for h in fuse([a, b], k=3)] == ["p", "q", "r"]
    with pytest.raises(ValueError):
        fuse([a], k=0)
