"""Fair sharing of one tower between searches and ingest (docs/performance.md, "Fair sharing").

`xmodal up` serves searches and ingests with the same towers, and a tower runs one call at a time.
A first-come lock let a 64-item ingest batch hold the tower while searches queued behind it, and
the searches that queued then held it in turn while ingest waited. `TowerScheduler` decides who
goes next instead, with two bounds that hold whatever the load:

- a query never waits for more than one turn of the tower before its own, and a turn is one ingest
  slice plus the queries riding in it at most (or one query batch): queued queries go before
  waiting ingest work, and ingest is encoded `ingest_slice` items at a time;
- ingest is never starved: every turn while ingest of the same tower waits gives it a slice, and
  after `queries_per_slice` query batches of other towers in a row one ingest slice goes.

Calls of the same class and tower that queue meanwhile are encoded as one batch (that is what
batches concurrent searches). Queries also ride along in ingest slices: when queries are next and
ingest work for the same tower (modality of one encoder) waits, one forward encodes the queries and
the next ingest slice. A search then costs about one more row of a batch instead of a forward of its
own (a lone MiniLM text costs as much tower time as three to four texts in a batch). The schedule
never leaves the tower idle while work waits: with no ingest of their tower waiting (the pipeline
writes a part before it encodes the next), queries go alone at once. A failing merged batch is
retried per caller, so one bad input fails only the call that brought it; padding to the longest
text of a batch leaves each row as it would be alone (attention masks;
tests/encoders/test_serialized_scheduling.py checks it on the real MiniLM).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["DEFAULT_INGEST_SLICE", "DEFAULT_QUERIES_PER_SLICE", "Priority", "TowerScheduler"]

Priority = Literal["query", "ingest"]
PRIORITIES: tuple[Priority, ...] = ("query", "ingest")
DEFAULT_INGEST_SLICE = 32
DEFAULT_QUERIES_PER_SLICE = 1

Tower = Callable[[Sequence[Any]], Any]


@dataclass(eq=False)
class _Call:
    """One caller's items; an ingest call may be encoded over several slices (`taken` so far)."""

    priority: Priority
    modality: str
    tower: Tower
    items: Sequence[Any]
    taken: int = 0  # items handed to a slice
    parts: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done = True
        self.parts = self.parts if error is None else []

    @property
    def key(self) -> tuple[str, Tower]:
        """What one forward can encode together: the same modality of the same tower (bound methods
        of one encoder compare equal)."""
        return self.modality, self.tower

    def same_tower(self, other: _Call) -> bool:
        return self.key == other.key

    @property
    def left(self) -> int:
        return len(self.items) - self.taken


@dataclass(eq=False)
class _Unit:
    """What one turn of the tower encodes: (call, start, stop) pieces of one tower; `priority` is
    the class whose turn it is ("ingest" for a slice that queries ride along in)."""

    priority: Priority
    pieces: list[tuple[_Call, int, int]]

    def rows(self, priority: Priority) -> int:
        return sum(stop - start for c, start, stop in self.pieces if c.priority == priority)


class TowerScheduler:
    """Runs tower calls one at a time, choosing the next by class (see the module docstring).

    Any waiting caller's thread may run the next turn, whoever it is for: the thread that finds the
    tower free encodes what the policy picks and hands each caller its rows.
    """

    def __init__(
        self,
        *,
        ingest_slice: int = DEFAULT_INGEST_SLICE,
        queries_per_slice: int = DEFAULT_QUERIES_PER_SLICE,
        ride_along: bool = True,
    ) -> None:
        """`ride_along=False` gives queries turns of their own only (the schedule before queries rode
        along in ingest slices; benchmarks/fair_share.py compares the two in one Node)."""
        if ingest_slice < 1:
            raise ValueError(f"ingest_slice must be at least 1, not {ingest_slice}")
        if queries_per_slice < 1:
            raise ValueError(f"queries_per_slice must be at least 1, not {queries_per_slice}")
        self.ingest_slice = ingest_slice
        self.queries_per_slice = queries_per_slice
        self.ride_along = ride_along
        self._ingest_done_at: dict[tuple[str, Tower], float] = {}
        # A tower's ingest call finished -> its next one came (the pipeline's write; ratios.py reads and resets it).
        self.ingest_gaps_s: deque[float] = deque(maxlen=512)
        self._cond = threading.Condition()
        self._waiting: dict[Priority, deque[_Call]] = {p: deque() for p in PRIORITIES}
        self._busy = False
        self._query_streak = 0  # query batches run in a row while ingest waited
        self.turns: dict[Priority, int] = {p: 0 for p in PRIORITIES}  # tower calls run per class
        self.busy_s: dict[Priority, float] = {p: 0.0 for p in PRIORITIES}  # tower time per class (by rows)
        self.riders = 0  # query calls encoded inside an ingest slice

    def waiting(self, priority: Priority) -> int:
        """Calls of this class with items not yet handed to the tower (for tests and introspection)."""
        with self._cond:
            return sum(1 for c in self._waiting[priority] if c.taken < len(c.items))

    def encode(self, priority: Priority, modality: str, tower: Tower, items: Sequence[Any]) -> Any:
        """`tower(items)`'s rows, encoded when the policy gives this call its turn(s)."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, not {priority!r}")
        call = _Call(priority, modality, tower, items)
        if not items:
            return self.exclusive(lambda: tower(items))  # the tower says what an empty call returns
        with self._cond:
            if priority == "ingest" and (done_at := self._ingest_done_at.pop(call.key, None)) is not None:
                self.ingest_gaps_s.append(time.monotonic() - done_at)
            self._waiting[priority].append(call)
            while not call.done:
                if self._busy:
                    self._cond.wait()
                    continue
                unit = self._next_unit()
                self._busy = True
                self._cond.release()
                started = time.perf_counter()
                try:
                    self._run(unit)
                finally:
                    self._cond.acquire()
                    self._account(unit, time.perf_counter() - started)
                    self._busy = False
                    self._settle(unit)
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.parts[0] if len(call.parts) == 1 else np.concatenate(call.parts)

    def exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` (e.g. loading the weights) with the tower to itself."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            return fn()
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    # -- policy (called with the condition held) --------------------------------------------------

    def _next_unit(self) -> _Unit:
        queries, ingest = self._waiting["query"], self._waiting["ingest"]
        if queries and (not ingest or self._query_streak < self.queries_per_slice):
            head = queries[0]
            batch = self._queries_of(head)
            pieces = self._slice(ingest, head, self.ingest_slice) if self.ride_along else []
            if not pieces:  # no ingest of this tower waits: a query batch alone
                self._query_streak = self._query_streak + 1 if ingest else 0
                self.turns["query"] += 1
                return _Unit("query", batch)
        else:
            head = next(c for c in ingest if c.left)
            pieces = self._slice(ingest, head, self.ingest_slice)
            batch = self._queries_of(head) if self.ride_along else []
        # An ingest slice, with the waiting queries of its tower riding along (a turn of both).
        self._query_streak = 0
        self.turns["ingest"] += 1
        self.riders += len(batch)
        return _Unit("ingest", batch + pieces)

    def _queries_of(self, head: _Call) -> list[tuple[_Call, int, int]]:
        """Every waiting query call of `head`'s tower, whole (a query call is never cut)."""
        batch = [(c, 0, len(c.items)) for c in self._waiting["query"] if c.same_tower(head)]
        for c, _, stop in batch:
            c.taken = stop
        return batch

    @staticmethod
    def _slice(ingest: deque[_Call], head: _Call, room: int) -> list[tuple[_Call, int, int]]:
        """Up to `room` items from the queued ingest calls of `head`'s tower, in order; a call
        larger than what is left of the slice gives its next items."""
        pieces = []
        for c in ingest:
            if room == 0:
                break
            if not c.left or not c.same_tower(head):
                continue
            stop = min(len(c.items), c.taken + room)
            pieces.append((c, c.taken, stop))
            room -= stop - c.taken
            c.taken = stop
        return pieces

    def _account(self, unit: _Unit, seconds: float) -> None:
        """The turn's tower time, shared between the classes by their rows in it."""
        rows = {p: unit.rows(p) for p in PRIORITIES}
        total = sum(rows.values()) or 1
        for p in PRIORITIES:
            self.busy_s[p] += seconds * rows[p] / total

    def _settle(self, unit: _Unit) -> None:
        """Drop the calls this unit finished from their queues."""
        for c, _, _ in unit.pieces:
            queue = self._waiting[c.priority]
            if c.done and c in queue:
                queue.remove(c)
                if c.priority == "ingest" and c.error is None:
                    self._ingest_done_at[c.key] = time.monotonic()

    # -- running a unit (without the condition) --------------------------------------------------------

    @staticmethod
    def _run(unit: _Unit) -> None:
        pieces = [(c, start, stop) for c, start, stop in unit.pieces if not c.done]
        tower = pieces[0][0].tower
        try:
            if len(pieces) == 1:
                c, start, stop = pieces[0]
                items = c.items if (start, stop) == (0, len(c.items)) else c.items[start:stop]
                outputs = [tower(items)]
            else:
                merged = tower([item for c, start, stop in pieces for item in c.items[start:stop]])
                offsets = np.cumsum([0] + [stop - start for _, start, stop in pieces])
                outputs = [merged[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        except BaseException as merged_error:  # noqa: BLE001 - attributed below, per caller
            if len(pieces) == 1:
                pieces[0][0].finish(merged_error)
                return
            for c, start, stop in pieces:  # one bad input must fail only its own caller
                try:
                    TowerScheduler._deliver(c, stop, tower(c.items[start:stop]))
                except BaseException as e:  # noqa: BLE001 - re-raised in its own caller's thread
                    c.finish(e)
            return
        for (c, _, stop), rows in zip(pieces, outputs):
            TowerScheduler._deliver(c, stop, rows)

    @staticmethod
    def _deliver(call: _Call, stop: int, rows: Any) -> None:
        call.parts.append(rows)
        if stop == len(call.items):
            call.done = True
