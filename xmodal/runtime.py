"""One xmodal process: the broker connection, the spaces, the index and the services it hosts.

`xmodal up`, `xmodal worker`, `xmodal query-service` and the integration tests all build a `Node`;
only which services it hosts differs. Start-up does the I/O (loading towers, checking collection
dimensions, creating topics) and fails early with a ConfigError/BrokerError that says what to fix.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xmodal.config import Settings
from xmodal.encoders.base import Encoder, SerializedEncoder
from xmodal.encoders.media import MediaLimits
from xmodal.encoders.registry import build_spaces
from xmodal.errors import BrokerError, ConfigError, XmodalError
from xmodal.indexer import open_index
from xmodal.indexer.base import VectorIndex
from xmodal.metrics import serve_metrics
from xmodal.pidlock import PidLock
from xmodal.streams.broker import ADDRESS_FILE, EmbeddedBroker, read_recorded_address, record_address
from xmodal.streams.kafka import ensure_topics

if TYPE_CHECKING:
    from xmodal.indexer.builder import AutoBuild
    from xmodal.gateway.server import GatewayServer
    from xmodal.query_api.quality import QualityMonitors
    from xmodal.query_api.service import QueryService
    from xmodal.streams.runner import FaustRunner

__all__ = ["IndexLock", "Node", "Roles", "resolve_bootstrap"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Roles:
    ingest: bool = True
    query: bool = True
    # Start tansu when no XMODAL_KAFKA_BOOTSTRAP is set (xmodal up); otherwise use the address
    # recorded by a running `xmodal up` in the same data dir.
    start_broker: bool = False
    # Serve the HTTP gateway and web page (xmodal up, unless XMODAL_HTTP_PORT=0).
    http: bool = False


def resolve_bootstrap(settings: Settings) -> str | None:
    """XMODAL_KAFKA_BOOTSTRAP, else the broker recorded by a running `xmodal up`, else None."""
    return settings.kafka_bootstrap or read_recorded_address(settings.data_dir)


class IndexLock:
    """The embedded index belongs to one process; a second one gets a clear error, not corruption."""

    def __init__(self, path: Path) -> None:
        self._lock = PidLock(path)

    def acquire(self) -> None:
        owner = self._lock.try_acquire()
        if owner is not None:
            raise ConfigError(
                f"the embedded index in {self._lock.path.parent} is in use by pid {owner}. Embedded storage is "
                "single-process: use that process (xmodal up hosts ingest and search), another "
                "XMODAL_DATA_DIR, or a Qdrant server (XMODAL_QDRANT_URL)"
            )

    def release(self) -> None:
        self._lock.release()


class Node:
    """Start with `start()`, stop with `stop()` (or use as a context manager)."""

    def __init__(self, settings: Settings, roles: Roles = Roles(), *, index: VectorIndex | None = None) -> None:
        """`index`: use this index instead of the one the settings name (it is closed by stop())."""
        self.settings = settings
        self.roles = roles
        self.bootstrap: str = ""
        self.spaces: dict[str, Encoder] = {}
        self.index: VectorIndex | None = index
        self._broker: EmbeddedBroker | None = None
        self._lock: IndexLock | None = None
        self._faust: FaustRunner | None = None
        self._builds: AutoBuild | None = None
        self._query: QueryService | None = None
        self._quality: QualityMonitors | None = None  # live recall, canaries, freshness (docs/quality.md)
        self.http: GatewayServer | None = None
        self.http_problem: str | None = None  # why the gateway of `roles.http` is not served
        self._http_crash_seen = False  # the hosted gateway's crash is logged once
        self._recorded = False

    def start(self) -> Node:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust keeps its own state in it too
        self.bootstrap = self._connect()
        ensure_topics(settings, self.bootstrap)
        if self.index is None:
            if settings.embedded_index:
                self._lock = IndexLock(settings.data_dir / "index.lock")
                self._lock.acquire()
            self.index = open_index(settings)
        # Shared by the ingest thread and the query threads of this process: one call at a time,
        # searches first, ingest in slices (xmodal/encoders/scheduling.py).
        self.spaces = {
            name: SerializedEncoder(e, ingest_slice=settings.ingest_encode_slice) for name, e in build_spaces(settings).items()
        }
        ingest_spaces = {name: e.for_ingest() for name, e in self.spaces.items()}
        limits = MediaLimits.from_settings(settings)
        # Loads every tower and checks every collection's dimension before consuming anything.
        from xmodal.streams.handoff import wrap as handoff_aware
        from xmodal.streams.pipeline_setup import PipelineSetup

        setup = PipelineSetup.from_settings(settings)  # as a reindex writes (streams/reindex.py)
        # Handoff-aware: completes a reindex's switch, refuses a generation another model made.
        pipeline = handoff_aware(
            settings, self.bootstrap, setup.pipeline(ingest_spaces, self.index), self.index, ingest_spaces, **setup.options
        )
        pipeline.start()
        if self.roles.ingest and settings.embedded_index:
            from xmodal.indexer.builder import auto_build

            # HNSW builds in a builder process once enough points are unindexed (docs/operations.md).
            self._builds = auto_build(settings, self.index)
        serve_metrics(settings.metrics_port)
        if self.roles.ingest:
            from xmodal.streams.app import create_app
            from xmodal.streams.runner import FaustRunner

            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-encode")
            self._faust = FaustRunner(create_app(settings, self.bootstrap, pipeline, executor), executor)
            self._faust.start()
        if self.roles.query:
            from xmodal.query_api.quality import QualityMonitors
            from xmodal.query_api.rerank import RerankStage
            from xmodal.query_api.searcher import Searcher
            from xmodal.query_api.service import QueryService

            rerank = RerankStage.from_settings(settings, self.spaces, limits)
            rerank.start()  # with XMODAL_RERANK=true: loads the rerankers, a missing checkpoint stops here
            self._quality = QualityMonitors(settings, self.bootstrap, self.index, self.spaces)
            from xmodal.indexer.provenance import GuardedIndex

            searched = GuardedIndex(self._quality.searched_index, pipeline.guard)  # model_mismatch replies
            searcher = Searcher({name: e.for_queries() for name, e in self.spaces.items()}, searched, limits, rerank=rerank)
            self._query = QueryService(settings, self.bootstrap, searcher)
            self._query.start()
            self._quality.start()  # canaries and probes go through the service just started
        if self.roles.http and settings.http_port:
            from xmodal.gateway.server import GatewayServer

            try:
                self.http = GatewayServer(settings, self.bootstrap).start()
            except XmodalError as e:
                # The page is an aid, like metrics: a busy port or a broker the gateway's client
                # cannot reach must not stop indexing and search.
                self.http_problem = e.message
                log.warning("%s", e.message)
        if self.roles.start_broker:
            # Recorded last: other shells only find a system that is ready to take events. With
            # XMODAL_KAFKA_BOOTSTRAP set, `xmodal up` records that address, so the README flow
            # (ingest and search in a second shell) works against an external Kafka too.
            broker_pid = self._broker.pid if self._broker is not None else None
            record_address(settings.data_dir, self.bootstrap, broker_pid=broker_pid)
            self._recorded = True

    def _connect(self) -> str:
        settings = self.settings
        if settings.kafka_bootstrap:
            return settings.kafka_bootstrap
        if self.roles.start_broker:
            recorded = read_recorded_address(settings.data_dir)
            if recorded:
                raise ConfigError(
                    f"xmodal up is already running for {settings.data_dir} (broker {recorded}); "
                    "stop it first or use another XMODAL_DATA_DIR"
                )
            self._broker = EmbeddedBroker(settings.data_dir / "broker")
            return self._broker.start()
        recorded = read_recorded_address(settings.data_dir)
        if recorded is None:
            raise BrokerError(
                f"no Kafka broker: set XMODAL_KAFKA_BOOTSTRAP, or run `xmodal up` with the same "
                f"XMODAL_DATA_DIR ({settings.data_dir}) in another shell"
            )
        return recorded

    @property
    def query_service(self) -> QueryService | None:
        """The hosted query service (None without the query role), e.g. for benchmarks/search_batching.py."""
        return self._query

    @property
    def failure(self) -> BaseException | None:
        """Why a hosted service stopped on its own (e.g. the index stayed unavailable), else None.
        A crashed hosted gateway is only logged (once): the page is an aid, indexing and search go on."""
        if self.http is not None and not self._http_crash_seen and (why := self.http.crashed) is not None:
            self._http_crash_seen = True
            self.http_problem = f"the HTTP gateway stopped: {why}"
            log.warning("%s; indexing and search over Kafka go on, the page answers 503 until a restart", self.http_problem)
        if self._faust is not None and self._faust.crashed is not None:
            return self._faust.crashed
        crashed = getattr(self._query, "crashed", None)
        return crashed if isinstance(crashed, BaseException) else None

    def stop(self) -> None:
        """Stop everything started, in reverse order; one failing step does not skip the others."""
        steps: list[tuple[str, Callable[[], None] | None]] = [
            ("HTTP gateway", self.http.stop if self.http is not None else None),
            ("quality monitors", self._quality.stop if self._quality is not None else None),
            ("query service", self._query.stop if self._query is not None else None),
            ("ingest agents", self._faust.stop if self._faust is not None else None),
            ("background index builds", self._builds.stop if self._builds is not None else None),
            ("index", self.index.close if self.index is not None else None),
            ("index lock", self._lock.release if self._lock is not None else None),
            ("address record", self._forget_address if self._recorded else None),
            ("broker", self._broker.stop if self._broker is not None else None),
        ]
        self._query = self._faust = self.index = self._lock = self._broker = None
        self._builds = None
        self._quality = None
        self.http = None
        self._recorded = False
        for what, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception:  # noqa: BLE001 - logged; the remaining resources must still be released
                log.exception("stopping the %s failed", what)

    def _forget_address(self) -> None:
        (self.settings.data_dir / ADDRESS_FILE).unlink(missing_ok=True)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
