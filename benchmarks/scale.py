"""Index settings at scale on the embedded index (qdrant-edge): build time, memory, recall@10, latency.

    python benchmarks/scale.py                          # the 100k sweep (docs/scale.md)
    python benchmarks/scale.py --n 1000000 --m 16 --ef-construct 128 --quantization none
    python benchmarks/scale.py --quick --json           # a tiny run (tests/indexer/test_scale_bench.py)
    python benchmarks/scale.py --plot docs/scale.png    # also draw recall against p99

What it does, per build (one (m, ef_construct, quantization) each; the build and the searches each
in a fresh child process, so that memory figures are their own):
1. N x 384 synthetic embeddings (below) are upserted through `EdgeIndex` and `optimize()` builds
   the HNSW graph (build time = the optimize call; the upsert is timed apart).
2. Memory: the building process's peak resident set; the shard's allocated size on disk (its
   write-ahead log apart); and, in another fresh process that opens the built index as a serving
   process would, the resident growth once every query was searched exactly and approximately
   (`serve_rss_mb`: what serving this index holds in memory).
3. For each search ef, the index is reopened with that `search_ef` (same build settings: nothing
   is rebuilt) and every query is searched approximately; the ground truth is each query searched
   once with `exact=True` (full vectors, every point). recall@10 = |approx ∩ exact| / 10 averaged over the
   queries; p50/p99 are of the approximate searches alone, one at a time on one thread, after a
   warm-up.

The design is a star, not a full grid: the first m, ef_construct and quantization listed are the
centre, and each other value is tried with the centre's other two (so 3 m x 3 ef_construct x 3
quantizations are 7 builds, not 27). `--grid` builds the full cross product instead.

The data. Uniform random unit vectors are the worst case for an ANN index: in 384 dimensions all
their pairwise cosines crowd around 0 (about ±0.05), so the 10th neighbour is barely nearer than the
1000th and a greedy graph walk has no gradient to follow; nothing a real encoder makes looks like
that. Embeddings have (a) a shared offset (every MiniLM caption has cosine about 0.1-0.2 with every
other), (b) topics: clusters whose members are much closer to one another, and (c) anisotropy: a
few directions carry most of the variance (a decaying spectrum). The generator draws a fixed
layout from `--seed` (offset, `topics` centres, a random rotation) and then each point as
offset/2 + its topic's centre + noise whose standard deviation decays as 1/sqrt(1 + i/8) along the
rotated axes i, normalised to unit length. Queries come from the same distribution (another seed),
not from the indexed points. `pair_cos` and `nn10_cos` in the output describe what was generated.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xmodal.indexer import EdgeIndex, IndexPoint
from xmodal.indexer.settings import IndexSettings

SPACE = "bench"
K = 10
CHUNK = 20_000  # points generated and upserted at a time


@dataclasses.dataclass(frozen=True)
class Data:
    n: int
    dim: int
    topics: int
    seed: int

    def _layout(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        rng = np.random.default_rng(self.seed)
        offset = rng.normal(size=self.dim)
        centres = rng.normal(size=(self.topics, self.dim))
        spectrum = 1 / np.sqrt(1 + np.arange(self.dim) / 8)
        spectrum *= np.sqrt(self.dim / (spectrum**2).sum())  # total noise variance = dim, like a centre's
        axes = np.linalg.qr(rng.normal(size=(self.dim, self.dim)))[0]
        return offset, centres, spectrum, axes

    def draw(self, count: int, stream: int) -> NDArray[np.float32]:
        offset, centres, spectrum, axes = self._layout()
        rng = np.random.default_rng([self.seed, stream])
        topic = rng.integers(0, self.topics, size=count)
        x = 0.5 * offset + centres[topic] + (rng.normal(size=(count, self.dim)) * spectrum) @ axes
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self) -> Iterator[tuple[int, NDArray[np.float32]]]:
        for start in range(0, self.n, CHUNK):
            yield start, self.draw(min(CHUNK, self.n - start), stream=1 + start // CHUNK)

    def queries(self, count: int) -> NDArray[np.float32]:
        return self.draw(count, stream=0)


@dataclasses.dataclass(frozen=True)
class Build:
    m: int
    ef_construct: int
    quantization: str

    def settings(self, search_ef: int, quick: bool) -> IndexSettings:
        # A quick run's few thousand points are below Qdrant's default thresholds (they would
        # stay a plain scan); lower them so that the graph is really built and walked.
        small = {"indexing_threshold_kb": 16, "full_scan_threshold_kb": 16} if quick else {}
        return IndexSettings(
            hnsw_m=self.m,
            hnsw_ef_construct=self.ef_construct,
            search_ef=search_ef,
            quantization=self.quantization,  # type: ignore[arg-type]
            quantization_rescore=True,
            quantization_oversampling=2.0,
            **small,
        )


def rss_mb() -> tuple[float, float]:
    """(resident, peak resident) of this process in MiB, from /proc (Linux)."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def disk_mb(path: Path, *, wal: bool) -> float:
    """Allocated bytes (not apparent: the engine's files may be sparse) of the write-ahead log
    (`wal=True`) or of everything else (segments, payload, manifests)."""
    total = 0
    for f in path.rglob("*"):
        if f.is_file() and ("wal" in f.relative_to(path).parts) == wal:
            total += f.stat().st_blocks * 512
    return total / 2**20


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def describe(data: Data) -> dict[str, float]:
    """Cosine statistics of the generated points: what kind of data the figures are about."""
    sample = data.draw(2000, stream=1)
    pair = sample[:1000] @ sample[1000:].T
    near = np.sort(sample @ sample.T, axis=1)[:, -K - 1 : -1]  # the 10 nearest, self excluded
    return {"pair_cos": round(float(pair.mean()), 3), "nn10_cos": round(float(near.mean()), 3)}


def build_index(data: Data, build: Build, quick: bool, root: Path) -> dict[str, Any]:
    """Upsert the data and build the graph (in a child process: its peak memory is the build's)."""
    index = EdgeIndex(root, index_settings=build.settings(128, quick))
    index.ensure_collection(SPACE, data.dim)
    started = time.perf_counter()
    for start, vectors in data.chunks():
        index.upsert(
            SPACE, [IndexPoint(f"p{start + i}", v, "image", {"topic": (start + i) % 50}) for i, v in enumerate(vectors)]
        )
    upsert_s = time.perf_counter() - started
    print(f"    {build}: upserted {data.n} points in {upsert_s:.0f} s", file=sys.stderr, flush=True)
    started = time.perf_counter()
    index.optimize(SPACE)
    build_s = time.perf_counter() - started
    print(f"    {build}: optimize() built the index in {build_s:.0f} s", file=sys.stderr, flush=True)
    report = index.index_report(SPACE)
    index.close()
    return {
        "build_s": round(build_s, 2),
        "upsert_s": round(upsert_s, 2),
        "build_peak_rss_mb": round(rss_mb()[1], 1),
        "indexed_vectors": report["indexed_vectors"],
        "segments": report["segments"],
    }


def serve_index(data: Data, build: Build, search_efs: Sequence[int], n_queries: int, quick: bool, root: Path) -> list[dict[str, Any]]:
    """Open the built index as a serving process would and sweep search ef (in a child process)."""
    queries = data.queries(n_queries)
    rss_before, _ = rss_mb()
    index = EdgeIndex(root, index_settings=build.settings(search_efs[0], quick))
    exact = [{h.item_id for h in index.search(SPACE, q, K, exact=True)} for q in queries]
    for q in queries:
        index.search(SPACE, q, K)
    serve_rss = rss_mb()[0] - rss_before  # everything the searches touched is resident now
    index.close()
    rows = []
    for ef in search_efs:
        index = EdgeIndex(root, index_settings=build.settings(ef, quick))
        for q in queries[: min(20, len(queries))]:  # warm-up
            index.search(SPACE, q, K)
        latencies, found = [], 0
        for q, truth in zip(queries, exact, strict=True):
            started = time.perf_counter()
            hits = index.search(SPACE, q, K)
            latencies.append((time.perf_counter() - started) * 1000)
            found += len(truth & {h.item_id for h in hits})
        index.close()
        rows.append(
            {
                "search_ef": ef,
                "recall_at_10": round(found / (K * len(queries)), 4),
                "p50_ms": round(percentile(latencies, 50), 3),
                "p99_ms": round(percentile(latencies, 99), 3),
                "serve_rss_mb": round(serve_rss, 1),
            }
        )
    return rows


def run_build(data: Data, build: Build, search_efs: Sequence[int], n_queries: int, quick: bool, workdir: str | None) -> list[dict[str, Any]]:
    """One build and its search sweep, each in a fresh process; the index is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="scale-", dir=workdir))
    try:
        built = run_isolated(build_index, data, build, quick, root)
        on_disk = {"disk_mb": round(disk_mb(root, wal=False), 1), "wal_mb": round(disk_mb(root, wal=True), 1)}
        served = run_isolated(serve_index, data, build, search_efs, n_queries, quick, root)
        shape = {"m": build.m, "ef_construct": build.ef_construct, "quantization": build.quantization}
        return [{**shape, **row, **built, **on_disk} for row in served]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _child(target: Any, args: tuple[Any, ...], results: Any) -> None:
    try:
        results.put(("ok", target(*args)))
    except BaseException as e:  # report it to the parent, which says what failed
        results.put(("error", f"{type(e).__name__}: {e}"))


def run_isolated(target: Any, *args: Any) -> Any:
    context = mp.get_context("spawn")  # a fresh interpreter: memory figures of this step alone
    results = context.Queue()
    child = context.Process(target=_child, args=(target, args, results))
    child.start()
    status, value = results.get()
    child.join()
    if status != "ok":
        raise RuntimeError(f"{target.__name__} {args[1]} failed: {value}")
    return value


def builds(ms: Sequence[int], efcs: Sequence[int], quantizations: Sequence[str], grid: bool) -> list[Build]:
    if grid:
        return [Build(m, e, q) for q, m, e in itertools.product(quantizations, ms, efcs)]
    (m0, *other_ms), (e0, *other_efcs), (q0, *other_qs) = ms, efcs, quantizations
    return (
        [Build(m0, e0, q0)]
        + [Build(m, e0, q0) for m in other_ms]
        + [Build(m0, e, q0) for e in other_efcs]
        + [Build(m0, e0, q) for q in other_qs]
    )


def table(rows: Sequence[dict[str, Any]]) -> str:
    columns = [
        ("m", "m", "{}"),
        ("ef_construct", "ef_c", "{}"),
        ("quantization", "quant", "{}"),
        ("search_ef", "ef", "{}"),
        ("recall_at_10", "recall@10", "{:.3f}"),
        ("p50_ms", "p50 ms", "{:.2f}"),
        ("p99_ms", "p99 ms", "{:.2f}"),
        ("build_s", "build s", "{:.1f}"),
        ("serve_rss_mb", "serve MiB", "{:.0f}"),
        ("build_peak_rss_mb", "build peak MiB", "{:.0f}"),
        ("disk_mb", "disk MiB", "{:.0f}"),
    ]
    cells = [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title, _) in enumerate(columns)]
    lines = ["  ".join(title.rjust(w) for (_, title, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """recall@10 against p50 (left) and p99 (right), one line per build through its search ef values.

    Both, because p99 of sub-millisecond searches on a shared machine mostly measures the scheduler."""
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=120, sharey=True)
    key = lambda r: (r["m"], r["ef_construct"], r["quantization"])  # noqa: E731
    for axis, latency in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        for (m, efc, quant), group in itertools.groupby(sorted(rows, key=key), key=key):
            points = sorted(group, key=lambda r: r["search_ef"])
            label = f"m={m} ef_c={efc}" + ("" if quant == "none" else f" {quant}+rescore")
            axis.plot([r[latency] for r in points], [r["recall_at_10"] for r in points], marker="o", label=label)
            for r in points:
                axis.annotate(
                    str(r["search_ef"]), (r[latency], r["recall_at_10"]), fontsize=6, xytext=(2, -8), textcoords="offset points"
                )
        axis.axhline(0.95, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel(f"search {latency[:3]} (ms, one thread, search alone)")
        values = [r[latency] for r in rows]
        if max(values) > 5 * min(values):  # a wide spread reads better on a log axis
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
            axis.tick_params(axis="x", which="minor", labelsize=6)
        axis.grid(True, which="both", linewidth=0.3)
    axes[0].set_ylabel("recall@10 against exact search")
    axes[1].legend(fontsize=7, title="build (point labels: search ef)", title_fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="indexed vectors (default 100000)")
    parser.add_argument("--dim", type=int, default=384, help="dimension (default 384, the mini space's)")
    parser.add_argument("--topics", type=int, help="clusters in the data (default n/1000, at least 20)")
    parser.add_argument("--queries", type=int, default=500, help="queries per setting (default 500)")
    parser.add_argument("--m", type=ints, default=[16, 8, 32], help="HNSW m values, comma-separated")
    parser.add_argument("--ef-construct", type=ints, default=[128, 64, 256], help="HNSW ef_construct values")
    parser.add_argument("--quantization", default="none,int8,binary", help="none,int8,binary (rescored, oversampling 2)")
    parser.add_argument("--search-ef", type=ints, default=[32, 64, 128, 256], help="search ef values")
    parser.add_argument("--grid", action="store_true", help="every combination instead of the star design")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny run: 3000 points, 2 builds, 2 ef values")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--plot", type=Path, help="write recall@10 against p99 to this PNG")
    parser.add_argument("--workdir", default=None, help="where the index is built (default: the temp dir)")
    args = parser.parse_args(argv)

    quantizations = [q.strip() for q in args.quantization.split(",") if q.strip()]
    if args.quick:
        args.n, args.queries = 3000, 50
        args.m, args.ef_construct, args.search_ef = [16], [64], [16, 64]
        quantizations = ["none", "int8"]
    if not quantizations or any(q not in ("none", "int8", "binary") for q in quantizations):
        parser.error(f"--quantization takes none, int8, binary; got {args.quantization!r}")
    if args.n < 2 * K or args.queries < 1:
        parser.error("--n must be at least 20 and --queries at least 1")
    data = Data(args.n, args.dim, args.topics or max(20, args.n // 1000), args.seed)
    plan = builds(args.m, args.ef_construct, quantizations, args.grid)
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, {platform.system()}"
    progress = sys.stderr if args.json else sys.stdout  # --json keeps stdout for the JSON alone
    print(f"{data.n} x {data.dim} vectors in {data.topics} topics, {args.queries} queries, {len(plan)} builds; {machine}",
          file=progress, flush=True)

    rows: list[dict[str, Any]] = []
    for build in plan:
        started = time.perf_counter()
        rows += run_build(data, build, args.search_ef, args.queries, args.quick, args.workdir)
        best = max(rows[-len(args.search_ef) :], key=lambda r: r["recall_at_10"])
        print(
            f"  {build}: built in {rows[-1]['build_s']:.0f} s, best recall@10 {best['recall_at_10']:.3f} "
            f"(ef {best['search_ef']}, p99 {best['p99_ms']:.2f} ms); {time.perf_counter() - started:.0f} s in all",
            file=progress,
            flush=True,
        )

    result = {
        "n": data.n,
        "dim": data.dim,
        "topics": data.topics,
        "queries": args.queries,
        "k": K,
        "seed": data.seed,
        "data": describe(data),
        "machine": machine,
        "results": rows,
    }
    if args.plot is not None:
        plot(rows, args.plot, f"qdrant-edge, {data.n:,} x {data.dim} clustered vectors, {args.queries} queries")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"data: mean pairwise cosine {result['data']['pair_cos']}, mean 10-NN cosine {result['data']['nn10_cos']}")
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
