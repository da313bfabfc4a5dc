"""Search latency while the embedded index builds HNSW: idle, during a background build, and during
the old in-process `optimize()` for contrast.

    python benchmarks/build_stall.py                    # 100k x 384-d, searches paced at 50/s
    python benchmarks/build_stall.py --points 20000 --rate 0 --json
    python benchmarks/build_stall.py --quick            # 3000 x 32-d, seconds (the test runs this)

One process, one EdgeIndex filled with random unit vectors (the gallery an exact scan answers before
any build). A single client thread searches (k=10) in a loop, paced at `--rate` per second (0: back
to back), and times each search; a ticker thread sleeps 5 ms in a loop and records how much later than
asked it woke (what a Kafka heartbeat or the event loop would feel). Phases:

- idle: no build;
- background: xmodal.indexer.builder.Build (a niced builder process) builds a new generation while
  the client searches; the phase ends at the switch;
- in-process: `EdgeIndex.optimize()` on a second index with the same points, in this process (what
  `xmodal optimize` does on a stopped system; it holds the GIL for the whole build).

Printed: per phase searches, p50/p99/max latency, the ticker's worst stall, p99 / idle p99.
Target (issue 11): background p99 <= 2 x idle p99.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xmodal.indexer import EdgeIndex, IndexPoint
from xmodal.indexer.builder import Build
from xmodal.indexer.settings import IndexSettings

TICK_S = 0.005


@dataclass
class Phase:
    name: str
    searches: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    ticker_max_stall_ms: float
    seconds: float
    p99_vs_idle: float = 1.0


class Load:
    """The client thread and the ticker thread, running until stop()."""

    def __init__(self, index: EdgeIndex, queries: np.ndarray, rate: float) -> None:
        self._index, self._queries, self._rate = index, queries, rate
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.stall = 0.0
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._client), threading.Thread(target=self._ticker)]
        self._started = 0.0

    def start(self) -> Load:
        self._started = time.perf_counter()
        for t in self._threads:
            t.start()
        return self

    def stop(self, name: str) -> Phase:
        self._stop.set()
        for t in self._threads:
            t.join()
        if self.errors:
            raise self.errors[0]
        ms = np.asarray(self.latencies) * 1000
        return Phase(
            name,
            len(ms),
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 99)),
            float(ms.max()),
            self.stall * 1000,
            time.perf_counter() - self._started,
        )

    def _client(self) -> None:
        period = 1.0 / self._rate if self._rate > 0 else 0.0
        next_at = time.perf_counter()
        i = 0
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                self._index.search("s", self._queries[i % len(self._queries)], k=10)
            except BaseException as e:  # noqa: BLE001 - re-raised by stop()
                self.errors.append(e)
                return
            self.latencies.append(time.perf_counter() - start)
            i += 1
            if period:
                next_at += period
                time.sleep(max(0.0, next_at - time.perf_counter()))

    def _ticker(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            time.sleep(TICK_S)
            self.stall = max(self.stall, time.perf_counter() - start - TICK_S)


def progress(phase: Phase) -> Phase:
    print(f"  {phase.name}: {phase.searches} searches, p99 {phase.p99_ms:.2f} ms, {phase.seconds:.0f} s", file=sys.stderr)
    return phase


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(root: Path, vectors: np.ndarray, settings: IndexSettings) -> EdgeIndex:
    index = EdgeIndex(root, index_settings=settings)
    index.ensure_collection("s", vectors.shape[1])
    batch = 2048
    for start in range(0, len(vectors), batch):
        index.upsert(
            "s", [IndexPoint(f"item{start + i}", v, "image") for i, v in enumerate(vectors[start : start + batch])]
        )
    return index


def run(points: int, dim: int, rate: float, idle_s: float, settings: IndexSettings) -> dict[str, object]:
    vectors = unit_vectors(points, dim, 0)
    queries = unit_vectors(200, dim, 1)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="xmodal-build-stall-") as tmp:
        t = time.perf_counter()
        index = fill(Path(tmp) / "bg", vectors, settings)
        fill_s = time.perf_counter() - t

        load = Load(index, queries, rate).start()
        time.sleep(idle_s)
        phases.append(progress(load.stop("idle (exact scan)")))

        load = Load(index, queries, rate).start()
        result = Build(index, "s").start().wait()
        phases.append(progress(load.stop("during background build")))

        load = Load(index, queries, rate).start()
        time.sleep(idle_s)
        phases.append(progress(load.stop("after the switch (HNSW)")))
        index.close()

        other = fill(Path(tmp) / "fg", vectors, settings)
        load = Load(other, queries, rate).start()
        t = time.perf_counter()
        other.optimize("s")
        inprocess_s = time.perf_counter() - t
        phases.append(progress(load.stop("during in-process optimize()")))
        other.close()

    idle = phases[0].p99_ms
    for phase in phases:
        phase.p99_vs_idle = phase.p99_ms / idle
    return {
        "points": points,
        "dim": dim,
        "rate_per_s": rate,
        "fill_s": fill_s,
        "background_build_s": result.seconds,
        "in_process_optimize_s": inprocess_s,
        "indexed_vectors": result.indexed,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "phases": [asdict(p) for p in phases],
    }


def print_table(report: dict[str, object]) -> None:
    print(
        f"{report['points']} x {report['dim']}-d, searches paced at {report['rate_per_s']}/s (0: back to back); "
        f"fill {report['fill_s']:.1f} s; background build {report['background_build_s']:.1f} s "
        f"(HNSW over {report['indexed_vectors']} vectors); in-process optimize {report['in_process_optimize_s']:.1f} s; "
        f"{report['machine']}"
    )
    header = f"{'phase':32} {'searches':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>9} {'tick stall ms':>13} {'p99/idle':>8}"
    print(header)
    print("-" * len(header))
    for p in report["phases"]:  # type: ignore[attr-defined]
        print(
            f"{p['name']:32} {p['searches']:>8} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} {p['max_ms']:>9.1f} "
            f"{p['ticker_max_stall_ms']:>13.1f} {p['p99_vs_idle']:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rate", type=float, default=50.0, help="searches per second (0: back to back)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="3000 x 32-d with low thresholds: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    settings = IndexSettings()
    if args.quick:
        args.points, args.dim, args.idle_seconds = 3000, 32, 1.0
        settings = IndexSettings(indexing_threshold_kb=10, full_scan_threshold_kb=1)
    report = run(args.points, args.dim, args.rate, args.idle_seconds, settings)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
