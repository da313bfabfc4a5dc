"""Live quality monitoring on real parts: qdrant-edge, the real MiniLM tower, the tansu broker.

The recall gauge is checked both ways: 1.0 on an exact index, and below the alert threshold (with
a warning logged) on an index broken on purpose: a real HNSW graph built with m=2, ef_construct=4,
searched with ef=1 on binary-quantized vectors without rescoring, which an exact scan disagrees with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from qa_support import CORPUS, MiniText, open_backend, populate

from xmodal.encoders.mini.corpus import unrelated_sentences
from xmodal.errors import ConfigError, SchemaError
from xmodal.indexer import EdgeIndex, Hit, IndexPoint
from xmodal.indexer.settings import IndexSettings
from xmodal.metrics import _DELAY_BUCKETS
from xmodal.query_api import SearchClient
from xmodal.query_api.quality.canary import load_canaries
from xmodal.query_api.quality.freshness import PROBE_KEY, FreshnessMonitor
from xmodal.query_api.quality.recall import QUEUE_SIZE, RecallMonitor, TokenBucket
from xmodal.query_api.quality.searched import SearchedIndex
from xmodal.query_api.status import StatusUnavailable, histogram_quantile, read_status
from xmodal.runtime import Node, Roles

GALLERY = 1500  # MiniLM-encoded sentences in the recall tests' index: enough for HNSW to matter


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# --- pieces, no broker ------------------------------------------------------------------------------


def test_token_bucket_bounds_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]  # a burst of one second's worth
    now[0] += 0.5
    assert [bucket.take(), bucket.take()] == [True, False]  # refilled at 2 per second
    now[0] += 60
    assert sum(bucket.take() for _ in range(10)) == 2  # idle time does not pile up past the burst
    assert not TokenBucket(0).take()  # rate 0: off


@pytest.mark.parametrize("backend", ["edge", "qdrant-local"])
def test_searched_index_hides_probes_and_feeds_recall(backend: str, tmp_path: Path, mini: MiniText) -> None:
    index = open_backend(backend, tmp_path)
    try:
        populate(index, mini)
        vector = mini.encode_texts(["a small red disc"])[0]
        # A probe right on the query: the engine ranks it first.
        index.upsert("mini", [IndexPoint("xmodal-probe/p1", vector, "text", {PROBE_KEY: "p1"})])
        monitor = RecallMonitor(SearchedIndex(index), rate=100, alert_below=0.9)  # as QualityMonitors builds it
        monitor.start()
        try:
            searched = SearchedIndex(index, monitor)
            plain = searched.search("mini", vector, 3)
            assert len(plain) == 3 and all(PROBE_KEY not in h.metadata for h in plain)
            assert plain[0].item_id == "cap/crimson-disc"
            with pytest.raises(SchemaError, match="k must be a positive integer"):
                searched.search("mini", vector, 0)  # refused as the index refuses it
            asked = searched.search("mini", vector, 3, filter={PROBE_KEY: "p1"})
            assert [h.item_id for h in asked] == ["xmodal-probe/p1"]
            raw = index.search("mini", vector, 3)
            assert raw[0].item_id == "xmodal-probe/p1"  # it is in the index; only answers skip it
            deadline = time.monotonic() + 10
            while monitor.samples("mini") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.2)
            # Unoptimized edge shards and local mode are exact scans: ANN and exact agree, the probe aside on both
            # sides; the search for the probe (freshness's) is not sampled.
            assert monitor.samples("mini") == 1 and monitor.recall("mini") == 1.0
            assert searched.count("mini") == len(CORPUS) + 1  # everything else passes through
        finally:
            monitor.stop()
    finally:
        index.close()


class GatedIndex:
    """A real index whose exact searches wait for `gate`: the recall check falls behind on purpose."""

    def __init__(self, inner: EdgeIndex) -> None:
        self._inner = inner
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def search(self, *args: object, exact: bool = False, **kwargs: object) -> list[Hit]:
        if exact:
            self.gate.wait(30)
        return self._inner.search(*args, exact=exact, **kwargs)  # type: ignore[arg-type]


def test_a_slow_recall_check_drops_samples_instead_of_slowing_searches(tmp_path: Path, mini: MiniText) -> None:
    index = EdgeIndex(tmp_path / "index")
    gated = GatedIndex(index)
    try:
        populate(index, mini)
        vector = mini.encode_texts(["rain on a roof"])[0]
        monitor = RecallMonitor(gated, rate=1000, alert_below=0.9)  # type: ignore[arg-type]
        searched = SearchedIndex(gated, monitor)  # type: ignore[arg-type]
        dropped = lambda: metric("xmodal_index_recall_samples_total", space="mini", outcome="dropped") or 0.0  # noqa: E731
        before = dropped()
        monitor.start()
        try:
            for _ in range(200):  # every one answered while the exact searches are stuck
                assert searched.search("mini", vector, 2)[0].item_id == "cap/rain"
            assert dropped() - before >= 200 - QUEUE_SIZE - 1  # one may be in the monitor's hands
        finally:
            gated.gate.set()
            monitor.stop()
    finally:
        index.close()


def test_canary_settings_are_checked(tmp_path: Path) -> None:
    queries, qrels = tmp_path / "q.jsonl", tmp_path / "qrels.txt"
    queries.write_text('{"query_id": "red", "query": {"text": "a red circle"}}\n')
    qrels.write_text("red 0 img/red 1\n")
    assert load_canaries(None, None) is None
    with pytest.raises(ConfigError, match="XMODAL_CANARY_QRELS is not set"):
        load_canaries(queries, None)
    canaries = load_canaries(queries, qrels)
    assert canaries is not None and [q.query_id for q in canaries.queries] == ["red"]
    qrels.write_text("red 0 img/red\n")
    with pytest.raises(ConfigError, match=r"XMODAL_CANARY_QUERIES / XMODAL_CANARY_QRELS: .*qrels.txt:1"):
        load_canaries(queries, qrels)
    qrels.write_text("blue 0 img/blue 1\n")
    with pytest.raises(ConfigError, match="no query .* has a relevant judgment"):
        load_canaries(queries, qrels)


def test_status_quantiles_follow_the_observations() -> None:
    """p50/p99 read from the freshness buckets are within a bucket step of the true quantiles."""
    rng = np.random.default_rng(7)
    for centre in (0.02, 0.4, 8.0):
        registry = CollectorRegistry()
        histogram = Histogram("xmodal_freshness_seconds", "probe delay", buckets=_DELAY_BUCKETS, registry=registry)
        values = rng.lognormal(np.log(centre), 0.5, 2000)
        for v in values:
            histogram.observe(v)
        status = read_status(generate_latest(registry).decode())
        assert status.freshness is not None and status.freshness.count == 2000
        for q, estimate in ((0.5, status.freshness.p50), (0.99, status.freshness.p99)):
            true = float(np.quantile(values, q))
            assert estimate is not None and true / 1.5 <= estimate <= true * 1.5, (centre, q, estimate, true)
    with pytest.raises(StatusUnavailable, match="no xmodal_"):
        read_status("# TYPE other_total counter\nother_total 3.0\n")
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(1.0, 5.0), (float("inf"), 10.0)]) == 1.0  # above the last bound


# --- the recall gauge of a running node ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gallery(mini: MiniText) -> tuple[list[str], np.ndarray]:
    texts = unrelated_sentences(GALLERY, "seen")
    return texts, mini.encode_texts(texts)


# Too thin an HNSW graph to be right (m=2, ef_construct=4), searched with ef=1 on binary-quantized
# vectors without rescoring; thresholds at their minimum so the graph is built and used at this size.
BROKEN = IndexSettings(
    hnsw_m=2,
    hnsw_ef_construct=4,
    search_ef=1,
    quantization="binary",
    quantization_rescore=False,
    full_scan_threshold_kb=1,
    indexing_threshold_kb=1,
)


@pytest.fixture(params=["exact", "broken"])
def gallery_index(request: pytest.FixtureRequest, tmp_path: Path, gallery: tuple[list[str], np.ndarray]) -> Iterator[tuple[str, EdgeIndex]]:
    """The gallery in an EdgeIndex: never optimized (every search an exact scan), or BROKEN and optimized."""
    texts, vectors = gallery
    broken = request.param == "broken"
    index = EdgeIndex(tmp_path / "index", index_settings=BROKEN if broken else None)
    index.ensure_collection("mini", vectors.shape[1])
    index.upsert("mini", [IndexPoint(f"s/{i}", vectors[i], "text", {"text": t}) for i, t in enumerate(texts)])
    if broken:
        index.optimize("mini")
        assert index.index_report("mini")["indexed_vectors"] == len(texts)  # the graph exists: searches use it
    yield request.param, index  # the node closes it


def test_recall_gauge_of_live_searches(
    gallery_index: tuple[str, EdgeIndex], broker: str, make_settings, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    kind, index = gallery_index
    settings = make_settings(KAFKA_BOOTSTRAP=broker, RECALL_SAMPLE_RATE="100", FRESHNESS_INTERVAL_S="0", SESSION_TIMEOUT_MS="3000")
    queries = unrelated_sentences(30, "heldout")
    measured = lambda: metric("xmodal_index_recall_samples_total", space="mini", outcome="measured") or 0.0  # noqa: E731
    before = measured()
    caplog.set_level(logging.WARNING, logger="xmodal.query_api.quality.recall")
    with Node(settings, Roles(ingest=False, query=True), index=index) as node, SearchClient(settings, node.bootstrap) as client:
        for text in queries:
            assert len(client.search(text, k=10, modalities=["text"])) == 10
        deadline = time.monotonic() + 30
        while measured() - before < len(queries) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert measured() - before == len(queries)  # every search sampled at this rate, none dropped
        recall = metric("xmodal_index_recall_at_k", space="mini")
    warnings = [r.getMessage() for r in caplog.records if "index recall@k of space 'mini'" in r.getMessage()]
    assert recall is not None
    if kind == "exact":
        assert recall == 1.0 and not warnings
    else:
        assert recall < settings.quality_alert_recall, recall
        print(f"recall@10 of the broken index over {len(queries)} live searches: {recall:.3f}")
        assert warnings and "below XMODAL_QUALITY_ALERT_RECALL=0.9" in warnings[0]


# --- freshness probes on a running node ---------------------------------------------------------------


@pytest.mark.parametrize("ingest", [True, False])
def test_a_probe_is_found_then_deleted_or_times_out(ingest: bool, broker: str, make_settings, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """With ingest running a probe is found, timed and deleted by its tombstone; with none, it is a timeout."""
    settings = make_settings(KAFKA_BOOTSTRAP=broker, SESSION_TIMEOUT_MS="3000", RECALL_SAMPLE_RATE="0")
    outcome = "found" if ingest else "timeout"
    before = metric("xmodal_freshness_probes_total", outcome=outcome) or 0.0
    caplog.set_level(logging.WARNING, logger="xmodal.query_api.quality.freshness")
    with Node(settings, Roles(ingest=ingest, query=True)) as node, SearchClient(settings, node.bootstrap) as client:
        assert node.index is not None

        def find(text: str, where: dict[str, str]) -> bool:
            return any(h.id.startswith("xmodal-probe/") for h in client.search(text, k=1, modalities=["text"], filter=where))

        monitor = FreshnessMonitor(settings, node.bootstrap, find, timeout_s=20.0 if ingest else 2.0)
        monitor.start()  # XMODAL_FRESHNESS_INTERVAL_S=0 here: no timer, only the probe below runs
        try:
            took = monitor.probe()
        finally:
            monitor.stop()
        if ingest:
            assert took is not None and 0 < took < 20
            deadline = time.monotonic() + 30
            while node.index.count("mini") and time.monotonic() < deadline:  # the tombstone is indexed
                time.sleep(0.1)
            assert node.index.count("mini") == 0
        else:
            assert took is None
            assert any("was not found by search within 2 s" in r.getMessage() for r in caplog.records)
    assert monitor.outcomes == {outcome: 1}
    assert (metric("xmodal_freshness_probes_total", outcome=outcome) or 0.0) - before >= 1
