"""Background samples of the index, per (space, modality), for score calibration (fusion.py).

A sample is up to `size` stored vectors of one modality (VectorIndex.sample: a fixed
pseudo-random choice of items), read from the index and kept for `ttl_s`. A sample smaller than
`size` — a gallery still filling — is read again after `GROWING_TTL_S`, so the first searches of
a new gallery do not keep an empty or tiny background for long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from xmodal.indexer.base import VectorIndex

__all__ = ["Backgrounds"]

GROWING_TTL_S = 1.0


@dataclass(frozen=True)
class _Sample:
    vectors: NDArray[np.float32]
    read_at: float


class Backgrounds:
    """Thread-safe cache of background samples. Reads of the index happen under one lock: they
    are rare (one per key per `ttl_s`) and short (a scroll of `size` points)."""

    def __init__(
        self,
        index: VectorIndex,
        *,
        size: int = 512,
        ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._index = index
        self._size = size
        self._ttl_s = ttl_s
        self._clock = clock
        self._samples: dict[tuple[str, str], _Sample] = {}
        self._lock = threading.Lock()

    def get(self, space: str, modality: str) -> NDArray[np.float32]:
        now = self._clock()
        with self._lock:
            sample = self._samples.get((space, modality))
            if sample is None or now - sample.read_at > self._ttl(sample):
                sample = _Sample(self._index.sample(space, modality, self._size), now)
                self._samples[(space, modality)] = sample
            return sample.vectors

    def _ttl(self, sample: _Sample) -> float:
        return self._ttl_s if len(sample.vectors) >= self._size else min(self._ttl_s, GROWING_TTL_S)
