"""Text queries encoded together: one tower call for the queries that arrive together.

On two cores a MiniLM call costs about 13 ms for one text, 20 ms for four and 50 ms for sixteen
(docs/performance.md, "What paid, what did not"): most of a lone call is fixed cost, so searches in
flight together are served faster per search when their texts share one call. The tower's scheduler
(encoders/scheduling.py) already merges the calls that queue while the tower is busy; what it cannot
know is that more queries are on their way when the tower is free. The query service does: it has
taken requests from Kafka that its workers have not yet parsed. So:

- `Arrivals` counts requests taken by the service that have not yet reached the encode (a `Ticket`
  each, done once when it reaches `TextBatcher.encode` or leaves without encoding);
- `TextBatcher.encode` queues the text; the first caller that finds no batch of this batcher
  running becomes the leader, waits (at most `gather_s`) while tickets are still out, then encodes
  every queued text in one call and hands each caller its row. Texts that arrive while that call
  runs are the next call's.
- Under load (the last call held more than one text), the leader also lingers while texts keep
  coming, each within `quiet_s` of the one before, up to `linger_s`. That is what paid: the queries
  of a closed loop return in a wave after each call, and a tower call that starts with the first
  of them runs while the rest of the wave's Python work (parse, index search, reply) shares the
  two cores and the GIL with it; waiting for the wave lets the tower run with the cores to itself
  (16 in flight: +9-74% searches/s in same-Node pairs, docs/performance.md).

One client (nothing else taken, every call of one text) never waits: its own ticket is done when it
queues, and a lone call never lingers. A merged call that fails is retried text by text, so one
text that breaks the tower fails only its own search.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from xmodal.encoders.base import Vectors

__all__ = ["DEFAULT_GATHER_S", "Arrivals", "TextBatcher", "Ticket"]

# The longest a leader waits for requests already taken from Kafka: a request is parsed and at the
# encode within a millisecond or two of being taken, unless the cores are busy elsewhere.
DEFAULT_GATHER_S = 0.004
# Under load (the last call was merged), a leader waits on while texts keep coming, each within
# QUIET_S of the one before, up to LINGER_S: searches in flight together then share one call
# instead of splitting into small ones that each pay the tower's fixed cost.
DEFAULT_LINGER_S = 0.010
DEFAULT_QUIET_S = 0.002
DEFAULT_MAX_BATCH = 64
_GATHER_TICK_S = 0.0005  # how often a waiting leader looks at the arrivals again


class Ticket:
    """One request on its way to the encode; `done()` (idempotent) once it got there or left."""

    __slots__ = ("_arrivals", "_done")

    def __init__(self, arrivals: Arrivals | None) -> None:
        self._arrivals = arrivals
        self._done = arrivals is None

    def done(self) -> None:
        if not self._done:
            self._done = True
            assert self._arrivals is not None
            self._arrivals._leave()


NO_TICKET = Ticket(None)


class Arrivals:
    """How many requests the service has taken that have not reached the encode yet (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._out = 0

    @property
    def out(self) -> int:
        return self._out

    def ticket(self) -> Ticket:
        with self._lock:
            self._out += 1
        return Ticket(self)

    def _leave(self) -> None:
        with self._lock:
            self._out -= 1


@dataclass(eq=False)
class _Waiting:
    text: str
    vector: Vectors | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """What the batcher did: calls into the tower, texts in them, leaders that waited for tickets
    (gathers) and for texts that kept coming (lingers)."""

    calls: int = 0
    texts: int = 0
    gathers: int = 0
    lingers: int = 0


class TextBatcher:
    """Encodes text queries of one space through `encode_texts`, the queries that arrive together in one call."""

    def __init__(
        self,
        encode_texts: Callable[[Sequence[str]], Vectors],
        arrivals: Arrivals | None = None,
        *,
        gather_s: float = DEFAULT_GATHER_S,
        linger_s: float = DEFAULT_LINGER_S,
        quiet_s: float = DEFAULT_QUIET_S,
        max_batch: int = DEFAULT_MAX_BATCH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if gather_s < 0:
            raise ValueError(f"gather_s must be 0 or more, not {gather_s}")
        self._encode_texts = encode_texts
        self._arrivals = arrivals
        self.gather_s = gather_s
        self.linger_s = linger_s
        self.quiet_s = quiet_s
        self.max_batch = max_batch
        self._clock = clock
        self._cond = threading.Condition()
        self._queued: list[_Waiting] = []
        self._running = False
        self._gathering = False
        self._last_size = 0  # texts in the last call
        self.stats = BatchStats()

    def encode(self, text: str, ticket: Ticket = NO_TICKET) -> Vectors:
        """The text's vector (1-d), encoded with the texts queued with it."""
        me = _Waiting(text)
        with self._cond:
            self._queued.append(me)
            ticket.done()  # under the lock: a leader that sees the ticket done sees the text queued
            if self._gathering:
                self._cond.notify_all()
            while not me.done:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True  # this caller leads the next call
                try:
                    self._gather()
                finally:
                    batch, self._queued = self._queued, []
                    self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
        if me.error is not None:
            raise me.error
        assert me.vector is not None
        return me.vector

    def _gather(self) -> None:
        """Called with the condition held: wait, at most gather_s, while taken requests are still
        on their way; then, when the last call was merged (searches are in flight together), go
        on waiting while more texts keep coming, each within quiet_s of the one before, up to
        linger_s in all."""
        arrivals = self._arrivals
        start = self._clock()
        self._gathering = True
        try:
            if arrivals is not None and arrivals.out > 0 and self.gather_s > 0:
                self.stats.gathers += 1
                deadline = start + self.gather_s
                while arrivals.out > 0:
                    left = deadline - self._clock()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, _GATHER_TICK_S))
            if self.linger_s <= 0 or self._last_size < 2:
                return
            self.stats.lingers += 1
            end = start + self.linger_s
            seen, since = len(self._queued), self._clock()
            while len(self._queued) < self.max_batch:
                now = self._clock()
                if len(self._queued) != seen:
                    seen, since = len(self._queued), now
                elif now - since >= self.quiet_s:
                    return
                if now >= end:
                    return
                self._cond.wait(min(end - now, _GATHER_TICK_S))
        finally:
            self._gathering = False

    def _run(self, batch: list[_Waiting]) -> None:
        """Encode `batch` in one call (outside the condition); on failure each text alone."""
        self._last_size = len(batch)
        self.stats.calls += 1
        self.stats.texts += len(batch)
        try:
            rows = np.asarray(self._encode_texts([w.text for w in batch]))
            if rows.ndim != 2 or rows.shape[0] != len(batch):
                raise ValueError(f"the tower returned shape {rows.shape} for {len(batch)} texts")
        except BaseException as e:
            if len(batch) == 1:
                batch[0].error, batch[0].done = e, True
                return
            for w in batch:  # one bad text must fail only its own search
                try:
                    w.vector = np.asarray(self._encode_texts([w.text]))[0]
                except BaseException as one:
                    w.error = one
                w.done = True
            return
        for w, row in zip(batch, rows, strict=True):
            w.vector, w.done = row, True
