"""CPU runtimes of the mini space's MiniLM text tower against torch fp32, in one run (issue 12's
first lever: "ONNX Runtime or int8 dynamic quantization; prove embeddings agree").

Variants, each encoding the same texts with the same tokenizer and pooling:
  torch       the current path (MiniLMText, fp32)
  torch-int8  torch.ao.quantization.quantize_dynamic of the Linear layers (qint8)
  onnx        ONNX Runtime fp32 on the transformer exported from the local weights
  onnx-int8   ONNX Runtime on that file after onnxruntime.quantization.quantize_dynamic

Per variant: batch 1 p50/p99 ms over short queries ("a red circle on white"), texts/s at batch 64
over ingest captions, agreement with torch (min / mean cosine over the held-out captions + the
queries) and text->image R@10 of the mini space's held-out evaluation (evaluate_heldout, 300+300).
Timing rounds alternate the variants so that the machine's load falls on all of them alike;
ratios are against torch in the same run.

    python benchmarks/text_runtime.py            # about 2-4 minutes on 2 loaded cores
    python benchmarks/text_runtime.py --json
    python benchmarks/text_runtime.py --rounds 2 --variants torch,onnx   # quicker
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("torch", "torch-int8", "onnx", "onnx-int8")

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
BACKGROUNDS = ("white", "black", "gray")
SOUNDS = ("a low beep", "a rising whistle", "white noise", "a quiet bell", "a loud organ chord")


def short_queries() -> list[str]:
    """Search-box texts: 'a red circle on white' and friends (192 + 5)."""
    qs = [f"a {c} {s} on {b}" for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
    return qs + list(SOUNDS)


def load_variants(names: Sequence[str], cache_dir: Path, threads: int) -> dict[str, Callable[[list[str]], np.ndarray]]:
    import torch

    from xmodal.encoders.mini.text import MiniLMText

    torch.set_num_threads(threads)
    encoders: dict[str, Callable[[list[str]], np.ndarray]] = {}
    base = MiniLMText()
    base.load()
    encoders["torch"] = base.encode
    if "torch-int8" in names:
        quant = copy.copy(base)
        quant._model = torch.ao.quantization.quantize_dynamic(  # noqa: SLF001 (a benchmark's variant)
            copy.deepcopy(base._model), {torch.nn.Linear}, dtype=torch.qint8  # noqa: SLF001
        )
        encoders["torch-int8"] = quant.encode
    if "onnx" in names or "onnx-int8" in names:
        from xmodal.encoders.mini.text_runtime import OnnxMiniLMText

        onnx = OnnxMiniLMText(cache_dir, threads=threads)
        started = time.perf_counter()
        onnx.load()
        print(f"# onnx file {onnx.onnx_path} ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if "onnx" in names:
            encoders["onnx"] = onnx.encode
        if "onnx-int8" in names:
            import onnxruntime
            from onnxruntime.quantization import QuantType, quantize_dynamic

            assert onnx.onnx_path is not None
            int8_path = onnx.onnx_path.with_suffix(".int8.onnx")
            if not int8_path.is_file():
                quantize_dynamic(str(onnx.onnx_path), str(int8_path), weight_type=QuantType.QInt8)
            quant_onnx = copy.copy(onnx)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            quant_onnx._session = onnxruntime.InferenceSession(  # noqa: SLF001
                str(int8_path), options, providers=["CPUExecutionProvider"]
            )
            encoders["onnx-int8"] = quant_onnx.encode
    return {name: encoders[name] for name in names}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.cache_dir:
        return _measure(args, Path(args.cache_dir))
    with tempfile.TemporaryDirectory(prefix="xmodal-text-runtime-") as tmp:  # ~110 MB of ONNX files
        return _measure(args, Path(tmp))


def _measure(args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    from xmodal.encoders.mini.corpus import heldout_gallery
    from xmodal.encoders.mini.evaluate import evaluate_heldout
    from xmodal.encoders.mini.space import MiniSpace

    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or "torch" not in names:
        raise SystemExit(f"--variants: {unknown or 'torch missing'}; choose from {', '.join(VARIANTS)} (torch first)")
    names = ["torch"] + [n for n in names if n != "torch"]
    threads = args.threads or len(os.sched_getaffinity(0))
    load_start = os.getloadavg()[0]
    encoders = load_variants(names, cache_dir, threads)

    queries = short_queries()
    held, seen = heldout_gallery("image", args.eval_n, 0)
    captions = [it.caption for it in held + seen]
    agreement_texts = captions + queries

    # Warm-up: first calls allocate and (ORT) plan; not part of any figure.
    for encode in encoders.values():
        encode(queries[:1])
        encode(captions[:64])

    single: dict[str, list[float]] = {n: [] for n in names}
    batch64: dict[str, list[float]] = {n: [] for n in names}
    rng = np.random.default_rng(0)
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            encode = encoders[name]
            for q in rng.choice(queries, size=args.singles):
                t0 = time.perf_counter()
                encode([str(q)])
                single[name].append((time.perf_counter() - t0) * 1000)
            for _ in range(args.batches):
                start = int(rng.integers(0, len(captions) - 64))
                t0 = time.perf_counter()
                encode(captions[start : start + 64])
                batch64[name].append(64 / (time.perf_counter() - t0))

    reference = encoders["torch"](agreement_texts)
    space = MiniSpace()
    space.load()
    gallery = (held, seen)
    results: dict[str, Any] = {}
    for name in names:
        vectors = reference if name == "torch" else encoders[name](agreement_texts)
        cosine = (vectors * reference).sum(1)

        class _Space:  # the mini space with this variant's text tower
            encode_texts = staticmethod(encoders[name])
            encode_images = staticmethod(space.encode_images)
            encode_audio = staticmethod(space.encode_audio)

        t2i = evaluate_heldout(_Space(), "image", gallery=gallery)["text->image"]
        results[name] = {
            "batch1_p50_ms": statistics.median(single[name]),
            "batch1_p99_ms": _percentile(single[name], 99),
            "batch64_texts_per_s": statistics.median(batch64[name]),
            "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()),
            "recall_at_10_text_to_image": t2i.recall[10],
            "recall_at_1_text_to_image": t2i.recall[1],
        }
    base = results["torch"]
    for name in names:
        r = results[name]
        r["batch1_p50_speedup"] = base["batch1_p50_ms"] / r["batch1_p50_ms"]
        r["batch1_p99_speedup"] = base["batch1_p99_ms"] / r["batch1_p99_ms"]
        r["batch64_speedup"] = r["batch64_texts_per_s"] / base["batch64_texts_per_s"]
        r["recall_at_10_unchanged"] = r["recall_at_10_text_to_image"] == base["recall_at_10_text_to_image"]
    return {
        "threads": threads,
        "load_average": [load_start, os.getloadavg()[0]],
        "rounds": args.rounds,
        "singles_per_round": args.singles,
        "batches_per_round": args.batches,
        "agreement_texts": len(agreement_texts),
        "eval_items": 2 * args.eval_n,
        "variants": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=6, help="alternating timing rounds")
    parser.add_argument("--singles", type=int, default=40, help="batch-1 encodes per variant per round")
    parser.add_argument("--batches", type=int, default=3, help="batch-64 encodes per variant per round")
    parser.add_argument("--eval-n", type=int, default=300, help="held-out + seen items of the evaluation")
    parser.add_argument("--threads", type=int, default=0, help="torch and ORT intra-op threads; 0: cores")
    parser.add_argument("--cache-dir", default="", help="where the ONNX files go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.eval_n < 40:
        parser.error("--eval-n must be >= 40: the batches of 64 are drawn from its 2n captions")
    report = measure(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    la = report["load_average"]
    print(
        f"MiniLM text tower, {report['threads']} threads, load average {la[0]:.1f} -> {la[1]:.1f}, "
        f"{report['rounds']} alternating rounds x {report['singles_per_round']} singles + "
        f"{report['batches_per_round']} batches of 64"
    )
    header = (
        f"{'variant':<11} {'b1 p50 ms':>9} {'b1 p99 ms':>9} {'b64 /s':>7} {'x p50':>6} {'x p99':>6} "
        f"{'x b64':>6} {'cos min':>8} {'cos mean':>9} {'R@1 t->i':>8} {'R@10 t->i':>9}"
    )
    print(header)
    for name, r in report["variants"].items():
        print(
            f"{name:<11} {r['batch1_p50_ms']:9.2f} {r['batch1_p99_ms']:9.2f} {r['batch64_texts_per_s']:7.0f} "
            f"{r['batch1_p50_speedup']:6.2f} {r['batch1_p99_speedup']:6.2f} {r['batch64_speedup']:6.2f} "
            f"{r['cosine_min']:8.6f} {r['cosine_mean']:9.6f} {r['recall_at_1_text_to_image']:8.3f} "
            f"{r['recall_at_10_text_to_image']:9.3f}"
        )
    print(f"(agreement over {report['agreement_texts']} texts; R@10 on {report['eval_items']} held-out+seen items)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
