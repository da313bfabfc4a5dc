"""Phases (a) and (b) of ratios.py in one Node, alternating how the query service batches text
queries (xmodal/query_api/batching.py), so that a noisy machine still compares like with like.

    python benchmarks/search_batching.py                        # 20k items, 2 rounds of every variant
    python benchmarks/search_batching.py --variants none,linger --rounds 3 --items 5000

Variants (each round runs them in this order, then the next round): `none` (no gather, no
linger: calls merge only while the tower is busy, as before batching.py), `gather` (wait for the
requests already taken from Kafka), `linger` (the defaults: gather, then linger under load). Each
variant runs 150 searches one at a time (new texts) and 600 with 16 in flight; the output is one
JSON line per (round, variant): load average, 1-client p50/p99 and rate, 16-in-flight rate and
p50, their ratio, the texts per tower call and the tower's share of the wall time in (b).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ratios as R  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from xmodal.config import load_settings  # noqa: E402
from xmodal.query_api.batching import DEFAULT_GATHER_S, DEFAULT_LINGER_S  # noqa: E402
from xmodal.query_api.client import SearchClient  # noqa: E402
from xmodal.runtime import Node, Roles  # noqa: E402
from xmodal.streams.broker import EmbeddedBroker  # noqa: E402
from xmodal.streams.kafka import producer_config  # noqa: E402

VARIANTS = {"none": (0.0, 0.0), "gather": (DEFAULT_GATHER_S, 0.0), "linger": (DEFAULT_GATHER_S, DEFAULT_LINGER_S)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="none,gather,linger", help=f"comma-separated, of {','.join(VARIANTS)}")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose of {','.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="xmodal-batching-") as tmp, EmbeddedBroker(Path(tmp) / "broker") as broker:
        settings = load_settings(
            {}, kafka_bootstrap=broker.bootstrap, data_dir=Path(tmp) / "data", metrics_port=0, optimize_after_points=0
        )
        with Node(settings, Roles(ingest=True, query=True)) as node, SearchClient(settings, node.bootstrap) as client:
            R.fill(node, args.items)
            if args.items >= 20_000:
                R.build_hnsw(node)
            R.ingest(node, Producer(producer_config(settings, node.bootstrap)), R.text_events("warm", 20))
            for i in range(20):
                client.search(R.QUERIES[i % len(R.QUERIES)], k=10)
            assert node.query_service is not None
            batchers = node.query_service.searcher.batchers.values()
            scheduler = node.spaces[R.SPACE].scheduler
            first = 100_000  # query texts of no earlier phase: none is served from the query cache
            for round_ in range(args.rounds):
                for variant in variants:
                    for b in batchers:
                        b.gather_s, b.linger_s = VARIANTS[variant]
                    load = R.load_average()
                    one, one_rate = R.sequential(client, 150, lambda i, f=first: R.query_text(f + i))
                    turns, busy, t0 = scheduler.turns["query"], scheduler.busy_s["query"], time.perf_counter()
                    texts = [R.query_text(first + 500 + i) for i in range(600)]
                    sixteen, failures, rate = R.searches_in_flight(client, texts, 10, 16)
                    share = (scheduler.busy_s["query"] - busy) / (time.perf_counter() - t0)
                    calls = max(scheduler.turns["query"] - turns, 1)
                    first += 2000
                    a, b16 = R.quantiles(one), R.quantiles(sixteen)
                    print(json.dumps({
                        "round": round_, "variant": variant, "load_average": [load, R.load_average()],
                        "a_p50_ms": a["p50_ms"], "a_p99_ms": a["p99_ms"], "a_per_s": round(one_rate, 1),
                        "b_per_s": round(rate, 1), "b_p50_ms": b16["p50_ms"], "ratio": round(rate / one_rate, 2),
                        "texts_per_tower_call": round(len(texts) / calls, 2), "tower_share": round(share, 2),
                        "failures": len(failures),
                    }), flush=True)


if __name__ == "__main__":
    main()
