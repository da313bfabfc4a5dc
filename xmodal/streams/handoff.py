"""The live side of a reindex switch: the events a reindex did not write are replayed into the new
generation by the live workers before they write anything newer into it.

`xmodal reindex` (xmodal/streams/reindex.py) fills a new generation from the log, stops writing,
records in the generation's manifest the offset of the first event it did not write on every
partition (the handoff offsets S), and only then moves the serving pointer. From that moment one
writer per partition remains: the live ingest worker that owns the partition. Its index follows the
pointer within about a second, so writes of the same batch may land in either generation. Before
each batch, this wrapper looks at which generation its index writes to now; the first time it sees
one that a reindex handed over (in this process), for each partition of the batch it replays the
events from S_p up to the batch's first offset f_p into it, in log order, and only then lets the
batch be written:

- every event below S_p is in the new generation (the reindex wrote it, committing after writing);
- every event in [S_p, f_p) is written again by the replay, in order, after any write this worker
  made into the new generation while following the pointer (those are all below f_p);
- from f_p on, the worker writes in order as always.

So the new generation holds every event's latest state, by one writer at a time per partition:
no event is lost and none is left stale. If f_p <= S_p the batch itself re-applies what the reindex
wrote, in order (harmless: same events, same points). A worker that gets a partition after the
switch (a rebalance, a restart) replays it on first sight in the same way, for `HANDOFF_WINDOW_S`
after the switch; past that, the owner of every partition has long replayed it.

A partition no batch comes to (the log stands still after the switch, which a reindex that stops a
few events short of a growing log makes likely) is completed between batches instead: the ingest
app asks every second (`complete_idle`), and an open handoff no batch came to for
`HANDOFF_IDLE_S` is replayed from S_p to the end of the log by the partition's owner. Any of those
events that a batch brings later is re-applied in order, which ends at the same points.

Replayed events that fail go nowhere: they were dead-lettered when the live worker first read them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from xmodal.config import Settings
from xmodal.errors import VectorIndexError
from xmodal.indexer.provenance import ModelGuard, ModelMismatch
from xmodal.streams.pipeline import BatchResult, IngestPipeline, SourceRecord

__all__ = ["HANDOFF_IDLE_S", "HANDOFF_KEY", "HANDOFF_WINDOW_S", "HandoffPipeline", "generation_now", "read_handoff"]

log = logging.getLogger(__name__)

HANDOFF_KEY = "handoff"  # in a generation's manifest: {"topic", "offsets": {partition: S_p}, "switched_at"}
HANDOFF_WINDOW_S = 3600.0
HANDOFF_IDLE_S = 2.0  # an open handoff no batch came to for this long is completed by `complete_idle`

Replayer = Callable[[int, int, int], Iterable[SourceRecord]]  # (partition, start, end) -> records


def generation_now(index: Any, space: str) -> int | None:
    """The generation `index` reads and writes for `space` now (after following the pointer)."""
    writing = getattr(index, "writing_generation", None)
    if callable(writing):  # cheap: no engine call, on a server a cached alias (asked every batch)
        try:
            return int(writing(space))
        except VectorIndexError:
            return None
    report = getattr(index, "index_report", None)
    if not callable(report) or not callable(getattr(index, "generations", None)):
        return None
    try:
        number = report(space).get("generation")
    except VectorIndexError:
        return None
    return number if isinstance(number, int) else None


def read_handoff(index: Any, space: str, number: int) -> dict[str, Any] | None:
    """The handoff a reindex recorded in generation `number` of `space`, if any."""
    import json

    from xmodal.indexer.generations import GENERATION_MANIFEST

    server_metadata = getattr(index, "generation_metadata", None)
    if callable(server_metadata):  # a Qdrant server: the generation's collection metadata
        try:
            handoff = server_metadata(space, number).get(HANDOFF_KEY)
        except VectorIndexError:
            return None
        return handoff if isinstance(handoff, dict) else None
    for generation in index.generations(space):
        if generation.number == number:
            try:
                record = json.loads((generation.path / GENERATION_MANIFEST).read_text())
            except (OSError, ValueError):
                return None
            handoff = record.get(HANDOFF_KEY)
            return handoff if isinstance(handoff, dict) else None
    return None


class HandoffPipeline:
    """An IngestPipeline that completes reindex handoffs (module docstring) and refuses to write
    into a generation another model made. Same `start`/`process` as the pipeline it wraps."""

    def __init__(
        self,
        inner: IngestPipeline,
        spaces: Sequence[str],
        index: Any,
        guard: ModelGuard,
        replayer: Replayer,
        *,
        space_pipeline: Callable[[str], IngestPipeline],
        media_topic: str,
        log_ends: Callable[[], Mapping[int, int]],
        window_s: float = HANDOFF_WINDOW_S,
    ) -> None:
        self._inner = inner
        self._spaces = list(spaces)
        self._index = index
        self._guard = guard
        self._replayer = replayer
        self._space_pipeline = space_pipeline
        self._media_topic = media_topic
        self._log_ends = log_ends
        self._window_s = window_s
        self._opened: dict[str, float] = {}  # space -> when this worker saw its open handoff (monotonic)
        self._held: dict[str, int | None] = {}  # space -> generation the last batch was written to
        self._open_handoffs: dict[str, dict[int, int]] = {}  # space -> {partition: S_p} not replayed yet
        self.replayed = 0  # events replayed into new generations (for tests and logs)

    @property
    def supported(self) -> Any:
        return self._inner.supported

    @property
    def guard(self) -> ModelGuard:
        return self._guard

    def start(self) -> None:
        self._inner.start()
        self._guard.start()

    def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        for space in self._spaces:
            self._follow(space)
            try:
                self._guard.check(space)
            except ModelMismatch as e:
                # Raised as an index failure: the agent stops ingest unacked (exit 3), nothing is written.
                raise VectorIndexError(e.message, code=e.code) from e
            self._replay(space, records)
        return self._inner.process(records)

    def complete_idle(self, partitions: Iterable[int], *, idle_s: float = HANDOFF_IDLE_S) -> int:
        """Complete the open handoffs of `partitions` (this worker's) that no batch came to for
        `idle_s`: after a switch the log may stand still, and then no batch would ever replay them.
        Replays [S_p, the end of the log) into the new generation, in order. A batch that brings
        some of those events later re-applies them in order, ending at the same points. Call it
        between batches, never during one. Returns the events replayed."""
        owned = set(partitions)
        replayed = 0
        for space in self._spaces:
            self._follow(space)
            pending = self._open_handoffs.get(space) or {}
            todo = sorted(p for p in pending if p in owned)
            if not todo or time.monotonic() - self._opened.get(space, 0.0) < idle_s:
                continue
            try:
                self._guard.check(space)
            except ModelMismatch:
                continue  # not ours to write: the next batch stops ingest (process)
            ends = self._log_ends()
            for partition in todo:
                start, end = pending[partition], ends.get(partition, 0)
                if end > start:
                    replayed += self._replay_range(space, partition, start, end)
                del pending[partition]  # only once written: a failure leaves it for the next call
        return replayed

    def _follow(self, space: str) -> None:
        number = generation_now(self._index, space)
        if number is None or self._held.get(space, -1) == number:
            return
        first_sight = space not in self._held
        self._held[space] = number
        handoff = read_handoff(self._index, space, number)
        if not handoff or handoff.get("topic") != self._media_topic:
            # e.g. a background HNSW build, adopted with every write made meanwhile: a handoff still
            # open carries over to it (the build copied the generation it was owed to).
            return
        age = time.time() - float(handoff.get("switched_at") or 0)
        if first_sight and age > self._window_s:
            return  # long handed over: its partitions' owners replayed them then
        offsets = {int(p): int(o) for p, o in (handoff.get("offsets") or {}).items()}
        self._open_handoffs[space] = offsets
        self._opened[space] = time.monotonic()
        log.info("space %r: writing into generation %d handed over by a reindex; replaying what it did not write", space, number)

    def _replay(self, space: str, records: Sequence[SourceRecord]) -> None:
        pending = self._open_handoffs.get(space)
        if not pending:
            return
        firsts: dict[int, int] = {}
        for record in records:
            if record.topic == self._media_topic:
                firsts[record.partition] = min(record.offset, firsts.get(record.partition, record.offset))
        for partition, first in sorted(firsts.items()):
            start = pending.pop(partition, None)
            if start is None or first <= start:
                continue
            self._replay_range(space, partition, start, first)

    def _replay_range(self, space: str, partition: int, start: int, end: int) -> int:
        replay = list(self._replayer(partition, start, end))
        result = self._space_pipeline(space).process(replay)
        self.replayed += len(replay)
        log.info(
            "space %r: replayed %d events of partition %d (%d..%d) into the new generation (%d dead, already dead-lettered)",
            space, len(replay), partition, start, end - 1, len(result.dead),
        )
        return len(replay)


def kafka_replayer(settings: Settings, bootstrap: str) -> Replayer:
    """Reads [start, end) of one media partition with a plain assign() consumer."""
    from xmodal.streams.logread import read_to_end

    def replay(partition: int, start: int, end: int) -> list[SourceRecord]:
        messages = read_to_end(settings, bootstrap, settings.media_topic, starts={partition: start}, ends={partition: end})
        return [to_record(m) for m in messages]

    return replay


def to_record(message: Any) -> SourceRecord:
    kind, stamp = message.timestamp()
    return SourceRecord(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=message.key(),
        value=message.value(),
        timestamp_ms=stamp if kind and stamp > 0 else None,
        headers=tuple((k, v or b"") for k, v in (message.headers() or [])),
    )


def wrap(
    settings: Settings,
    bootstrap: str,
    pipeline: IngestPipeline,
    index: Any,
    spaces: Mapping[str, Any],
    **pipeline_options: Any,
) -> HandoffPipeline:
    """The live pipeline of a Node, handoff-aware (one call in xmodal/runtime.py)."""
    from xmodal.encoders.fingerprint import fingerprint_of
    from xmodal.encoders.media import MediaLimits
    from xmodal.streams.logread import end_offsets

    fingerprints = {name: fingerprint_of(encoder) for name, encoder in spaces.items()}
    limits = MediaLimits.from_settings(settings)
    cache: dict[str, IngestPipeline] = {}

    def space_pipeline(space: str) -> IngestPipeline:
        if space not in cache:
            cache[space] = IngestPipeline({space: spaces[space]}, index, limits, **pipeline_options)
        return cache[space]

    return HandoffPipeline(
        pipeline,
        list(spaces),
        index,
        ModelGuard(index, fingerprints),
        kafka_replayer(settings, bootstrap),
        space_pipeline=space_pipeline,
        media_topic=settings.media_topic,
        log_ends=lambda: end_offsets(settings, bootstrap, settings.media_topic),
    )
