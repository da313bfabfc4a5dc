"""Index recall of live searches: sampled ANN answers compared with exact (brute-force) ones.

    query thread:  index.search(...) --> RecallMonitor.offer()  (token bucket, bounded queue; never waits)
    monitor thread:                      exact search of the same (space, vector, k, modalities, filter)
                                         recall@k = |ANN top k & exact top k| / |exact top k|
                                         -> window of the last WINDOW samples per space -> the gauge

The gauge `xmodal_index_recall_at_k{space}` is the mean of the last `WINDOW` measured samples of
the space (a sliding window, not an exponential average: one bad search moves it by 1/WINDOW and
a broken index shows within WINDOW samples). k is the k of each sampled search. A window mean
below `quality_alert_recall` is logged as a warning, at most once a minute per space while it
stays below.

The exact answer is computed a moment after the ANN one, so an item indexed in between can make
the two differ; on an index that takes writes all the time the gauge reads a little low.

Exact checks yield to live searches. An exact scan is expensive (about 30 ms at 100k points on
qdrant-edge, whose binding holds the GIL throughout, so every other thread of the process stops),
and at one check a second it lands on whichever searches are in flight. So the monitor runs a
check once no search has been offered for `quiet_s`; while searches keep coming it runs at most
one every `max_defer_s`, so the gauge still moves under steady load (docs/performance.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xmodal.errors import XmodalError
from xmodal.indexer.base import VectorIndex
from xmodal.metrics import INDEX_RECALL, RECALL_SAMPLES

__all__ = ["RecallMonitor", "RecallSample", "TokenBucket", "recall_at_k"]

log = logging.getLogger(__name__)

WINDOW = 50  # samples per space the gauge averages
QUEUE_SIZE = 64  # samples waiting for their exact search; more are dropped (and counted)
MIN_SAMPLES_TO_WARN = 5  # one unlucky search is no alert
WARN_EVERY_S = 60.0
QUIET_S = 0.05  # no search offered for this long: the node is between searches, check now
MAX_DEFER_S = 10.0  # under steady search load, one exact check this often at most (and at least)


class TokenBucket:
    """At most `rate` takes per second on average, bursts up to `burst`; thread-safe, never blocks."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self._rate = rate
        self._burst = max(1.0, rate) if burst is None else burst
        self._clock = clock
        self._tokens = self._burst
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self._rate == 0:
            return False
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


@dataclass(frozen=True)
class RecallSample:
    """One ANN search as the index answered it: what to repeat exactly, and the ids it returned."""

    space: str
    vector: NDArray[np.float32]
    k: int
    modalities: tuple[str, ...] | None
    filter: Mapping[str, Any] | None
    ann_ids: tuple[str, ...]


def recall_at_k(ann_ids: Sequence[str], exact_ids: Sequence[str]) -> float | None:
    """|ANN & exact| / |exact|, or None when the exact answer is empty (nothing to find)."""
    if not exact_ids:
        return None
    return len(set(ann_ids) & set(exact_ids)) / len(set(exact_ids))


class RecallMonitor:
    """Samples live searches at `rate` per second and keeps the recall gauge of each space.

    `offer` is what the query path calls; it costs a lock and a queue put. `start`/`stop` run the
    thread that repeats sampled searches exactly against `index`.
    """

    def __init__(
        self,
        index: VectorIndex,
        rate: float,
        alert_below: float,
        *,
        window: int = WINDOW,
        quiet_s: float = QUIET_S,
        max_defer_s: float = MAX_DEFER_S,
    ) -> None:
        """`quiet_s`, `max_defer_s`: when checks run while searches go on (module docstring)."""
        if quiet_s < 0 or max_defer_s < 0:
            raise ValueError(f"quiet_s and max_defer_s must be >= 0, got {quiet_s} and {max_defer_s}")
        self._index = index
        self._bucket = TokenBucket(rate)
        self._quiet_s = quiet_s
        self._max_defer_s = max_defer_s
        self._last_offer = 0.0  # monotonic time of the last search offered (sampled or not)
        self._last_check = time.monotonic()  # of the last exact check (start: the first one may wait)
        self._alert_below = alert_below
        self._queue: queue.Queue[RecallSample | None] = queue.Queue(QUEUE_SIZE)
        self._windows: dict[str, deque[float]] = {}
        self._window = window
        self._warned_at: dict[str, float] = {}
        self._lock = threading.Lock()  # guards _windows
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def recall(self, space: str) -> float | None:
        """The gauge's value for `space`: mean of its window, None before the first sample."""
        with self._lock:
            window = self._windows.get(space)
            return sum(window) / len(window) if window else None

    def samples(self, space: str) -> int:
        """Samples now in the space's window."""
        with self._lock:
            return len(self._windows.get(space, ()))

    # -- query path ---------------------------------------------------------------------------

    def offer(
        self,
        space: str,
        vector: NDArray[np.float32],
        k: int,
        modalities: Sequence[str] | None,
        filter: Mapping[str, Any] | None,
        ann_ids: Sequence[str],
    ) -> None:
        """Take this search for a recall check if the rate allows; never blocks, never raises."""
        self._last_offer = time.monotonic()  # one float store: what tells the monitor a search is going on
        if self._thread is None or not self._bucket.take():
            return
        sample = RecallSample(
            space,
            np.array(vector, dtype=np.float32, copy=True),
            k,
            tuple(modalities) if modalities is not None else None,
            dict(filter) if filter else None,
            tuple(ann_ids),
        )
        try:
            self._queue.put_nowait(sample)
        except queue.Full:  # the exact searches fall behind: skip, never slow the query path
            RECALL_SAMPLES.labels(space, "dropped").inc()

    # -- monitor thread -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("RecallMonitor.start() was already called")
        self._thread = threading.Thread(target=self._run, name="xmodal-recall", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put_nowait(None)  # wake it
            except queue.Full:
                pass
            thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                sample = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if sample is None:
                continue
            if self._wait_for_a_gap():
                self.measure(sample)
                self._last_check = time.monotonic()

    def _wait_for_a_gap(self) -> bool:
        """Wait until no search was offered for `quiet_s`, or `max_defer_s` passed since the last
        check; False when stopping."""
        while not self._stopping.is_set():
            now = time.monotonic()
            quiet_for = now - self._last_offer
            overdue_in = self._last_check + self._max_defer_s - now
            if quiet_for >= self._quiet_s or overdue_in <= 0:
                return True
            self._stopping.wait(min(self._quiet_s - quiet_for, overdue_in))
        return False

    def measure(self, sample: RecallSample) -> float | None:
        """Repeat `sample` exactly, record its recall and return it (None: not measured)."""
        try:
            exact = self._index.search(
                sample.space,
                sample.vector,
                sample.k,
                modalities=list(sample.modalities) if sample.modalities is not None else None,
                filter=sample.filter,
                exact=True,
            )
        except XmodalError as e:  # e.g. the index is closing or unreachable: the query path says so itself
            RECALL_SAMPLES.labels(sample.space, "failed").inc()
            log.debug("exact search for the recall check of space %r failed: %s", sample.space, e)
            return None
        recall = recall_at_k(sample.ann_ids, [h.item_id for h in exact])
        if recall is None:
            RECALL_SAMPLES.labels(sample.space, "empty").inc()
            return None
        RECALL_SAMPLES.labels(sample.space, "measured").inc()
        with self._lock:
            window = self._windows.setdefault(sample.space, deque(maxlen=self._window))
            window.append(recall)
            mean, count = sum(window) / len(window), len(window)
        INDEX_RECALL.labels(sample.space).set(mean)
        self._maybe_warn(sample.space, mean, count, sample.k)
        return recall

    def _maybe_warn(self, space: str, mean: float, count: int, k: int) -> None:
        if mean >= self._alert_below:
            if self._warned_at.pop(space, None) is not None:
                log.info("index recall of space %r is back to %.3f over the last %d sampled searches", space, mean, count)
            return
        if count < min(MIN_SAMPLES_TO_WARN, self._window):
            return
        now = time.monotonic()
        last = self._warned_at.get(space)
        if last is not None and now - last < WARN_EVERY_S:
            return
        self._warned_at[space] = now
        log.warning(
            "index recall@k of space %r is %.3f over the last %d sampled searches (k=%d last), below "
            "XMODAL_QUALITY_ALERT_RECALL=%g: the approximate index misses what an exact scan finds; check the "
            "HNSW and quantization settings (docs/quality.md)",
            space,
            mean,
            count,
            k,
            self._alert_below,
        )
