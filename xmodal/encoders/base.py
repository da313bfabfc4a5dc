"""The Encoder protocol: a space is a set of towers that share one vector space.

Inputs are already decoded (text: str, image: RGB `PIL.Image.Image`, audio: `Waveform`); decoding
untrusted bytes is `xmodal.encoders.media`'s job. Every output row is L2-normalised float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MODALITIES", "Encoder", "Modality", "SerializedEncoder", "Vectors", "Waveform", "l2_normalize"]

Modality = Literal["text", "image", "audio"]
MODALITIES: tuple[Modality, ...] = ("text", "image", "audio")
Vectors = NDArray[np.float32]


@dataclass(frozen=True)
class Waveform:
    """Mono audio: float32 samples in [-1, 1] at `sample_rate` Hz."""

    samples: NDArray[np.float32]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def resampled(self, rate: int) -> Waveform:
        """This clip at `rate` Hz (libsoxr, high quality); itself when already there."""
        if rate == self.sample_rate:
            return self
        import soxr  # imported here: only audio towers need it

        out = soxr.resample(self.samples, self.sample_rate, rate, quality="HQ")
        return Waveform(np.ascontiguousarray(out, dtype=np.float32), rate)


@runtime_checkable
class Encoder(Protocol):
    """One space. `load()` is the start-up hook (weights are never loaded at import or in __init__)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int:
        """Known before load() (from the model's config), so collections are checked at start-up."""
        ...

    @property
    def modalities(self) -> frozenset[Modality]: ...

    def load(self) -> None: ...

    def encode_texts(self, texts: Sequence[str]) -> Vectors: ...

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors: ...

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors: ...


def l2_normalize(x: NDArray[np.floating]) -> Vectors:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SerializedEncoder:
    """An Encoder whose calls run one at a time.

    `xmodal up` shares one set of towers between the ingest agents and the query service; fast
    tokenizers are not reentrant ("Already borrowed") and torch already spreads one call over
    every core, so concurrent calls gain nothing and may fail.
    """

    def __init__(self, inner: Encoder) -> None:
        import threading

        self._inner = inner
        self._lock = threading.Lock()
        self.name, self.dim = inner.name, inner.dim

    @property
    def modalities(self) -> frozenset[Modality]:
        return self._inner.modalities

    def load(self) -> None:
        with self._lock:
            self._inner.load()

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        with self._lock:
            return self._inner.encode_texts(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        with self._lock:
            return self._inner.encode_images(images)

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        with self._lock:
            return self._inner.encode_audio(clips)
