"""What media decoding may consume (`MediaLimits`) and the helpers every decoder refuses with."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from xmodal.encoders.base import audio_seconds_needed
from xmodal.encoders.media._addresses import IPAddress, is_public_address
from xmodal.errors import MediaError

if TYPE_CHECKING:
    from xmodal.config import Settings
    from xmodal.encoders.base import Encoder

__all__ = ["MediaLimits", "check_bytes", "fail", "short"]


def fail(code: str, message: str) -> NoReturn:
    raise MediaError(message, code=code)


def short(uri: str) -> str:
    """The URI as quoted in messages: never echo megabytes back to a producer."""
    return uri if len(uri) <= 200 else uri[:200] + "..."


@dataclass(frozen=True)
class MediaLimits:
    """Everything media decoding may consume. Build it once with `from_settings`.

    `allow_address` decides which resolved IP addresses an http(s) fetch may connect to; leave the
    default (`is_public_address`) in production: tests replace it to reach a loopback server.

    `audio_seconds` is how much of each clip is decoded: the start that the towers read (set it with
    `for_encoders`). None decodes whole clips. It is not a cap: `max_audio_seconds` still refuses
    longer clips, from their header, whatever is decoded of them.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_audio_seconds: float = 600.0
    media_roots: tuple[Path, ...] = ()
    allow_http: bool = False
    http_timeout_s: float = 10.0
    max_redirects: int = 5
    allow_address: Callable[[IPAddress], bool] = is_public_address
    audio_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.audio_seconds is not None and not self.audio_seconds > 0:
            raise ValueError(f"audio_seconds must be positive or None, not {self.audio_seconds!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(
            max_bytes=settings.max_media_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_audio_seconds=settings.max_audio_seconds,
            media_roots=tuple(settings.media_roots),
            allow_http=settings.allow_http,
            http_timeout_s=settings.http_timeout_s,
        )

    def for_encoders(self, encoders: Iterable[Encoder]) -> MediaLimits:
        """These limits, decoding only as much of each clip as the longest read of these encoders'
        audio towers (`Encoder.audio_seconds`; see `audio_seconds_needed`)."""
        return replace(self, audio_seconds=audio_seconds_needed(encoders))


def check_bytes(size: int, limits: MediaLimits, what: str) -> None:
    if size == 0:
        fail("media_empty", f"{what} is empty (0 bytes)")
    if size > limits.max_bytes:
        fail(
            "media_too_large",
            f"{what} is {size} bytes, over the limit of {limits.max_bytes} (XMODAL_MAX_MEDIA_BYTES)",
        )
