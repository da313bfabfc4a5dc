"""`xmodal status`: the live figures of a running system, read from its Prometheus /metrics.

Plain functions: `fetch_metrics(url)` -> text, `read_status(text)` -> Status, `status_tables(status)`
-> rich tables. Quantiles are estimated from histogram buckets the way PromQL's
histogram_quantile does (linear within the bucket the rank falls in), over the process lifetime:
for a recent window use PromQL with rate() (docs/quality.md has the queries).
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from xmodal.errors import XmodalError

__all__ = [
    "HistogramSummary",
    "Status",
    "StatusUnavailable",
    "fetch_metrics",
    "histogram_quantile",
    "read_status",
    "status_tables",
]


class StatusUnavailable(XmodalError):
    """Nothing answers on the metrics URL, or what answers is not xmodal."""

    code = "status_unavailable"


def fetch_metrics(url: str, timeout_s: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - the user's URL
            return response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise StatusUnavailable(f"nothing answers on {url} ({reason})") from e


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile from cumulative (upper bound, count) buckets, +Inf last; None when empty.

    Linear interpolation inside the bucket that holds the rank (PromQL's histogram_quantile); a
    rank in the +Inf bucket returns the largest finite bound (the true value is above it).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass
class HistogramSummary:
    count: float
    sum: float
    p50: float | None
    p99: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.sum, "p50": self.p50, "p99": self.p99}


@dataclass
class Status:
    recall: dict[str, float] = field(default_factory=dict)  # space -> recall@k gauge
    recall_samples: dict[str, dict[str, float]] = field(default_factory=dict)  # space -> outcome -> count
    canary: dict[tuple[str, str, int], float] = field(default_factory=dict)  # (space, direction, k) -> Success@k
    canary_failures: dict[str, float] = field(default_factory=dict)
    canary_last_run: float | None = None
    freshness: HistogramSummary | None = None
    freshness_probes: dict[str, float] = field(default_factory=dict)  # outcome -> count
    index_lag: HistogramSummary | None = None
    events: dict[str, float] = field(default_factory=dict)  # outcome -> count
    dead_letters: dict[str, float] = field(default_factory=dict)  # code -> count
    search_requests: dict[str, float] = field(default_factory=dict)  # ok -> count
    search_errors: dict[str, float] = field(default_factory=dict)  # code -> count

    def to_dict(self) -> dict[str, Any]:
        canary: dict[str, dict[str, dict[str, float]]] = {}
        for (space, direction, k), value in sorted(self.canary.items()):
            canary.setdefault(space, {}).setdefault(direction, {})[f"Success@{k}"] = value
        return {
            "recall_at_k": self.recall,
            "recall_samples": self.recall_samples,
            "canary_success_at_k": canary,
            "canary_failures": self.canary_failures,
            "canary_last_run": self.canary_last_run,
            "freshness_seconds": self.freshness.to_dict() if self.freshness else None,
            "freshness_probes": self.freshness_probes,
            "index_lag_seconds": self.index_lag.to_dict() if self.index_lag else None,
            "events": self.events,
            "dead_letters": self.dead_letters,
            "search_requests": self.search_requests,
            "search_errors": self.search_errors,
        }


def _histogram(samples: Iterable[Any]) -> HistogramSummary | None:
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for s in samples:
        if s.name.endswith("_bucket"):
            buckets.append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            count = s.value
        elif s.name.endswith("_sum"):
            total = s.value
    if not buckets:
        return None
    buckets.sort()
    return HistogramSummary(count, total, histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets))


def read_status(text: str) -> Status:
    """The figures of a /metrics page; StatusUnavailable when it has none of xmodal's."""
    try:
        families = {f.name: f for f in text_string_to_metric_families(text)}
    except ValueError as e:
        raise StatusUnavailable(f"the metrics page does not parse: {e}") from e
    if not any(name.startswith("xmodal_") for name in families):
        raise StatusUnavailable("the metrics page has no xmodal_* metrics: is this an xmodal process?")
    status = Status()

    def samples(name: str, suffix: str = "") -> list[Any]:
        family = families.get(name)
        return [s for s in family.samples if s.name == name + suffix] if family is not None else []

    for s in samples("xmodal_index_recall_at_k"):
        status.recall[s.labels["space"]] = s.value
    for s in samples("xmodal_index_recall_samples", "_total"):
        status.recall_samples.setdefault(s.labels["space"], {})[s.labels["outcome"]] = s.value
    for s in samples("xmodal_canary_success_at_k"):
        status.canary[(s.labels["space"], s.labels["direction"], int(s.labels["k"]))] = s.value
    for s in samples("xmodal_canary_failures", "_total"):
        status.canary_failures[s.labels["space"]] = s.value
    last = samples("xmodal_canary_last_run_timestamp_seconds")
    status.canary_last_run = last[0].value if last and last[0].value > 0 else None
    for name, attr in (("xmodal_freshness_seconds", "freshness"), ("xmodal_index_lag_seconds", "index_lag")):
        family = families.get(name)
        setattr(status, attr, _histogram(family.samples) if family is not None else None)
    for s in samples("xmodal_freshness_probes", "_total"):
        status.freshness_probes[s.labels["outcome"]] = s.value
    for s in samples("xmodal_events", "_total"):
        status.events[s.labels["outcome"]] = s.value
    for s in samples("xmodal_dead_letters", "_total"):
        status.dead_letters[s.labels["code"]] = s.value
    for s in samples("xmodal_search_requests", "_total"):
        status.search_requests[s.labels["ok"]] = s.value
    for s in samples("xmodal_search_errors", "_total"):
        status.search_errors[s.labels["code"]] = s.value
    return status


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _count(value: float) -> str:
    return f"{value:.0f}"


def status_tables(status: Status, *, alert_recall: float | None = None) -> list[Table]:
    """The tables `xmodal status` prints."""
    tables = []
    quality = Table(title="quality", title_justify="left")
    for column, justify in (("figure", "left"), ("labels", "left"), ("value", "right"), ("note", "left")):
        quality.add_column(column, justify=justify)  # type: ignore[arg-type]
    if not status.recall:
        quality.add_row("index recall@k", "", "-", "no search sampled yet (or XMODAL_RECALL_SAMPLE_RATE=0)")
    for space, value in sorted(status.recall.items()):
        outcomes = status.recall_samples.get(space, {})
        note = ", ".join(f"{o} {_count(n)}" for o, n in sorted(outcomes.items()))
        if alert_recall is not None and value < alert_recall:
            note = f"[bold red]below {alert_recall:g}[/] · {note}"
        quality.add_row("index recall@k", f"space={space}", f"{value:.3f}", note)
    if not status.canary:
        quality.add_row("canary Success@k", "", "-", "no canary run yet (or XMODAL_CANARY_QUERIES unset)")
    for (space, direction, k), value in sorted(status.canary.items()):
        failed = status.canary_failures.get(space, 0)
        note = f"failed searches {_count(failed)}" if failed else ""
        quality.add_row("canary Success@k", f"space={space} {direction} k={k}", f"{value:.3f}", note)
    probes = ", ".join(f"{o} {_count(n)}" for o, n in sorted(status.freshness_probes.items()))
    no_probe = "no probe yet (or XMODAL_FRESHNESS_INTERVAL_S=0)"
    for name, summary, note in (
        ("freshness", status.freshness, f"probes: {probes}" if probes else no_probe),
        ("index lag", status.index_lag, "Kafka timestamp to index ack"),
    ):
        if summary is None or summary.count == 0:
            quality.add_row(name, "", "-", note)
            continue
        quality.add_row(name, "p50", _seconds(summary.p50), f"{_count(summary.count)} observed · {note}")
        quality.add_row(name, "p99", _seconds(summary.p99), "")
    tables.append(quality)

    traffic = Table(title="traffic (since the process started)", title_justify="left")
    for column, justify in (("counter", "left"), ("labels", "left"), ("value", "right")):
        traffic.add_column(column, justify=justify)  # type: ignore[arg-type]
    for outcome, value in sorted(status.events.items()):
        traffic.add_row("events", outcome, _count(value))
    for code, value in sorted(status.dead_letters.items()):
        traffic.add_row("dead letters", code, _count(value))
    for ok, value in sorted(status.search_requests.items()):
        traffic.add_row("search requests", f"ok={ok}", _count(value))
    for code, value in sorted(status.search_errors.items()):
        traffic.add_row("search errors", code, _count(value))
    if not traffic.rows:
        traffic.add_row("events", "", "0")
    tables.append(traffic)
    return tables
