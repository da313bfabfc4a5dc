"""First stage vs reranked: what the mini cross-encoder adds on binding, count and size queries.

    python -m xmodal.encoders.mini.evaluate_cross [--n 100] [--seed 0] [--rerank-k 50] [--write]

The gallery (`rerank_gallery`) is one image index as a user would ingest it: `n` held-out binding
scenes, their `n` swapped-binding twins (same layout, colours exchanged), `n` single objects of the
scenes' attributes and `n` ordinary corpus images (half held-out combinations, half seen;
corpus.binding_gallery). Queries:

- binding text->image: each scene's binding caption ("a red circle next to a blue square");
  relevant: the scenes with exactly those two (shape, colour) objects (the twin is not);
- counts / sizes text->image: each single object and ordinary held-out image described by shape,
  colour and its count ("two red circles") / its size ("a small red circle"); relevant: every image
  the caption is true of (its Constraint);
- binding image->text: each scene image against every caption of the gallery (scene, twin, single
  and ordinary captions and the count and size captions); relevant: the captions true of it.

First stage: the `mini` space as the service runs it (MiniSpace vectors of the original media,
cosines calibrated against the gallery as background, fusion.calibration). Reranked: the first
stage's top `rerank_k` rescored as calibrated score + alpha * logit, the cross-encoder reading the
candidates' stored views (xmodal/thumbnails.py: a JPEG of quality 80, 64x64 kept at 64x64; the
start of a text) and the query as given (the raw text, the full image); the rest keep their
first-stage order below them. Measures (ir-measures): Success@1, Success@5, nDCG@10, and the
share of queries with a relevant item in the first stage's top `rerank_k` (the reranker's ceiling).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from xmodal.encoders.mini import corpus
from xmodal.query_api.fusion import calibration
from xmodal.thumbnails import TEXT_PREVIEW_CHARS, image_thumbnail

__all__ = [
    "GROUPS",
    "QueryGroup",
    "RerankGallery",
    "Scored",
    "evaluate",
    "fit_alpha",
    "measure",
    "rerank_gallery",
    "score_groups",
    "stored_image",
    "stored_text",
]

MEASURES = (ir_measures.Success @ 1, ir_measures.Success @ 5, ir_measures.nDCG @ 10)
GROUPS = ("binding text->image", "counts text->image", "sizes text->image", "binding image->text")
THUMBNAIL_SIZE = 128  # XMODAL_THUMBNAIL_SIZE's default


def stored_image(image: Image.Image, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """What the index stores of an image and a reranker reads back: the JPEG thumbnail, decoded."""
    url = image_thumbnail(image, size)
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def stored_text(text: str) -> str:
    return text[:TEXT_PREVIEW_CHARS]


@dataclass
class QueryGroup:
    """Queries of one kind against one side of the gallery: each query's relevant candidate indices."""

    name: str
    query_modality: str
    queries: list[Any]  # str (text queries) or PIL images (image queries)
    relevant: list[set[int]]


@dataclass
class RerankGallery:
    images: list[corpus.Item]
    texts: list[str]
    groups: dict[str, QueryGroup] = field(default_factory=dict)


def _true_of(caption: corpus.Caption, attributes: dict[str, Any]) -> bool:
    return caption.constraint.matches(attributes)


def rerank_gallery(n: int = 100, seed: int = 0, split: corpus.Split = "heldout") -> RerankGallery:
    """The gallery and its four query groups (module docstring); `split` "seen" gives a validation
    gallery of training swap classes (fresh draws), what `alpha` is fitted on."""
    bg = corpus.binding_gallery(n, seed, split=split)
    images = bg.items()
    attrs = [it.attributes for it in images]
    rng = np.random.default_rng((101, seed, corpus.SPLITS.index(split)))
    scene_caps = [corpus.describe_scene(it.attributes, rng, set()) for it in bg.scenes]
    singles_and_held = bg.singles + bg.ordinary[: (len(bg.ordinary) + 1) // 2]
    count_caps = [corpus.describe("image", it.attributes, rng, {"shape", "colour", "count"}) for it in singles_and_held]
    size_caps = [corpus.describe("image", it.attributes, rng, {"shape", "colour", "size"}) for it in singles_and_held]
    all_caps: list[corpus.Caption] = []
    for it in images:  # every item's full description (scenes: the binding, without sizes)
        mention = set() if "objects" in it.attributes else None
        describe = corpus.describe_scene if "objects" in it.attributes else _describe_image
        all_caps.append(describe(it.attributes, rng, mention))
    all_caps += scene_caps + count_caps + size_caps
    texts = [c.text for c in all_caps]
    gallery = RerankGallery(images, texts)

    def text_group(name: str, caps: list[corpus.Caption]) -> QueryGroup:
        relevant = [{i for i, a in enumerate(attrs) if _true_of(c, a)} for c in caps]
        return QueryGroup(name, "text", [c.text for c in caps], relevant)

    gallery.groups["binding text->image"] = text_group("binding text->image", scene_caps)
    gallery.groups["counts text->image"] = text_group("counts text->image", count_caps)
    gallery.groups["sizes text->image"] = text_group("sizes text->image", size_caps)
    gallery.groups["binding image->text"] = QueryGroup(
        "binding image->text",
        "image",
        [it.media for it in bg.scenes],
        [{j for j, c in enumerate(all_caps) if _true_of(c, it.attributes)} for it in bg.scenes],
    )
    return gallery


def _describe_image(attributes: dict[str, Any], rng: np.random.Generator, mention: set[str] | None) -> corpus.Caption:
    return corpus.describe("image", attributes, rng, mention)


@dataclass
class Scored:
    """One group's first-stage candidates: per query the top-k indices (first-stage order), their
    calibrated scores, the cross-encoder's logits, the first-stage order of everything, relevance."""

    top: list[NDArray[np.int64]]
    calibrated: list[NDArray[np.float64]]
    logits: list[NDArray[np.float32]]
    order: list[NDArray[np.int64]]
    relevant: list[set[int]]
    rerank_ms: list[float]


def score_groups(
    space: Any, cross: Any, gallery: RerankGallery, rerank_k: int = 50, timed: int = 10
) -> dict[str, Scored]:
    """First stage and cross-encoder logits of every group (the expensive part; `measure` is cheap).

    Logits come from the cross-encoder's own parts with the gallery's regions and text states
    computed once (what `score()` computes per call); the first `timed` queries of each group also
    go through the Reranker `score()` as the query path calls it, which gives `rerank_ms` (its cost
    per query at N = rerank_k).
    """
    from xmodal.encoders.mini.cross import TokenStates

    image_vecs = space.encode_images([it.media for it in gallery.images])
    text_vecs = space.encode_texts(gallery.texts)
    views = [stored_image(it.media) for it in gallery.images]
    text_views = [stored_text(t) for t in gallery.texts]
    view_regions = cross.image_regions(views)
    view_states = cross.text_states(text_views)
    out: dict[str, Scored] = {}
    for name, group in gallery.groups.items():
        text_query = group.query_modality == "text"
        if text_query:
            q_vecs, background, candidates = space.encode_texts(group.queries), image_vecs, views
        else:
            q_vecs, background, candidates = space.encode_images(group.queries), text_vecs, text_views
        scored = Scored([], [], [], [], group.relevant, [])
        for q, (vec, query) in enumerate(zip(q_vecs, group.queries, strict=True)):
            cosines = background @ vec
            order = np.argsort(-cosines, kind="stable")
            top = order[:rerank_k]
            cal = calibration(vec, background)
            picked = torch.from_numpy(top)
            if text_query:
                logits = cross.match(cross.text_states([query]), view_regions[picked])
            else:
                states = TokenStates(view_states.states[picked], view_states.mask[picked])
                logits = cross.match(states, cross.image_regions([query]))
            if q < timed:
                t0 = time.perf_counter()
                kind = "image" if text_query else "text"
                cross.score(group.query_modality, query, kind, [candidates[i] for i in top])
                scored.rerank_ms.append((time.perf_counter() - t0) * 1000)
            scored.top.append(top)
            scored.calibrated.append(np.array([cal(float(cosines[i])) for i in top]))
            scored.logits.append(logits)
            scored.order.append(order)
        out[name] = scored
    return out


def _ranking(scored: Scored, q: int, alpha: float | None) -> NDArray[np.int64]:
    if alpha is None:
        return scored.order[q]
    final = scored.calibrated[q] + alpha * scored.logits[q]
    head = scored.top[q][np.argsort(-final, kind="stable")]
    return np.concatenate([head, scored.order[q][len(head) :]])


def measure(scored: Scored, alpha: float | None, rerank_k: int = 50) -> dict[str, float]:
    """Success@1, Success@5, nDCG@10 (ir-measures) of the first stage (alpha None) or reranked."""
    qrels = {f"q{q}": {f"d{i}": 1 for i in rel} for q, rel in enumerate(scored.relevant)}
    run = {}
    for q in range(len(scored.relevant)):
        ranking = _ranking(scored, q, alpha)[:100]
        run[f"q{q}"] = {f"d{int(i)}": float(len(ranking) - r) for r, i in enumerate(ranking)}
    figures = {str(m): round(float(v), 4) for m, v in ir_measures.calc_aggregate(MEASURES, qrels, run).items()}
    in_top = [bool(rel & {int(i) for i in scored.top[q][:rerank_k]}) for q, rel in enumerate(scored.relevant)]
    figures[f"relevant_in_top{rerank_k}"] = round(float(np.mean(in_top)), 4)
    return figures


ALPHA_GRID = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def fit_alpha(scored: dict[str, Scored], grid: Sequence[float] = ALPHA_GRID) -> tuple[float, list[dict[str, Any]]]:
    """The alpha of `grid` with the best mean Success@1 over the groups among those that leave no
    group's Success@1 below its first stage (the smallest such alpha on ties); and the sweep."""
    base = {g: measure(s, None)["Success@1"] for g, s in scored.items()}
    sweep = []
    best: tuple[float, float] | None = None
    for alpha in grid:
        s1 = {g: measure(s, alpha)["Success@1"] for g, s in scored.items()}
        ok = all(s1[g] >= base[g] for g in s1)
        mean = float(np.mean(list(s1.values())))
        sweep.append({"alpha": alpha, "success@1": s1, "no_group_worse": ok})
        if ok and (best is None or mean > best[1] + 1e-9):
            best = (alpha, mean)
    if best is None:  # no alpha keeps every group: the one that hurts least
        alpha = max(sweep, key=lambda r: float(np.mean(list(r["success@1"].values()))))["alpha"]
        return float(alpha), sweep
    return best[0], sweep


def evaluate(
    space: Any, cross: Any, n: int = 100, seed: int = 0, rerank_k: int = 50, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every group's first-stage and reranked figures on the held-out gallery, and the rerank cost."""
    t0 = time.monotonic()
    gallery = rerank_gallery(n, seed)
    scored = score_groups(space, cross, gallery, rerank_k)
    result: dict[str, Any] = {
        "gallery": {"images": len(gallery.images), "texts": len(gallery.texts), "n": n, "seed": seed},
        "rerank_k": rerank_k,
        "alpha": cross.alpha,
        "groups": {},
    }
    ms: list[float] = []
    for name, s in scored.items():
        first, reranked = measure(s, None, rerank_k), measure(s, cross.alpha, rerank_k)
        result["groups"][name] = {"queries": len(s.relevant), "first_stage": first, "reranked": reranked}
        ms += s.rerank_ms
    result["rerank_ms_per_query"] = {
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "candidates": rerank_k,
    }
    result["seconds"] = round(time.monotonic() - t0, 1)
    log(format_evaluation(result))
    return result


def format_evaluation(result: dict[str, Any]) -> str:
    k = result["rerank_k"]
    lines = [
        f"gallery: {result['gallery']['images']} images, {result['gallery']['texts']} texts; rerank_k {k}; "
        f"alpha {result['alpha']:.3g}",
        f"{'group':<22} {'queries':>7}  {'S@1 first -> reranked':>22}  {'S@5':>14}  {'nDCG@10':>14}  in top{k}",
    ]
    for name, g in result["groups"].items():
        f, r = g["first_stage"], g["reranked"]
        lines.append(
            f"{name:<22} {g['queries']:>7}  {f['Success@1']:>10.3f} -> {r['Success@1']:<9.3f}  "
            f"{f['Success@5']:.3f} -> {r['Success@5']:.3f}  {f['nDCG@10']:.3f} -> {r['nDCG@10']:.3f}  "
            f"{f[f'relevant_in_top{k}']:.3f}"
        )
    c = result.get("rerank_ms_per_query")
    if c:
        lines.append(f"rerank cost per query at N={c['candidates']}: p50 {c['p50']} ms, p99 {c['p99']} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from xmodal.encoders.mini.cross import MiniCrossEncoder, cross_path
    from xmodal.encoders.mini.space import MiniSpace

    parser = argparse.ArgumentParser(prog="python -m xmodal.encoders.mini.evaluate_cross", description=__doc__)
    parser.add_argument("--weights", type=Path, default=None, help="weights directory (default: the shipped one)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerank-k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="store the figures in cross.json as metrics.evaluation")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    space = MiniSpace(weights_dir=args.weights)
    space.load()
    cross = MiniCrossEncoder(weights_dir=args.weights)
    cross.load()
    result = evaluate(space, cross, args.n, args.seed, args.rerank_k)
    if args.write:
        path = cross_path(args.weights).with_suffix(".json")
        record = json.loads(path.read_text()) if path.is_file() else {}
        record.setdefault("metrics", {})["evaluation"] = result
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
