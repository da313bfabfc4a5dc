"""Prometheus metrics: one histogram per stage, counters per outcome. Served on XMODAL_METRICS_PORT."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "CANARY_FAILURES",
    "CANARY_LAST_RUN",
    "CANARY_SUCCESS",
    "DEAD_LETTERS",
    "EVENTS",
    "FRESHNESS",
    "FRESHNESS_PROBES",
    "INDEX_LAG",
    "INDEX_RECALL",
    "RECALL_SAMPLES",
    "RERANK_UNSCORED",
    "SEARCH_ERRORS",
    "SEARCH_REQUESTS",
    "STAGE_SECONDS",
    "UNROUTABLE_REQUESTS",
    "serve_metrics",
    "timed",
]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Steps of at most 1.5x from 5 ms to 30 s, so a p50/p99 read from the buckets (histogram_quantile,
# `xmodal status`) is within half a step anywhere from 10 ms to 30 s; then coarse up to 5 minutes.
_DELAY_BUCKETS = (
    0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300,
)

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
    buckets=_DELAY_BUCKETS,
)
SEARCH_REQUESTS = Counter("xmodal_search_requests_total", "Search requests answered, by ok", ["ok"])
SEARCH_ERRORS = Counter("xmodal_search_errors_total", "Search error replies, by error code", ["code"])
RERANK_UNSCORED = Counter(
    "xmodal_rerank_unscored_total",
    "Rerank candidates the cross-encoder could not score (no stored view); they keep their first-stage score",
    ["space"],
)
UNROUTABLE_REQUESTS = Counter(
    "xmodal_search_unroutable_total", "Search requests that could not be answered (no usable reply_to)"
)

# Live quality monitoring (xmodal/query_api/quality/, docs/quality.md)
INDEX_RECALL = Gauge(
    "xmodal_index_recall_at_k",
    "Mean over the last sampled live searches of |ANN top k & exact top k| / |exact top k|, k of each search",
    ["space"],
)
RECALL_SAMPLES = Counter(
    "xmodal_index_recall_samples_total",
    "Live searches taken for the recall check, by outcome (measured, dropped: queue full, failed, empty)",
    ["space", "outcome"],
)
CANARY_SUCCESS = Gauge(
    "xmodal_canary_success_at_k",
    "Success@k of the golden canary queries through the live path (direction 'all': every judgment)",
    ["space", "direction", "k"],
)
CANARY_FAILURES = Counter("xmodal_canary_failures_total", "Canary searches that failed (count as finding nothing)", ["space"])
CANARY_LAST_RUN = Gauge("xmodal_canary_last_run_timestamp_seconds", "When the last canary run finished (unix time)")
FRESHNESS = Histogram(
    "xmodal_freshness_seconds",
    "From producing a probe item to the media topic to a search finding it (broker, ingest, index, query)",
    buckets=_DELAY_BUCKETS,
)
FRESHNESS_PROBES = Counter("xmodal_freshness_probes_total", "Freshness probes, by outcome (found, timeout, failed)", ["outcome"])

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
