"""What live quality monitoring costs (docs/quality.md "Live quality monitoring").

    python benchmarks/quality_overhead.py                  # 10k points; recall part, then freshness part
    python benchmarks/quality_overhead.py --points 100000 --part recall

recall: an EdgeIndex of `--points` clustered unit vectors (384-d, the mini space's size) built with
HNSW (Qdrant's default m=16, ef_construct=100, ef=128; optimize), searched approximately (k=10) straight and through SearchedIndex with a running
RecallMonitor, so the query path's added cost is the difference; then the exact search each
sample costs the monitor thread, and what that is as a share of one core at 1 sample/s.

freshness: a whole node (embedded tansu, ingest agents, query service, the mini towers) with a
probe every `--probe-interval` seconds for `--seconds`: freshness p50/p99, and the searches each
probe took to be found (each is one query encoding and one index search in the service).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from xmodal.indexer import EdgeIndex, IndexPoint
from xmodal.indexer.settings import IndexSettings

DIM = 384


def _ms(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q)) * 1000


def recall_part(points: int, searches: int) -> None:
    from xmodal.query_api.quality.recall import RecallMonitor
    from xmodal.query_api.quality.searched import SearchedIndex

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, DIM))

    def clustered(n: int) -> np.ndarray:  # 100 clusters: nearer real embeddings than uniform noise
        v = (centres[rng.integers(len(centres), size=n)] + 0.6 * rng.normal(size=(n, DIM))).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    vectors, queries = clustered(points), clustered(searches)
    with tempfile.TemporaryDirectory() as tmp:
        # Thresholds low enough that a graph is built and used even at a small --points.
        settings = IndexSettings(full_scan_threshold_kb=1, indexing_threshold_kb=1)
        index = EdgeIndex(Path(tmp) / "index", index_settings=settings)
        try:
            index.ensure_collection("bench", DIM)
            start = time.perf_counter()
            for lo in range(0, points, 5000):
                index.upsert("bench", [IndexPoint(f"p{i}", vectors[i], "text") for i in range(lo, min(lo + 5000, points))])
            upserted = time.perf_counter() - start
            start = time.perf_counter()
            index.optimize("bench")
            built = time.perf_counter() - start
            print(f"{points} points x {DIM}-d: upsert {upserted:.1f} s, HNSW build {built:.1f} s")

            def timed(searches: list[object], **kwargs: object) -> list[list[float]]:
                """Per search function, the time of each query; interleaved, so load drifts hit all alike."""
                out: list[list[float]] = [[] for _ in searches]
                for q in queries:
                    for times, search in zip(out, searches):
                        t = time.perf_counter()
                        search("bench", q, 10, modalities=["text"], **kwargs)  # type: ignore[operator]
                        times.append(time.perf_counter() - t)
                return out

            monitor = RecallMonitor(SearchedIndex(index), rate=1.0, alert_below=0.9)
            watched = SearchedIndex(index, monitor)
            monitor.start()
            try:
                timed([index.search])  # warm-up
                plain, through = timed([index.search, watched.search])
                (exact,) = timed([index.search], exact=True)
            finally:
                monitor.stop()
            added = statistics.median(through) - statistics.median(plain)
            print(f"ANN search p50 {_ms(plain, .5):.3f} ms, p99 {_ms(plain, .99):.3f} ms (straight)")
            print(
                f"ANN search p50 {_ms(through, .5):.3f} ms, p99 {_ms(through, .99):.3f} ms "
                f"(through SearchedIndex + RecallMonitor at 1/s): {added * 1000:+.3f} ms at p50, "
                f"ratio {statistics.median(through) / statistics.median(plain):.2f}"
            )
            print(
                f"exact search p50 {_ms(exact, .5):.2f} ms, p99 {_ms(exact, .99):.2f} ms: at 1 sample/s the recall check "
                f"takes {statistics.median(exact) * 100:.2f} % of one core; ratio exact/ANN "
                f"{statistics.median(exact) / statistics.median(plain):.0f}x"
            )
            print(f"recall@10 of this index over the sampled searches: {monitor.recall('bench')}")
        finally:
            index.close()


def freshness_part(seconds: float, interval: float) -> None:
    from prometheus_client import REGISTRY

    from xmodal.config import load_settings
    from xmodal.runtime import Node, Roles

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            {
                "XMODAL_DATA_DIR": tmp,
                "XMODAL_METRICS_PORT": "0",
                "XMODAL_HTTP_PORT": "0",
                "XMODAL_FRESHNESS_INTERVAL_S": str(interval),
                "XMODAL_SESSION_TIMEOUT_MS": "3000",
            }
        )
        node = Node(settings, Roles(ingest=True, query=True, start_broker=True)).start()
        try:
            time.sleep(seconds)
        finally:
            node.stop()
    from xmodal.metrics import FRESHNESS

    observed = [s for s in FRESHNESS.collect()[0].samples if s.name.endswith("_bucket")]
    buckets = [(float(s.labels["le"]), s.value) for s in observed]
    from xmodal.query_api.status import histogram_quantile

    found = value("xmodal_freshness_probes_total", outcome="found")
    searches = value("xmodal_search_requests_total", ok="true")
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    print(f"freshness over {seconds:.0f} s, a probe every {interval:g} s: {found:.0f} probes found, "
          f"timeouts {value('xmodal_freshness_probes_total', outcome='timeout'):.0f}")
    if p50 is not None and p99 is not None and found:
        print(f"freshness p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (from the buckets); "
              f"{searches / found:.1f} searches per probe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--part", choices=["recall", "freshness", "both"], default="both")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if args.part in ("recall", "both"):
        recall_part(args.points, args.searches)
    if args.part in ("freshness", "both"):
        freshness_part(args.seconds, args.probe_interval)


if __name__ == "__main__":
    main()
