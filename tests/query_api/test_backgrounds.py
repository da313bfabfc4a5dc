"""Background samples: read once per key and ttl, re-read quickly only while a gallery grows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmodal.indexer import EdgeIndex, IndexPoint
from xmodal.query_api.backgrounds import GROWING_TTL_S, Backgrounds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountsSamples(EdgeIndex):
    """The real embedded index, counting its sample reads."""

    reads = 0

    def sample(self, space: str, modality: str, n: int) -> np.ndarray:
        self.reads += 1
        return super().sample(space, modality, n)


def add(index: EdgeIndex, start: int, n: int) -> None:
    rng = np.random.default_rng(start)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    index.upsert("s", [IndexPoint(f"i{start + i}", v / np.linalg.norm(v), "image") for i, v in enumerate(vectors)])


def test_a_growing_gallery_is_read_again_quickly_then_kept_for_the_ttl(tmp_path: Path) -> None:
    index = CountsSamples(tmp_path / "index")
    index.ensure_collection("s", 8)
    clock = Clock()
    backgrounds = Backgrounds(index, size=100, ttl_s=30.0, clock=clock)
    try:
        add(index, 0, 5)
        assert backgrounds.get("s", "image").shape == (5, 8) and index.reads == 1
        assert backgrounds.get("s", "image").shape == (5, 8) and index.reads == 1  # cached
        add(index, 5, 5)
        clock.now += GROWING_TTL_S + 0.1  # first read: the gallery may still be filling
        assert backgrounds.get("s", "image").shape == (10, 8) and index.reads == 2
        clock.now += GROWING_TTL_S + 0.1  # it grew: read again soon
        assert backgrounds.get("s", "image").shape == (10, 8) and index.reads == 3
        clock.now += GROWING_TTL_S + 0.1  # the same size as before: kept for the ttl now
        backgrounds.get("s", "image")
        assert index.reads == 3
        clock.now += 30.0
        backgrounds.get("s", "image")
        assert index.reads == 4
        assert backgrounds.get("s", "audio").shape == (0, 8) and index.reads == 5  # keys are separate
        clock.now += GROWING_TTL_S + 0.1
        backgrounds.get("s", "audio")
        clock.now += GROWING_TTL_S + 0.1  # still empty: still read again within a second
        backgrounds.get("s", "audio")
        assert index.reads == 7
    finally:
        index.close()
