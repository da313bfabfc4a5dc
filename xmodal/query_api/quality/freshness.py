"""Freshness: how long from producing an item to the media topic until a search finds it.

Every `freshness_interval_s` a probe is produced to `<prefix>.media`, keyed by its own id, like any
event: a text event `xmodal-probe/<uuid>` whose metadata `{"xmodal_probe": "<uuid>"}` marks it.
Searches filtered to that metadata (text results, k=1) go through the live path (SearchClient ->
Kafka -> query service -> index) until one finds it; the time from the produce call to that reply
is observed in `xmodal_freshness_seconds`. Then a tombstone (null value, same key) deletes it.

So a probe exists in the index briefly: from being indexed until its tombstone is (about one
freshness reading later). Meanwhile it counts in a space's point count, and it is counted in
`xmodal_events_total` (indexed, then deleted) like any event.
Searches that do not filter on `xmodal_probe` never return probes (searched.py).

Resolution: searches are repeated with a pause of 10 % of the time waited so far (10 ms to
250 ms), and each takes a search round trip, so a reading is high by at most about that much.
A probe not found within `PROBE_TIMEOUT_S` counts as `timeout` and observes nothing.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable

import orjson
from confluent_kafka import KafkaException, Producer

from xmodal.config import Settings
from xmodal.errors import XmodalError
from xmodal.metrics import FRESHNESS, FRESHNESS_PROBES
from xmodal.streams.kafka import producer_config

__all__ = ["PROBE_KEY", "PROBE_TEXT", "FreshnessMonitor", "probe_event"]

log = logging.getLogger(__name__)

PROBE_KEY = "xmodal_probe"  # metadata key reserved for probes
PROBE_ID_PREFIX = "xmodal-probe/"
PROBE_TEXT = "xmodal freshness probe"
PROBE_TIMEOUT_S = 120.0
MIN_PAUSE_S, MAX_PAUSE_S = 0.01, 0.25

# One search of the live path: (text, filter) -> found?  A SearchClient in production.
Finder = Callable[[str, dict[str, str]], bool]


def probe_event(probe: str) -> tuple[str, bytes]:
    """(key, value) of the probe event with token `probe`."""
    item_id = f"{PROBE_ID_PREFIX}{probe}"
    value = {"id": item_id, "modality": "text", "text": f"{PROBE_TEXT} {probe}", "metadata": {PROBE_KEY: probe}}
    return item_id, orjson.dumps(value)


class FreshnessMonitor:
    """Produces a probe every `freshness_interval_s` and times it until `find` sees it; `start`/`stop`.

    With an interval of 0, `start` only connects: probes run when `probe()` is called."""

    def __init__(self, settings: Settings, bootstrap: str, find: Finder, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._find = find
        self._interval_s = settings.freshness_interval_s
        self._timeout_s = timeout_s
        self._producer: Producer | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # This monitor's own outcomes (the Prometheus counter adds up every monitor of the process).
        self.outcomes: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        if self._producer is not None:
            raise RuntimeError("FreshnessMonitor.start() was already called")
        self._producer = Producer(producer_config(self._settings, self._bootstrap))
        if self._interval_s <= 0:
            return  # no timer: probes only when probe() is called
        self._thread = threading.Thread(target=self._run, name="xmodal-freshness", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(timeout_s)  # the last tombstone

    def _run(self) -> None:
        # The first probe after one interval: a node that just started has nothing to say yet.
        while not self._stopping.wait(self._interval_s):
            try:
                self.probe()
            except Exception:  # a monitor must not die of one bad round; the next one tries again
                FRESHNESS_PROBES.labels("failed").inc()
                self.outcomes["failed"] += 1
                log.exception("freshness probe failed")

    def probe(self) -> float | None:
        """Produce one probe, wait until it is found, delete it; the seconds it took (None: not found)."""
        assert self._producer is not None, "start() first"
        token = uuid.uuid4().hex
        key, value = probe_event(token)
        topic = self._settings.media_topic
        start = time.monotonic()
        try:
            self._producer.produce(topic, value, key=key.encode())
            self._producer.poll(0)
            found = self._wait_until_found(token, start)
        finally:
            self._delete(topic, key)
        if found is None and self._stopping.is_set():
            return None  # interrupted by stop(): no reading, and no timeout either
        if found is None:
            FRESHNESS_PROBES.labels("timeout").inc()
            self.outcomes["timeout"] += 1
            log.warning(
                "freshness probe %s was not found by search within %.0f s of producing it to %s: is ingest running?",
                key,
                self._timeout_s,
                topic,
            )
            return None
        FRESHNESS_PROBES.labels("found").inc()
        self.outcomes["found"] += 1
        FRESHNESS.observe(found)
        log.debug("freshness probe %s found after %.3f s", key, found)
        return found

    def _wait_until_found(self, token: str, start: float) -> float | None:
        text, where = f"{PROBE_TEXT} {token}", {PROBE_KEY: token}
        while not self._stopping.is_set():
            try:
                if self._find(text, where):
                    return time.monotonic() - start
            except XmodalError as e:  # a timeout or a refusal: try again until the deadline
                log.debug("freshness probe search failed: %s", e)
            waited = time.monotonic() - start
            if waited > self._timeout_s:
                return None
            self._stopping.wait(min(max(0.1 * waited, MIN_PAUSE_S), MAX_PAUSE_S))
        return None

    def _delete(self, topic: str, key: str) -> None:
        assert self._producer is not None
        try:
            self._producer.produce(topic, None, key=key.encode())  # tombstone: the probe goes away
            self._producer.poll(0)
        except (BufferError, KafkaException) as e:
            log.warning("could not delete freshness probe %s (it stays in the index): %s", key, e)
