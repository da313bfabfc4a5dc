"""The synthetic "shapes and sounds" corpus that the `mini` space's image and audio towers learn from.

Everything here is deterministic: item `i` of split `s` with seed `k` is drawn from its own random
stream `(modality, s, k, i)`, so it does not depend on how many items were asked for.

Images (64x64 RGB, antialiased by drawing a 4x mask and downsampling): one to three copies of a
shape (circle, square, triangle, star, cross, ring, diamond, heart) in a colour (red, orange,
yellow, green, blue, purple, pink, brown), small/medium/large, at random non-overlapping positions,
on a white, black or gray background.

Sounds (1-2 s, 16 kHz mono): one to three notes of a tone (sine, organ, square, sawtooth, bell)
in a register (very low ... very high, 100 Hz-1.1 kHz) that is steady, rising or
falling, or one to three bursts of white, pink or brown noise; quiet or loud.

Held-out split: some (shape, colour) and (timbre, pitch) pairs never appear in `train` or `seen`.
Each shape is held out with two colours and each colour with two shapes (a cyclic Latin design),
likewise each timbre with two pitches and each pitch with two timbres, so no single attribute
identifies a held-out item. `heldout_gallery()` mixes held-out items with as many seen-combination
items, which is the gallery evaluation uses.

Captions come in many wordings (synonyms, word orders, frames, optional attributes). Every caption
is produced with the `Constraint` it states (the attribute values it allows), which is what training
uses to know which items in a batch a caption is true of.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from xmodal.encoders.base import Waveform

__all__ = [
    "AUDIO_ATTRIBUTES",
    "BACKGROUNDS",
    "COLOURS",
    "CONTOURS",
    "COUNTS",
    "IMAGE_ATTRIBUTES",
    "IMAGE_SIZE",
    "LOUDNESS",
    "NOISES",
    "PITCHES",
    "SAMPLE_RATE",
    "SHAPES",
    "SIZES",
    "SOURCES",
    "SPLITS",
    "TIMBRES",
    "Caption",
    "Constraint",
    "Item",
    "Split",
    "caption_variants",
    "BindingGallery",
    "SceneConstraint",
    "binding_gallery",
    "binding_key",
    "caption_vocabulary",
    "describe_scene",
    "heldout_swap_classes",
    "render_scene",
    "render_scene_with_masks",
    "sample_scene",
    "scene_caption_variants",
    "scene_is_heldout",
    "scene_items",
    "scene_pairs",
    "swap_class",
    "swapped",
    "describe",
    "heldout_gallery",
    "heldout_pairs",
    "image_items",
    "image_png",
    "render_image",
    "render_image_with_masks",
    "render_sound",
    "sample_attributes",
    "sound_items",
    "unrelated_sentences",
    "waveform_wav",
]

Split = Literal["train", "seen", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "seen", "heldout")
_SPLIT_CODE = {"train": 0, "seen": 1, "heldout": 2}
_MODALITY_CODE = {"image": 11, "audio": 12}
_TEXT_CODE = 13  # unrelated sentences

IMAGE_SIZE = 64
SAMPLE_RATE = 16_000

# --- attribute vocabularies ---------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
SIZES = ("small", "medium", "large")
COUNTS = (1, 2, 3)
BACKGROUNDS = ("white", "black", "gray")

# Timbres are told apart by cues that survive every register: one partial (sine), octave partials
# (organ), odd harmonics (square), all harmonics (sawtooth), inharmonic decaying partials (bell).
# (A triangle wave was tried and dropped: its only difference from a square wave is how fast the
# odd harmonics fall off, which the band limit and the log-frequency axis blur at the extremes.)
TIMBRES = ("sine", "organ", "square", "sawtooth", "bell")
NOISES = ("white noise", "pink noise", "brown noise")
SOURCES = TIMBRES + NOISES
PITCHES = ("very low", "low", "medium", "high", "very high")
CONTOURS = ("steady", "rising", "falling")
REPETITIONS = (1, 2, 3)
LOUDNESS = ("quiet", "loud")

# The attributes a caption can talk about, in a fixed order; `None` is "does not apply" (a noise
# has no pitch or contour).
IMAGE_ATTRIBUTES: dict[str, tuple[Any, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "count": COUNTS,
    "background": BACKGROUNDS,
}
AUDIO_ATTRIBUTES: dict[str, tuple[Any, ...]] = {
    "source": SOURCES,
    "pitch": (*PITCHES, None),
    "contour": (*CONTOURS, None),
    "repetitions": REPETITIONS,
    "loudness": LOUDNESS,
}
ATTRIBUTES = {"image": IMAGE_ATTRIBUTES, "audio": AUDIO_ATTRIBUTES}

# Colours as boxes in HSV (hue in degrees, saturation, value): wide enough to cover both the
# generator's jitter and plain "web" colours such as (255, 0, 0) or (128, 0, 128).
_COLOUR_HSV: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-10, 8), (0.75, 1.0), (0.70, 1.0)),
    "orange": ((22, 40), (0.85, 1.0), (0.85, 1.0)),
    "yellow": ((50, 62), (0.75, 1.0), (0.85, 1.0)),
    "green": ((95, 150), (0.6, 1.0), (0.45, 0.9)),
    "blue": ((205, 245), (0.7, 1.0), (0.6, 1.0)),
    "purple": ((270, 300), (0.55, 1.0), (0.45, 0.85)),
    "pink": ((320, 352), (0.25, 0.6), (0.9, 1.0)),
    "brown": ((18, 32), (0.6, 0.9), (0.3, 0.55)),
}
_BACKGROUND_SV: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "white": ((0.0, 0.05), (0.9, 1.0)),
    "black": ((0.0, 0.1), (0.0, 0.12)),
    "gray": ((0.0, 0.05), (0.42, 0.6)),
}
# half-extent of one shape in pixels at 64x64, per size and per count (three large shapes do not fit)
_RADIUS = {"small": (5.0, 7.0), "medium": (9.0, 12.0), "large": (15.0, 19.0)}
_LARGE_RADIUS_PAIR = (14.0, 15.5)

# Registers: 100 Hz to 1.1 kHz in equal steps of 10.4 semitones (jittered by up to 2 either way);
# the register of a glide is its geometric centre. The top stays low enough that a tone keeps
# several harmonics below 8 kHz (16 kHz audio), so every timbre is audible in every register.
_PITCH_HZ = {"very low": 100.0, "low": 182.0, "medium": 332.0, "high": 604.0, "very high": 1100.0}
_PEAK = {"quiet": (0.03, 0.08), "loud": (0.45, 0.9)}


# --- the held-out design ------------------------------------------------------------------------


def _latin_pairs(rows: Sequence[str], cols: Sequence[str], offsets: Sequence[int]) -> frozenset[tuple[str, str]]:
    """Pairs (rows[i], cols[perm[(i + o) % n]]) for each offset o: every row and every column held out len(offsets) times."""
    n = len(rows)
    assert len(cols) == n
    perm = np.random.default_rng(20240517).permutation(n)  # fixed: the split is part of the corpus, not of a seed
    return frozenset((rows[i], cols[int(perm[(i + o) % n])]) for i in range(n) for o in offsets)


_HELDOUT = {
    "image": _latin_pairs(SHAPES, COLOURS, (0, 3)),  # 16 of 64 (shape, colour) pairs
    "audio": _latin_pairs(TIMBRES, PITCHES, (0, 2)),  # 10 of 25 (timbre, pitch) pairs
}


def heldout_pairs(modality: Literal["image", "audio"]) -> frozenset[tuple[str, str]]:
    """The held-out combinations: (shape, colour) for images, (timbre, pitch) for sounds."""
    return _HELDOUT[modality]


def _pair_of(modality: str, attributes: Mapping[str, Any]) -> tuple[str, str] | None:
    if modality == "image":
        return (attributes["shape"], attributes["colour"])
    if attributes["source"] in TIMBRES:
        return (attributes["source"], attributes["pitch"])
    return None


# --- items --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One corpus item. `media` is a PIL RGB image or a Waveform; `caption` states every attribute."""

    id: str
    modality: Literal["image", "audio"]
    media: Any
    caption: str
    attributes: dict[str, Any] = field(hash=False)


def _rng(modality: str, split: Split, seed: int, index: int) -> np.random.Generator:
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return np.random.default_rng((_MODALITY_CODE[modality], _SPLIT_CODE[split], seed, index))


def sample_attributes(modality: Literal["image", "audio"], split: Split, rng: np.random.Generator) -> dict[str, Any]:
    """Draw the describable attributes of one item of `split` (held-out pairs only in `heldout`)."""
    held = _HELDOUT[modality]
    if modality == "image":
        allowed = sorted(held) if split == "heldout" else sorted(set(_all_pairs("image")) - held)
        shape, colour = allowed[rng.integers(len(allowed))]
        count = int(rng.choice(COUNTS))
        sizes = SIZES[:2] if count == 3 else SIZES
        return {
            "shape": shape,
            "colour": colour,
            "size": str(rng.choice(sizes)),
            "count": count,
            "background": str(rng.choice(BACKGROUNDS)),
        }
    is_noise = split != "heldout" and rng.random() < 0.2
    if is_noise:
        source, pitch, contour = str(rng.choice(NOISES)), None, None
    else:
        allowed = sorted(held) if split == "heldout" else sorted(set(_all_pairs("audio")) - held)
        source, pitch = allowed[rng.integers(len(allowed))]
        contour = str(rng.choice(CONTOURS))
    return {
        "source": source,
        "pitch": pitch,
        "contour": contour,
        "repetitions": int(rng.choice(REPETITIONS)),
        "loudness": str(rng.choice(LOUDNESS)),
    }


def _all_pairs(modality: str) -> list[tuple[str, str]]:
    rows, cols = (SHAPES, COLOURS) if modality == "image" else (TIMBRES, PITCHES)
    return [(r, c) for r in rows for c in cols]


def _items(modality: Literal["image", "audio"], n: int, split: Split, seed: int, start: int) -> Iterator[Item]:
    for index in range(start, start + n):
        rng = _rng(modality, split, seed, index)
        attributes = sample_attributes(modality, split, rng)
        render_rng = np.random.default_rng(rng.integers(2**63))
        caption_rng = np.random.default_rng(rng.integers(2**63))
        media = render_image(attributes, render_rng) if modality == "image" else render_sound(attributes, render_rng)
        yield Item(
            id=f"{modality}/{split}/{seed}/{index}",
            modality=modality,
            media=media,
            caption=describe(modality, attributes, caption_rng).text,
            attributes=attributes,
        )


def image_items(n: int, split: Split = "train", seed: int = 0, start: int = 0) -> list[Item]:
    """Items `start .. start+n-1` of the image corpus: (id, PIL RGB 64x64 image, full caption, attributes)."""
    return list(_items("image", n, split, seed, start))


def sound_items(n: int, split: Split = "train", seed: int = 0, start: int = 0) -> list[Item]:
    """Items of the sound corpus: (id, Waveform 16 kHz 1-2 s, full caption, attributes)."""
    return list(_items("audio", n, split, seed, start))


def heldout_gallery(modality: Literal["image", "audio"], n: int, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """`n` held-out-combination items and `n` seen-combination items (fresh draws, not training items).

    Evaluation queries with the held-out items' captions against both lists together, so that a
    tower that only knows one attribute (the colour, the pitch) cannot pick the held-out item.
    """
    make = image_items if modality == "image" else sound_items
    return make(n, "heldout", seed), make(n, "seen", seed)


# --- images -------------------------------------------------------------------------------------

_SUPERSAMPLE = 4


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    h = (h % 360.0) / 60.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (round(r * 255), round(g * 255), round(b * 255))


def _colour_rgb(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    (h0, h1), (s0, s1), (v0, v1) = _COLOUR_HSV[name]
    return _hsv_to_rgb(rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1))


def _background_rgb(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    (s0, s1), (v0, v1) = _BACKGROUND_SV[name]
    return _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(s0, s1), rng.uniform(v0, v1))


def _rotate(points: list[tuple[float, float]], angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _polygon(kind: str, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        h = 0.85 * r
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif kind == "triangle":
        R = 1.1 * r
        pts = [(R * math.sin(a), -R * math.cos(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
        pts = [(x, y + 0.2 * r) for x, y in pts]  # centre the bounding box
    elif kind == "star":
        R, inner = 1.1 * r, 0.45 * 1.1 * r
        pts = []
        for k in range(10):
            rad = R if k % 2 == 0 else inner
            a = k * math.pi / 5
            pts.append((rad * math.sin(a), -rad * math.cos(a) + 0.1 * r))
    elif kind == "diamond":
        pts = [(0.0, -r), (0.62 * r, 0.0), (0.0, r), (-0.62 * r, 0.0)]
    elif kind == "cross":
        a, t = r, 0.34 * r
        pts = [
            (-t, -a),
            (t, -a),
            (t, -t),
            (a, -t),
            (a, t),
            (t, t),
            (t, a),
            (-t, a),
            (-t, t),
            (-a, t),
            (-a, -t),
            (-t, -t),
        ]
    else:
        raise ValueError(kind)
    return _rotate(pts, angle)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float) -> None:
    k = _SUPERSAMPLE

    def box(x: float, y: float, rad: float) -> tuple[float, float, float, float]:
        return ((x - rad) * k, (y - rad) * k, (x + rad) * k, (y + rad) * k)

    if kind == "circle":
        draw.ellipse(box(cx, cy, r), fill=255)
    elif kind == "ring":
        draw.ellipse(box(cx, cy, r), fill=255)
        draw.ellipse(box(cx, cy, 0.55 * r), fill=0)
    elif kind == "heart":
        lobe = 0.52 * r
        draw.ellipse(box(cx - 0.48 * r, cy - 0.3 * r, lobe), fill=255)
        draw.ellipse(box(cx + 0.48 * r, cy - 0.3 * r, lobe), fill=255)
        tri = [(-0.97 * r, -0.15 * r), (0.97 * r, -0.15 * r), (0.0, 0.95 * r)]
        draw.polygon([((cx + x) * k, (cy + y) * k) for x, y in _rotate(tri, angle)], fill=255)
    else:
        draw.polygon([((cx + x) * k, (cy + y) * k) for x, y in _polygon(kind, r, angle)], fill=255)


def _place(radii: Sequence[float], rng: np.random.Generator) -> list[tuple[float, float]]:
    """Centres for shapes of these radii inside the canvas, not touching each other."""
    for _ in range(200):
        centres: list[tuple[float, float]] = []
        for r in radii:
            lo, hi = r + 1.0, IMAGE_SIZE - r - 1.0
            for _ in range(50):
                c = (rng.uniform(lo, hi), rng.uniform(lo, hi))
                if all(math.dist(c, d) >= r + s + 3.0 for d, s in zip(centres, radii, strict=False)):
                    centres.append(c)
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    # the radii are chosen so this is never reached; a deterministic fallback keeps it total
    step = IMAGE_SIZE / (len(radii) + 1)
    return [(step * (i + 1), IMAGE_SIZE / 2) for i in range(len(radii))]


def render_image(attributes: Mapping[str, Any], rng: np.random.Generator) -> Image.Image:
    """Draw the image of these attributes (64x64 RGB, antialiased)."""
    return render_image_with_masks(attributes, rng, masks=False)[0]


def render_image_with_masks(
    attributes: Mapping[str, Any], rng: np.random.Generator, masks: bool = True
) -> tuple[Image.Image, NDArray[np.float32]]:
    """`render_image` and each drawn object's coverage, (count, 64, 64) in [0, 1] (the share of a
    pixel the shape covers, antialiased as drawn; (0, 64, 64) with `masks=False`). The random
    stream and the pixels are exactly `render_image`'s: region encoders learn from these labels."""
    count, size, shape = attributes["count"], attributes["size"], attributes["shape"]
    lo, hi = _LARGE_RADIUS_PAIR if (size == "large" and count > 1) else _RADIUS[size]
    base = rng.uniform(lo, hi)
    radii = [float(np.clip(base * rng.uniform(0.93, 1.07), lo, hi)) for _ in range(count)]
    centres = _place(radii, rng)
    big = IMAGE_SIZE * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    max_angle = {"circle": 0.0, "ring": 0.0, "square": 0.17, "diamond": 0.12, "cross": 0.17}.get(shape, 0.25)
    coverage = []
    for (cx, cy), r in zip(centres, radii, strict=True):
        angle = rng.uniform(-max_angle, max_angle)
        _draw_shape(draw, shape, cx, cy, r, angle)
        if masks:
            own = Image.new("L", (big, big), 0)
            _draw_shape(ImageDraw.Draw(own), shape, cx, cy, r, angle)
            coverage.append(_coverage(own))
    alpha = np.asarray(mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255
    fg = np.array(_colour_rgb(attributes["colour"], rng), dtype=np.float32)
    bg = np.array(_background_rgb(attributes["background"], rng), dtype=np.float32)
    pixels = bg * (1 - alpha) + fg * alpha
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return image, _stack_masks(coverage)


def _coverage(mask: Image.Image) -> NDArray[np.float32]:
    """A supersampled 0/255 mask -> (64, 64) coverage in [0, 1], downsampled as the pixels are."""
    return np.asarray(mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32) / 255


def _stack_masks(coverage: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    if not coverage:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    return np.stack(coverage).astype(np.float32)


# --- sounds -------------------------------------------------------------------------------------


def _harmonics(timbre: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(frequency ratios, amplitudes) of a timbre; band-limited at synthesis time."""
    k = np.arange(1, 40, dtype=np.float64)
    if timbre == "sine":
        return np.array([1.0]), np.array([1.0])
    if timbre == "square":
        odd = k[k % 2 == 1]
        return odd, 1.0 / odd
    if timbre == "sawtooth":
        return k, 1.0 / k
    if timbre == "organ":  # a pipe organ's octave ranks: 8', 4', 2', 1'
        return np.array([1.0, 2.0, 4.0, 8.0]), np.array([1.0, 0.7, 0.5, 0.35])
    if timbre == "bell":
        return np.array([1.0, 2.0, 2.76, 4.07, 5.40]), np.array([1.0, 0.6, 0.5, 0.3, 0.25])
    raise ValueError(timbre)


def _note(timbre: str, f_centre: float, contour: str, length: int, rng: np.random.Generator) -> NDArray[np.float64]:
    t = np.arange(length) / SAMPLE_RATE
    frac = t / max(t[-1], 1e-9)
    glide = rng.uniform(1.6, 2.6)
    if contour == "rising":
        freq = f_centre * glide ** (frac - 0.5)
    elif contour == "falling":
        freq = f_centre * glide ** (0.5 - frac)
    else:
        freq = np.full(length, f_centre)
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    ratios, amps = _harmonics(timbre)
    out = np.zeros(length)
    nyquist = SAMPLE_RATE / 2 * 0.95
    for i, (ratio, amp) in enumerate(zip(ratios, amps, strict=True)):
        partial = amp * np.sin(ratio * phase)
        partial[ratio * freq >= nyquist] = 0.0
        if timbre == "bell":  # higher partials die away faster
            partial *= np.exp(-t * (3.0 + 2.5 * i) / max(t[-1], 0.05))
        out += partial
    return out


def _noise(colour: str, length: int, rng: np.random.Generator) -> NDArray[np.float64]:
    white = rng.standard_normal(length)
    if colour == "white noise":
        return white
    alpha = 1.0 if colour == "pink noise" else 2.0
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(length, 1 / SAMPLE_RATE)
    spectrum *= 1.0 / np.maximum(f, 20.0) ** (alpha / 2)
    return np.fft.irfft(spectrum, n=length)


def _envelope(length: int, bell: bool, rng: np.random.Generator) -> NDArray[np.float64]:
    env = np.ones(length)
    attack = max(1, int((0.002 if bell else rng.uniform(0.005, 0.015)) * SAMPLE_RATE))
    release = max(1, int(rng.uniform(0.02, 0.04) * SAMPLE_RATE))
    attack, release = min(attack, length // 2), min(release, length // 2)
    env[:attack] = np.linspace(0, 1, attack)
    env[length - release :] *= np.linspace(1, 0, release)
    return env


def render_sound(attributes: Mapping[str, Any], rng: np.random.Generator) -> Waveform:
    """Synthesise the sound of these attributes: 1-2 s of 16 kHz mono float32."""
    total = int(rng.uniform(1.0, 2.0) * SAMPLE_RATE)
    reps = attributes["repetitions"]
    if reps == 1:
        note_s = rng.uniform(0.35, min(1.2, total / SAMPLE_RATE - 0.2))
        gap_s = 0.0
    else:
        note_s = rng.uniform(0.12, 0.3)
        gap_s = rng.uniform(0.08, 0.2)
        fit = (total / SAMPLE_RATE - 0.1) / (reps * note_s + (reps - 1) * gap_s)
        if fit < 1:
            note_s, gap_s = note_s * fit, gap_s * fit
    note, gap = int(note_s * SAMPLE_RATE), int(gap_s * SAMPLE_RATE)
    used = reps * note + (reps - 1) * gap
    start = int(rng.integers(0, max(1, total - used)))
    source = attributes["source"]
    peak = rng.uniform(*_PEAK[attributes["loudness"]])
    f_centre = _PITCH_HZ[attributes["pitch"]] * 2 ** (rng.uniform(-2, 2) / 12) if source in TIMBRES else 0.0
    out = np.zeros(total)
    for k in range(reps):
        if source in TIMBRES:
            sig = _note(source, f_centre, attributes["contour"], note, rng)
        else:
            sig = _noise(source, note, rng)
        sig = sig * _envelope(note, source == "bell", rng)
        sig /= max(np.abs(sig).max(), 1e-9)
        at = start + k * (note + gap)
        out[at : at + note] += sig * peak
    floor = rng.uniform(0.0, 0.002)
    if floor > 0:
        out += floor * rng.standard_normal(total)
    return Waveform(np.clip(out, -1, 1).astype(np.float32), SAMPLE_RATE)


# --- captions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """What a caption states: attribute -> the values it allows (an attribute not named: any)."""

    allowed: Mapping[str, frozenset[Any]]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return all(attributes.get(name) in values for name, values in self.allowed.items())


@dataclass(frozen=True)
class Caption:
    text: str
    constraint: Constraint


_SHAPE_WORDS = {
    "circle": [("circle", "circles"), ("disc", "discs"), ("dot", "dots"), ("round shape", "round shapes")],
    "square": [("square", "squares"), ("box", "boxes"), ("block", "blocks")],
    "triangle": [("triangle", "triangles"), ("three-sided shape", "three-sided shapes")],
    "star": [("star", "stars"), ("five-pointed star", "five-pointed stars")],
    "cross": [("cross", "crosses"), ("plus sign", "plus signs"), ("plus", "pluses")],
    "ring": [("ring", "rings"), ("hoop", "hoops"), ("donut", "donuts"), ("hollow circle", "hollow circles")],
    "diamond": [("diamond", "diamonds"), ("rhombus", "rhombuses"), ("lozenge", "lozenges")],
    "heart": [("heart", "hearts"), ("heart shape", "heart shapes"), ("love heart", "love hearts")],
}
_COLOUR_WORDS = {
    "red": ["red", "crimson", "scarlet"],
    "orange": ["orange", "tangerine", "amber"],
    "yellow": ["yellow", "lemon-yellow", "golden"],
    "green": ["green", "emerald", "grass-green"],
    "blue": ["blue", "azure", "navy"],
    "purple": ["purple", "violet", "lilac"],
    "pink": ["pink", "rosy", "light pink"],
    "brown": ["brown", "chocolate", "tan"],
}
_SIZE_WORDS = {
    "small": ["small", "little", "tiny"],
    "medium": ["medium", "medium-sized", "mid-sized"],
    "large": ["large", "big", "huge"],
}
_BACKGROUND_WORDS = {
    "white": ["white", "light", "pale"],
    "black": ["black", "dark", "pitch-black"],
    "gray": ["gray", "grey", "silver-gray"],
}
_GENERIC_SHAPE = [("shape", "shapes"), ("object", "objects"), ("thing", "things")]
_NUMBER_WORDS = {1: ["a", "one", "a single", "1"], 2: ["two", "2", "a pair of"], 3: ["three", "3", "a trio of"]}
_SEVERAL = ["some", "several", "multiple"]


def _a_an(text: str) -> str:
    text = re.sub(r"\ba ([aeiou])", r"an \1", text)
    text = re.sub(r"\bA ([aeiou])", r"An \1", text)
    return re.sub(r"\s+", " ", text).strip()


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _image_caption(attrs: Mapping[str, Any], rng: np.random.Generator, mention: set[str]) -> Caption:
    allowed: dict[str, frozenset[Any]] = {}
    count = attrs["count"]
    plural = count > 1
    if "count" in mention:
        number = _pick(rng, _NUMBER_WORDS[count])
        allowed["count"] = frozenset({count})
    elif plural:
        number = _pick(rng, _SEVERAL) if rng.random() < 0.6 else ""
        allowed["count"] = frozenset({2, 3})
    else:
        number = "a"
        allowed["count"] = frozenset({1})
    if "shape" in mention:
        noun = _pick(rng, _SHAPE_WORDS[attrs["shape"]])[plural]
        allowed["shape"] = frozenset({attrs["shape"]})
    else:
        noun = _pick(rng, _GENERIC_SHAPE)[plural]
    colour = size = bg = ""
    if "colour" in mention:
        colour = _pick(rng, _COLOUR_WORDS[attrs["colour"]])
        allowed["colour"] = frozenset({attrs["colour"]})
    if "size" in mention:
        size = _pick(rng, _SIZE_WORDS[attrs["size"]])
        allowed["size"] = frozenset({attrs["size"]})
    if "background" in mention:
        bg = _pick(rng, _BACKGROUND_WORDS[attrs["background"]])
        allowed["background"] = frozenset({attrs["background"]})

    adjectives = [w for w in (size, colour) if w]
    if len(adjectives) == 2 and rng.random() < 0.25:
        adjectives.reverse()
    np_ = f"{number} {' '.join(adjectives)} {noun}"
    bg_phrase = ""
    if bg:
        bg_phrase = _pick(
            rng,
            [f"on a {bg} background", f"on {bg}", f"against a {bg} backdrop", f"over a {bg} background"],
        )
    style = rng.integers(9)
    if style == 0 and (colour or size):
        # "one disc, crimson and little"
        props = (
            " and ".join(w for w in (colour, size) if w)
            if rng.random() < 0.5
            else ", ".join(w for w in (size, colour) if w)
        )
        text = f"{number} {noun}, {props} {bg_phrase}"
    elif style == 1 and colour:
        text = f"{number} {size} {noun} in {colour} {bg_phrase}"
    elif style == 2 and colour:
        text = f"{number} {size} {noun} coloured {colour} {bg_phrase}"
    elif style == 3:
        frame = _pick(rng, ["a picture of", "an image of", "a drawing of", "a photo showing", "an illustration of"])
        text = f"{frame} {np_} {bg_phrase}"
    elif style == 4:
        verb = "are" if plural else "is"
        text = f"there {verb} {np_} {bg_phrase}"
    elif style == 5 and bg:
        text = f"{_pick(rng, ['a', 'the'])} {bg} background with {np_}"
    elif style == 6 and bg:
        text = f"{np_}, {bg} background"
    elif style == 7:
        text = f"{np_} {bg_phrase}".strip()
        text = text[0].upper() + text[1:]
    else:
        text = f"{np_} {bg_phrase}"
    return Caption(_a_an(text), Constraint(allowed))


_TIMBRE_ADJ = {
    "sine": ["pure", "smooth", "sine-wave", "clean"],
    "organ": ["organ-like", "pipe-organ", "churchy"],
    "square": ["hollow", "square-wave", "reedy"],
    "sawtooth": ["buzzy", "harsh", "sawtooth", "brassy"],
    "bell": ["bell-like", "ringing", "chiming"],
}
_TIMBRE_NOUNS = {
    "sine": [("sine wave", "sine waves"), ("pure tone", "pure tones"), ("whistle", "whistles")],
    "organ": [("organ note", "organ notes"), ("organ tone", "organ tones")],
    "square": [("square wave", "square waves"), ("square-wave beep", "square-wave beeps")],
    "sawtooth": [("sawtooth wave", "sawtooth waves"), ("buzz", "buzzes")],
    "bell": [("bell", "bells"), ("chime", "chimes"), ("ding", "dings")],
}
_TONE_NOUNS = [("beep", "beeps"), ("tone", "tones"), ("note", "notes"), ("sound", "sounds")]
_PITCH_WORDS = {
    "very low": ["very low", "very low-pitched", "very deep"],
    "low": ["low", "low-pitched", "deep"],
    "medium": ["medium-pitched", "mid-range", "middle-pitched"],
    "high": ["high", "high-pitched", "sharp"],
    "very high": ["very high", "very high-pitched", "shrill"],
}
_CONTOUR_ADJ = {
    "steady": ["steady", "flat", "constant"],
    "rising": ["rising", "ascending", "upward"],
    "falling": ["falling", "descending", "downward"],
}
_CONTOUR_CLAUSE = {
    "steady": ["that stays at one pitch", "holding a steady pitch", "at a constant pitch"],
    "rising": ["that rises", "sweeping up", "going up in pitch", "gliding upward"],
    "falling": ["that falls", "sweeping down", "going down in pitch", "gliding downward"],
}
_NOISE_NOUNS = {
    "white noise": [
        ("white noise", "bursts of white noise"),
        ("hiss", "hisses"),
        ("burst of static", "bursts of static"),
    ],
    "pink noise": [("pink noise", "bursts of pink noise"), ("rushing noise", "bursts of rushing noise")],
    "brown noise": [
        ("brown noise", "bursts of brown noise"),
        ("rumble", "rumbles"),
        ("rumbling noise", "bursts of rumbling noise"),
    ],
}
_LOUD_WORDS = {"quiet": ["quiet", "faint", "soft"], "loud": ["loud", "strong", "powerful"]}
_TIMES = {1: ["once"], 2: ["twice", "two times"], 3: ["three times", "3 times"]}


def _sound_caption(attrs: Mapping[str, Any], rng: np.random.Generator, mention: set[str]) -> Caption:
    allowed: dict[str, frozenset[Any]] = {}
    source, reps = attrs["source"], attrs["repetitions"]
    plural = reps > 1
    is_tone = source in TIMBRES
    # how the count is said: number word, "twice" clause, bare plural, or nothing
    number, times = "a", ""
    if "repetitions" in mention:
        allowed["repetitions"] = frozenset({reps})
        if rng.random() < 0.3:
            times, plural = _pick(rng, _TIMES[reps]), False
            if reps > 1:
                times = _pick(rng, ["played", "repeated", "heard"]) + " " + times
        else:
            number = _pick(rng, _NUMBER_WORDS[reps])
    elif plural:
        number = _pick(rng, ["some", "several", "repeated"])
        allowed["repetitions"] = frozenset({2, 3})
    else:
        allowed["repetitions"] = frozenset({1})
        number = _pick(rng, ["a", "one", "a single"])
    loud = ""
    if "loudness" in mention:
        loud = _pick(rng, _LOUD_WORDS[attrs["loudness"]])
        allowed["loudness"] = frozenset({attrs["loudness"]})
    if not is_tone:
        if "source" in mention:
            allowed["source"] = frozenset({source})
            noun = _pick(rng, _NOISE_NOUNS[source])[plural]
        else:
            allowed["source"] = frozenset(NOISES)
            noun = _pick(rng, [("noise", "bursts of noise"), ("burst of noise", "bursts of noise")])[plural]
        if noun.startswith("bursts") and number in ("a", "one", "a single"):
            number = ""
        np_ = f"{number} {loud} {noun} {times}"
        frame = rng.integers(3)
        text = np_ if frame == 0 else f"{_pick(rng, ['the sound of', 'a recording of', 'audio of'])} {np_}"
        return Caption(_a_an(text), Constraint(allowed))

    pitch = timbre_adj = contour_adj = contour_clause = ""
    if "pitch" in mention:
        pitch = _pick(rng, _PITCH_WORDS[attrs["pitch"]])
        allowed["pitch"] = frozenset({attrs["pitch"]})
    if "contour" in mention:
        if rng.random() < 0.5:
            contour_adj = _pick(rng, _CONTOUR_ADJ[attrs["contour"]])
        else:
            contour_clause = _pick(rng, _CONTOUR_CLAUSE[attrs["contour"]])
        allowed["contour"] = frozenset({attrs["contour"]})
    if "source" in mention:
        allowed["source"] = frozenset({source})
        if rng.random() < 0.5:
            noun = _pick(rng, _TIMBRE_NOUNS[source])[plural]
        else:
            timbre_adj = _pick(rng, _TIMBRE_ADJ[source])
            noun = _pick(rng, _TONE_NOUNS)[plural]
    else:
        allowed["source"] = frozenset(TIMBRES)
        noun = _pick(rng, _TONE_NOUNS)[plural]
    if plural and contour_clause.startswith("that "):
        contour_clause = contour_clause.replace("rises", "rise").replace("falls", "fall").replace("stays", "stay")
    adjectives = [w for w in (loud, pitch, contour_adj, timbre_adj) if w]
    if len(adjectives) > 1 and rng.random() < 0.3:
        rng.shuffle(adjectives)
    style = rng.integers(5)
    if style == 0 and len(adjectives) >= 2:
        # "a beep, low and buzzy"
        text = f"{number} {noun}, {' and '.join(adjectives)} {contour_clause} {times}"
    elif style == 1:
        frame = _pick(rng, ["the sound of", "a recording of", "audio of", "you can hear"])
        text = f"{frame} {number} {' '.join(adjectives)} {noun} {contour_clause} {times}"
    else:
        text = f"{number} {' '.join(adjectives)} {noun} {contour_clause} {times}"
    return Caption(_a_an(text), Constraint(allowed))


def describe(
    modality: Literal["image", "audio"],
    attributes: Mapping[str, Any],
    rng: np.random.Generator,
    mention: set[str] | None = None,
) -> Caption:
    """A caption of these attributes in a random wording; `mention` (default: all) says which it states."""
    names = set(ATTRIBUTES[modality]) if mention is None else set(mention)
    if modality == "image":
        return _image_caption(attributes, rng, names)
    if attributes["source"] not in TIMBRES:
        names -= {"pitch", "contour"}
    return _sound_caption(attributes, rng, names)


# How often training captions leave an attribute out: the shape/colour and timbre/pitch are named
# most of the time, the rest about half the time, so short queries ("a red circle") are in-domain.
_MENTION_P = {
    "image": {"shape": 0.9, "colour": 0.9, "size": 0.55, "count": 0.6, "background": 0.5},
    "audio": {"source": 0.8, "pitch": 0.8, "contour": 0.6, "repetitions": 0.6, "loudness": 0.5},
}


def caption_variants(
    modality: Literal["image", "audio"], attributes: Mapping[str, Any], rng: np.random.Generator, n: int
) -> list[Caption]:
    """`n` training captions of one item, each stating a random subset of its attributes."""
    out = []
    probs = _MENTION_P[modality]
    for _ in range(n):
        mention = {name for name, p in probs.items() if rng.random() < p}
        if not mention & ({"shape", "colour"} if modality == "image" else {"source", "pitch"}):
            mention.add(_pick(rng, ["shape", "colour"] if modality == "image" else ["source", "pitch"]))
        out.append(describe(modality, attributes, rng, mention))
    return out


# --- unrelated sentences ------------------------------------------------------------------------
# Everyday sentences that describe neither shapes nor sounds: negatives for both towers in training
# (so an image or a sound lands nearer its own description than any other text) and distractors in
# the mixed-gallery evaluation. They avoid every word of the caption vocabularies (colours, shapes,
# sizes, numbers, pitches, timbres, loudness, "picture", "sound", ...; a test checks it).

_U_SUBJECTS = [
    "she", "he", "my uncle", "the librarian", "my neighbour", "the teacher", "our manager", "the baker", "my aunt",
    "the driver", "a student", "the farmer", "grandpa", "the nurse", "my cousin", "the postman",
    "our landlord", "the chef", "his sister", "the committee", "a tourist", "the mechanic", "my friend",
    "the new intern", "her father",
]  # fmt: skip
_U_ACTIONS = [
    "paints the kitchen door", "reads the morning paper", "cooks rice for dinner", "waters the garden",
    "fixes the bicycle", "writes a letter", "tidies the spare room", "books a flight to Lisbon",
    "plants tomatoes", "walks the dog", "sells fresh bread", "opens the shop", "pays the rent",
    "washes the car", "folds the laundry", "studies for the exam", "orders coffee", "visits the museum",
    "calls the plumber", "bakes a cake", "packs a suitcase", "repairs the roof", "feeds the cat",
    "sweeps the floor", "answers the email", "locks the gate", "reviews the contract", "rents an apartment",
    "reads a novel", "climbs the hill", "catches the bus", "misses the train", "learns to swim",
    "mends the fence", "irons the shirts", "buys vegetables at the market", "prints the report",
    "moves the sofa", "borrows a ladder", "cancels the appointment", "renews the passport",
    "checks the tyres", "sorts the mail", "hangs the curtains", "chops the onions", "waits for the ferry",
]  # fmt: skip
_U_WHEN = [
    "", "", "", "at noon", "on Monday", "every morning", "after lunch", "before the meeting",
    "in the evening", "on weekends", "this afternoon", "near the station", "at the office",
    "after school", "during the holidays", "tomorrow", "yesterday", "on Friday", "next week",
    "before breakfast", "in spring", "at midnight", "after work",
]  # fmt: skip
_U_VEHICLES = ["the train", "the bus", "the ferry", "our flight", "the taxi", "the coach", "the tram"]
_U_VEHICLE_EVENTS = ["leaves", "arrives", "is delayed", "departs", "was cancelled", "stops here"]
_U_PLACES = [
    "the library", "the bakery", "the museum", "the pharmacy", "the post office", "the market",
    "the bank", "the swimming pool", "the dentist", "the town hall", "the cinema", "the garage",
]  # fmt: skip
_U_PLACE_EVENTS = ["opens", "closes", "is closed", "reopens", "is busy", "is empty"]
_U_FOODS = [
    "pasta", "soup", "rice", "cheese", "tea", "coffee", "salad", "pancakes", "noodles", "bread",
    "apples", "potatoes", "yoghurt", "porridge", "fish", "curry", "sandwiches", "dumplings",
]  # fmt: skip
_U_LIKES = ["likes", "hates", "never eats", "often makes", "prefers", "is tired of", "wants"]
_U_QUESTIONS = [
    "where did you park the car", "can you pass the salt", "did you remember the keys",
    "who is coming to dinner", "when does the course begin", "have you paid the electricity bill",
    "is the printer working again", "what time is the interview", "could you water the plants",
    "did anyone feed the cat", "how far is the airport", "are we meeting at the cafe",
    "did the parcel arrive", "who borrowed my umbrella", "can we move the meeting",
]  # fmt: skip


def _unrelated_sentence(rng: np.random.Generator) -> str:
    kind = rng.integers(10)
    if kind < 5:
        text = f"{_pick(rng, _U_SUBJECTS)} {_pick(rng, _U_ACTIONS)} {_pick(rng, _U_WHEN)}"
    elif kind < 6:
        text = f"{_pick(rng, _U_VEHICLES)} {_pick(rng, _U_VEHICLE_EVENTS)} {_pick(rng, _U_WHEN)}"
    elif kind < 7:
        text = f"{_pick(rng, _U_PLACES)} {_pick(rng, _U_PLACE_EVENTS)} {_pick(rng, _U_WHEN)}"
    elif kind < 8:
        text = f"{_pick(rng, _U_SUBJECTS)} {_pick(rng, _U_LIKES)} {_pick(rng, _U_FOODS)}"
    elif kind < 9:
        text = f"{_pick(rng, _U_QUESTIONS)}?"
    else:
        first, second = _pick(rng, _U_SUBJECTS), _pick(rng, _U_SUBJECTS)
        text = f"{first} {_pick(rng, _U_ACTIONS)} while {second} {_pick(rng, _U_ACTIONS)}"
    text = re.sub(r"\s+", " ", text).strip()
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
        if not text.endswith("?"):
            text += "."
    return text


# held-out sentences are a disjoint quarter of all sentences (by a hash of the text), so the
# distractors of evaluation were never negatives in training
def _unrelated_is_heldout(text: str) -> bool:
    return zlib.crc32(text.lower().rstrip(".?").encode()) % 4 == 0


def unrelated_sentences(n: int, split: Split = "train", seed: int = 0, start: int = 0) -> list[str]:
    """Sentences `start .. start+n-1` of the unrelated-text corpus (everyday sentences about neither
    shapes nor sounds); deterministic by (split, seed, index). `heldout` sentences never occur in
    `train`/`seen`. Texts can repeat across indices.
    """
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    held = split == "heldout"
    out = []
    for index in range(start, start + n):
        rng = np.random.default_rng((_TEXT_CODE, _SPLIT_CODE[split], seed, index))
        while True:
            text = _unrelated_sentence(rng)
            if _unrelated_is_heldout(text) == held:
                break
        out.append(text)
    return out


def caption_vocabulary() -> frozenset[str]:
    """Every content word the image and sound captions use (what unrelated sentences must avoid)."""
    phrases: list[str] = []
    for table in (_SHAPE_WORDS, _TIMBRE_NOUNS, _NOISE_NOUNS):
        phrases += [w for forms in table.values() for pair in forms for w in pair]
    for table in (_COLOUR_WORDS, _SIZE_WORDS, _BACKGROUND_WORDS, _TIMBRE_ADJ, _PITCH_WORDS, _CONTOUR_ADJ,
                  _CONTOUR_CLAUSE, _LOUD_WORDS, _TIMES, _NUMBER_WORDS):  # fmt: skip
        phrases += [w for words in table.values() for w in words]
    phrases += [w for pair in _GENERIC_SHAPE + _TONE_NOUNS for w in pair] + _SEVERAL
    phrases += ["picture", "image", "drawing", "photo", "showing", "illustration", "background", "backdrop",
                "coloured", "sound", "recording", "audio", "hear", "played", "repeated", "heard", "noise",
                "bursts", "pitch", "once", "twice"]  # fmt: skip
    stop = {"a", "an", "the", "of", "on", "in", "at", "that", "to", "one", "times", "up", "down", "going", "pair"}
    words = {w for p in phrases for w in re.split(r"[^a-z0-9]+", p.lower()) if w}
    return frozenset((words - stop) | {"one", "times", "pair"})


# --- binding scenes -----------------------------------------------------------------------------
# Two different objects in one picture: different shapes *and* different colours ("a red circle and
# a blue square"). What a caption binds is which colour goes with which shape, so every scene has a
# swapped-binding twin ("a blue circle and a red square") with the same shapes and colours. A
# bi-encoder that pools words cannot tell the two apart; the cross-encoder (cross.py) is judged on it.
#
# Held-out design: a *swap class* is an unordered pair of shapes with an unordered pair of colours
# (28 x 28 = 784 classes, two scenes each: the binding and its twin). 98 classes (one in eight,
# a fixed permutation) are held out with both their scenes, so no held-out scene nor its twin is
# ever a training scene, while every shape, colour and (shape, colour) object still occurs in
# training in other scenes.
#
# Single-object captions never describe a scene: they describe every shape of a picture as one
# shape in one colour (their Constraint names the count and a shape or a colour), and a scene has two
# of each; likewise a scene caption never describes a single-object picture (SceneConstraint).

_SCENE_CODE = 14
SCENE_SIZES = ("small", "medium", "large")
_SCENE_CONNECTORS = (
    "{a} and {b}",
    "{a} next to {b}",
    "{a} with {b}",
    "{a} beside {b}",
    "{a} and {b} together",
    "{a}, {b}",
    "{a} alongside {b}",
    "{a} and also {b}",
)
_SCENE_FRAMES = (
    "{x}",
    "{x}",
    "{x}",
    "a picture of {x}",
    "an image of {x}",
    "a drawing of {x}",
    "there is {x}",
    "two shapes: {x}",
    "two objects, {x}",
)


def _swap_classes() -> list[tuple[tuple[str, str], tuple[str, str]]]:
    shapes = [(a, b) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1 :]]
    colours = [(a, b) for i, a in enumerate(COLOURS) for b in COLOURS[i + 1 :]]
    return [(s, c) for s in shapes for c in colours]


def _heldout_swap_classes() -> frozenset[tuple[tuple[str, str], tuple[str, str]]]:
    classes = _swap_classes()
    perm = np.random.default_rng(20261201).permutation(len(classes))  # fixed: part of the corpus
    return frozenset(classes[int(i)] for i in perm[: len(classes) // 8])


_HELDOUT_SCENES = _heldout_swap_classes()


def swap_class(attributes: Mapping[str, Any]) -> tuple[tuple[str, str], tuple[str, str]]:
    """The (shapes, colours) class of a scene, each pair in vocabulary order: the same for a scene and its twin."""
    (s1, c1, _), (s2, c2, _) = attributes["objects"]
    shapes = (s1, s2) if SHAPES.index(s1) < SHAPES.index(s2) else (s2, s1)
    colours = (c1, c2) if COLOURS.index(c1) < COLOURS.index(c2) else (c2, c1)
    return (shapes, colours)


def scene_is_heldout(attributes: Mapping[str, Any]) -> bool:
    """Whether a scene's swap class is held out (never drawn in `train` or `seen`)."""
    return swap_class(attributes) in _HELDOUT_SCENES


def heldout_swap_classes() -> frozenset[tuple[tuple[str, str], tuple[str, str]]]:
    """The held-out swap classes: ((shape, shape), (colour, colour)), each pair in vocabulary order."""
    return _HELDOUT_SCENES


def binding_key(attributes: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """What a binding caption states of a scene: its set of (shape, colour) objects."""
    return frozenset((shape, colour) for shape, colour, _ in attributes["objects"])


def swapped(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The scene's twin: the same shapes, sizes and background with the two colours exchanged."""
    (s1, c1, z1), (s2, c2, z2) = attributes["objects"]
    return {"objects": ((s1, c2, z1), (s2, c1, z2)), "background": attributes["background"]}


def sample_scene(split: Split, rng: np.random.Generator) -> dict[str, Any]:
    """Draw the attributes of one scene of `split`: {"objects": ((shape, colour, size), x2), "background"}."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    classes = sorted(_HELDOUT_SCENES) if split == "heldout" else sorted(set(_swap_classes()) - _HELDOUT_SCENES)
    (s1, s2), (c1, c2) = classes[int(rng.integers(len(classes)))]
    if rng.random() < 0.5:
        c1, c2 = c2, c1
    objects = [(s1, c1, str(rng.choice(SCENE_SIZES))), (s2, c2, str(rng.choice(SCENE_SIZES)))]
    if rng.random() < 0.5:  # which object is drawn (and by default named) first
        objects.reverse()
    return {"objects": tuple(objects), "background": str(rng.choice(BACKGROUNDS))}


def render_scene(attributes: Mapping[str, Any], rng: np.random.Generator) -> Image.Image:
    """Draw a two-object scene (64x64 RGB, antialiased like `render_image`, non-overlapping objects)."""
    return render_scene_with_masks(attributes, rng)[0]


def render_scene_with_masks(
    attributes: Mapping[str, Any], rng: np.random.Generator
) -> tuple[Image.Image, NDArray[np.float32]]:
    """`render_scene` and each object's coverage, (2, 64, 64) in [0, 1], in `attributes["objects"]`
    order; the random stream and the pixels are exactly `render_scene`'s."""
    objects = attributes["objects"]
    radii = []
    for _, _, size in objects:
        lo, hi = _LARGE_RADIUS_PAIR if size == "large" else _RADIUS[size]
        radii.append(float(rng.uniform(lo, hi)))
    centres = _place(radii, rng)
    big = IMAGE_SIZE * _SUPERSAMPLE
    bg = np.array(_background_rgb(attributes["background"], rng), dtype=np.float32)
    pixels = np.broadcast_to(bg, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    coverage = []
    for (shape, colour, _), (cx, cy), r in zip(objects, centres, radii, strict=True):
        mask = Image.new("L", (big, big), 0)
        max_angle = {"circle": 0.0, "ring": 0.0, "square": 0.17, "diamond": 0.12, "cross": 0.17}.get(shape, 0.25)
        _draw_shape(ImageDraw.Draw(mask), shape, cx, cy, r, rng.uniform(-max_angle, max_angle))
        alpha = np.asarray(mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32)[..., None]
        alpha /= 255
        coverage.append(alpha[..., 0])
        fg = np.array(_colour_rgb(colour, rng), dtype=np.float32)
        pixels = pixels * (1 - alpha) + fg * alpha
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return image, _stack_masks(coverage)


@dataclass(frozen=True)
class SceneConstraint:
    """What a binding caption states: its objects ((shape, colour, size or None) each) and maybe the background."""

    objects: tuple[tuple[str, str, str | None], ...]
    background: str | None = None

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """True of a scene with exactly these objects (sizes where stated); never of a single-object picture."""
        scene = attributes.get("objects")
        if scene is None or len(scene) != len(self.objects):
            return False
        if self.background is not None and attributes.get("background") != self.background:
            return False

        def fits(want: tuple[str, str, str | None], have: tuple[str, str, str]) -> bool:
            return want[0] == have[0] and want[1] == have[1] and want[2] in (None, have[2])

        a, b = self.objects
        x, y = scene
        return (fits(a, x) and fits(b, y)) or (fits(a, y) and fits(b, x))


def _object_phrase(shape: str, colour: str, size: str | None, rng: np.random.Generator) -> str:
    noun = _pick(rng, _SHAPE_WORDS[shape])[0]
    colour_word = _pick(rng, _COLOUR_WORDS[colour])
    size_word = _pick(rng, _SIZE_WORDS[size]) if size else ""
    style = rng.integers(6)
    if style == 0:
        return f"a {size_word} {noun} in {colour_word}"
    if style == 1 and size_word and rng.random() < 0.5:
        return f"a {colour_word} {size_word} {noun}"
    return f"a {size_word} {colour_word} {noun}"


def describe_scene(
    attributes: Mapping[str, Any], rng: np.random.Generator, mention: set[str] | None = None
) -> Caption:
    """A binding caption of a scene in a random wording; `mention` may add "size" and "background"
    (default: both). Shapes and colours are always stated, each colour next to its own shape."""
    names = {"size", "background"} if mention is None else set(mention)
    objects = list(attributes["objects"])
    if rng.random() < 0.5:
        objects.reverse()
    stated = tuple((s, c, z if "size" in names else None) for s, c, z in objects)
    phrases = [_object_phrase(s, c, z, rng) for s, c, z in stated]
    text = _pick(rng, _SCENE_FRAMES).format(x=_pick(rng, _SCENE_CONNECTORS).format(a=phrases[0], b=phrases[1]))
    background = None
    if "background" in names:
        background = attributes["background"]
        bg = _pick(rng, _BACKGROUND_WORDS[background])
        text += " " + _pick(rng, [f"on a {bg} background", f"on {bg}", f"against a {bg} backdrop"])
    if rng.random() < 0.2:
        text = text[0].upper() + text[1:]
    return Caption(_a_an(re.sub(r"\s+", " ", text)), SceneConstraint(stated, background))  # type: ignore[arg-type]


def scene_caption_variants(attributes: Mapping[str, Any], rng: np.random.Generator, n: int) -> list[Caption]:
    """`n` training captions of a scene: sizes stated a quarter of the time, the background a third."""
    out = []
    for _ in range(n):
        mention = {name for name, p in (("size", 0.25), ("background", 0.33)) if rng.random() < p}
        out.append(describe_scene(attributes, rng, mention))
    return out


def _scene_draws(split: Split, seed: int, index: int) -> tuple[dict[str, Any], int, int]:
    """Scene `index` of (split, seed): its attributes, render seed and caption seed."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    rng = np.random.default_rng((_SCENE_CODE, _SPLIT_CODE[split], seed, index))
    attributes = sample_scene(split, rng)
    return attributes, int(rng.integers(2**63)), int(rng.integers(2**63))


def scene_items(n: int, split: Split = "train", seed: int = 0, start: int = 0) -> list[Item]:
    """Scenes `start .. start+n-1` of `split`: Item(id, "image", PIL 64x64, binding caption (shapes and
    colours only), attributes {"objects", "background"}); deterministic by (split, seed, index)."""
    out = []
    for index in range(start, start + n):
        attributes, render_seed, caption_seed = _scene_draws(split, seed, index)
        out.append(
            Item(
                id=f"scene/{split}/{seed}/{index}",
                modality="image",
                media=render_scene(attributes, np.random.default_rng(render_seed)),
                caption=describe_scene(attributes, np.random.default_rng(caption_seed), set()).text,
                attributes=attributes,
            )
        )
    return out


@dataclass
class BindingGallery:
    """The binding evaluation's images: held-out scenes, their twins (same layout, colours swapped),
    one single-object picture per scene (one of its objects, alone), and ordinary corpus images."""

    scenes: list[Item]
    twins: list[Item]
    singles: list[Item]
    ordinary: list[Item]

    def items(self) -> list[Item]:
        return self.scenes + self.twins + self.singles + self.ordinary


def scene_pairs(n: int, split: Split = "train", seed: int = 0, start: int = 0) -> list[tuple[Item, Item]]:
    """Scenes `start .. start+n-1` of `split` (as `scene_items`) with their twins: the same layout,
    sizes, angles and background drawn from the scene's own random stream, the colours exchanged."""
    out = []
    for scene in scene_items(n, split, seed, start):
        index = int(scene.id.rsplit("/", 1)[1])
        _, render_seed, caption_seed = _scene_draws(split, seed, index)
        twin = swapped(scene.attributes)
        out.append(
            (
                scene,
                Item(
                    id=scene.id.replace("scene/", "twin/", 1),
                    modality="image",
                    media=render_scene(twin, np.random.default_rng(render_seed)),
                    caption=describe_scene(twin, np.random.default_rng(caption_seed), set()).text,
                    attributes=twin,
                ),
            )
        )
    return out


def binding_gallery(
    n: int = 100, seed: int = 0, ordinary: int | None = None, split: Split = "heldout"
) -> BindingGallery:
    """`n` held-out scenes, their `n` twins, `n` single objects and `ordinary` (default `n`) corpus
    images (half held-out, half seen combinations, `heldout_gallery`). `split="seen"` draws the
    scenes from training swap classes instead (fresh draws: a validation gallery)."""
    pairs = scene_pairs(n, split, seed)
    singles = []
    for k, (scene, _) in enumerate(pairs):
        _, render_seed, caption_seed = _scene_draws(split, seed, k)
        shape, colour, size = scene.attributes["objects"][k % 2]
        background = scene.attributes["background"]
        single = {"shape": shape, "colour": colour, "size": size, "count": 1, "background": background}
        singles.append(
            Item(
                id=scene.id.replace("scene/", "single/", 1),
                modality="image",
                media=render_image(single, np.random.default_rng(render_seed)),
                caption=describe("image", single, np.random.default_rng(caption_seed)).text,
                attributes=single,
            )
        )
    m = n if ordinary is None else ordinary
    held, seen = heldout_gallery("image", (m + 1) // 2, seed)
    return BindingGallery([p[0] for p in pairs], [p[1] for p in pairs], singles, (held + seen)[:m])


# --- encodings ----------------------------------------------------------------------------------


def image_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (what `xmodal demo` publishes as a MediaEvent's data)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def waveform_wav(wave: Waveform) -> bytes:
    """16-bit PCM WAV bytes of a clip."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wave.samples, -1, 1), wave.sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()
