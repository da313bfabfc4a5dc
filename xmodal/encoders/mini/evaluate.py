"""Rank metrics of a space on the corpus's held-out gallery, and on media made by foreign code.

Only ranks are measured: item-caption cosines of a LiT tower stay near 0.2 even when the ranking
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
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from xmodal.encoders.base import Vectors, Waveform
from xmodal.encoders.mini.corpus import ATTRIBUTES, Item, heldout_gallery

__all__ = [
    "FOREIGN_COLOURS",
    "FOREIGN_SHAPES",
    "ForeignResult",
    "MediaEncoder",
    "Retrieval",
    "evaluate_foreign",
    "evaluate_heldout",
    "foreign_images",
    "foreign_sounds",
    "format_results",
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
