"""Canaries: a golden query set (the `xmodal eval` format, docs/eval.md) run on a timer through the
live path, its Success@k per space and direction exported as `xmodal_canary_success_at_k`.

Every `canary_interval_s` each query is sent over Kafka to the query service (so broker, service,
encoders and index all take part), once per configured space (the request's `spaces` names it) and,
with several spaces, once more unrestricted (`space="fused"`, what users get). A space that cannot
encode a query's modality skips that query. The figures are computed by xmodal/evaluation.py, the
code `xmodal eval` uses, at the cutoffs k = 1, 5, 10; direction `all` uses every judgment.

A failed search (error reply, timeout) counts as finding nothing, as in `xmodal eval`, and is
counted in `xmodal_canary_failures_total{space}`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from xmodal import evaluation as ev
from xmodal.errors import ConfigError
from xmodal.metrics import CANARY_FAILURES, CANARY_LAST_RUN, CANARY_SUCCESS
from xmodal.schema import SearchReply, SearchRequest

__all__ = ["FUSED", "CanaryMonitor", "CanarySet", "RequestSender", "load_canaries"]

log = logging.getLogger(__name__)

FUSED = "fused"  # the space label of unrestricted searches (every space, fused)
CONCURRENCY = 4  # canary searches in flight: enough to be quick, few enough not to crowd users


class RequestSender(Protocol):
    """What the canary needs of a SearchClient."""

    reply_topic: str

    def send(self, request: SearchRequest, *, timeout: float | None = None) -> Future[SearchReply]: ...


class CanarySet:
    def __init__(self, queries: Sequence[ev.EvalQuery], qrels: ev.Qrels) -> None:
        self.queries = list(queries)
        self.qrels = qrels


def load_canaries(queries: Path | None, qrels: Path | None) -> CanarySet | None:
    """The golden set named by XMODAL_CANARY_QUERIES / XMODAL_CANARY_QRELS; None when neither is set."""
    if queries is None and qrels is None:
        return None
    if queries is None or qrels is None:
        missing = "XMODAL_CANARY_QUERIES" if queries is None else "XMODAL_CANARY_QRELS"
        raise ConfigError(f"canaries need both XMODAL_CANARY_QUERIES and XMODAL_CANARY_QRELS; {missing} is not set")
    try:
        canaries = CanarySet(ev.load_queries(queries), ev.load_qrels(qrels))
    except ev.EvalInputError as e:
        raise ConfigError(f"XMODAL_CANARY_QUERIES / XMODAL_CANARY_QRELS: {e.message}") from e
    if not any(any(rel > 0 for rel in canaries.qrels.get(q.query_id, {}).values()) for q in canaries.queries):
        raise ConfigError(f"XMODAL_CANARY_QRELS: no query of {queries} has a relevant judgment in {qrels}")
    return canaries


class CanaryMonitor:
    """Runs `canaries` through `client` every `interval_s`; `spaces`: name -> modalities it encodes."""

    def __init__(
        self,
        canaries: CanarySet,
        client: RequestSender,
        spaces: Mapping[str, frozenset[str]],
        *,
        interval_s: float,
        timeout_s: float,
        ks: Sequence[int] = ev.DEFAULT_KS,
    ) -> None:
        self._canaries = canaries
        self._client = client
        self._spaces = dict(spaces)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._ks = tuple(ks)
        self._published: set[tuple[str, str, str]] = set()  # gauge label sets set by the last run
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("CanaryMonitor.start() was already called")
        self._thread = threading.Thread(target=self._run, name="xmodal-canary", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                self.run_once()
            except Exception:  # the next round tries again; a broken canary must not stop search
                log.exception("canary run failed")

    def run_once(self) -> dict[str, ev.Evaluation]:
        """Run every canary query in every space once, set the gauges; the evaluation per space label."""
        labels: dict[str, list[str] | None] = {name: [name] for name in self._spaces}
        if len(self._spaces) > 1:
            labels[FUSED] = None
        reports = {}
        for label, spaces in labels.items():
            able = self._spaces[label] if spaces is not None else frozenset().union(*self._spaces.values())
            queries = [q for q in self._canaries.queries if q.modality in able]
            if not queries:
                continue
            report = self._run_space(label, spaces, queries)
            reports[label] = report
            self._publish(label, report)
        CANARY_LAST_RUN.set(time.time())
        return reports

    def _run_space(self, label: str, spaces: list[str] | None, queries: list[ev.EvalQuery]) -> ev.Evaluation:
        depth = ev.search_depth(self._ks)

        def submit(query: ev.EvalQuery) -> Future[SearchReply]:
            deadline_ms = int((time.time() + self._timeout_s) * 1000)
            request = query.to_request(k=depth, reply_to=self._client.reply_topic, deadline_ms=deadline_ms)
            if spaces is not None:
                request = request.model_copy(update={"spaces": spaces})
            return self._client.send(request, timeout=self._timeout_s)

        results, failures = ev.run_queries(queries, submit, concurrency=CONCURRENCY)
        if failures:
            CANARY_FAILURES.labels(label).inc(len(failures))
            first = next(iter(failures.items()))
            log.warning("%d canary searches in space %s failed, e.g. %s: %s", len(failures), label, *first)
        return ev.evaluate(queries, self._canaries.qrels, results, ks=self._ks, failed=failures)

    def _publish(self, label: str, report: ev.Evaluation) -> None:
        directions = {"all": report.metrics, **report.by_direction}
        published = set()
        for direction, figures in directions.items():
            for k in self._ks:
                value = figures.get(f"Success@{k}")
                if value is not None:
                    CANARY_SUCCESS.labels(label, direction, str(k)).set(value)
                    published.add((label, direction, str(k)))
        # A direction of an earlier run that this one lacks (e.g. "text->unknown" while a relevant
        # item was not indexed yet) would otherwise keep its old value forever.
        for stale in {labels for labels in self._published if labels[0] == label} - published:
            CANARY_SUCCESS.remove(*stale)
        self._published = {labels for labels in self._published if labels[0] != label} | published
        overall = ", ".join(f"Success@{k} {report.metrics.get(f'Success@{k}', 0):.3f}" for k in self._ks)
        log.info("canaries in space %s: %d judged queries, %s", label, report.queries, overall)
