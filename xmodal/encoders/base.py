"""The Encoder protocol: a space is a set of towers that share one vector space.

Inputs are already decoded (text: str, image: RGB `PIL.Image.Image`, audio: `Waveform`); decoding
untrusted bytes is `xmodal.encoders.media`'s job. Every output row is L2-normalised float32.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MODALITIES",
    "Encoder",
    "Modality",
    "SerializedEncoder",
    "Vectors",
    "Waveform",
    "audio_seconds_needed",
    "frames_in",
    "l2_normalize",
]

Modality = Literal["text", "image", "audio"]
MODALITIES: tuple[Modality, ...] = ("text", "image", "audio")
Vectors = NDArray[np.float32]


def frames_in(seconds: float, sample_rate: int) -> int:
    """How many frames the first `seconds` of a clip hold: one rule for the decoder and the towers,
    so a clip decoded to a bound and a clip cut to it are the same samples."""
    return math.ceil(seconds * sample_rate)


@dataclass(frozen=True)
class Waveform:
    """Mono audio: float32 samples in [-1, 1] at `sample_rate` Hz."""

    samples: NDArray[np.float32]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def head(self, seconds: float) -> Waveform:
        """The first `seconds` of this clip (at its own rate); itself when it is no longer."""
        frames = frames_in(seconds, self.sample_rate)
        return self if len(self.samples) <= frames else Waveform(self.samples[:frames], self.sample_rate)

    def resampled(self, rate: int) -> Waveform:
        """This clip at `rate` Hz (libsoxr, high quality); itself when already there."""
        if rate == self.sample_rate:
            return self
        import soxr  # imported here: only audio towers need it

        out = soxr.resample(self.samples, self.sample_rate, rate, quality="HQ")
        return Waveform(np.ascontiguousarray(out, dtype=np.float32), rate)


@runtime_checkable
class Encoder(Protocol):
    """One space. `load()` is the start-up hook (weights are never loaded at import or in __init__).

    An encoder with an audio tower may also have `audio_seconds: float | None`, known before
    `load()`: the length of the start of a clip that `encode_audio` reads, so that a clip and its
    first `audio_seconds` encode to the same vector. Media decoding stops there (see
    `audio_seconds_needed` and `MediaLimits.for_encoders`). None, or no such attribute, means the
    tower reads whole clips. It is not a protocol member, so encoders without audio need not say.

    An encoder may also have `fingerprint: str`, a name of its exact weights that every point and
    index generation records (xmodal/encoders/fingerprint.py; the built-in spaces all have one).
    """

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


def audio_seconds_needed(encoders: Iterable[Encoder]) -> float | None:
    """The longest start of a clip that any of these encoders' audio towers reads: what one decode
    shared by all of them must keep. None when one of them reads whole clips, and when none has an
    audio tower (audio is then decoded whole, as ever, only to report what is wrong with it)."""
    needs: list[float | None] = [getattr(e, "audio_seconds", None) for e in encoders if "audio" in e.modalities]
    bounded = [need for need in needs if need is not None]
    if not needs or len(bounded) < len(needs):
        return None
    return max(bounded)


def l2_normalize(x: NDArray[np.floating]) -> Vectors:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class _Pending:
    items: Sequence[Any]
    result: Vectors | None = None
    error: BaseException | None = None
    done: bool = False


class SerializedEncoder:
    """An Encoder whose tower calls run one at a time, with concurrent calls encoded together.

    `xmodal up` shares one set of towers between the ingest agents and the query service, and the
    query service serves requests from several threads. Fast tokenizers are not reentrant
    ("Already borrowed") and torch already spreads one call over every core, so calls are
    serialised. While one call runs, the calls that arrive queue up; the next thread to get the
    tower encodes everything queued as one batch (a lone call is encoded at once: no added wait).
    If a merged batch fails, its parts are retried one by one so one bad input fails only its caller.
    """

    def __init__(self, inner: Encoder) -> None:
        self._inner = inner
        self._tower_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queues: dict[str, list[_Pending]] = {"text": [], "image": [], "audio": []}

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def dim(self) -> int:
        return self._inner.dim

    @property
    def modalities(self) -> frozenset[Modality]:
        return self._inner.modalities

    @property
    def audio_seconds(self) -> float | None:
        return getattr(self._inner, "audio_seconds", None)

    @property
    def fingerprint(self) -> str:
        from xmodal.encoders.fingerprint import fingerprint_of

        return fingerprint_of(self._inner)

    def load(self) -> None:
        with self._tower_lock:
            self._inner.load()

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        return self._encode("text", self._inner.encode_texts, texts)

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        return self._encode("image", self._inner.encode_images, images)

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        return self._encode("audio", self._inner.encode_audio, clips)

    def _encode(self, modality: str, tower: Callable[[Sequence[Any]], Vectors], items: Sequence[Any]) -> Vectors:
        mine = _Pending(items)
        with self._queue_lock:
            self._queues[modality].append(mine)
        with self._tower_lock:
            if not mine.done:  # nobody took our items while we waited: take all that is queued
                with self._queue_lock:
                    batch, self._queues[modality] = self._queues[modality], []
                self._run(tower, batch)
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None  # set by _run for every pending it took
        return mine.result

    @staticmethod
    def _run(tower: Callable[[Sequence[Any]], Vectors], batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                batch[0].result = tower(batch[0].items)
            else:
                merged = tower([item for pending in batch for item in pending.items])
                start = 0
                for pending in batch:
                    pending.result = merged[start : start + len(pending.items)]
                    start += len(pending.items)
        except BaseException as merged_error:  # noqa: BLE001 - attributed below, per caller
            if len(batch) == 1:
                batch[0].error = merged_error
            else:
                for pending in batch:
                    try:
                        pending.result = tower(pending.items)
                    except BaseException as e:  # noqa: BLE001 - re-raised in its own caller's thread
                        pending.error = e
        finally:
            for pending in batch:
                pending.done = True
