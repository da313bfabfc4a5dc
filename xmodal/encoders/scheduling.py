"""Fair sharing of one tower between searches and ingest (docs/performance.md, "Fair sharing").

`xmodal up` serves searches and ingests with the same towers, and a tower runs one call at a time.
A first-come lock let a 64-item ingest batch hold the tower while searches queued behind it, and
the searches that queued then held it in turn while ingest waited. `TowerScheduler` decides who
goes next instead, with two bounds that hold whatever the load:

- a query never waits for more than one ingest slice (plus the query batch running ahead of it):
  queued queries go before waiting ingest work, and ingest is encoded `ingest_slice` items at a time;
- ingest is never starved: after `queries_per_slice` query batches in a row while ingest waited,
  one ingest slice goes.

Calls of the same class and modality that queue meanwhile are encoded as one batch (that is what
batches concurrent searches), and a failing merged batch is retried per caller, so one bad input
fails only the call that brought it.
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


@dataclass(eq=False)
class _Unit:
    """What one turn of the tower encodes: (call, start, stop) pieces of one class and modality."""

    priority: Priority
    pieces: list[tuple[_Call, int, int]]


class TowerScheduler:
    """Runs tower calls one at a time, choosing the next by class (see the module docstring).

    Any waiting caller's thread may run the next turn, whoever it is for: the thread that finds the
    tower free encodes what the policy picks and hands each caller its rows.
    """

    def __init__(self, *, ingest_slice: int = DEFAULT_INGEST_SLICE, queries_per_slice: int = DEFAULT_QUERIES_PER_SLICE) -> None:
        if ingest_slice < 1:
            raise ValueError(f"ingest_slice must be at least 1, not {ingest_slice}")
        if queries_per_slice < 1:
            raise ValueError(f"queries_per_slice must be at least 1, not {queries_per_slice}")
        self.ingest_slice = ingest_slice
        self.queries_per_slice = queries_per_slice
        self._cond = threading.Condition()
        self._waiting: dict[Priority, deque[_Call]] = {p: deque() for p in PRIORITIES}
        self._busy = False
        self._query_streak = 0  # query batches run in a row while ingest waited
        self.turns: dict[Priority, int] = {p: 0 for p in PRIORITIES}  # tower calls run per class
        self.busy_s: dict[Priority, float] = {p: 0.0 for p in PRIORITIES}  # tower time per class

    def waiting(self, priority: Priority) -> int:
        """Calls of this class with items not yet handed to the tower (for tests and introspection)."""
        with self._cond:
            return sum(1 for c in self._waiting[priority] if c.taken < len(c.items))

    def encode(self, priority: Priority, modality: str, tower: Tower, items: Sequence[Any]) -> Any:
        """`tower(items)`'s rows, encoded when the policy gives this call its turn(s)."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, not {priority!r}")
        call = _Call(modality, tower, items)
        if not items:
            return self.exclusive(lambda: tower(items))  # the tower says what an empty call returns
        with self._cond:
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
                    self.busy_s[unit.priority] += time.perf_counter() - started
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
            self._query_streak = self._query_streak + 1 if ingest else 0
            self.turns["query"] += 1
            modality = queries[0].modality
            pieces = [(c, 0, len(c.items)) for c in queries if c.modality == modality]
            for c, _, stop in pieces:
                c.taken = stop
            return _Unit("query", pieces)
        self._query_streak = 0
        self.turns["ingest"] += 1
        return _Unit("ingest", self._slice(ingest))

    def _slice(self, ingest: deque[_Call]) -> list[tuple[_Call, int, int]]:
        """Up to `ingest_slice` items from the queued ingest calls of the first one's modality, in
        order; a call larger than what is left of the slice gives its next items."""
        modality, room, pieces = ingest[0].modality, self.ingest_slice, []
        for c in ingest:
            if room == 0:
                break
            if c.modality != modality or c.taken == len(c.items):
                continue
            stop = min(len(c.items), c.taken + room)
            pieces.append((c, c.taken, stop))
            room -= stop - c.taken
            c.taken = stop
        return pieces

    def _settle(self, unit: _Unit) -> None:
        """Drop the calls this unit finished from their queue."""
        queue = self._waiting[unit.priority]
        for c, _, _ in unit.pieces:
            if c.done and c in queue:
                queue.remove(c)

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
