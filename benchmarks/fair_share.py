"""Issue 12's phase (e) alone: ingest and search sharing one Node's towers (docs/performance.md).

    python benchmarks/fair_share.py                 # 20k items, HNSW built, 2000 + 3000 texts
    python benchmarks/fair_share.py --items 2000    # a smaller index (scanned, no HNSW build)

The same Node and the same steps as benchmarks/ratios.py's phases (c) and (e), without the others,
so a change to how the towers are shared can be measured in a couple of minutes:

1. idle text ingest of 2000 texts (first produce to the last point in the index);
2. 20 searches/s sent open-loop for 15 s with no ingest;
3. the same 20 searches/s during an ingest of 3000 texts.

Printed: both ingest rates and their ratio (target >= 0.7), both search p50/p99 and the p99 ratio
(target <= 2), with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ratios import (  # noqa: E402
    QUERIES,
    SPACE,
    PacedSearches,
    build_hnsw,
    fill,
    ingest,
    load_average,
    quantiles,
    text_events,
)

from confluent_kafka import Producer  # noqa: E402

from xmodal.config import load_settings  # noqa: E402
from xmodal.query_api import SearchClient  # noqa: E402
from xmodal.runtime import Node, Roles  # noqa: E402
from xmodal.streams.broker import EmbeddedBroker  # noqa: E402
from xmodal.streams.kafka import producer_config  # noqa: E402


def tower_use(scheduler: Any, busy_before: dict[str, float], turns_before: dict[str, int], t0: float) -> dict[str, Any]:
    """Each class's turns and share of the wall time in the tower since the snapshot."""
    wall = time.perf_counter() - t0
    return {
        p: {"turns": scheduler.turns[p] - turns_before[p], "share": round((scheduler.busy_s[p] - busy_before[p]) / wall, 3)}
        for p in ("query", "ingest")
    }


def run(items: int, idle_texts: int, busy_texts: int, paced_s: float, rate: float, overrides: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"load_average_start": load_average(), "items": items, "settings": overrides}
    with tempfile.TemporaryDirectory(prefix="xmodal-fair-") as tmp, EmbeddedBroker(Path(tmp) / "broker") as broker:
        settings = load_settings(
            {}, kafka_bootstrap=broker.bootstrap, data_dir=Path(tmp) / "data", metrics_port=0, optimize_after_points=0,
            **overrides,
        )
        with Node(settings, Roles(ingest=True, query=True)) as node, SearchClient(settings, node.bootstrap) as client:
            producer = Producer(producer_config(settings, node.bootstrap))
            fill(node, items)
            if items >= 20_000:
                build_hnsw(node)
            ingest(node, producer, text_events("warm", 20))
            for i in range(20):
                client.search(QUERIES[i % len(QUERIES)], k=10)
            scheduler = getattr(node.spaces[SPACE], "scheduler", None)  # None: a tree before the scheduler
            idle_rate = ingest(node, producer, text_events("text", idle_texts))
            with PacedSearches(client, rate, 100_000) as idle_load:
                time.sleep(paced_s)
            before = (dict(scheduler.busy_s), dict(scheduler.turns), time.perf_counter()) if scheduler else None
            with PacedSearches(client, rate, 200_000) as busy_load:
                busy_rate = ingest(node, producer, text_events("busy", busy_texts))
            if scheduler is not None and before is not None:
                report["tower_during_ingest"] = tower_use(scheduler, *before)
            failures = idle_load.failures + busy_load.failures
            if failures:
                raise SystemExit(f"{len(failures)} paced searches failed: {failures[0]!r}")
            producer.flush(10)
            del producer
    idle, busy = quantiles(idle_load.latencies), quantiles(busy_load.latencies)
    report.update(
        {
            "idle_ingest_per_s": round(idle_rate, 1),
            "ingest_during_searches_per_s": round(busy_rate, 1),
            "ingest_ratio": round(busy_rate / idle_rate, 2),
            "paced_idle": idle,
            "paced_during_ingest": busy,
            "p99_ratio": round(busy["p99_ms"] / idle["p99_ms"], 2),
            "load_average_end": load_average(),
        }
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000, help="items in the index (HNSW built from 20k)")
    parser.add_argument("--idle-texts", type=int, default=2000)
    parser.add_argument("--busy-texts", type=int, default=3000)
    parser.add_argument("--paced-s", type=float, default=15.0, help="seconds of the idle paced load")
    parser.add_argument("--rate", type=float, default=20.0, help="searches per second, open loop")
    parser.add_argument("--slice", type=int, help="XMODAL_INGEST_ENCODE_SLICE (default: the setting's default)")
    parser.add_argument("--torch-threads", type=int, help="XMODAL_TORCH_THREADS (default: the setting's default)")
    parser.add_argument("--query-concurrency", type=int, help="XMODAL_QUERY_CONCURRENCY (default: the setting's default)")
    args = parser.parse_args(argv)
    if min(args.items, args.idle_texts, args.busy_texts) < 1 or args.paced_s <= 0 or args.rate <= 0:
        parser.error("sizes, --paced-s and --rate must be positive")
    overrides = {
        name: value for name, value in (
            ("ingest_encode_slice", args.slice), ("torch_threads", args.torch_threads), ("query_concurrency", args.query_concurrency)
        ) if value is not None
    }
    report = run(args.items, args.idle_texts, args.busy_texts, args.paced_s, args.rate, overrides)
    print(json.dumps(report, indent=2))
    print(
        f"ingest {report['ingest_during_searches_per_s']}/s during searches vs {report['idle_ingest_per_s']}/s idle: "
        f"{report['ingest_ratio']} (target >= 0.7); search p99 {report['paced_during_ingest']['p99_ms']} ms during "
        f"ingest vs {report['paced_idle']['p99_ms']} ms idle: {report['p99_ratio']}x (target <= 2); load "
        f"{report['load_average_start']} -> {report['load_average_end']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
