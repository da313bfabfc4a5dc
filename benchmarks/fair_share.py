"""Issue 12's phase (e) alone: ingest and search sharing one Node's towers (docs/performance.md).

    python benchmarks/fair_share.py                 # 20k items, HNSW built, 2000 + 3000 texts
    python benchmarks/fair_share.py --items 2000    # a smaller index (scanned, no HNSW build)

The same Node and the same steps as benchmarks/ratios.py's phases (c) and (e), without the others,
so a change to how the towers are shared can be measured in a couple of minutes:

1. idle text ingest of 2000 texts (first produce to the last point in the index);
2. 20 searches/s sent open-loop for 15 s with no ingest;
3. the same 20 searches/s during an ingest of 3000 texts, once per schedule of `--schedules`;
4. with more than one schedule, the idle ingest again (the machine's drift between 1 and 4).

Printed: both ingest rates and their ratio (target >= 0.7), both search p50/p99 and the p99 ratio
(target <= 2), with the load average before and after. `--schedules ride,alone,alone,ride` (ABBA)
compares in one Node the present schedule (queries ride along in ingest slices) with the one
before it (queries only in turns of their own); `ride/16` also sets the slice for that step.
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
    TowerUse,
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


Schedule = tuple[str, int | None]  # ride | alone, the slice (None: the setting's)


def parse_schedules(text: str) -> list[Schedule]:
    """`ride,alone/16` -> [("ride", None), ("alone", 16)]."""
    schedules: list[Schedule] = []
    for part in text.split(","):
        name, _, size = part.strip().partition("/")
        if name not in ("ride", "alone") or (size and not size.isdigit()) or size == "0":
            raise argparse.ArgumentTypeError(f"a schedule is ride or alone, optionally /<slice>, not {part!r}")
        schedules.append((name, int(size) if size else None))
    return schedules


def run(
    items: int, idle_texts: int, busy_texts: int, paced_s: float, rate: float, overrides: dict[str, Any],
    schedules: list[Schedule],
) -> dict[str, Any]:
    report: dict[str, Any] = {"load_average_start": load_average(), "items": items, "settings": overrides}
    steps: list[dict[str, Any]] = []
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
            default_slice = scheduler.ingest_slice if scheduler is not None else None
            idle_rates = [ingest(node, producer, text_events("text", idle_texts))]
            with PacedSearches(client, rate, 100_000) as idle_load:
                time.sleep(paced_s)
            if idle_load.failures:
                raise SystemExit(f"{len(idle_load.failures)} paced searches failed: {idle_load.failures[0]!r}")
            for n, (name, size) in enumerate(schedules):
                if scheduler is not None:
                    scheduler.ride_along = name == "ride"
                    scheduler.ingest_slice = size or default_slice
                elif name == "ride":
                    raise SystemExit("this tree has no tower scheduler: only the schedule 'alone' applies")
                step: dict[str, Any] = {"schedule": name, "slice": size or default_slice, "load_average": load_average()}
                tower = TowerUse(node)
                with PacedSearches(client, rate, 200_000 + 100_000 * n) as busy_load:
                    step["ingest_per_s"] = round(ingest(node, producer, text_events(f"busy{n}", busy_texts)), 1)
                if busy_load.failures:
                    raise SystemExit(f"{len(busy_load.failures)} paced searches failed: {busy_load.failures[0]!r}")
                step.update(tower_during_ingest=tower.since(), paced_during_ingest=quantiles(busy_load.latencies))
                steps.append(step)
            if len(schedules) > 1:
                idle_rates.append(ingest(node, producer, text_events("again", idle_texts)))
            producer.flush(10)
            del producer
    idle_rate, idle = sum(idle_rates) / len(idle_rates), quantiles(idle_load.latencies)
    for step in steps:
        step["ingest_ratio"] = round(step["ingest_per_s"] / idle_rate, 2)
        step["p99_ratio"] = round(step["paced_during_ingest"]["p99_ms"] / idle["p99_ms"], 2)
    report.update(
        {
            "idle_ingest_per_s": round(idle_rate, 1),
            "idle_ingest_runs_per_s": [round(r, 1) for r in idle_rates],
            "paced_idle": idle,
            "steps": steps,
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
    parser.add_argument(
        "--schedules", type=parse_schedules, default=[("ride", None)],
        help="comma-separated busy steps, each ride (queries ride along in ingest slices) or alone "
        "(turns of their own), optionally /<slice>, e.g. ride,alone,alone,ride or ride/16,alone",
    )
    args = parser.parse_args(argv)
    if min(args.items, args.idle_texts, args.busy_texts) < 1 or args.paced_s <= 0 or args.rate <= 0:
        parser.error("sizes, --paced-s and --rate must be positive")
    overrides = {
        name: value for name, value in (
            ("ingest_encode_slice", args.slice), ("torch_threads", args.torch_threads), ("query_concurrency", args.query_concurrency)
        ) if value is not None
    }
    report = run(args.items, args.idle_texts, args.busy_texts, args.paced_s, args.rate, overrides, args.schedules)
    print(json.dumps(report, indent=2))
    idle = report["paced_idle"]["p99_ms"]
    print(f"idle: ingest {report['idle_ingest_per_s']}/s {report['idle_ingest_runs_per_s']}, search p99 {idle} ms")
    for step in report["steps"]:
        print(
            f"{step['schedule']}/{step['slice']}: ingest {step['ingest_per_s']}/s during searches: {step['ingest_ratio']} "
            f"(target >= 0.7); search p99 {step['paced_during_ingest']['p99_ms']} ms (p50 "
            f"{step['paced_during_ingest']['p50_ms']}): {step['p99_ratio']}x (target <= 2); load {step['load_average']}"
        )
    print(f"load {report['load_average_start']} -> {report['load_average_end']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
