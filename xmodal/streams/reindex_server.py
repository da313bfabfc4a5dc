"""`xmodal reindex SPACE --job ID` against a Qdrant server: several worker processes, one job.

The embedded reindex (xmodal/streams/reindex.py) is one process, because embedded storage has one
writer. A Qdrant server takes writes from anywhere, so a job is as many worker processes as the
media topic has partitions (Kafka's unit of scaling), all started with the same `--job ID`:

1. Join or create. The first worker creates the job's generation: a collection
   `<prefix>_<space>__gNNNNNN` in state "building", its metadata recording the job
   (`{"reindex": {"job", "group", "stop", "switched"}}`), this process's model fingerprint and index
   settings. The others find it and join (a worker of another model or settings is refused). Two
   first workers racing to create it: the collection name is the lock (create_collection refuses the
   second, which then joins). A building generation of *another* job refuses the worker
   (`reindex_running`), unless `--restart` drops it (a crashed job's leftover).
2. Split the log. Every worker consumes the media topic from its start in the job's consumer group
   `<prefix>.reindex.<space>.g<N>`; Kafka splits the partitions between them and moves them on a
   rebalance. Each batch is written into the generation (pinned to its collection, not the alias),
   then its offsets are committed: everything below the group's committed offsets is in the generation.
3. Stop. A worker whose own partitions are at the end of the log looks at the whole job: total lag
   = the group's committed offsets vs the topic's end offsets. When everything the log held as the
   worker began is written and at most `reindex_switch_lag` events are left (0 once the log stands
   still; under live ingest it never does), it sets `stop` in the generation's metadata. Every
   worker checks `stop` after taking a batch and before writing it; on seeing it, it writes nothing
   more, commits and leaves the group (closes its consumer).
4. Barrier. Each stopped worker waits until the job's group is empty (DescribeGroups: state EMPTY).
   Only members write, and a member writes a batch before it commits and leaves, so an empty group
   means no reindex write is in flight or will come: the committed offsets are final. They are the
   handoff offsets S_p (the first event not written, per partition).
5. Switch, once. The first worker to take the generation's switch claim (a tiny collection
   `..__gNNNNNN__switch`: create_collection refuses a second one, so exactly one worker gets it)
   records the handoff (S_p, the live group's committed offsets) in the metadata, marks it ready,
   points the alias at it (one `update_collection_aliases`: every query and live write follows at
   once), records `switched` and releases the claim. The others wait until the alias names the
   generation and exit 0. A claim held for a minute with no switch is a dead switcher's: it is taken
   over. Taking over is safe because the switch is idempotent: the committed offsets no longer move,
   so the same offsets and the same alias are written again.

The live workers then replay [S_p, their next batch) into the new generation before writing newer
events (xmodal/streams/handoff.py: the argument that nothing is lost or left stale holds as on the
embedded index, with the alias as the pointer). The old generation stays for `--rollback` until
`--drop-old` / `--drop N`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaException

from xmodal.config import Settings
from xmodal.errors import BrokerError, ConfigError, VectorIndexError
from xmodal.streams.handoff import HANDOFF_KEY
from xmodal.streams.kafka import consumer_config
from xmodal.streams.logread import committed_offsets, end_offsets, ingest_group
from xmodal.streams.reindex import JOB_KEY, REINDEX_ORIGIN, GroupReader, Progress, ReindexResult, left_to_write, reindex_group

__all__ = ["IndexFactory", "ServerReindexer", "list_server_generations", "server_drop", "server_rollback"]

log = logging.getLogger(__name__)

IndexFactory = Callable[[Mapping[str, int] | None], Any]  # pin -> a QdrantIndex (None: the alias)
LAG_CHECK_S = 0.5  # how often an idle worker asks the broker for the job's lag
JOB_RECORD_WAIT_S = 10.0  # a generation just created by a racing worker gets its job record within this
EMPTY_GROUP_TIMEOUT_S = 300.0  # a crashed member leaves the group after its session timeout
SWITCH_CLAIM = "switch"  # the claim (remote_generations.claim) that makes one worker the switcher
SWITCH_WAIT_S = 60.0  # a claim held longer than this without a switch is a dead switcher's


def default_factory(settings: Settings) -> IndexFactory:
    def open_server(pin: Mapping[str, int] | None) -> Any:
        from qdrant_client import QdrantClient

        from xmodal.indexer.remote import QdrantIndex
        from xmodal.indexer.settings import IndexSettings

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key is not None else None
        client = QdrantClient(url=settings.qdrant_url, api_key=api_key, check_compatibility=False)
        return QdrantIndex(
            client, collection_prefix=settings.topic_prefix, index_settings=IndexSettings.from_settings(settings), pin=pin
        )

    return open_server


class ServerReindexer:
    """One worker of a reindex job on a Qdrant server (module docstring). run() once."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        space: str,
        *,
        job: str,
        restart: bool = False,
        drop_old: bool = False,
        progress: Progress | None = None,
        encoder: Any = None,
        index_factory: IndexFactory | None = None,
    ) -> None:
        """`index_factory`: opens the QdrantIndex for a pin (tests share one local-mode client; the
        indexes it returns are not closed here then). `encoder`: encode with this one instead of
        the one the settings build for the space."""
        if not job or len(job) > 64 or not all(c.isalnum() or c in "-_." for c in job):
            raise ConfigError(f"--job must be 1-64 letters, digits, '-', '_' or '.', got {job!r}")
        self._settings = settings
        self._bootstrap = bootstrap
        self._space = space
        self._job = job
        self._restart = restart
        self._drop_old = drop_old
        self._progress = progress or (lambda _done, _total: None)
        self._encoder = encoder
        self._owns_indexes = index_factory is None
        self._open = index_factory or default_factory(settings)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.partitions_seen: set[int] = set()  # every partition this worker was assigned (tests, logs)
        self.switched_here = False

    def run(self) -> ReindexResult:
        from xmodal.encoders.fingerprint import fingerprint_of
        from xmodal.encoders.registry import build_space
        from xmodal.indexer.settings import IndexSettings

        settings, space = self._settings, self._space
        started = time.monotonic()
        encoder = self._encoder or build_space(space, settings)
        index_settings = IndexSettings.from_settings(settings)
        registry = self._open(None)
        try:
            try:
                serving = registry.serving_generation(space)
            except VectorIndexError as e:
                raise ConfigError(f"space {space!r} has no index to rebuild yet: {e.message}") from e
            if serving.number == 0 and not self._drop_old:
                raise ConfigError(
                    f"space {space!r} is served by a collection made before generations; an alias cannot take "
                    "its name, so switching deletes it (no rollback): rerun with --drop-old to accept that"
                )
            model = fingerprint_of(encoder)
            target, resumed = self._join_or_create(registry, serving.number, encoder.dim, model, index_settings)
            result = ReindexResult(space, target, serving.number, resumed)
            group = reindex_group(settings, space, target)
            job = self._job_record(registry, target)
            if job.get("switched"):  # finished (and maybe rolled back since: that stays as it is)
                result.handoff = {int(p): int(o) for p, o in (self._handoff(registry, target).get("offsets") or {}).items()}
                result.seconds = time.monotonic() - started
                return result
            if not job.get("stop"):
                self._fill(encoder, index_settings, target, group, result)
            self._wait_group_empty(group)
            self._switch_once(registry, target, group, result)
            if self._drop_old and self.switched_here:
                if serving.number != 0:  # a pre-generation collection went with the switch
                    registry.drop_generation(space, serving.number)  # queries left it with the alias
                result.dropped = serving.number
        finally:
            if self._owns_indexes:
                registry.close()
        result.seconds = time.monotonic() - started
        return result

    # -- step 1: join or create ---------------------------------------------------------------

    def _join_or_create(self, registry: Any, serving: int, dim: int, model: str, index_settings: Any) -> tuple[int, bool]:
        space = self._space
        for generation in registry.generations(space):
            # This job's generation, whatever its state: a worker started (or restarted by its Job)
            # after the switch joins it and exits 0, rather than start another reindex.
            if generation.origin == REINDEX_ORIGIN and generation.state == "ready":
                job = registry.generation_metadata(space, generation.number).get(JOB_KEY) or {}
                if job.get("job") == self._job:
                    log.warning(
                        "space %r: reindex job %r has finished already (generation %d); nothing to do "
                        "(a new reindex needs a new --job ID)", space, self._job, generation.number,
                    )
                    return generation.number, True
        for _attempt in range(3):
            for generation in registry.generations(space):
                if generation.origin != REINDEX_ORIGIN or generation.number <= serving or generation.state != "building":
                    continue
                job = self._job_record(registry, generation.number, wait=True)
                if job.get("job") != self._job:
                    if not self._restart:
                        raise ConfigError(
                            f"space {space!r}: reindex job {job.get('job')!r} is in progress (generation "
                            f"{generation.number}, started {time.ctime(float(job.get('started_at') or 0))}); wait for it, "
                            f"join it with --job {job.get('job')}, or drop it with --restart if it crashed",
                            code="reindex_running",
                        )
                    registry.drop_generation(space, generation.number)
                    log.warning("space %r: dropped generation %d of reindex job %r (--restart)", space, generation.number, job.get("job"))
                    continue
                same = generation.model == model and generation.settings == index_settings.to_dict() and generation.dim == dim
                if not same:
                    raise ConfigError(
                        f"space {space!r}: reindex job {self._job!r} builds generation {generation.number} with model "
                        f"{generation.model} and settings {generation.settings}; this worker has {model} and "
                        f"{index_settings.to_dict()}: start every worker of a job with the same settings"
                    )
                log.info("space %r: joining reindex job %r, generation %d", space, self._job, generation.number)
                return generation.number, True
            try:
                created = registry.create_generation(
                    space, dim, model=model, settings=index_settings, origin=REINDEX_ORIGIN,
                    number=self._fresh_number(registry),
                )
            except VectorIndexError:
                continue  # another first worker created that number a moment ago: look again
            registry.update_generation_metadata(
                space,
                created.number,
                **{JOB_KEY: {"job": self._job, "group": reindex_group(self._settings, space, created.number),
                             "stop": False, "switched": False, "started_at": time.time()}},
            )
            log.info("space %r: reindex job %r created generation %d", space, self._job, created.number)
            return created.number, False
        raise VectorIndexError(f"space {space!r}: could not create or join a generation for reindex job {self._job!r}")

    def _fresh_number(self, registry: Any) -> int:
        """The next generation number whose group `<prefix>.reindex.<space>.g<N>` committed nothing:
        a number freed by a drop (e.g. --restart) would otherwise resume from a dead job's offsets
        into an empty collection, and miss everything below them."""
        settings, space = self._settings, self._space
        number = max([g.number for g in registry.generations(space)] + [0]) + 1
        while any(committed_offsets(settings, self._bootstrap, settings.media_topic, reindex_group(settings, space, number)).values()):
            number += 1
        return number

    def _job_record(self, registry: Any, number: int, *, wait: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + (JOB_RECORD_WAIT_S if wait else 0)
        while True:
            job = registry.generation_metadata(self._space, number).get(JOB_KEY)
            if isinstance(job, dict) and job.get("job"):
                return job
            if time.monotonic() >= deadline:
                return {} if not isinstance(job, dict) else job
            time.sleep(0.2)

    # -- steps 2 and 3: fill until the job has caught up, then stop ---------------------------

    def _fill(self, encoder: Any, index_settings: Any, target: int, group: str, result: ReindexResult) -> None:
        from xmodal.streams.pipeline_setup import PipelineSetup

        settings, space = self._settings, self._space
        index = self._open({space: target})
        try:
            index.ensure_collection(space, encoder.dim)  # payload indexes, build settings
            pipeline = PipelineSetup.from_settings(settings, index_settings).pipeline({space: encoder}, index)
            pipeline.start()
            start_ends = end_offsets(settings, self._bootstrap, settings.media_topic)
            with GroupReader(settings, self._bootstrap, group) as reader:
                last_check = 0.0
                while True:
                    records = reader.take(settings.batch_size, settings.batch_window_ms / 1000)
                    self.partitions_seen.update(reader.assigned)
                    if self._stopped(index, target):
                        break  # taken, not written, not committed: above the handoff offsets
                    if records:
                        reader.write(records, pipeline, result)
                    if len(records) < settings.batch_size and time.monotonic() - last_check >= LAG_CHECK_S:
                        last_check = time.monotonic()
                        if self._job_caught_up(group, start_ends):
                            self._request_stop(index, target)
                            break
        finally:
            if self._owns_indexes:
                index.close()

    def _stopped(self, index: Any, target: int) -> bool:
        return bool((index.generation_metadata(self._space, target).get(JOB_KEY) or {}).get("stop"))

    def _job_caught_up(self, group: str, start_ends: dict[int, int]) -> bool:
        """Everything the log held when this worker began is written, and at most `reindex_switch_lag`
        events are left against a fresh end (a log under live ingest never stands still; the live
        workers' handoff replays what is left)."""
        settings = self._settings
        ends = end_offsets(settings, self._bootstrap, settings.media_topic)
        committed = committed_offsets(settings, self._bootstrap, settings.media_topic, group)
        left = left_to_write(committed, ends)
        self._progress(sum(ends.values()) - left, sum(ends.values()))
        return left_to_write(committed, start_ends) == 0 and left <= settings.reindex_switch_lag

    def _request_stop(self, index: Any, target: int) -> None:
        job = dict(index.generation_metadata(self._space, target).get(JOB_KEY) or {})
        if not job.get("stop"):
            job.update(stop=True, stopped_by=self.worker, stopped_at=time.time())
            index.update_generation_metadata(self._space, target, **{JOB_KEY: job})
            log.info("space %r: reindex job %r caught up: stopping its workers", self._space, self._job)

    # -- steps 4 and 5: barrier, then one switch ----------------------------------------------

    def _wait_group_empty(self, group: str, timeout_s: float = EMPTY_GROUP_TIMEOUT_S) -> None:
        from confluent_kafka import ConsumerGroupState
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(consumer_config(self._settings, self._bootstrap))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                described = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
                state = described.state
            except KafkaException as e:
                raise BrokerError(f"cannot describe the reindex group {group}: {e}") from e
            if state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the reindex group {group} still has members after {timeout_s:.0f} s ({state}); "
                    "a worker is stuck: stop it, then run this again"
                )
            time.sleep(0.3)

    def _switch_once(self, registry: Any, target: int, group: str, result: ReindexResult) -> None:
        space = self._space
        deadline = time.monotonic() + SWITCH_WAIT_S
        while registry.serving_generation(space).number != target:
            if registry.claim(space, target, SWITCH_CLAIM):
                try:
                    if registry.serving_generation(space).number != target:  # not switched meanwhile
                        self._switch(registry, target, group, result)
                finally:
                    registry.release_claim(space, target, SWITCH_CLAIM)
                return
            if time.monotonic() > deadline:
                # The claimer died holding the claim: take it over (the switch is idempotent).
                log.warning("space %r: the switch claim of generation %d is stale; switching here", space, target)
                registry.release_claim(space, target, SWITCH_CLAIM)
                deadline = time.monotonic() + SWITCH_WAIT_S
                continue
            time.sleep(0.2)
        # Switched by another worker of the job: it recorded the handoff.
        job = self._job_record(registry, target)
        if not job.get("switched"):  # a switcher died between the alias and its record
            registry.update_generation_metadata(space, target, **{JOB_KEY: {**job, "switched": True}})
        result.handoff = {int(p): int(o) for p, o in (self._handoff(registry, target).get("offsets") or {}).items()}

    def _switch(self, registry: Any, target: int, group: str, result: ReindexResult) -> None:
        settings, space = self._settings, self._space
        job = self._job_record(registry, target)
        # The group is empty: its committed offsets no longer move. They are S_p.
        ends = end_offsets(settings, self._bootstrap, settings.media_topic)
        committed = committed_offsets(settings, self._bootstrap, settings.media_topic, group)
        handoff = {p: committed.get(p, 0) for p in ends}
        live = committed_offsets(settings, self._bootstrap, settings.media_topic, ingest_group(settings))
        registry.update_generation_metadata(
            space,
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
        registry.mark_ready(space, target)
        registry.switch(space, target, drop_legacy=self._drop_old)
        registry.update_generation_metadata(space, target, **{JOB_KEY: {**job, "switched": True, "switched_by": self.worker}})
        self.switched_here = True
        result.handoff = handoff
        log.info("space %r: reindex job %r switched the alias to generation %d", space, self._job, target)

    def _handoff(self, registry: Any, target: int) -> dict[str, Any]:
        record = registry.generation_metadata(self._space, target).get(HANDOFF_KEY)
        return record if isinstance(record, dict) else {}


# -- --list, --drop, --rollback on a server -------------------------------------------------------


def list_server_generations(index: Any, space: str) -> list[dict[str, Any]]:
    serving = index.serving_generation(space).number
    rows = []
    for g in index.generations(space):
        job = index.generation_metadata(space, g.number).get(JOB_KEY) or {}
        rows.append(
            {
                "generation": g.number,
                "serving": g.number == serving,
                "state": g.state,
                "origin": g.origin,
                "model": g.model,
                "created_at": g.created_at,
                "job": job.get("job"),
            }
        )
    return rows


def server_drop(index: Any, space: str, number: int) -> None:
    index.drop_generation(space, number)


def server_rollback(settings: Settings, bootstrap: str, index: Any, space: str, to: int | None = None) -> int:
    """As the embedded rollback: serve the previous ready generation, with a handoff from where the
    switch away from it left it (the lower of the switch's handoff and the live group's offsets then)."""
    current = index.serving_generation(space)
    ready = [g for g in index.generations(space) if g.state == "ready" and g.number != current.number]
    ready = [g for g in ready if (g.number == to if to is not None else g.number < current.number)]
    if not ready:
        raise ConfigError(f"space {space!r} has no ready generation to roll back to (serving {current.number})")
    target = max(ready, key=lambda g: g.number)
    switched = index.generation_metadata(space, current.number).get(HANDOFF_KEY) or {}
    live_then = switched.get("live_committed") or {}
    offsets = {p: min(int(o), int(live_then.get(p, o))) for p, o in (switched.get("offsets") or {}).items()}
    if not offsets:
        live = committed_offsets(settings, bootstrap, settings.media_topic, ingest_group(settings))
        offsets = {str(p): o for p, o in live.items()}
    index.update_generation_metadata(
        space, target.number, **{HANDOFF_KEY: {"topic": settings.media_topic, "offsets": offsets, "switched_at": time.time()}}
    )
    index.switch(space, target.number)
    return int(target.number)
