"""Rank metrics of a space on the corpus's held-out gallery (per modality, and in one mixed gallery
of images, sounds, all their captions and unrelated sentences, unfiltered), cosine statistics per
pair of modalities, and rank metrics on media made by foreign code.

Only ranks are measured: item-caption cosines of a LiT tower stay near 0.1 even when the ranking
is right, so a cosine threshold means nothing.

Held-out gallery (`corpus.heldout_gallery`): `n` items of held-out combinations plus `n` items of
seen combinations. text->X: each held-out item's caption is a query over all 2n items; X->text:
each held-out item is a query over the 2n captions. An item and a caption are relevant to each
other when the item has every attribute value the caption states (captions there state all of
them). R@k: share of queries with a relevant result in the top k; P@k: share of the top k that is
relevant; chance: the same expectations for a random ranking.

Foreign media: shapes rasterised here with numpy masks (no antialiasing, no PIL drawing, other
proportions, several canvas sizes) in plain web colours on white, and tones/noise written with
numpy at 16-48 kHz and 0.56-3 s; each is queried by a short caption ("a red circle", "a low
beep") and hit@1 is the share of queries whose own item ranks first among all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from xmodal.encoders.base import Vectors, Waveform
from xmodal.encoders.mini.corpus import ATTRIBUTES, Item, heldout_gallery, unrelated_sentences

__all__ = [
    "FOREIGN_COLOURS",
    "FOREIGN_SHAPES",
    "ForeignResult",
    "MediaEncoder",
    "MixedGallery",
    "Retrieval",
    "cosine_statistics",
    "evaluate_foreign",
    "evaluate_heldout",
    "evaluate_mixed",
    "foreign_images",
    "foreign_sounds",
    "format_mixed",
    "format_results",
    "mixed_gallery",
    "mixed_record",
    "rank_metrics",
]

Modality = Literal["image", "audio"]


class MediaEncoder(Protocol):
    """What evaluation needs of a space (MiniSpace, or a tower being trained)."""

    def encode_texts(self, texts: Sequence[str]) -> Vectors: ...

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors: ...

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors: ...


@dataclass(frozen=True)
class Retrieval:
    direction: str
    queries: int
    gallery: int
    recall: dict[int, float]
    precision: dict[int, float]
    chance_recall: dict[int, float]
    chance_precision: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_metrics(
    similarity: NDArray[np.floating], relevant: NDArray[np.bool_], ks: Sequence[int] = (1, 5, 10), direction: str = ""
) -> Retrieval:
    """R@k, P@k and their chance levels for a (queries x gallery) similarity and relevance matrix."""
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if sim.shape != rel.shape or sim.ndim != 2:
        raise ValueError(f"similarity {sim.shape} and relevance {rel.shape} must be the same 2-D shape")
    q, g = sim.shape
    if not rel.any(axis=1).all():
        raise ValueError("every query needs at least one relevant gallery entry")
    order = np.argsort(-sim, axis=1, kind="stable")
    ranked = np.take_along_axis(rel, order, axis=1)
    n_rel = rel.sum(axis=1)
    recall, precision, chance_r, chance_p = {}, {}, {}, {}
    for k in ks:
        k = min(k, g)
        recall[k] = float(ranked[:, :k].any(axis=1).mean())
        precision[k] = float(ranked[:, :k].mean())
        # P(no relevant in a random top k) = C(g - r, k) / C(g, k)
        miss = np.array([math.comb(g - int(r), k) / math.comb(g, k) for r in n_rel])
        chance_r[k] = float((1 - miss).mean())
        chance_p[k] = float((n_rel / g).mean())
    return Retrieval(direction, q, g, recall, precision, chance_r, chance_p)


def _key(modality: Modality, attributes: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(attributes[name] for name in ATTRIBUTES[modality])


def _encode_media(encoder: MediaEncoder, modality: Modality, media: Sequence[Any]) -> Vectors:
    return encoder.encode_images(media) if modality == "image" else encoder.encode_audio(media)


def evaluate_heldout(
    encoder: MediaEncoder,
    modality: Modality,
    n: int = 300,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    gallery: tuple[list[Item], list[Item]] | None = None,
) -> dict[str, Retrieval]:
    """Both directions on `n` held-out + `n` seen items: {"text->image": ..., "image->text": ...}."""
    held, seen = gallery if gallery is not None else heldout_gallery(modality, n, seed)
    items = held + seen
    media = _encode_media(encoder, modality, [it.media for it in items])
    texts = encoder.encode_texts([it.caption for it in items])
    keys = [_key(modality, it.attributes) for it in items]
    relevant = np.array([[a == b for b in keys] for a in keys[: len(held)]], dtype=bool)
    t2x = texts[: len(held)] @ media.T
    x2t = media[: len(held)] @ texts.T
    return {
        f"text->{modality}": rank_metrics(t2x, relevant, ks, f"text->{modality}"),
        f"{modality}->text": rank_metrics(x2t, relevant, ks, f"{modality}->text"),
    }


# --- one mixed gallery, every direction ---------------------------------------------------------
# How users ingest: images, sounds and texts in one index. The gallery holds, for each media
# modality, the held-out and seen items of `heldout_gallery(modality, n, seed)` (the filtered
# evaluation's items), every one of their captions, and `n` unrelated sentences (held-out split:
# never negatives in training). Nothing is filtered by modality except where a direction names
# its result modality.


@dataclass
class MixedGallery:
    media: dict[str, tuple[list[Item], list[Item]]]  # modality -> (held-out items, seen items)
    unrelated: list[str]
    vectors: dict[int, Any] = field(default_factory=dict, repr=False)  # encodings, per encoder

    def items(self, modality: str) -> list[Item]:
        held, seen = self.media[modality]
        return held + seen

    def texts(self) -> tuple[list[str], list[tuple[str, tuple[Any, ...] | None]]]:
        """Every text of the gallery and what each describes: (modality, attribute key) or ("text", None)."""
        texts: list[str] = []
        about: list[tuple[str, tuple[Any, ...] | None]] = []
        for modality in self.media:
            for it in self.items(modality):
                texts.append(it.caption)
                about.append((modality, _key(modality, it.attributes)))  # type: ignore[arg-type]
        texts += self.unrelated
        about += [("text", None)] * len(self.unrelated)
        return texts, about


def mixed_gallery(n: int = 300, seed: int = 0, modalities: Sequence[Modality] = ("image", "audio")) -> MixedGallery:
    """`n` held-out + `n` seen items of each modality, their captions, and `n` unrelated sentences."""
    return MixedGallery({m: heldout_gallery(m, n, seed) for m in modalities}, unrelated_sentences(n, "heldout", seed))


_MAIN = {"image": ("shape", "colour"), "audio": ("source", "pitch")}


def _main_key(modality: str, attributes: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(attributes[a] for a in _MAIN[modality])


def _gallery_vectors(
    encoder: MediaEncoder, gallery: MixedGallery
) -> tuple[dict[str, Vectors], Vectors, list[tuple[str, tuple[Any, ...] | None]]]:
    cached = gallery.vectors.get(id(encoder))
    if cached is not None and cached[0] is encoder:  # the same encoder again (evaluate_mixed, then cosine_statistics)
        return cached[1]
    media = {m: _encode_media(encoder, m, [it.media for it in gallery.items(m)]) for m in gallery.media}  # type: ignore[arg-type]
    texts, about = gallery.texts()
    result = (media, encoder.encode_texts(texts), about)
    gallery.vectors[id(encoder)] = (encoder, result)
    return result


def evaluate_mixed(
    encoder: MediaEncoder,
    n: int = 300,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    modalities: Sequence[Modality] = ("image", "audio"),
    gallery: MixedGallery | None = None,
) -> dict[str, Retrieval]:
    """Every direction in one mixed gallery, unfiltered. R@k here is Success@k (a relevant result in the top k).

    - text->X: each held-out X item's caption queries all 2n X items (as filtered: a text query
      names its result modality);
    - text->media: the held-out captions of every modality query all media items together (raw
      cosines across towers: is a right item first without any modality filter or calibration?);
    - X->text: each held-out X item queries ALL texts (captions of every modality + unrelated);
      relevant = its own modality's captions true of it;
    - X->X: each held-out item queries the other 2n-1 items of its modality; relevant = same
      (shape, colour) / (timbre, pitch). Image->audio has no shared concept in this corpus.
    """
    g = gallery if gallery is not None else mixed_gallery(n, seed, modalities)
    media, texts, about = _gallery_vectors(encoder, g)
    out: dict[str, Retrieval] = {}
    offset = 0
    query_caps: list[tuple[int, str, tuple[Any, ...]]] = []  # (text row, modality, key) of held-out captions
    for m in g.media:
        held, seen = g.media[m]
        items = held + seen
        keys = [_key(m, it.attributes) for it in items]  # type: ignore[arg-type]
        rows = list(range(offset, offset + len(held)))
        query_caps += [(r, m, keys[i]) for i, r in enumerate(rows)]
        rel = np.array([[a == b for b in keys] for a in keys[: len(held)]], dtype=bool)
        out[f"text->{m}"] = rank_metrics(texts[rows] @ media[m].T, rel, ks, f"text->{m}")
        # X -> every text of the gallery
        rel_t = np.array([[ab == (m, k) for ab in about] for k in keys[: len(held)]], dtype=bool)
        out[f"{m}->text"] = rank_metrics(media[m][: len(held)] @ texts.T, rel_t, ks, f"{m}->text")
        # X -> X (same main pair), the query itself excluded
        main = [_main_key(m, it.attributes) for it in items]
        sim = media[m][: len(held)] @ media[m].T
        np.fill_diagonal(sim[:, : len(held)], -np.inf)
        rel_x = np.array([[a == b for b in main] for a in main[: len(held)]], dtype=bool)
        np.fill_diagonal(rel_x[:, : len(held)], False)
        out[f"{m}->{m}"] = rank_metrics(sim, rel_x, ks, f"{m}->{m}")
        offset += len(items)
    if len(g.media) > 1:
        all_media = np.concatenate([media[m] for m in g.media])
        owners = [(m, _key(m, it.attributes)) for m in g.media for it in g.items(m)]  # type: ignore[arg-type]
        rows = [r for r, _, _ in query_caps]
        rel_m = np.array([[o == (m, k) for o in owners] for _, m, k in query_caps], dtype=bool)
        out["text->media"] = rank_metrics(texts[rows] @ all_media.T, rel_m, ks, "text->media")
    return out


def _stats(values: NDArray[np.floating]) -> dict[str, float | int]:
    v = np.asarray(values, dtype=np.float64).ravel()
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4), "pairs": int(v.size)}


def cosine_statistics(
    encoder: MediaEncoder,
    n: int = 300,
    seed: int = 0,
    modalities: Sequence[Modality] = ("image", "audio"),
    gallery: MixedGallery | None = None,
) -> dict[str, Any]:
    """Mean and std of cosines of non-matching (and matching) pairs per (query, item) modality pair.

    Over every pair of the mixed gallery (2n items of each modality, their captions, n unrelated
    sentences). Text-X matching: the caption is true of the item. Text-text matching: two captions
    of the same modality and attribute key. X-X matching: same (shape, colour) / (timbre, pitch).
    Image-audio pairs never match. Self-pairs are left out. Text-X is also given per kind of text.
    """
    g = gallery if gallery is not None else mixed_gallery(n, seed, modalities)
    media, texts, about = _gallery_vectors(encoder, g)
    kinds = np.array([a[0] for a in about])
    out: dict[str, Any] = {}

    def split(sim: NDArray[np.floating], match: NDArray[np.bool_]) -> dict[str, Any]:
        entry: dict[str, Any] = {"nonmatching": _stats(sim[~match])}
        if match.any():
            entry["matching"] = _stats(sim[match])
        return entry

    tt = texts @ texts.T
    same = np.array([[a == b and a[1] is not None for b in about] for a in about], dtype=bool)
    off = ~np.eye(len(texts), dtype=bool)
    out["text-text"] = {"nonmatching": _stats(tt[off & ~same]), "matching": _stats(tt[off & same])}
    for m in g.media:
        items = g.items(m)
        keys = [_key(m, it.attributes) for it in items]  # type: ignore[arg-type]
        sim = texts @ media[m].T
        match = np.array([[a == (m, k) for k in keys] for a in about], dtype=bool)
        entry = split(sim, match)
        entry["by_text"] = {
            ("unrelated" if kind == "text" else f"{kind} captions"): split(sim[kinds == kind], match[kinds == kind])
            for kind in [*g.media, "text"]
            if (kinds == kind).any()
        }
        out[f"text-{m}"] = entry
        main = [_main_key(m, it.attributes) for it in items]
        xx = media[m] @ media[m].T
        match = np.array([[a == b for b in main] for a in main], dtype=bool)
        off = ~np.eye(len(items), dtype=bool)
        out[f"{m}-{m}"] = {"nonmatching": _stats(xx[off & ~match]), "matching": _stats(xx[off & match])}
    if "image" in g.media and "audio" in g.media:
        out["image-audio"] = {"nonmatching": _stats(media["image"] @ media["audio"].T)}
    return out


def mixed_record(
    mixed: dict[str, Retrieval], gallery: MixedGallery, towers: dict[str, str], command: str | None = None
) -> dict[str, Any]:
    """The JSON entry of the mixed-gallery figures."""
    record: dict[str, Any] = {
        "measure": "recall[k] is R@k = Success@k: share of queries with a relevant result in the top k",
        "gallery": {
            **{f"{m} items": len(gallery.items(m)) for m in gallery.media},
            **{f"{m} captions": len(gallery.items(m)) for m in gallery.media},
            "unrelated sentences": len(gallery.unrelated),
            "filter": "none (text->X: the X items only; X->text: all texts; text->media: all media items)",
        },
        "towers": towers,
        "directions": {k: v.to_dict() for k, v in mixed.items()},
    }
    if command:
        record["command"] = command
    return record


def format_mixed(mixed: dict[str, Retrieval], filtered: dict[str, Retrieval] | None = None) -> str:
    """The mixed-gallery figures (R@k = Success@k), next to the filtered ones where given."""
    lines = []
    for r in mixed.values():
        ks = sorted(r.recall)
        parts = [f"R@{k} {r.recall[k]:.3f}" for k in ks]
        if filtered and r.direction in filtered:
            f = filtered[r.direction]
            parts.append("filtered " + "/".join(f"{f.recall[k]:.3f}" for k in sorted(f.recall)))
        lines.append(f"  {r.direction:<13} {r.queries} queries x {r.gallery}: " + ", ".join(parts))
    return "\n".join(lines)


# --- foreign media ------------------------------------------------------------------------------

FOREIGN_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
FOREIGN_COLOURS = {
    "red": (255, 0, 0),
    "orange": (255, 165, 0),
    "yellow": (255, 255, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "purple": (128, 0, 128),
    "pink": (255, 192, 203),
    "brown": (139, 69, 19),
}
# (width, height): half at the tower's own 64x64, so no resize softens the hard edges
_CANVASES = ((64, 64), (96, 96), (64, 64), (80, 120), (64, 64), (48, 48), (64, 64), (128, 100))


def _mask(shape: str, width: int, height: int) -> NDArray[np.bool_]:
    """A hard-edged mask of a centred shape; geometry of its own (not the corpus's polygons)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    x -= (width - 1) / 2
    y -= (height - 1) / 2
    r = 0.3 * min(width, height)
    d = np.hypot(x, y)
    if shape == "circle":
        return d <= r
    if shape == "ring":
        return (d <= r) & (d >= 0.6 * r)
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.8 * r
    if shape == "diamond":
        return np.abs(x) / (0.65 * r) + np.abs(y) / r <= 1
    if shape == "cross":
        t = 0.3 * r
        return ((np.abs(x) <= t) & (np.abs(y) <= r)) | ((np.abs(y) <= t) & (np.abs(x) <= r))
    if shape == "triangle":
        top, base = -r, 0.6 * r
        half = (y - top) / (base - top) * r
        return (y >= top) & (y <= base) & (np.abs(x) <= half)
    if shape == "heart":
        X, Y = x / (0.8 * r), -(y + 0.1 * r) / (0.8 * r)
        return (X**2 + Y**2 - 1) ** 3 - X**2 * Y**3 <= 0
    if shape == "star":
        angle = np.arctan2(x, -y)  # 0 at the top, clockwise
        sector = np.mod(angle + np.pi / 5, 2 * np.pi / 5) - np.pi / 5  # -36..36 degrees around a point
        # the star's edge in polar form: distance to the line between a point (radius R) and a notch
        R, inner = 1.05 * r, 0.42 * r
        a = np.pi / 5
        px, py = R, 0.0
        qx, qy = inner * np.cos(a), inner * np.sin(a)
        s = np.abs(sector)
        # intersect the ray at angle s with the segment P-Q
        nx, ny = qy - py, px - qx  # normal of the segment
        edge = (nx * px + ny * py) / (nx * np.cos(s) + ny * np.sin(s))
        return d <= edge
    raise ValueError(shape)


def foreign_images() -> list[tuple[str, Image.Image]]:
    """(caption, image): every shape x colour, hard-edged numpy masks on white, canvases of several sizes."""
    out = []
    for i, shape in enumerate(FOREIGN_SHAPES):
        for j, (colour, rgb) in enumerate(FOREIGN_COLOURS.items()):
            w, h = _CANVASES[(i + j) % len(_CANVASES)]
            m = _mask(shape, w, h)[..., None]
            pixels = np.where(m, np.array(rgb, dtype=np.uint8), np.uint8(255)).astype(np.uint8)
            article = "an" if colour[0] in "aeiou" else "a"
            out.append((f"{article} {colour} {shape}", Image.fromarray(pixels, "RGB")))
    return out


def _tone(freq0: float, freq1: float, seconds: float, rate: int, kind: str = "sine") -> NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    freq = np.linspace(freq0, freq1, t.size)
    phase = 2 * np.pi * np.cumsum(freq) / rate
    wave = np.sin(phase) if kind == "sine" else np.sign(np.sin(phase))
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms linear fades
    return (0.5 * wave * fade).astype(np.float32)


def _pad(x: NDArray[np.float32], rate: int, before: float, after: float) -> NDArray[np.float32]:
    return np.concatenate([np.zeros(int(before * rate), np.float32), x, np.zeros(int(after * rate), np.float32)])


def foreign_sounds() -> list[tuple[str, Waveform]]:
    """(caption, clip): plain tones, chirps and noise written with numpy at other rates and lengths."""
    rng = np.random.default_rng(7)
    out: list[tuple[str, Waveform]] = []
    # frequencies near the corpus's registers: very low 100 Hz, low 182, medium 332, high 604
    out.append(("a low beep", Waveform(_pad(_tone(190, 190, 0.5, 44100), 44100, 0.2, 0.3), 44100)))
    out.append(("a high beep", Waveform(_pad(_tone(620, 620, 0.5, 22050), 22050, 0.1, 0.1), 22050)))
    out.append(("a very low tone", Waveform(_tone(100, 100, 3.0, 44100), 44100)))
    out.append(("a rising tone", Waveform(_tone(200, 600, 1.0, 48000), 48000)))
    out.append(("a falling tone", Waveform(_tone(600, 200, 1.0, 44100), 44100)))
    beep = _tone(340, 340, 0.12, 44100)
    gap = np.zeros(int(0.1 * 44100), np.float32)
    out.append(("three beeps", Waveform(np.concatenate([beep, gap, beep, gap, beep]), 44100)))
    out.append(("a square wave", Waveform(_tone(330, 330, 0.8, 44100, kind="square"), 44100)))
    white = rng.standard_normal(22050).astype(np.float32)
    out.append(("white noise", Waveform((0.5 * white / np.abs(white).max()).astype(np.float32), 22050)))
    brown = np.cumsum(rng.standard_normal(int(1.5 * 16000)))
    brown -= np.linspace(brown[0], brown[-1], brown.size)  # remove the drift
    out.append(("brown noise", Waveform((0.5 * brown / np.abs(brown).max()).astype(np.float32), 16000)))
    return out


@dataclass(frozen=True)
class ForeignResult:
    modality: str
    hit_at_1: float
    queries: int
    misses: list[tuple[str, str]] = field(default_factory=list)  # (query, caption of the item ranked first)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_foreign(encoder: MediaEncoder, modality: Modality) -> ForeignResult:
    """hit@1 of short captions over foreign-made media (each caption's own item must rank first)."""
    pairs = foreign_images() if modality == "image" else foreign_sounds()
    captions = [c for c, _ in pairs]
    media = _encode_media(encoder, modality, [m for _, m in pairs])
    texts = encoder.encode_texts(captions)
    top = np.argmax(texts @ media.T, axis=1)
    misses = [(captions[i], captions[int(j)]) for i, j in enumerate(top) if int(j) != i]
    return ForeignResult(modality, 1 - len(misses) / len(pairs), len(pairs), misses)


def format_results(heldout: dict[str, Retrieval], foreign: ForeignResult | None = None) -> str:
    """A small text table of the figures (what the training command prints)."""
    lines = []
    for r in heldout.values():
        ks = sorted(r.recall)
        parts = [f"R@{k} {r.recall[k]:.3f} (chance {r.chance_recall[k]:.3f})" for k in ks]
        parts += [f"P@{ks[1] if len(ks) > 1 else ks[0]} {r.precision[ks[1] if len(ks) > 1 else ks[0]]:.3f}"]
        lines.append(f"  {r.direction:<12} {r.queries} queries x {r.gallery}: " + ", ".join(parts))
    if foreign is not None:
        lines.append(f"  foreign {foreign.modality}: hit@1 {foreign.hit_at_1:.3f} over {foreign.queries} queries")
        for query, got in foreign.misses:
            lines.append(f"    miss: {query!r} -> {got!r}")
    return "\n".join(lines)


def format_cosines(stats: dict[str, Any]) -> str:
    """The cosine statistics as lines: pair, non-matching mean +- std, matching mean +- std."""
    lines = []
    for pair, entry in stats.items():
        rows = [(pair, entry)] + [(f"  {pair}, {kind}", v) for kind, v in entry.get("by_text", {}).items()]
        for name, v in rows:
            text = f"  {name:<32} non-matching {v['nonmatching']['mean']:+.3f} +- {v['nonmatching']['std']:.3f}"
            if "matching" in v:
                text += f", matching {v['matching']['mean']:+.3f} +- {v['matching']['std']:.3f}"
            lines.append(text)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the shipped (or given) towers: filtered and mixed-gallery figures, cosine statistics."""
    import argparse
    import hashlib
    import json
    import sys

    import torch

    from xmodal.encoders.mini.space import WEIGHTS_DIR, MiniSpace, tower_path

    p = argparse.ArgumentParser(prog="python -m xmodal.encoders.mini.evaluate", description=main.__doc__)
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="directory of image/audio .safetensors")
    p.add_argument("--n", type=int, default=300, help="held-out items per modality (as many seen; n unrelated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--write", action="store_true", help="store the mixed-gallery figures and cosine statistics in both JSONs"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    space = MiniSpace(weights_dir=args.weights)
    space.load()
    gallery = mixed_gallery(args.n, args.seed)
    filtered: dict[str, Retrieval] = {}
    for m in gallery.media:
        filtered.update(evaluate_heldout(space, m, n=args.n, seed=args.seed, gallery=gallery.media[m]))  # type: ignore[arg-type]
    mixed = evaluate_mixed(space, gallery=gallery)
    stats = cosine_statistics(space, gallery=gallery)
    print(f"filtered (each modality's items and captions only; {args.n} held-out + {args.n} seen items):")
    print(format_results(filtered))
    print(f"one mixed gallery, unfiltered (+ {args.n} unrelated sentences); R@k = Success@k, filtered R@1/5/10 after:")
    print(format_mixed(mixed, filtered))
    print("cosines of pairs (mean +- std):")
    print(format_cosines(stats))
    if args.write:
        command = " ".join(["python -m xmodal.encoders.mini.evaluate", *(argv if argv is not None else sys.argv[1:])])
        towers = {
            m: f"{tower_path(m, args.weights).name} sha256 "
            + hashlib.sha256(tower_path(m, args.weights).read_bytes()).hexdigest()
            for m in gallery.media
        }
        for m in gallery.media:
            path = args.weights / f"{m}.json"
            record = json.loads(path.read_text())
            record["metrics"]["mixed_gallery"] = mixed_record(mixed, gallery, towers, command)
            record["metrics"]["cosine_statistics"] = stats
            path.write_text(json.dumps(record, indent=2, default=str) + "\n")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
