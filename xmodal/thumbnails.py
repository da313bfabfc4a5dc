"""Thumbnails stored with each indexed item, so that a page can show results without a media store.

Made at ingest from the decoded content (the same pixels and samples the towers read) and kept in
the point's payload under `thumbnail`, the same object in every space:

- image: `{"image": "data:image/jpeg;base64,…"}`, longest side `XMODAL_THUMBNAIL_SIZE` (never
  enlarged). An event that already carries a small PNG or JPEG (it fits in the thumbnail's size,
  at most `PASSTHROUGH_MAX_CHARS` of base64, no EXIF rotation to apply) keeps its own bytes as the
  picture: the same pixels, and no resize or JPEG encode per image at ingest (about 0.6 ms each on
  2 loaded cores, half of what the pipeline added to a 64x64 image's encode);
- audio: `{"image": <waveform picture, PNG data URL>, "audio": <preview, WAV data URL>}`; the preview
  is the clip's first `XMODAL_AUDIO_PREVIEW_SECONDS` as 16 kHz mono 8-bit PCM (32 kB for 2 s), a WAV
  every browser plays;
- text: `{"text": <the first 280 characters>}` (a caption for the page; tiny, so always kept).

`XMODAL_THUMBNAIL_SIZE=0` stores no picture and `XMODAL_AUDIO_PREVIEW_SECONDS=0` no preview; an item
with neither gets no `thumbnail` at all. Making a thumbnail never fails an item: a content this code
cannot draw (it was decoded, so that is a bug here) is logged and indexed without one.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from xmodal.encoders.base import Waveform

__all__ = ["PASSTHROUGH_MAX_CHARS", "PREVIEW_RATE", "TEXT_PREVIEW_CHARS", "ThumbnailSpec", "make_thumbnail"]

log = logging.getLogger(__name__)

TEXT_PREVIEW_CHARS = 280
PREVIEW_RATE = 16_000
_JPEG_QUALITY = 80
# An original this small (base64 characters) is stored as it came: about a 128x128 JPEG's size.
PASSTHROUGH_MAX_CHARS = 16 * 1024
# Leading base64 of the formats a browser and the rerank loader both read as they are.
_PASSTHROUGH_PREFIXES = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"))
_WAVE_COLOUR = (64, 112, 200)
_WAVE_BACKGROUND = (246, 247, 250)


@dataclass(frozen=True)
class ThumbnailSpec:
    """What to store: the picture's longest side (0: none) and the audio preview's length (0: none)."""

    size: int = 128
    audio_seconds: float = 2.0

    @classmethod
    def from_settings(cls, settings: Any) -> ThumbnailSpec:
        return cls(size=settings.thumbnail_size, audio_seconds=settings.audio_preview_seconds)


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_thumbnail(image: Image.Image, size: int) -> str:
    """A JPEG data URL of `image` scaled down to fit in size x size (aspect kept)."""
    small = image.convert("RGB")
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
    return _data_url("image/jpeg", buf.getvalue())


def _passthrough(image: Image.Image, original_b64: str | None, size: int) -> str | None:
    """The event's own bytes as the picture's data URL when they can stand for a thumbnail as they
    are (module docstring), else None."""
    if original_b64 is None or len(original_b64) > PASSTHROUGH_MAX_CHARS or max(image.size) > size:
        return None
    mime = next((m for prefix, m in _PASSTHROUGH_PREFIXES if original_b64.startswith(prefix)), None)
    if mime is None:
        return None
    try:
        raw = base64.b64decode(original_b64, validate=True)
    except ValueError:
        return None
    # An EXIF orientation was applied at decode; a viewer of the original might not apply it.
    if b"Exif\x00\x00" in raw or b"eXIf" in raw:
        return None
    return f"data:{mime};base64,{original_b64}"


def waveform_picture(wave: Waveform, size: int) -> str:
    """A PNG data URL: the clip's min/max envelope, `size` wide and `size // 2` high."""
    width, height = size, max(size // 2, 8)
    samples = np.asarray(wave.samples, dtype=np.float32)
    picture = Image.new("RGB", (width, height), _WAVE_BACKGROUND)
    draw = ImageDraw.Draw(picture)
    middle = (height - 1) / 2
    if len(samples):
        columns = np.array_split(samples, width) if len(samples) >= width else [samples] * width
        peak = max(float(np.abs(samples).max()), 1e-6)  # normalised: quiet sounds stay visible
        for x, column in enumerate(columns):
            if len(column) == 0:
                continue
            lo, hi = float(column.min()) / peak, float(column.max()) / peak
            draw.line([(x, middle - hi * middle), (x, middle - lo * middle)], fill=_WAVE_COLOUR)
    draw.line([(0, middle), (width - 1, middle)], fill=_WAVE_COLOUR)
    buf = io.BytesIO()
    picture.quantize(colors=16).save(buf, format="PNG", optimize=True)
    return _data_url("image/png", buf.getvalue())


def audio_preview(wave: Waveform, seconds: float) -> str:
    """A WAV data URL: the first `seconds` of the clip, 16 kHz mono, 8-bit PCM."""
    import soundfile as sf

    head = wave.head(seconds)
    if head.sample_rate != PREVIEW_RATE:
        head = head.resampled(PREVIEW_RATE)
    buf = io.BytesIO()
    sf.write(buf, np.clip(head.samples, -1, 1), PREVIEW_RATE, subtype="PCM_U8", format="WAV")
    return _data_url("audio/wav", buf.getvalue())


def make_thumbnail(
    modality: str, content: Any, spec: ThumbnailSpec, *, original_b64: str | None = None
) -> dict[str, str] | None:
    """The payload's `thumbnail` object for one decoded item (module docstring), or None.

    `original_b64`: the media as the event carried it (base64), which a small image may keep."""
    try:
        thumbnail: dict[str, str] = {}
        if modality == "text" and isinstance(content, str):
            thumbnail["text"] = content[:TEXT_PREVIEW_CHARS]
        elif modality == "image" and isinstance(content, Image.Image):
            if spec.size:
                thumbnail["image"] = _passthrough(content, original_b64, spec.size) or image_thumbnail(content, spec.size)
        elif modality == "audio" and isinstance(content, Waveform):
            if spec.size:
                thumbnail["image"] = waveform_picture(content, spec.size)
            if spec.audio_seconds:
                thumbnail["audio"] = audio_preview(content, spec.audio_seconds)
        return thumbnail or None
    except Exception:  # noqa: BLE001 - a thumbnail is an aid: the item is indexed without one
        log.warning("cannot make a %s thumbnail; indexing the item without one", modality, exc_info=True)
        return None
