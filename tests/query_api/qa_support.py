"""Helpers of the search-side tests: the mini text tower as a space, a toy space for image, audio
and multi-space paths, a small corpus, request and media builders, both index backends.

The toy space is honest about what it is: a 4-d "colour" space (red, green, blue, other) whose text
tower counts colour words, whose image tower takes the mean colour and whose audio tower marks
"sound". It lets the tests exercise image/audio/uri decoding, multi-space fusion and tower failures
against a real index, with results one can predict by hand.
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import soundfile as sf
from PIL import Image
from qdrant_client import QdrantClient

from xmodal.config import Settings, load_settings
from xmodal.encoders.base import Encoder, Modality, Vectors, Waveform, l2_normalize
from xmodal.encoders.mini.text import MINILM_DIM, MiniLMText
from xmodal.errors import EncodeError
from xmodal.indexer import EdgeIndex, IndexPoint, QdrantIndex, VectorIndex
from xmodal.schema import SearchRequest, parse_search_request

TOY_DIM = 4


class MiniText:
    """The `mini` space reduced to its text tower: the real all-MiniLM-L6-v2 of MiniSpace.

    The search side's tests need real semantics, not MiniSpace's trained image/audio towers (whose
    weights are built separately), and a space without an image tower keeps `unsupported_modality`
    reachable whatever the shipped towers are.
    """

    name = "mini"
    dim = MINILM_DIM
    modalities: frozenset[Modality] = frozenset({"text"})

    def __init__(self) -> None:
        self._text = MiniLMText()

    def load(self) -> None:
        self._text.load()

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        return self._text.encode(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        raise EncodeError("this mini has no image tower", code="unsupported_modality")

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        raise EncodeError("this mini has no audio tower", code="unsupported_modality")


_TOY_WORDS = {"red": 0, "crimson": 0, "green": 1, "blue": 2}


class ToySpace:
    """Encoder protocol, 4-d colour space. Text holding `fail_on` makes the text tower raise."""

    name = "toy"
    dim = TOY_DIM
    modalities: frozenset[Modality] = frozenset({"text", "image", "audio"})
    fail_on = "explode"

    def load(self) -> None:
        pass

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        rows = []
        for text in texts:
            if self.fail_on in text:
                raise RuntimeError("toy text tower exploded")
            row = np.zeros(TOY_DIM, dtype=np.float32)
            for word in text.lower().replace(",", " ").split():
                if word in _TOY_WORDS:
                    row[_TOY_WORDS[word]] += 1
            row[3] = 0.0 if row.any() else 1.0  # colourless text points at "other"
            rows.append(row)
        return l2_normalize(np.stack(rows))

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        rows = [np.append(np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) / 255, 0.05) for im in images]
        return l2_normalize(np.stack(rows))

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        return l2_normalize(np.stack([np.array([0.05, 0.05, 0.05, 1.0], dtype=np.float32) for _ in clips]))


# id -> (modality, caption used by MiniLM, toy vector, metadata). "Image" and "audio" items in the
# mini space stand in for a trained tower: their vector is MiniLM's encoding of their caption.
CORPUS: dict[str, tuple[str, str, list[float], dict[str, Any]]] = {
    "cap/crimson-disc": ("text", "a crimson disc", [1, 0, 0, 0.2], {"album": "shapes", "n": 1}),
    "cap/leaves": ("text", "green leaves in spring", [0, 1, 0, 0.2], {"album": "shapes", "n": 2}),
    "cap/dog": ("text", "a dog barking in the park", [0, 0, 0, 1], {"album": "animals", "n": 3}),
    "cap/rain": ("text", "rain falling on a tin roof", [0, 0, 0.1, 1], {"album": "weather", "n": 4}),
    "cap/piano": ("text", "a slow piano melody", [0, 0.1, 0, 1], {"album": "music", "n": 5}),
    "img/tomato": ("image", "a ripe red tomato", [1, 0.1, 0.1, 0.05], {"album": "shapes", "n": 6}),
    "img/blue-sky": ("image", "a clear blue sky", [0.1, 0.1, 1, 0.05], {"album": "weather", "n": 7}),
    "snd/bark": ("audio", "a dog barks twice", [0.05, 0.05, 0.05, 1], {"album": "animals", "n": 8}),
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of a module's own query service on the session broker: its own topic prefix and
    data dir, 2 partitions, a quick group join, 4 request workers (import it into the module)."""
    return load_settings(
        {
            "XMODAL_TOPIC_PREFIX": f"q{uuid.uuid4().hex[:10]}",
            "XMODAL_DATA_DIR": str(tmp_path_factory.mktemp("data")),
            "XMODAL_METRICS_PORT": "0",
            "XMODAL_TOPIC_PARTITIONS": "2",
            "XMODAL_SESSION_TIMEOUT_MS": "3000",
            "XMODAL_QUERY_CONCURRENCY": "4",
            "XMODAL_SEARCH_TIMEOUT_S": "10",
            "XMODAL_RERANK_K": "50",
        }
    )


def make_request(**fields: Any) -> SearchRequest:
    """A SearchRequest through the wire parser, as the service would see it."""
    fields.setdefault("request_id", "r1")
    return parse_search_request(orjson.dumps(fields))


def png_bytes(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 0.25, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def populate(index: VectorIndex, mini: Encoder) -> None:
    index.ensure_collection("mini", mini.dim)
    index.ensure_collection("toy", TOY_DIM)
    ids = list(CORPUS)
    captions = mini.encode_texts([CORPUS[i][1] for i in ids])
    index.upsert("mini", [IndexPoint(i, captions[n], CORPUS[i][0], CORPUS[i][3]) for n, i in enumerate(ids)])
    index.upsert("toy", [IndexPoint(i, _unit(CORPUS[i][2]), CORPUS[i][0], CORPUS[i][3]) for i in ids])


def _unit(values: list[float]) -> Vectors:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def open_backend(kind: str, root: Path) -> VectorIndex:
    if kind == "edge":
        return EdgeIndex(root / "index")
    return QdrantIndex(QdrantClient(":memory:"), collection_prefix="t")
