"""Background samples of the index, per (space, modality), for score calibration (fusion.py).

A sample is up to `size` stored vectors of one modality (VectorIndex.sample: a fixed
pseudo-random choice of items), read from the index and kept for `ttl_s`. A sample that is empty,
or whose size changed since the read before — a gallery still filling — is read again after
`GROWING_TTL_S`, so the first searches of a new gallery do not keep an empty or tiny background
for long (and the searcher, which skips modalities with an empty sample, sees new ones within a
second).

Reads never hold up searches of other keys, and searches of the same key that find an old sample
while another thread reads a new one use the old one.
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
    growing: bool  # its size differs from the read before (or it is the first read)


class Backgrounds:
    """Thread-safe cache of background samples, one lock per (space, modality)."""

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
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def get(self, space: str, modality: str) -> NDArray[np.float32]:
        key = (space, modality)
        sample = self._samples.get(key)
        if sample is not None and self._fresh(sample):
            return sample.vectors
        lock = self._locks.setdefault(key, threading.Lock())  # atomic: one lock per key
        if not lock.acquire(blocking=sample is None):
            return sample.vectors  # type: ignore[union-attr]  # another thread is reading a new one
        try:
            current = self._samples.get(key)
            if current is not None and current is not sample and self._fresh(current):
                return current.vectors  # read by another thread meanwhile
            vectors = self._index.sample(space, modality, self._size)
            growing = current is None or len(vectors) != len(current.vectors)
            self._samples[key] = _Sample(vectors, self._clock(), growing)
            return vectors
        finally:
            lock.release()

    def _fresh(self, sample: _Sample) -> bool:
        small = len(sample.vectors) < self._size
        # An empty sample is read again soon too: the searcher skips a modality it shows as empty,
        # so the first items of a new modality must be seen within a second.
        quick = small and (sample.growing or len(sample.vectors) == 0)
        ttl = min(self._ttl_s, GROWING_TTL_S) if quick else self._ttl_s
        return self._clock() - sample.read_at <= ttl
