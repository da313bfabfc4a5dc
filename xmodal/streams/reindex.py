"""`xmodal reindex SPACE`: rebuild a space from the log into a new generation while it serves.

1. A new generation of the space is created (state "building", origin "reindex", this process's
   model fingerprint and index settings), beside the serving one, which goes on serving.
2. The media topic is replayed from its start with a consumer group of its own,
   `<prefix>.reindex.<space>.g<generation>`, through the same pipeline as live ingest (this
   process's encoder: new model, weights or index settings), offsets committed after each write.
3. When every partition is caught up (position = end of the log, or at most `reindex_switch_lag`
   events short of a log that grows under live ingest), a large generation gets its HNSW graph
   (`optimize`, in this process, which is not the serving one), the topic is caught up again, and
   writing stops.
4. The handoff offsets S_p (the first event not written, per partition) and the live group's
   committed offsets are recorded in the generation's manifest; it is marked ready and the durable
   pointer moves to it (one atomic rename). Queries and live writes follow within about a second;
   the live workers replay [S_p, their position) into it first (xmodal/streams/handoff.py, where
   the argument that nothing is lost or left stale is written down).
5. The old generation stays for rollback (`--rollback`) until dropped (`--drop-old`, `--drop N`).

Killed at any moment before step 4's rename, the serving generation was never touched. A rerun finds
the unfinished generation and its group's committed offsets and resumes (the generation holds every
event below them, since offsets commit after writes), or starts over when the model or settings
differ or `--restart` is given. One reindex of a space at a time: a second one is refused (a file
lock beside the embedded index). Embedded storage is written by one process per generation, so one
reindex process fills it. On a Qdrant server several worker processes of one job (`--job ID`) split
the partitions: xmodal/streams/reindex_server.py, which `Reindexer` hands server mode to.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from xmodal.config import Settings
from xmodal.errors import BrokerError, ConfigError, VectorIndexError, XmodalError
from xmodal.pidlock import PidLock
from xmodal.streams.handoff import HANDOFF_KEY, to_record
from xmodal.streams.kafka import consumer_config
from xmodal.streams.logread import committed_offsets, end_offsets, ingest_group

__all__ = [
    "JOB_KEY",
    "GroupReader",
    "REINDEX_ORIGIN",
    "ReindexLock",
    "ReindexResult",
    "Reindexer",
    "drop_generation",
    "list_generations",
    "reindex_group",
    "rollback",
]

log = logging.getLogger(__name__)

REINDEX_ORIGIN = "reindex"
JOB_KEY = "reindex"  # in the generation's manifest: {"group", "switched", "started_at", "pid"}
ASSIGN_TIMEOUT_S = 60.0
DROP_WAIT_S = 30.0  # how long --drop-old waits for the serving processes to leave the old generation

Progress = Callable[[int, int], None]  # (events done, events to do) as the log grows


def reindex_group(settings: Settings, space: str, generation: int) -> str:
    return f"{settings.topic_prefix}.reindex.{space}.g{generation:06d}"


@dataclass
class ReindexResult:
    space: str
    generation: int
    previous: int
    resumed: bool
    events: int = 0
    indexed: int = 0
    deleted: int = 0
    dead: int = 0
    seconds: float = 0.0
    optimized: bool = False
    dropped: int | None = None
    handoff: dict[int, int] = field(default_factory=dict)


class ReindexLock:
    """One reindex of a space at a time, per data dir: an flock, gone with its process."""

    def __init__(self, data_dir: Path, space: str) -> None:
        self._lock = PidLock(data_dir / f"reindex-{space}.lock")
        self._space = space

    def acquire(self) -> ReindexLock:
        owner = self._lock.try_acquire()
        if owner is not None:
            raise ConfigError(
                f"a reindex of space {self._space!r} is already running (pid {owner}, lock {self._lock.path}); "
                "wait for it to finish, or stop it (a rerun resumes it)",
                code="reindex_running",
            )
        return self

    def release(self) -> None:
        self._lock.release()


class _server_index:
    """The Qdrant server's index (the alias), closed on exit: --list/--drop/--rollback there."""

    def __init__(self, settings: Settings) -> None:
        from xmodal.streams.reindex_server import default_factory

        self._index = default_factory(settings)(None)

    def __enter__(self) -> Any:
        return self._index

    def __exit__(self, *exc: object) -> None:
        self._index.close()


def _root(settings: Settings) -> Path:
    return settings.data_dir / "index"


def _manifest(generation: Any) -> dict[str, Any]:
    from xmodal.indexer.generations import GENERATION_MANIFEST

    try:
        record = json.loads((generation.path / GENERATION_MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise VectorIndexError(f"cannot read the manifest of generation {generation.number}: {e}") from e
    return record if isinstance(record, dict) else {}


def _update_manifest(generation: Any, **keys: Any) -> None:
    """Add keys to a generation's manifest, atomically (the generation layer keeps keys it does not own)."""
    from xmodal.indexer.generations import GENERATION_MANIFEST

    path = generation.path / GENERATION_MANIFEST
    record = _manifest(generation)
    record.update(keys)
    tmp = path.with_name(path.name + ".reindex.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Reindexer:
    """One run of `xmodal reindex SPACE` (the module docstring). Not thread-safe; run() once."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        space: str,
        *,
        restart: bool = False,
        drop_old: bool = False,
        progress: Progress | None = None,
        before_switch: Callable[[], None] | None = None,
        encoder: Any = None,
        job: str | None = None,
        index_factory: Any = None,
    ) -> None:
        """`before_switch`: called once writing has stopped, right before the switch (tests use it
        to write events that only the live workers' handoff can bring into the new generation). `encoder`: encode with this one instead of
        the one the settings build for the space (e.g. other weights of the same space)."""
        self._settings = settings
        self._bootstrap = bootstrap
        self._space = space
        self._restart = restart
        self._drop_old = drop_old
        self._progress = progress or (lambda _done, _total: None)
        self._before_switch = before_switch
        self._encoder = encoder
        self._job = job
        self._index_factory = index_factory  # server mode: reindex_server.IndexFactory (tests share a client)

    def run(self) -> ReindexResult:
        from xmodal.encoders.registry import build_space

        settings, space = self._settings, self._space
        if not settings.embedded_index:  # a Qdrant server: one worker of a job (reindex_server.py)
            from xmodal.streams.reindex_server import ServerReindexer

            if self._job is None:
                raise ConfigError(
                    "on a Qdrant server a reindex is a job of one or more workers: give each the same "
                    "--job ID (e.g. --job mini-2026-12-01)",
                    code="reindex_job_needed",
                )
            worker = ServerReindexer(
                settings, self._bootstrap, space, job=self._job, restart=self._restart, drop_old=self._drop_old,
                progress=self._progress, encoder=self._encoder, index_factory=self._index_factory,
            )
            return worker.run()
        encoder = self._encoder or build_space(space, settings)  # an unknown space fails here, listing the valid ones
        lock = ReindexLock(settings.data_dir, space).acquire()
        try:
            return self._run(encoder)
        finally:
            lock.release()

    # -- the steps --------------------------------------------------------------------------------

    def _run(self, encoder: Any) -> ReindexResult:
        from xmodal.encoders.fingerprint import fingerprint_of
        from xmodal.indexer.edge import EdgeIndex
        from xmodal.indexer.settings import IndexSettings

        settings, space = self._settings, self._space
        started = time.monotonic()
        index_settings = IndexSettings.from_settings(settings)
        registry = EdgeIndex(_root(settings), index_settings=index_settings)  # opens nothing: manifests only
        try:
            serving = registry.serving_generation(space)
        except VectorIndexError as e:
            raise ConfigError(f"space {space!r} has no index to rebuild yet under {_root(settings)}: {e.message}") from e
        model = fingerprint_of(encoder)
        target, resumed = self._resume_or_create(registry, serving, encoder.dim, model, index_settings)
        result = ReindexResult(space, target.number, serving.number, resumed)
        log.info(
            "space %r: %s generation %d (model %s) beside serving generation %d",
            space, "resuming" if resumed else "building", target.number, model, serving.number,
        )
        index = EdgeIndex(_root(settings), index_settings=index_settings, pin={space: target.number})
        try:
            index.ensure_collection(space, encoder.dim)  # creates (or opens) the new generation's shard
            pipeline = self._pipeline(encoder, index, index_settings)
            pipeline.start()
            group = reindex_group(settings, space, target.number)
            _update_manifest(target, **{JOB_KEY: {"group": group, "switched": False, "pid": os.getpid(), "started_at": time.time()}})
            # One member: every partition. An HNSW build may come between two polls.
            with GroupReader(settings, self._bootstrap, group, max_poll_interval_ms=600_000) as reader:
                reader.wait_for_partitions()
                self._catch_up(reader, pipeline, result)
                if index.count(space) >= max(settings.optimize_after_points, 1) and settings.optimize_after_points:
                    log.info("space %r: building the HNSW graph of generation %d before the switch", space, target.number)
                    index.optimize(space)
                    result.optimized = True
                    self._catch_up(reader, pipeline, result)
                handoff = reader.positions()
            # Writing has stopped: record the handoff, then move the pointer.
            if self._before_switch is not None:
                self._before_switch()
            live = committed_offsets(settings, self._bootstrap, settings.media_topic, ingest_group(settings))
            result.handoff = handoff
            _update_manifest(
                target,
                **{
                    HANDOFF_KEY: {
                        "topic": settings.media_topic,
                        "offsets": {str(p): o for p, o in handoff.items()},
                        "live_committed": {str(p): o for p, o in live.items()},
                        "switched_at": time.time(),
                    }
                },
            )
            index.mark_ready(space, target.number)
            index.switch(space, target.number)  # pinned: flushes the shard, then the atomic rename
            _update_manifest(registry.serving_generation(space), **{JOB_KEY: {"group": group, "switched": True}})
        finally:
            index.close()  # the serving processes can open the new generation from now on
        if self._drop_old:
            result.dropped = _drop_when_left(registry, space, serving.number)
        result.seconds = time.monotonic() - started
        return result

    def _resume_or_create(self, registry: Any, serving: Any, dim: int, model: str, index_settings: Any) -> tuple[Any, bool]:
        space = self._space
        unfinished = [
            g
            for g in registry.generations(space)
            if g.origin == REINDEX_ORIGIN and g.number > serving.number and not _manifest(g).get(JOB_KEY, {}).get("switched", True)
        ]
        resumable = None
        for generation in sorted(unfinished, key=lambda g: g.number):
            same = generation.model == model and generation.settings == index_settings.to_dict() and generation.dim == dim
            if same and not self._restart:
                if resumable is not None:
                    _drop_quietly(registry, space, resumable.number)
                resumable = generation
            else:
                _drop_quietly(registry, space, generation.number)
        if resumable is not None:
            return resumable, True
        created = registry.create_generation(space, dim, model=model, settings=index_settings, origin=REINDEX_ORIGIN)
        # No switch marker yet means "unfinished": record it before anything is written into it.
        _update_manifest(created, **{JOB_KEY: {"group": reindex_group(self._settings, space, created.number), "switched": False}})
        return created, False

    def _pipeline(self, encoder: Any, index: Any, index_settings: Any) -> Any:
        from xmodal.streams.pipeline_setup import PipelineSetup

        return PipelineSetup.from_settings(self._settings, index_settings).pipeline({self._space: encoder}, index)

    def _catch_up(self, reader: GroupReader, pipeline: Any, result: ReindexResult) -> None:
        """Write up to the end of the log, then stop once at most `reindex_switch_lag` events are left
        against a fresh end. Under steady live ingest the log never stands still, and a slow pass sees
        new events every time; what is left, the live workers' handoff replays (handoff.py)."""
        settings = self._settings
        ends = end_offsets(settings, self._bootstrap, settings.media_topic)
        while True:
            records = reader.take(settings.batch_size, settings.batch_window_ms / 1000)
            if records:
                reader.write(records, pipeline, result)
            positions = reader.positions()
            behind = left_to_write(positions, ends)
            self._progress(sum(ends.values()) - behind, sum(ends.values()))
            if behind == 0:  # the end seen last is reached: has the log grown since?
                ends = end_offsets(settings, self._bootstrap, settings.media_topic)
                left = left_to_write(positions, ends)
                if left <= settings.reindex_switch_lag:
                    if left:
                        log.info("space %r: caught up to %d events of the growing log: the handoff replays them", self._space, left)
                    return


def left_to_write(written: dict[int, int], ends: dict[int, int]) -> int:
    """Events of the log below `ends` at or above the `written` offsets (positions or committed offsets)."""
    return sum(max(end - written.get(p, 0), 0) for p, end in ends.items())


class GroupReader:
    """A reindex consumer-group member's reader of the media topic: the partitions Kafka gives it
    (all of them for a lone member; maybe none in a job of several), each from the group's
    committed offset, moving with rebalances. `commit()` after writing what `take()` returned.

    The embedded reindex is the group's one member (`wait_for_partitions`); a server job's
    workers are members of one group (xmodal/streams/reindex_server.py)."""

    def __init__(self, settings: Settings, bootstrap: str, group: str, *, max_poll_interval_ms: int | None = None) -> None:
        self._topic = settings.media_topic
        options: dict[str, Any] = {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
        if max_poll_interval_ms is not None:
            options["max.poll.interval.ms"] = max_poll_interval_ms
        self._consumer = Consumer(consumer_config(settings, bootstrap, **options))
        self.assigned: set[int] = set()
        # partition -> the next offset to write: everything below it is written. Only partitions
        # this member holds: a revoked one's may be moved on by the member that gets it.
        self._next: dict[int, int] = {}
        self._pushback: Any = None  # a record consumed while waiting for the assignment

    def __enter__(self) -> GroupReader:
        def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned = {tp.partition for tp in partitions}

        def on_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                self._next.pop(tp.partition, None)
            self.assigned -= {tp.partition for tp in partitions}

        try:
            self._consumer.subscribe([self._topic], on_assign=on_assign, on_revoke=on_revoke)
        except KafkaException as e:
            self._consumer.close()
            raise BrokerError(f"the reindex consumer cannot read {self._topic}: {e}") from e
        return self

    def wait_for_partitions(self, timeout_s: float = ASSIGN_TIMEOUT_S) -> None:
        """Block until the group gave this member its partitions, and know where each starts."""
        deadline = time.monotonic() + timeout_s
        try:
            while not self.assigned:
                if time.monotonic() > deadline:
                    raise BrokerError(f"the reindex consumer got no partition of {self._topic} within {timeout_s:.0f} s")
                for message in self._consumer.consume(num_messages=1, timeout=0.2):
                    self._pushback = message  # kept: the first record arrives with the assignment
        except KafkaException as e:
            raise BrokerError(f"the reindex consumer cannot read {self._topic}: {e}") from e
        self._position_new_partitions()

    def _position_new_partitions(self) -> None:
        """Start each newly assigned partition at the group's committed offset."""
        new = sorted(self.assigned - self._next.keys())
        if not new:
            return
        try:
            committed = self._consumer.committed([TopicPartition(self._topic, p) for p in new], timeout=10)
        except KafkaException as e:
            raise BrokerError(f"the reindex consumer cannot read {self._topic}: {e}") from e
        for tp in committed:
            self._next.setdefault(tp.partition, max(int(tp.offset), 0))

    def take(self, n: int, timeout_s: float) -> list[Any]:
        messages = [self._pushback] if self._pushback is not None else []
        self._pushback = None
        try:
            messages += self._consumer.consume(num_messages=n - len(messages), timeout=timeout_s)
        except KafkaException as e:
            raise BrokerError(f"reading {self._topic} for the reindex failed: {e}") from e
        self._position_new_partitions()  # a rebalance during consume() gave this member partitions
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise BrokerError(f"reading {self._topic} for the reindex failed: {error.str()}")
            if message.offset() < self._next.get(message.partition(), 0):
                continue  # already written (the pushed-back first record, after a resume)
            records.append(to_record(message))
            self._next[message.partition()] = message.offset() + 1
        return records

    def write(self, records: list[Any], pipeline: Any, result: ReindexResult) -> None:
        """Write what `take()` returned into the generation, then commit it (offsets after writes)."""
        batch = pipeline.process(records)  # dead letters: already in the DLQ from live ingest
        self.commit()
        result.events += len(records)
        result.indexed += batch.indexed
        result.deleted += batch.deleted
        result.dead += len(batch.dead)

    def positions(self) -> dict[int, int]:
        """The next offset to write, per partition held: everything below it is in the generation."""
        return dict(self._next)

    def commit(self) -> None:
        offsets = [TopicPartition(self._topic, p, o) for p, o in self._next.items() if o > 0 and p in self.assigned]
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as e:
                raise BrokerError(f"committing the reindex group's offsets failed: {e}") from e

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()  # leaves the group (a server job's barrier counts on it)


def _drop_quietly(registry: Any, space: str, number: int) -> None:
    try:
        registry.drop_generation(space, number)
        log.info("space %r: dropped unfinished generation %d", space, number)
    except XmodalError as e:
        log.warning("space %r: cannot drop unfinished generation %d: %s", space, number, e.message)


def _drop_when_left(registry: Any, space: str, number: int, wait_s: float = DROP_WAIT_S) -> int | None:
    """Drop the old generation once the serving processes have left it (they follow within ~1 s)."""
    from xmodal.indexer.generations import GenerationBusy

    deadline = time.monotonic() + wait_s
    while True:
        try:
            registry.drop_generation(space, number)
            return number
        except GenerationBusy:
            if time.monotonic() > deadline:
                log.warning("space %r: generation %d is still open somewhere; drop it later with --drop %d", space, number, number)
                return None
            time.sleep(0.5)


# -- the other subcommands ------------------------------------------------------------------------


def list_generations(settings: Settings, space: str) -> list[dict[str, Any]]:
    from xmodal.indexer.edge import EdgeIndex

    if not settings.embedded_index:
        from xmodal.streams.reindex_server import list_server_generations

        with _server_index(settings) as index:
            return list_server_generations(index, space)
    registry = EdgeIndex(_root(settings))
    serving = registry.serving_generation(space).number
    return [
        {
            "generation": g.number,
            "serving": g.number == serving,
            "state": g.state,
            "origin": g.origin,
            "model": g.model,
            "created_at": g.created_at,
        }
        for g in registry.generations(space)
    ]


def drop_generation(settings: Settings, space: str, number: int) -> None:
    from xmodal.indexer.edge import EdgeIndex

    if not settings.embedded_index:
        with _server_index(settings) as index:
            index.drop_generation(space, number)
        return
    with _locked(settings, space):
        EdgeIndex(_root(settings)).drop_generation(space, number)


def rollback(settings: Settings, bootstrap: str, space: str, to: int | None = None) -> int:
    """Serve the previous ready generation again (or `to`), with a handoff like a reindex's: it
    stopped receiving live writes when the space switched away from it, so the live workers replay
    from there (the lower of the switch's handoff offsets and the live group's committed ones)."""
    from xmodal.indexer.edge import EdgeIndex

    if not settings.embedded_index:
        from xmodal.streams.reindex_server import server_rollback

        with _server_index(settings) as index:
            return server_rollback(settings, bootstrap, index, space, to)
    with _locked(settings, space):
        registry = EdgeIndex(_root(settings))
        current = registry.serving_generation(space)
        ready = [g for g in registry.generations(space) if g.state == "ready" and g.number != current.number]
        if to is not None:
            ready = [g for g in ready if g.number == to]
        else:
            ready = [g for g in ready if g.number < current.number]
        if not ready:
            raise ConfigError(f"space {space!r} has no ready generation to roll back to (serving {current.number})")
        target = max(ready, key=lambda g: g.number)
        switched = _manifest(current).get(HANDOFF_KEY) or {}
        live_then = switched.get("live_committed") or {}
        offsets = {p: min(int(o), int(live_then.get(p, o))) for p, o in (switched.get("offsets") or {}).items()}
        if not offsets:  # not a reindex switch: replay from the live group's committed offsets
            live = committed_offsets(settings, bootstrap, settings.media_topic, ingest_group(settings))
            offsets = {str(p): o for p, o in live.items()}
        _update_manifest(target, **{HANDOFF_KEY: {"topic": settings.media_topic, "offsets": offsets, "switched_at": time.time()}})
        registry.switch(space, target.number)
        return int(target.number)


class _locked:
    def __init__(self, settings: Settings, space: str) -> None:
        self._lock = ReindexLock(settings.data_dir, space)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
