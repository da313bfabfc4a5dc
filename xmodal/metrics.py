"""Prometheus metrics: one histogram per stage, counters per outcome. Served on XMODAL_METRICS_PORT."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram, start_http_server

__all__ = [
    "DEAD_LETTERS",
    "EVENTS",
    "INDEX_LAG",
    "SEARCH_ERRORS",
    "SEARCH_REQUESTS",
    "STAGE_SECONDS",
    "UNROUTABLE_REQUESTS",
    "serve_metrics",
    "timed",
]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

STAGE_SECONDS = Histogram(
    "xmodal_stage_seconds",
    "Time spent per pipeline stage (ingest: decode, encode, upsert; query: query_decode, query_encode, "
    "search, request = end to end inside the service)",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
EVENTS = Counter(
    "xmodal_events_total", "Media events by outcome (indexed, deleted, dead_lettered)", ["outcome"]
)
DEAD_LETTERS = Counter("xmodal_dead_letters_total", "Events sent to the DLQ, by error code", ["code"])
INDEX_LAG = Histogram(
    "xmodal_index_lag_seconds",
    "From the Kafka timestamp of an event to the index acknowledging its upsert",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SEARCH_REQUESTS = Counter("xmodal_search_requests_total", "Search requests answered, by ok", ["ok"])
SEARCH_ERRORS = Counter("xmodal_search_errors_total", "Search error replies, by error code", ["code"])
UNROUTABLE_REQUESTS = Counter(
    "xmodal_search_unroutable_total", "Search requests that could not be answered (no usable reply_to)"
)

_served_on: int | None = None


def serve_metrics(port: int) -> None:
    """Start the /metrics endpoint once per process (0 disables it)."""
    global _served_on
    if port == 0 or _served_on is not None:
        return
    try:
        start_http_server(port)
    except OSError as e:
        # Metrics are an aid, not a reason to refuse to index: say so loudly and go on.
        log.warning("cannot serve Prometheus metrics on port %d (%s); set XMODAL_METRICS_PORT", port, e)
        return
    _served_on = port
    log.info("Prometheus metrics on http://0.0.0.0:%d/metrics", port)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Observe the time the block takes in xmodal_stage_seconds{stage}."""
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - start)
