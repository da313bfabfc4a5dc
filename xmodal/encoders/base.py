"""The Encoder protocol: a space is a set of towers that share one vector space.

Inputs are already decoded (text: str, image: RGB `PIL.Image.Image`, audio: `Waveform`); decoding
untrusted bytes is `xmodal.encoders.media`'s job. Every output row is L2-normalised float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from xmodal.encoders.scheduling import DEFAULT_INGEST_SLICE, DEFAULT_QUERIES_PER_SLICE, Priority, TowerScheduler

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


class SerializedEncoder:
    """An Encoder whose tower calls run one at a time, scheduled fairly between searches and ingest.

    `xmodal up` shares one set of towers between the ingest agents and the query service, and the
    query service serves requests from several threads. Fast tokenizers are not reentrant
    ("Already borrowed") and torch already spreads one call over every core, so calls are
    serialised, by a `TowerScheduler` (scheduling.py): queries go before waiting ingest work,
    ingest is encoded in slices of `ingest_slice` items so a query waits at most one slice, and
    after `queries_per_slice` query batches in a row one waiting ingest slice goes, so ingest is
    never starved. Calls of one class that queue meanwhile are encoded as one batch (a lone call is
    encoded at once: no added wait); if a merged batch fails, its parts are retried one by one so
    one bad input fails only its caller.

    A call's class is its view's: `for_queries()` and `for_ingest()` are views of the same towers
    and schedule; the encoder itself is an ingest view (bulk work that yields to searches), so
    callers that do not say keep the Encoder protocol.
    """

    def __init__(
        self,
        inner: Encoder,
        *,
        ingest_slice: int = DEFAULT_INGEST_SLICE,
        queries_per_slice: int = DEFAULT_QUERIES_PER_SLICE,
        priority: Priority = "ingest",
        scheduler: TowerScheduler | None = None,
    ) -> None:
        """`scheduler`: share another view's schedule (for_queries / for_ingest); the two numbers
        then come from it."""
        self._inner = inner
        self._scheduler = scheduler or TowerScheduler(ingest_slice=ingest_slice, queries_per_slice=queries_per_slice)
        self.priority: Priority = priority

    def for_queries(self) -> SerializedEncoder:
        """This encoder's towers and schedule, for search: its calls go before waiting ingest work."""
        return SerializedEncoder(self._inner, priority="query", scheduler=self._scheduler)

    def for_ingest(self) -> SerializedEncoder:
        """This encoder's towers and schedule, for ingest: encoded in slices, after waiting queries."""
        return SerializedEncoder(self._inner, priority="ingest", scheduler=self._scheduler)

    @property
    def scheduler(self) -> TowerScheduler:
        return self._scheduler

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
        self._scheduler.exclusive(self._inner.load)

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        return self._scheduler.encode(self.priority, "text", self._inner.encode_texts, texts)

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        return self._scheduler.encode(self.priority, "image", self._inner.encode_images, images)

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        return self._scheduler.encode(self.priority, "audio", self._inner.encode_audio, clips)
