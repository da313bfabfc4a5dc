"""Live quality monitoring in the query service (docs/quality.md "Live quality monitoring").

- recall.py: sampled live searches repeated exactly -> `xmodal_index_recall_at_k{space}`
- canary.py: a golden query set on a timer through Kafka -> `xmodal_canary_success_at_k{space,direction,k}`
- freshness.py: a probe item produced on a timer, timed until search finds it -> `xmodal_freshness_seconds`
- searched.py: the index the Searcher is given: feeds the recall monitor, hides probes

`QualityMonitors` builds what the settings turn on; a node that hosts the query service starts it
after the service (canaries and probes go through it) and stops it first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from xmodal.config import Settings
from xmodal.encoders.base import Encoder
from xmodal.errors import XmodalError
from xmodal.indexer.base import VectorIndex
from xmodal.query_api.quality.canary import CanaryMonitor, CanarySet, load_canaries
from xmodal.query_api.quality.freshness import PROBE_ID_PREFIX, FreshnessMonitor
from xmodal.query_api.quality.recall import RecallMonitor
from xmodal.query_api.quality.searched import SearchedIndex

if TYPE_CHECKING:
    from xmodal.query_api.client import SearchClient

__all__ = ["QualityMonitors", "SearchedIndex"]

log = logging.getLogger(__name__)


class _Monitor(Protocol):
    def stop(self, timeout_s: float = ...) -> None: ...


class QualityMonitors:
    """The monitors `settings` turn on, for the query service of one node.

    `searched_index` is what the Searcher must search through (it feeds the recall monitor);
    `start()` after the query service is serving, `stop()` before it stops.
    """

    def __init__(self, settings: Settings, bootstrap: str, index: VectorIndex, spaces: Mapping[str, Encoder]) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._modalities = {name: frozenset(e.modalities) for name, e in spaces.items()}
        self.recall = (
            # The exact answers go through SearchedIndex too: compared with what users get, probes aside.
            RecallMonitor(SearchedIndex(index), settings.recall_sample_rate, settings.quality_alert_recall)
            if settings.recall_sample_rate > 0
            else None
        )
        self.searched_index = SearchedIndex(index, self.recall)
        self.canary: CanaryMonitor | None = None
        self.freshness: FreshnessMonitor | None = None
        self._client: SearchClient | None = None
        self._started: list[_Monitor] = []

    def start(self) -> None:
        settings = self._settings
        canaries = load_canaries(settings.canary_queries, settings.canary_qrels)  # bad files: ConfigError now
        if self.recall is not None:
            self.recall.start()
            self._started.append(self.recall)
        if canaries is not None or settings.freshness_interval_s:
            self._start_live_path_monitors(canaries)
        log.info(
            "quality monitors: recall %s, canaries %s, freshness %s",
            f"{settings.recall_sample_rate:g}/s" if self.recall else "off",
            f"{len(canaries.queries)} queries every {settings.canary_interval_s:g} s" if canaries and self.canary else "off",
            f"a probe every {settings.freshness_interval_s:g} s" if self.freshness else "off",
        )

    def _start_live_path_monitors(self, canaries: CanarySet | None) -> None:
        from xmodal.query_api.client import SearchClient

        settings = self._settings
        # Replies on a topic of their own: user clients never read past monitor traffic.
        try:
            client = SearchClient(settings, self._bootstrap, reply_topic=f"{settings.replies_topic}.quality").start()
        except XmodalError as e:
            # Monitors are an aid, like metrics: search goes on without canaries and probes.
            log.warning("canaries and freshness probes are off: their search client did not start: %s", e.message)
            return
        self._client = client
        if canaries is not None:
            self.canary = CanaryMonitor(
                canaries,
                client,
                self._modalities,
                interval_s=settings.canary_interval_s,
                timeout_s=settings.search_timeout_s,
            )
            self.canary.start()
            self._started.append(self.canary)
        if settings.freshness_interval_s:

            def find(text: str, where: dict[str, str]) -> bool:
                hits = client.search(text, k=1, modalities=["text"], filter=where, timeout=settings.search_timeout_s)
                return any(h.id.startswith(PROBE_ID_PREFIX) for h in hits)

            self.freshness = FreshnessMonitor(settings, self._bootstrap, find)
            self.freshness.start()
            self._started.append(self.freshness)

    def stop(self) -> None:
        """Stop every monitor started, then the client; one failing does not skip the others."""
        started, self._started = self._started, []
        for monitor in reversed(started):
            try:
                monitor.stop()
            except Exception:
                log.exception("stopping a quality monitor failed")
        client, self._client = self._client, None
        if client is not None:
            client.close()
