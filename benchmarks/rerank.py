"""What the rerank stage costs per search: p50/p99 ms at N first-stage candidates scored.

    python benchmarks/rerank.py                          # N = 10, 50, 100; the mini cross-encoder if shipped
    python benchmarks/rerank.py --reranker tiny-blip     # a tiny random BLIP (the code path, not BLIP's cost)
    python benchmarks/rerank.py --reranker blip --blip-model /models/blip-itm-base-coco --n 10,50
    python benchmarks/rerank.py --reranker mini --cross-weights DIR   # a cross.safetensors not yet shipped
    python benchmarks/rerank.py --json                   # the figures as one JSON object

Everything runs in this process through the real Searcher: the `mini` space's towers (MiniLM text,
the shipped image tower) answer the first stage over a gallery of corpus images held by qdrant-edge
with their thumbnails (the views the reranker reads), and the rerank stage rescores the top N.
Each query is searched twice, first stage only (k = 10) and reranked (k = 10, rerank_k = N), in
alternating order; the rerank cost of a query is the difference of the two (paired, so noise from
the shared machine cancels as far as it can): fetching N candidates with their thumbnails, decoding
them, and the reranker's score() call. First-stage and reranked latencies are printed beside it.
Both wall-clock and CPU time (of this process, all threads) are measured: on a machine shared with
other jobs the wall clock includes waiting for a core, the CPU time does not.

`tiny-blip` is BLIP's code path on a model built here with 32-wide layers and 32 x 32 inputs: its
figures say what the stage's plumbing costs, not what a real BLIP costs (ViT-B/16 at 384 x 384 per
candidate image); measure that with `--reranker blip --blip-model DIR` on real weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from xmodal.config import load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.encoders.mini import MiniSpace
from xmodal.encoders.mini.corpus import image_items
from xmodal.encoders.rerank import Reranker
from xmodal.indexer import EdgeIndex, IndexPoint
from xmodal.query_api import Searcher
from xmodal.query_api.rerank import RerankStage
from xmodal.schema import SearchRequest
from xmodal.thumbnails import ThumbnailSpec, make_thumbnail

K = 10


def build_reranker(
    kind: str, blip_model: str | None, scratch: Path, threads: int, cross_weights: Path | None = None
) -> tuple[Reranker, str]:
    settings = load_settings({"XMODAL_DEVICE": "cpu", "XMODAL_TORCH_THREADS": str(threads)})
    if kind == "mini":
        from xmodal.encoders.mini.cross import MiniCrossEncoder, cross_path

        path = cross_path(cross_weights)
        if not path.is_file():
            sys.exit(f"no mini cross-encoder at {path}: train it, or pass --reranker tiny-blip")
        return MiniCrossEncoder(settings, weights_dir=cross_weights), f"mini cross-encoder ({path})"
    from xmodal.encoders.rerank.blip import BlipReranker

    if kind == "blip":
        if not blip_model:
            sys.exit("--reranker blip needs --blip-model DIR (weights on local disk)")
        return BlipReranker(settings.model_copy(update={"blip_model": blip_model})), f"BLIP {blip_model}"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "encoders"))
    from blip_support import save_tiny_blip  # the tests' tiny model, built the same way

    directory = save_tiny_blip(scratch / "tiny-blip")
    return BlipReranker(settings.model_copy(update={"blip_model": str(directory)})), "tiny random BLIP (32-wide, 32x32)"


def default_reranker() -> str:
    try:
        from xmodal.encoders.mini.cross import cross_path
    except ImportError:
        return "tiny-blip"
    return "mini" if cross_path().is_file() else "tiny-blip"


def fill(index: EdgeIndex, space: MiniSpace, count: int, thumbnail_size: int) -> list[str]:
    """`count` corpus images with thumbnails; returns their captions (the queries)."""
    items = image_items(count, "seen", seed=7)
    index.ensure_collection(space.name, space.dim)
    vectors = space.encode_images([item.media for item in items])
    spec = ThumbnailSpec(size=thumbnail_size)
    index.upsert(
        space.name,
        [
            IndexPoint(item.id, vectors[i], "image", thumbnail=make_thumbnail("image", item.media, spec))
            for i, item in enumerate(items)
        ],
    )
    return [item.caption for item in items]


def timed_search(searcher: Searcher, request: SearchRequest) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) of one search."""
    start, cpu = time.perf_counter(), time.process_time()
    searcher.search(request)
    return (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reranker", choices=["mini", "tiny-blip", "blip"], default=None, help="default: mini if shipped, else tiny-blip")
    parser.add_argument("--blip-model", default=None, help="BLIP weights directory for --reranker blip")
    parser.add_argument(
        "--cross-weights", type=Path, default=None,
        help="directory holding cross.safetensors for --reranker mini (default: the shipped weights)",
    )
    parser.add_argument("--n", default="10,50,100", help="candidates scored per search (rerank_k), comma-separated")
    parser.add_argument("--queries", type=int, default=30, help="searches per N (each run twice: with and without)")
    parser.add_argument("--gallery", type=int, default=300, help="images in the index")
    parser.add_argument("--thumbnail-size", type=int, default=128, help="thumbnail side stored with each image")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch intra-op threads (0: every usable core); on a machine shared with other jobs use 1: "
        "threads waiting on each other for a busy core cost more than they gain",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    ns = sorted({int(n) for n in args.n.split(",")})
    if ns[-1] > args.gallery:
        parser.error(f"--n up to {ns[-1]} needs a gallery of at least that many images (--gallery)")
    kind = args.reranker or default_reranker()
    threads = args.threads or len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as scratch:
        reranker, described = build_reranker(kind, args.blip_model, Path(scratch), threads, args.cross_weights)
        reranker.load()
        space = MiniSpace()
        space.load()
        torch.set_num_threads(threads)  # after every load: some set it from their settings, one to all cores
        index = EdgeIndex(Path(scratch) / "index")
        captions = fill(index, space, args.gallery, args.thumbnail_size)
        limits = MediaLimits()
        stage = RerankStage({"mini": reranker}, limits)
        searcher = Searcher({"mini": space}, index, limits, rerank=stage)
        searcher.start(load_encoders=False)
        queries = [captions[i % len(captions)] for i in range(args.queries)]

        def request(text: str, n: int | None) -> SearchRequest:
            fields: dict[str, Any] = {"request_id": "bench", "query": {"text": text}, "k": K, "modalities": ["image"]}
            if n is not None:
                fields.update(rerank=True, rerank_k=n)
            return SearchRequest.model_validate(fields)

        for text in queries[:3]:  # warm-up: first calls allocate and fill caches
            searcher.search(request(text, ns[0]))
            searcher.search(request(text, None))
        rows = []
        for n in ns:
            first, reranked, cost, cpu_cost = [], [], [], []
            for i, text in enumerate(queries):
                pair = (request(text, None), request(text, n))
                order = pair if i % 2 == 0 else pair[::-1]  # alternate, so drift hits both sides alike
                times = {id(r): timed_search(searcher, r) for r in order}
                (wall_first, cpu_first), (wall_reranked, cpu_reranked) = times[id(pair[0])], times[id(pair[1])]
                first.append(wall_first)
                reranked.append(wall_reranked)
                cost.append(wall_reranked - wall_first)
                cpu_cost.append(cpu_reranked - cpu_first)
            rows.append(
                {
                    "n": n,
                    "rerank_p50_ms": percentile(cost, 50),
                    "rerank_p99_ms": percentile(cost, 99),
                    "rerank_cpu_p50_ms": percentile(cpu_cost, 50),
                    "rerank_cpu_p99_ms": percentile(cpu_cost, 99),
                    "per_candidate_cpu_ms": percentile(cpu_cost, 50) / n,
                    "first_stage_p50_ms": percentile(first, 50),
                    "reranked_p50_ms": percentile(reranked, 50),
                    "reranked_p99_ms": percentile(reranked, 99),
                    "slowdown_p50": percentile(reranked, 50) / percentile(first, 50),
                }
            )
        index.close()

    load = os.getloadavg()[0]
    machine = (
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}, load average {load:.1f} at the end"
    )
    if args.json:
        report = {"reranker": described, "machine": machine, "queries": args.queries, "gallery": args.gallery, "k": K, "rows": rows}
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    print(f"rerank cost through the Searcher: {described}; first stage mini over {args.gallery} images, k={K}")
    print(f"{args.queries} text queries per N, each searched with and without reranking; {machine}")
    print("rerank = reranked minus first stage, paired per query; cpu = CPU time of this process")
    header = ("N", "rerank p50", "rerank p99", "cpu p50", "cpu p99", "cpu/cand.", "1st p50", "reranked p50", "reranked p99", "x p50")
    print(("{:>5}" + " {:>12}" * 9).format(*header))
    for r in rows:
        cells = [r[key] for key in ("rerank_p50_ms", "rerank_p99_ms", "rerank_cpu_p50_ms", "rerank_cpu_p99_ms", "per_candidate_cpu_ms",
                                    "first_stage_p50_ms", "reranked_p50_ms", "reranked_p99_ms")]
        print(("{:>5}" + " {:>10.1f}ms" * 8 + " {:>12.1f}").format(r["n"], *cells, r["slowdown_p50"]))


if __name__ == "__main__":
    main()
