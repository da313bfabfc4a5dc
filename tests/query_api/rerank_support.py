"""Helpers of the rerank stage tests: a gallery with stored views, and a reranker that scores by rules.

The stage (xmodal/query_api/rerank.py) is the system under test, so its reranker may be any real
Reranker. `RuleReranker` scores what it is given by rules one can check by hand, reading the
candidates' views exactly as a cross-encoder must: the caption text, the decoded JPEG thumbnail's
pixels, the decoded WAV preview's spectrum. The gallery (in the toy colour space of qa_support.py)
is built so that the first stage ranks each query's right answer below a decoy: its vectors are
given, its thumbnails are made by the ingest's own `make_thumbnail`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from xmodal.encoders.base import Modality, Waveform
from xmodal.indexer import IndexPoint, VectorIndex
from xmodal.thumbnails import ThumbnailSpec, make_thumbnail

MATCH = 5.0
MISMATCH = -5.0
_COLOURS = {"red": 0, "green": 1, "blue": 2}


def tone(hz: float, seconds: float = 1.0, rate: int = 16_000) -> Waveform:
    t = np.arange(int(seconds * rate)) / rate
    return Waveform((0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)


# id -> (modality, content, toy vector, has a stored view). For the text query "a red thing"
# (toy vector: red) the first stage puts img/a-decoy (a blue picture, but a red vector) first; for
# "a high tone" (toy vector: "other") snd/a-low comes first; cap/red-apple before cap/red-thing.
GALLERY: dict[str, tuple[Modality, Any, list[float], bool]] = {
    "img/a-decoy": ("image", Image.new("RGB", (48, 48), (20, 20, 230)), [1, 0.1, 0.1, 0.05], True),
    "img/d-noview": ("image", Image.new("RGB", (48, 48), (230, 20, 20)), [0.9, 0.2, 0.2, 0.05], False),
    "img/b-red": ("image", Image.new("RGB", (48, 48), (230, 20, 20)), [0.8, 0.3, 0.3, 0.05], True),
    "img/c-green": ("image", Image.new("RGB", (48, 48), (20, 200, 20)), [0.2, 1, 0.1, 0.05], True),
    "snd/a-low": ("audio", tone(220), [0, 0, 0, 1], True),
    "snd/b-high": ("audio", tone(2500), [0.1, 0.1, 0.1, 1], True),
    "cap/red-apple": ("text", "a red apple", [1, 0, 0, 0.2], True),
    "cap/red-thing": ("text", "A red thing", [0.9, 0.2, 0, 0.2], True),
    "cap/green-leaf": ("text", "a green leaf", [0, 1, 0, 0.2], True),
}


def populate_gallery(index: VectorIndex, space: str = "toy") -> None:
    index.ensure_collection(space, 4)
    points = []
    for item_id, (modality, content, vector, has_view) in GALLERY.items():
        v = np.asarray(vector, dtype=np.float32)
        thumbnail = make_thumbnail(modality, content, ThumbnailSpec()) if has_view else None
        points.append(IndexPoint(item_id, v / np.linalg.norm(v), modality, {"n": len(points)}, thumbnail=thumbnail))
    index.upsert(space, points)


def dominant_hz(wave: Waveform) -> float:
    spectrum = np.abs(np.fft.rfft(wave.samples))
    return float(np.fft.rfftfreq(len(wave.samples), 1 / wave.sample_rate)[int(np.argmax(spectrum))])


class RuleReranker:
    """Reranker protocol for text queries, by rules on the candidates' views:

    - text: MATCH when the caption equals the query (case-insensitive), else 0;
    - image: MATCH when the picture's strongest mean channel is the colour the query names, else MISMATCH;
    - audio: MATCH for "high" and a dominant frequency above 1 kHz, or "low" and below 500 Hz, else MISMATCH.

    Records what it was given (`calls`), and counts `load()`s, which take `load_seconds`.
    """

    name = "rules"
    pairs: frozenset[tuple[Modality, Modality]] = frozenset({("text", "text"), ("text", "image"), ("text", "audio")})

    def __init__(self, load_seconds: float = 0.0) -> None:
        self.loads = 0
        self.load_seconds = load_seconds
        self.calls: list[tuple[str, int]] = []  # (candidate modality, how many candidates)
        self._lock = threading.Lock()

    def load(self) -> None:
        time.sleep(self.load_seconds)  # long enough for concurrent first requests to overlap
        with self._lock:
            self.loads += 1

    def score(
        self, query_modality: Modality, query: Any, candidate_modality: Modality, candidates: Sequence[Any]
    ) -> np.ndarray:
        assert query_modality == "text" and isinstance(query, str)
        self.calls.append((candidate_modality, len(candidates)))
        words = set(query.lower().split())
        out = []
        for candidate in candidates:
            if candidate_modality == "text":
                assert isinstance(candidate, str)
                out.append(MATCH if candidate.casefold() == query.casefold() else 0.0)
            elif candidate_modality == "image":
                assert isinstance(candidate, Image.Image) and candidate.mode == "RGB"
                channel = int(np.argmax(np.asarray(candidate, dtype=np.float32).mean(axis=(0, 1))))
                named = [_COLOURS[w] for w in words if w in _COLOURS]
                out.append(MATCH if named and named[0] == channel else MISMATCH)
            else:
                assert isinstance(candidate, Waveform)
                hz = dominant_hz(candidate)
                good = ("high" in words and hz > 1000) or ("low" in words and hz < 500)
                out.append(MATCH if good else MISMATCH)
        return np.asarray(out, dtype=np.float32)


def expected_adjustment(item_id: str, query: str) -> float:
    """What RuleReranker adds to `item_id` for `query`, worked out from GALLERY (0 without a view)."""
    modality, content, _vector, has_view = GALLERY[item_id]
    if not has_view:
        return 0.0
    return float(RuleReranker().score("text", query, modality, [content])[0])
