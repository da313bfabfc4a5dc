"""Issue 12's performance targets as ratios to baselines measured in the same run (docs/performance.md).

    python benchmarks/ratios.py                  # 100k items in the index, the full run (several minutes)
    python benchmarks/ratios.py --quick --json   # tiny sizes: checks that every figure is produced

The machines are shared and noisy, so every figure is printed beside a baseline taken in the same
process minutes apart, and the target is on the ratio. One Node (what `xmodal up` hosts: ingest
agents, query service, quality monitors, embedded tansu and qdrant-edge, default settings except
that background builds are started by this script) serves every phase:

a. search, 1 client: p50/p99 against the Kafka request/reply floor (a raw confluent-kafka echo on the
   same broker: produce -> consume -> produce -> consume) plus one bare MiniLM query encode;
b. 16 searches in flight against the 1-client rate;
c. ingest of texts and mini images end to end (first produce to the last point in the index) against
   the bare batched encoder over the same decoded inputs;
d. freshness at half the idle text ingest rate: a client produces at that rate and polls search for
   probe items until each is found (produce -> first reply that holds it);
e. text ingest while 20 searches/s are sent, against the idle ingest rate of (c), and those searches'
   p99 against the same paced load with no ingest;
f. ingest of images into a `clip` space (random-init ViT-B-32 saved as a local checkpoint: the real
   architecture's compute, no hub) on a second Node of its own, against that tower's bare batched
   encode over the same decoded inputs.

`--phases c,d` runs only those phases (the index is filled and built whatever is chosen, so each
phase sees the same index; d and e take their rate and baseline from (c)'s text ingest, which they
run when c is not chosen).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))  # search_latency's captions and queries
from search_latency import QUERIES, captions, searches_in_flight  # noqa: E402

from xmodal.config import Settings, load_settings  # noqa: E402
from xmodal.encoders.media import MediaLimits, load_media  # noqa: E402
from xmodal.encoders.mini.corpus import image_items, image_png  # noqa: E402
from xmodal.indexer import IndexPoint  # noqa: E402
from xmodal.metrics import EVENTS  # noqa: E402
from xmodal.query_api import SearchClient, hits_or_raise  # noqa: E402
from xmodal.runtime import Node, Roles  # noqa: E402
from xmodal.schema import SearchReply  # noqa: E402
from xmodal.streams.broker import EmbeddedBroker  # noqa: E402
from xmodal.streams.kafka import consumer_config, ensure_topics, producer_config  # noqa: E402

SPACE = "mini"
PHASES = "abcdef"


def query_text(i: int) -> str:
    """The i-th query of a phase: each one new, so no phase is served from the query cache
    (query_cache.py) except the one that repeats queries on purpose."""
    return f"{QUERIES[i % len(QUERIES)]}, take {i}"


@dataclass(frozen=True)
class Sizes:
    items: int
    queries: int
    texts: int
    images: int
    freshness_s: float
    paced_s: float
    interference_texts: int
    clip_images: int

    @classmethod
    def of(cls, args: argparse.Namespace) -> Sizes:
        if args.quick:
            return cls(
                items=300, queries=30, texts=120, images=40, freshness_s=3.0, paced_s=3.0, interference_texts=120,
                clip_images=16,
            )
        return cls(
            items=args.items, queries=args.queries, texts=2000, images=args.images, freshness_s=20.0, paced_s=15.0,
            interference_texts=3000, clip_images=args.clip_images,
        )


def parse_phases(value: str) -> frozenset[str]:
    """'c,d' -> {'c', 'd'}; 'all' -> every phase. Unknown letters are refused (argparse reports it)."""
    if value.strip().lower() == "all":
        return frozenset(PHASES)
    chosen = {p.strip().lower() for p in value.split(",") if p.strip()}
    unknown = sorted(chosen - set(PHASES))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"phases are comma-separated letters of {','.join(PHASES)} (or 'all'), not {value!r}"
        )
    return frozenset(chosen)


def quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        raise SystemExit("no latency was recorded: every request failed (see the log above)")
    p50, p90, p99 = np.percentile(np.asarray(values), [50, 90, 99])
    return {"p50_ms": round(float(p50), 2), "p90_ms": round(float(p90), 2), "p99_ms": round(float(p99), 2), "n": len(values)}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


class TowerUse:
    """A tower scheduler's accounting over a stretch (phase e): each class's turns and share of the
    wall time in the tower, and how many query calls rode along in ingest slices."""

    def __init__(self, node: Node) -> None:
        self.scheduler = getattr(node.spaces[SPACE], "scheduler", None)  # None: a tree before the scheduler
        if self.scheduler is not None:
            self.busy, self.turns = dict(self.scheduler.busy_s), dict(self.scheduler.turns)
            self.riders, self.t0 = getattr(self.scheduler, "riders", 0), time.perf_counter()
            getattr(self.scheduler, "ingest_gaps_s", []).clear()

    def since(self) -> dict[str, Any] | None:
        if self.scheduler is None:
            return None
        wall, s = time.perf_counter() - self.t0, self.scheduler
        use: dict[str, Any] = {
            p: {"turns": s.turns[p] - self.turns[p], "share": round((s.busy_s[p] - self.busy[p]) / wall, 3)}
            for p in ("query", "ingest")
        }
        use["query_calls_riding_in_slices"] = getattr(s, "riders", 0) - self.riders
        gaps = sorted(getattr(s, "ingest_gaps_s", []))
        if gaps:  # between an ingest call's end and the next one's arrival (the pipeline's write)
            use["ingest_gap_ms"] = {q: round(1000 * gaps[int(f * (len(gaps) - 1))], 1) for q, f in (("p50", 0.5), ("p90", 0.9), ("max", 1.0))}
        return use


# -- baselines ------------------------------------------------------------------------------------


def kafka_floor(settings: Settings, bootstrap: str, rounds: int, *, request_wait_ms: int = 5, reply_wait_ms: int = 5) -> list[float]:
    """A raw request/reply round trip on the broker the service uses, with its clients' settings
    (linger.ms 0, fetch.wait.max.ms 5 on both sides): the part of a
    search no service code can remove."""
    stamp = time.time_ns()
    requests, replies = f"floor-{stamp}.req", f"floor-{stamp}.rep"
    ensure_topics(settings.model_copy(update={"topic_partitions": 1}), bootstrap, [requests, replies])
    producer = Producer(producer_config(settings, bootstrap, **{"linger.ms": 0}))
    echo_in = Consumer(consumer_config(settings, bootstrap, **{"group.id": f"floor-{stamp}-a", "enable.auto.commit": False, "fetch.wait.max.ms": request_wait_ms}))
    back = Consumer(consumer_config(settings, bootstrap, **{"group.id": f"floor-{stamp}-b", "enable.auto.commit": False, "fetch.wait.max.ms": reply_wait_ms}))
    # New topics: from the beginning, so a request produced before the assignment settles is not skipped.
    echo_in.assign([TopicPartition(requests, 0, OFFSET_BEGINNING)])
    back.assign([TopicPartition(replies, 0, OFFSET_BEGINNING)])
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            message = echo_in.poll(0.05)
            if message is not None and message.error() is None:
                producer.produce(replies, message.value(), key=message.key())
                producer.poll(0)

    thread = threading.Thread(target=echo, name="floor-echo", daemon=True)
    thread.start()
    latencies: list[float] = []
    try:
        for i in range(rounds + 10):
            key = str(i).encode()
            t0 = time.perf_counter()
            producer.produce(requests, b'{"ping":1}', key=key)
            producer.poll(0)
            while True:
                message = back.poll(5)
                if message is None:
                    raise SystemExit("the Kafka floor's echo did not answer within 5 s")
                if message.error() is None and message.key() == key:
                    break
            if i >= 10:  # the first round trips pay connection set-up
                latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        stop.set()
        thread.join()
        echo_in.close()
        back.close()
        producer.flush(5)
    return latencies


def bare_query_encode(node: Node, rounds: int) -> list[float]:
    encoder = node.spaces[SPACE]
    latencies = []
    for i in range(rounds + 5):
        t0 = time.perf_counter()
        encoder.encode_texts([query_text(i)])  # the texts the 1-client phase sends
        if i >= 5:
            latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def bare_batched_encode(node: Node, contents: Sequence[Any], modality: str, *, space: str = SPACE) -> float:
    """Items per second of the space's tower over already decoded inputs, in the pipeline's batches."""
    encoder = node.spaces[space]
    encode: Callable[[Sequence[Any]], Any] = encoder.encode_texts if modality == "text" else encoder.encode_images
    batch = node.settings.batch_size
    encode(list(contents[:batch]))  # warm: first call picks kernels
    t0 = time.perf_counter()
    for start in range(0, len(contents), batch):
        encode(list(contents[start : start + batch]))
    return len(contents) / (time.perf_counter() - t0)


# -- the system under test --------------------------------------------------------------------------


def fill(node: Node, count: int) -> dict[str, float]:
    """`count` caption vectors in the index by direct upsert: up to 2000 distinct captions encoded by
    the node's tower, the rest near them (a caption's vector plus noise, normalised), so that 100k
    items cost seconds to make and still cluster as an encoder's output does."""
    assert node.index is not None
    t0 = time.perf_counter()
    texts = captions(count)
    distinct = min(count, 2000)
    base = np.asarray(node.spaces[SPACE].encode_texts(texts[:distinct]), dtype=np.float32)
    rng = np.random.default_rng(1)
    for start in range(0, count, 5000):
        rows = np.arange(start, min(count, start + 5000))
        vectors = base[rows % distinct]
        if start + len(rows) > distinct:
            vectors = vectors + rng.normal(0, 0.02, vectors.shape).astype(np.float32) * (rows >= distinct)[:, None]
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        node.index.upsert(
            SPACE, [IndexPoint(f"item/{i}", vectors[j], "text", {"caption": texts[i]}) for j, i in enumerate(rows)]
        )
    return {"fill_s": round(time.perf_counter() - t0, 1)}


def build_hnsw(node: Node) -> dict[str, Any]:
    """The background HNSW build `xmodal up` starts after enough upserts, run now and waited for."""
    from xmodal.indexer.builder import Build

    t0 = time.perf_counter()
    result = Build(node.index, SPACE).start().wait(1800)  # type: ignore[arg-type]
    return {"build_s": round(time.perf_counter() - t0, 1), "indexed": result.indexed}


def wait_for_count(node: Node, target: int, timeout: float, space: str = SPACE) -> float:
    assert node.index is not None
    deadline = time.monotonic() + timeout
    while node.index.count(space) < target:
        if node.failure is not None:
            raise SystemExit(f"ingest failed: {node.failure}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the index holds {node.index.count(space)} points, not {target}, after {timeout} s")
        # An exact count at 100k holds the GIL for milliseconds (py-spy: 28% of samples at a
        # 10 ms poll): poll seldom, or the measurement slows what it measures.
        time.sleep(0.1)
    return time.perf_counter()


def text_events(prefix: str, count: int) -> list[tuple[str, bytes]]:
    texts = captions(count)
    return [
        (f"{prefix}/{i}", orjson.dumps({"id": f"{prefix}/{i}", "modality": "text", "text": f"{t} number {i}"}))
        for i, t in enumerate(texts)
    ]


def image_events(prefix: str, count: int) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}/{i}", orjson.dumps({"id": f"{prefix}/{i}", "modality": "image", "data": base64.b64encode(image_png(it.media)).decode()}))
        for i, it in enumerate(image_items(count, "seen"))
    ]


def events_written() -> float:
    """Events the node's pipeline has indexed or dead-lettered so far (its own counter, incremented
    once the index acknowledged the batch's writes)."""
    return sum(EVENTS.labels(outcome)._value.get() for outcome in ("indexed", "dead_lettered"))


def ingest(node: Node, producer: Producer, events: Sequence[tuple[str, bytes]], *, space: str = SPACE) -> float:
    """Events per second from the first produce until the index holds every one.

    The end is seen on the pipeline's counter (cheap to read every 5 ms), then checked with one
    exact count: an exact count at 100k takes about 40 ms of GIL-holding work here, and polling it
    slowed the ingest it timed (docs/performance.md)."""
    assert node.index is not None
    before = node.index.count(space)
    written = events_written()
    t0 = time.perf_counter()
    for key, value in events:
        producer.produce(node.settings.media_topic, value, key=key.encode())
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 600
    while events_written() < written + len(events) and time.monotonic() < deadline:
        if node.failure is not None:
            raise SystemExit(f"ingest failed: {node.failure}")
        time.sleep(0.005)
    done = time.perf_counter()
    if node.index.count(space) < before + len(events):  # e.g. another event counted (a probe)
        done = wait_for_count(node, before + len(events), max(1.0, deadline - time.monotonic()), space)
    return len(events) / (done - t0)


def decoded(events: Sequence[tuple[str, bytes]], modality: str, limits: MediaLimits) -> list[Any]:
    bodies = [orjson.loads(value) for _, value in events]
    if modality == "text":
        return [b["text"] for b in bodies]
    return [load_media("image", data_b64=b["data"], uri=None, limits=limits) for b in bodies]


# -- search load ---------------------------------------------------------------------------------


def sequential(client: SearchClient, count: int, text: Callable[[int], str] = query_text) -> tuple[list[float], float]:
    latencies = []
    t0 = time.perf_counter()
    for i in range(count):
        s = time.perf_counter()
        hits_or_raise(client.search_async(text(i), k=10).result(30))
        latencies.append((time.perf_counter() - s) * 1000)
    return latencies, count / (time.perf_counter() - t0)


def in_flight(client: SearchClient, count: int, level: int) -> tuple[list[float], float]:
    latencies, failures, rate = searches_in_flight(client, [query_text(count + i) for i in range(count)], 10, level)
    if failures:
        raise SystemExit(f"{len(failures)} of {count} searches failed: {failures[0]!r}")
    return latencies, rate


class PacedSearches:
    """Open-loop search load: one search every 1/rate s, whatever the replies do, timed in callbacks."""

    def __init__(self, client: SearchClient, rate: float, offset: int) -> None:
        """`offset`: the first query number (query_text), so that two loads send different queries."""
        self._client, self._period, self._offset = client, 1.0 / rate, offset
        self.latencies: list[float] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-searches", daemon=True)
        self._pending: list[Future[SearchReply]] = []

    def __enter__(self) -> PacedSearches:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for future in self._pending:
            try:
                future.result(30)
            except BaseException:  # noqa: BLE001 - the callback recorded it
                pass

    def _done(self, sent: float, future: Future[SearchReply]) -> None:
        try:
            hits_or_raise(future.result())
            self.latencies.append((time.perf_counter() - sent) * 1000)
        except BaseException as e:  # noqa: BLE001 - counted, reported by the caller
            self.failures.append(e)

    def _run(self) -> None:
        due = time.perf_counter()
        i = 0
        while not self._stop.is_set():
            sent = time.perf_counter()
            future = self._client.search_async(query_text(self._offset + i), k=10, timeout=30)
            future.add_done_callback(lambda f, s=sent: self._done(s, f))
            self._pending.append(future)
            i += 1
            due += self._period
            self._stop.wait(max(0.0, due - time.perf_counter()))


def freshness(node: Node, client: SearchClient, producer: Producer, rate: float, seconds: float) -> list[float]:
    """Produce text events at `rate`/s; about 4 a second are probes, each searched for (its own text,
    text results only) until a reply holds it. Freshness = produce call -> that reply, in ms."""
    probe_every = max(1, round(rate / 4))
    probes: dict[str, tuple[str, float]] = {}  # id -> (text, produced at)
    found: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def poll() -> None:
        while not (stop.is_set() and not probes):
            with lock:
                waiting = list(probes.items())
            if not waiting:
                time.sleep(0.005)
                continue
            for item_id, (text, produced) in waiting:
                hits = hits_or_raise(client.search_async(text, k=5, modalities=["text"]).result(30))
                if any(hit.id == item_id for hit in hits):
                    found.append((time.perf_counter() - produced) * 1000)
                    with lock:
                        del probes[item_id]

    poller = threading.Thread(target=poll, name="freshness-poller", daemon=True)
    poller.start()
    events = text_events(f"fresh{time.time_ns()}", int(rate * seconds))
    t0 = time.perf_counter()
    for n, (key, value) in enumerate(events):
        time.sleep(max(0.0, t0 + n / rate - time.perf_counter()))
        if n % probe_every == 0:
            with lock:
                probes[key] = (orjson.loads(value)["text"], time.perf_counter())
        producer.produce(node.settings.media_topic, value, key=key.encode())
        producer.poll(0)
    stop.set()
    poller.join(120)
    if poller.is_alive():
        raise SystemExit(f"{len(probes)} freshness probes were not searchable 120 s after the last produce")
    return found


# -- report ----------------------------------------------------------------------------------------


def verdict(ratio: float, target: float, higher_is_better: bool) -> str:
    return "PASS" if (ratio >= target if higher_is_better else ratio <= target) else "MISS"


def row(name: str, figure: float, unit: str, baseline: float, baseline_name: str, target: float, higher: bool) -> dict[str, Any]:
    ratio = figure / baseline
    return {
        "figure": name, "value": round(figure, 2), "unit": unit, "baseline": round(baseline, 2),
        "baseline_is": baseline_name, "ratio": round(ratio, 3), "target": f"{'>=' if higher else '<='} {target}",
        "verdict": verdict(ratio, target, higher),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| figure | value | baseline (same run) | ratio | target | |",
        "|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['figure']} | {r['value']} {r['unit']} | {r['baseline']} ({r['baseline_is']}) | "
            f"{r['ratio']:.2f} | {r['target']} | {r['verdict']} |"
        )
    return "\n".join(lines)


def plot(latencies: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in latencies.items():
        ordered = np.sort(np.asarray(values))
        ax.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=f"{name} (n={len(ordered)})")
    ax.set_xscale("log")
    ax.set_xlabel("search latency seen by the client, ms (log)")
    ax.set_ylabel("fraction of searches at or below")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("xmodal search latency, one run of benchmarks/ratios.py")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def clip_checkpoint(directory: Path) -> Path:
    """A random-init open_clip ViT-B-32 saved as a state_dict file, loaded back through the same
    local-path code users take offline (tests/encoders/conftest.py does the same): the real model's
    compute with no hub."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = directory / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return path


def clip_ingest(base: Settings, bootstrap: str, directory: Path, count: int) -> tuple[float, float]:
    """(f): images ingested end to end by a Node whose one space is `clip`, and the bare batched
    ViT-B-32 over the same decoded inputs (items/s each). Its own topics and data dir, same broker."""
    settings = base.model_copy(
        update={
            "spaces": ("clip",), "clip_model": "ViT-B-32", "clip_pretrained": str(clip_checkpoint(directory)),
            "topic_prefix": "ratios-clip", "data_dir": directory / "data", "metrics_port": 0,
        }
    )
    with Node(settings, Roles(ingest=True, query=False)) as node:
        producer = Producer(producer_config(settings, node.bootstrap))
        ingest(node, producer, image_events("clip-warm", 4), space="clip")  # group joined, tower warm
        events = image_events("clip", count)
        rate = ingest(node, producer, events, space="clip")
        bare = bare_batched_encode(node, decoded(events, "image", MediaLimits.from_settings(settings)), "image", space="clip")
        producer.flush(10)
        del producer
    return rate, bare


def run(
    sizes: Sizes,
    say: Callable[[str], None],
    plot_path: Path | None,
    phases: frozenset[str] = frozenset(PHASES),
    text_runtime: str = "torch",
    ingest_slice: int | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "load_average_start": load_average(),
        },
        "sizes": sizes.__dict__,
        "phases": "".join(sorted(phases)),
        "text_runtime": text_runtime,
        "ingest_encode_slice": ingest_slice or Settings.model_fields["ingest_encode_slice"].default,
    }
    measured: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[float]] = {}
    searching = bool(phases & set("abde"))
    with tempfile.TemporaryDirectory(prefix="xmodal-ratios-") as tmp, EmbeddedBroker(Path(tmp) / "broker") as broker:
        settings = load_settings(
            {},
            kafka_bootstrap=broker.bootstrap,
            data_dir=Path(tmp) / "data",
            metrics_port=0,
            optimize_after_points=0,  # this script starts the build itself, between phases
            text_runtime=text_runtime,
            ingest_encode_slice=report["ingest_encode_slice"],
        )
        with Node(settings, Roles(ingest=True, query=True)) as node, SearchClient(settings, node.bootstrap) as client:
            producer = Producer(producer_config(settings, node.bootstrap))
            say(f"filling the index with {sizes.items} items")
            report["index"] = fill(node, sizes.items)
            if sizes.items >= 20_000:  # a smaller collection is scanned whatever is built (docs/scale.md)
                say("building HNSW (the background build of xmodal up, waited for)")
                report["index"].update(build_hnsw(node))
            warm = text_events("warm", 20)
            ingest(node, producer, warm)  # the agents have joined their group and loaded their towers
            if searching:
                for i in range(20):
                    client.search(QUERIES[i % len(QUERIES)], k=10)

            if "a" in phases:
                say("a: Kafka floor, bare query encode, 1 client")
                floor = quantiles(kafka_floor(settings, node.bootstrap, max(50, sizes.queries)))
                encode = quantiles(bare_query_encode(node, max(50, sizes.queries)))
                one, one_rate = sequential(client, sizes.queries)
                repeated, _ = sequential(client, sizes.queries, lambda i: QUERIES[i % len(QUERIES)])  # cached after warm-up
                one_q = quantiles(one)
                measured.update(
                    kafka_floor=floor, bare_query_encode=encode, search_1_client={**one_q, "per_s": round(one_rate, 1)},
                    search_1_client_repeated_queries=quantiles(repeated),
                )
                floor_plus_encode = floor["p50_ms"] + encode["p50_ms"]
                rows.append(row("search p50, 1 client", one_q["p50_ms"], "ms", floor_plus_encode, "Kafka floor p50 + bare encode p50", 1.2, False))
                rows.append(row("search p99, 1 client", one_q["p99_ms"], "ms", floor_plus_encode, "Kafka floor p50 + bare encode p50", 2.0, False))
                curves.update({"1 client": one, "1 client, repeated queries": repeated})
            if "b" in phases:
                say("b: 16 in flight")
                if "a" not in phases:
                    _, one_rate = sequential(client, sizes.queries)
                sixteen, sixteen_rate = in_flight(client, sizes.queries * 2, 16)
                measured["search_16_in_flight"] = {**quantiles(sixteen), "per_s": round(sixteen_rate, 1)}
                rows.append(row("searches/s, 16 in flight", sixteen_rate, "/s", one_rate, "1-client searches/s", 4.0, True))
                curves["16 in flight"] = sixteen

            text_rate = 0.0
            if phases & set("cde"):
                say("c: ingest end to end and bare")
                limits = MediaLimits.from_settings(settings)
                texts = text_events("text", sizes.texts)
                text_rate = ingest(node, producer, texts)
                measured["ingest_text_per_s"] = round(text_rate, 1)
            if "c" in phases:
                images = image_events("image", sizes.images)
                image_rate = ingest(node, producer, images)
                bare_text = bare_batched_encode(node, decoded(texts, "text", limits), "text")
                bare_image = bare_batched_encode(node, decoded(images, "image", limits), "image")
                measured.update(
                    bare_text_per_s=round(bare_text, 1), ingest_image_per_s=round(image_rate, 1),
                    bare_image_per_s=round(bare_image, 1),
                )
                rows.append(row("text ingest end to end", text_rate, "/s", bare_text, "bare batched MiniLM /s", 0.9, True))
                rows.append(row("image ingest end to end", image_rate, "/s", bare_image, "bare batched mini CNN /s", 0.9, True))

            if "d" in phases:
                say(f"d: freshness at {text_rate / 2:.0f} events/s")
                fresh = quantiles(freshness(node, client, producer, text_rate / 2, sizes.freshness_s))
                measured["freshness"] = {**fresh, "rate_per_s": round(text_rate / 2, 1)}
                rows.append(row("freshness p99 at half max rate", fresh["p99_ms"], "ms", 1000.0, "the 1 s target", 1.0, False))

            if "e" in phases:
                say("e: 20 searches/s idle, then during an ingest")
                with PacedSearches(client, 20, 100_000) as idle_load:
                    time.sleep(sizes.paced_s)
                tower = TowerUse(node)
                with PacedSearches(client, 20, 200_000) as busy_load:
                    busy_rate = ingest(node, producer, text_events("busy", sizes.interference_texts))
                measured["tower_during_ingest"] = tower.since()
                failures = idle_load.failures + busy_load.failures
                if failures:
                    raise SystemExit(f"{len(failures)} paced searches failed: {failures[0]!r}")
                idle_paced, busy_paced = quantiles(idle_load.latencies), quantiles(busy_load.latencies)
                measured.update(
                    paced_20_idle=idle_paced, paced_20_during_ingest=busy_paced,
                    ingest_during_searches_per_s=round(busy_rate, 1),
                )
                rows.append(row("text ingest with 20 searches/s", busy_rate, "/s", text_rate, "idle text ingest /s", 0.7, True))
                rows.append(row("search p99 at 20/s during ingest", busy_paced["p99_ms"], "ms", idle_paced["p99_ms"], "p99 at 20/s idle", 2.0, False))
                curves.update({"20/s idle": idle_load.latencies, "20/s during ingest": busy_load.latencies})
            producer.flush(10)
            del producer  # librdkafka disconnects now, not after the broker stopped

        if "f" in phases:
            say(f"f: {sizes.clip_images} images into a clip space (random-init ViT-B-32), end to end and bare")
            clip_dir = Path(tmp) / "clip"
            clip_dir.mkdir()
            clip_rate, bare_clip = clip_ingest(settings, broker.bootstrap, clip_dir, sizes.clip_images)
            measured.update(ingest_clip_image_per_s=round(clip_rate, 2), bare_clip_image_per_s=round(bare_clip, 2))
            rows.append(row("clip image ingest end to end", clip_rate, "/s", bare_clip, "bare batched ViT-B-32 /s", 0.9, True))

    report["measured"] = measured
    order = [r for name in FIGURES for r in rows if r["figure"] == name]
    report["ratios"] = order
    report["machine"]["load_average_end"] = load_average()
    if plot_path is not None and curves:
        plot(curves, plot_path)
        report["plot"] = str(plot_path)
    return report


FIGURES = [
    "search p50, 1 client", "search p99, 1 client", "searches/s, 16 in flight", "text ingest end to end",
    "image ingest end to end", "clip image ingest end to end", "freshness p99 at half max rate",
    "text ingest with 20 searches/s", "search p99 at 20/s during ingest",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="items in the index for the search figures")
    parser.add_argument("--queries", type=int, default=300, help="searches of the 1-client phase (twice as many in flight)")
    parser.add_argument("--clip-images", type=int, default=200, help="images of the clip phase (f)")
    parser.add_argument(
        "--images", type=int, default=1000, help="64x64 PNGs of phase (c) (more: a steadier image figure)"
    )
    parser.add_argument(
        "--phases", type=parse_phases, default=frozenset(PHASES),
        help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all; see the module docstring)",
    )
    parser.add_argument(
        "--text-runtime", choices=("torch", "onnx"), default="torch",
        help="the mini text tower's runtime (XMODAL_TEXT_RUNTIME) for the whole run, baselines included",
    )
    parser.add_argument(
        "--ingest-slice", type=int, help="XMODAL_INGEST_ENCODE_SLICE for the run (default: the settings' default)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (300 items): checks the figures are made")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (progress on stderr)")
    parser.add_argument("--plot", type=Path, help="write the latency distributions as a PNG here")
    args = parser.parse_args(argv)
    if args.ingest_slice is not None and args.ingest_slice < 1:
        parser.error("--ingest-slice must be at least 1")
    if args.items < 1 or args.queries < 1 or args.clip_images < 1 or args.images < 1:
        parser.error("--items, --queries, --clip-images and --images must be at least 1")

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}, load {load_average()}] {message}", file=sys.stderr, flush=True)

    report = run(Sizes.of(args), say, args.plot, args.phases, args.text_runtime, args.ingest_slice)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    machine = report["machine"]
    print(
        f"machine: {machine['cpus']} CPUs ({machine['processor']}), torch {machine['torch']} with "
        f"{machine['torch_threads']} threads; load average {machine['load_average_start']} at start, "
        f"{machine['load_average_end']} at the end"
    )
    print(f"index: {report['sizes']['items']} items, {report['index']}")
    for name, figure in report["measured"].items():
        print(f"  {name}: {figure}")
    print(table(report["ratios"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
