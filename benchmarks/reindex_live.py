"""Reindex a live space: searches and ingest go on while `xmodal reindex` rebuilds it and switches.

A tansu broker and a node (`xmodal up`'s ingest agents and query service on the embedded index) run
in this process; the space is seeded, then searches at a fixed rate and keyed ingest (new items,
updates carrying a version, tombstones) run while a Reindexer rebuilds the space with other HNSW
settings and switches. Printed: the reindex's figures, search latency before / during / after,
failed or timed-out searches, `xmodal verify`'s counts, and an independent check of every id
(exact search for its latest text: a live id must come back first with its latest version, a
deleted id must not come back).

    python benchmarks/reindex_live.py --items 2000 --search-rate 20 --ingest-rate 15
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Producer

from xmodal.config import load_settings
from xmodal.errors import XmodalError
from xmodal.query_api.client import SearchClient
from xmodal.runtime import Node, Roles
from xmodal.streams.broker import EmbeddedBroker
from xmodal.streams.logread import committed_offsets, end_offsets, ingest_group
from xmodal.streams.reindex import Reindexer
from xmodal.streams.verify import verify_space


def _caught_up(settings, broker) -> bool:  # type: ignore[no-untyped-def]
    ends = end_offsets(settings, broker, settings.media_topic)
    committed = committed_offsets(settings, broker, settings.media_topic, ingest_group(settings))
    return all(committed.get(p, 0) >= e for p, e in ends.items())


def _wait(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(items: int, search_rate: float, ingest_rate: float) -> int:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "broker") as broker:
        settings = load_settings(
            {
                "XMODAL_TOPIC_PREFIX": f"b{uuid.uuid4().hex[:8]}",
                "XMODAL_DATA_DIR": str(Path(tmp) / "data"),
                "XMODAL_METRICS_PORT": "0",
                "XMODAL_TOPIC_PARTITIONS": "2",
                "XMODAL_FRESHNESS_INTERVAL_S": "0",
                "XMODAL_RECALL_SAMPLE_RATE": "0",
            },
            kafka_bootstrap=broker.bootstrap,
        )
        expected: dict[str, tuple[str, int] | None] = {}  # id -> (text, version), None when deleted
        lock = threading.Lock()
        producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random", "linger.ms": 5})

        def put(item: str, text: str | None, version: int) -> None:
            value = None if text is None else orjson.dumps({"id": item, "modality": "text", "text": text, "metadata": {"v": version}})
            producer.produce(settings.media_topic, key=item, value=value)
            with lock:
                expected[item] = None if text is None else (text, version)

        with Node(settings, Roles(ingest=True, query=True)) as node:
            started = time.monotonic()
            for i in range(items):
                put(f"doc-{i}", f"document number {i} about {i % 7} things", 0)
            producer.flush(60)
            _wait(lambda: _caught_up(settings, broker.bootstrap), 600, "the seed to be indexed")
            print(f"seeded {items} items in {time.monotonic() - started:.1f} s", flush=True)

            phase = ["before"]
            latencies: dict[str, list[float]] = {"before": [], "during": [], "after": []}
            failures: list[str] = []
            stop = threading.Event()

            def search() -> None:
                with SearchClient(settings, broker.bootstrap) as client:
                    n = 0
                    while not stop.is_set():
                        began = time.monotonic()
                        try:
                            client.search(text=f"document number {n % items}", k=10, timeout=10)
                            latencies[phase[0]].append((time.monotonic() - began) * 1000)
                        except XmodalError as e:
                            failures.append(f"{phase[0]}: {e.code}: {e.message}")
                        n += 1
                        stop.wait(max(1 / search_rate - (time.monotonic() - began), 0))

            def ingest() -> None:
                n = 0
                while not stop.is_set():
                    began = time.monotonic()
                    kind = n % 4
                    if kind == 0:
                        put(f"new-{n}", f"a document written during the reindex, number {n}", 0)
                    elif kind in (1, 2):
                        j = n % items
                        put(f"doc-{j}", f"document number {j}, version {n}", n)
                    else:
                        put(f"new-{n - 3}", None, n)
                    producer.poll(0)
                    n += 1
                    stop.wait(max(1 / ingest_rate - (time.monotonic() - began), 0))

            threads = [threading.Thread(target=search), threading.Thread(target=ingest)]
            for t in threads:
                t.start()
            time.sleep(5)
            phase[0] = "during"
            new_settings = settings.model_copy(update={"hnsw_m": 8})
            result = Reindexer(new_settings, broker.bootstrap, "mini").run()
            phase[0] = "after"
            time.sleep(5)
            stop.set()
            for t in threads:
                t.join()
            producer.flush(60)
            _wait(lambda: _caught_up(settings, broker.bootstrap), 300, "the live group to catch up")
            _wait(lambda: node.index.index_report("mini")["generation"] == result.generation, 30, "the switch to be followed")  # type: ignore[union-attr]
            report = verify_space(settings, broker.bootstrap, "mini")

            wrong = []
            mini = node.spaces["mini"]
            with lock:
                final = dict(expected)
            live = {k: v for k, v in final.items() if v is not None}
            ids, texts = list(live), [live[k][0] for k in live]
            vectors = mini.encode_texts(texts) if texts else np.zeros((0, 384), np.float32)
            for item, vector in zip(ids, vectors):
                hits = node.index.search("mini", vector, 1, exact=True)  # type: ignore[union-attr]
                if not hits or hits[0].item_id != item or hits[0].metadata.get("v") != live[item][1]:
                    wrong.append(item)
            gone = [k for k, v in final.items() if v is None]
            indexed = node.index.count("mini")  # type: ignore[union-attr]
            extra = indexed - len(live)

        print(
            f"reindex: generation {result.previous} -> {result.generation} in {result.seconds:.1f} s, "
            f"{result.events} events ({result.events / max(result.seconds, 1e-9):.0f}/s), "
            f"HNSW built: {result.optimized}"
        )
        for name, values in latencies.items():
            print(f"search {name:6}: {len(values):5d} ok, p50 {_pct(values, 50):6.1f} ms, p99 {_pct(values, 99):6.1f} ms")
        if latencies["before"] and latencies["during"]:
            print(f"p99 during / before: {_pct(latencies['during'], 99) / _pct(latencies['before'], 99):.2f}")
        print(f"failed or timed-out searches: {len(failures)}" + (f" (first: {failures[0]})" if failures else ""))
        print(
            f"verify: missing {report.counts['missing']}, extra {report.counts['extra']}, stale {report.counts['stale']}, "
            f"wrong model {report.counts['wrong_model']}, pending {report.pending}, ok {report.ok} of {report.log_ids} ids"
        )
        print(
            f"own check: {len(live)} live ids, {len(wrong)} not found first with their latest version; "
            f"{len(gone)} deleted ids; {indexed} points ({extra:+d} against the live ids)"
        )
        bad = failures or wrong or extra or not report.clean
        print("OK" if not bad else "WRONG")
        return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--search-rate", type=float, default=20.0)
    parser.add_argument("--ingest-rate", type=float, default=15.0)
    args = parser.parse_args()
    sys.exit(run(args.items, args.search_rate, args.ingest_rate))


if __name__ == "__main__":
    main()
