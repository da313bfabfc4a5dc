"""Safe decoding of untrusted media: base64 payloads, `file://` and `http(s)://` URIs, images, audio.

Ingest and query both call `load_media`; every refusal raises `MediaError` with a stable `code`
(sent back to producers in DLQ headers and error replies) and a message saying what to change.
Limits come from `MediaLimits.from_settings(settings)`; the policy is written out in docs/media.md.

| code                     | raised when                                                                  |
|--------------------------|------------------------------------------------------------------------------|
| `media_empty`            | zero bytes, or audio with no samples                                         |
| `media_too_large`        | payload, file or HTTP body over `max_media_bytes` (checked before decoding)  |
| `invalid_base64`         | `data` is not strict standard base64 (no whitespace, no `data:` prefix)      |
| `unsupported_format`     | not one of the accepted image / audio formats (EPS, PDF, FITS, random bytes) |
| `media_corrupt`          | truncated or lying file: header fine, body missing or inconsistent           |
| `image_too_many_pixels`  | width x height over `max_image_pixels` (decompression bomb)                  |
| `audio_invalid_header`   | sample rate 0 or > 384 kHz, 0 or > 32 channels, unreadable audio header      |
| `audio_too_long`         | header (or decoded length) over `max_audio_seconds`                          |
| `invalid_uri`            | URI cannot be parsed, carries credentials, bad port or path                  |
| `uri_scheme_forbidden`   | scheme other than file/http/https, or `file://` with no media roots set      |
| `uri_outside_roots`      | `file://` path resolves (symlinks, `..`) outside every media root            |
| `uri_not_found`          | `file://` path missing, unreadable or not a regular file                     |
| `http_disabled`          | `http(s)://` while `allow_http` is off                                       |
| `http_forbidden_address` | host resolves to a non-global address (loopback, private, link-local, ...)   |
| `http_error`             | DNS failure, connection / TLS / protocol error, status other than 200       |
| `http_timeout`           | the whole fetch, redirects included, took longer than `http_timeout_s`       |
| `too_many_redirects`     | more than `max_redirects` (5) redirects                                      |

The package, by concern (every name callers use is importable from `xmodal.encoders.media`):
`_limits` (MediaLimits and the refusal helpers), `_payload` (base64), `_image`, `_audio`, `_files`
(`file://` roots), `_http` (the SSRF-guarded fetch) and `_addresses` (its address policy).
"""

from __future__ import annotations

from typing import Literal, overload
from urllib.parse import urlsplit

from PIL import Image

from xmodal.encoders.base import Waveform
from xmodal.encoders.media._addresses import IPAddress, is_public_address
# The format lists and stream bounds were importable from here before the split (never in __all__).
from xmodal.encoders.media._audio import AUDIO_FORMATS as AUDIO_FORMATS
from xmodal.encoders.media._audio import MAX_CHANNELS as MAX_CHANNELS
from xmodal.encoders.media._audio import MAX_SAMPLE_RATE as MAX_SAMPLE_RATE
from xmodal.encoders.media._audio import decode_audio
from xmodal.encoders.media._files import read_file
from xmodal.encoders.media._http import fetch_http
from xmodal.encoders.media._image import IMAGE_FORMATS as IMAGE_FORMATS
from xmodal.encoders.media._image import decode_image
from xmodal.encoders.media._limits import MediaLimits, fail, short
from xmodal.encoders.media._payload import decode_base64
from xmodal.errors import MediaError

__all__ = [
    "IPAddress",
    "MediaLimits",
    "decode_audio",
    "decode_base64",
    "decode_image",
    "fetch_uri",
    "is_public_address",
    "load_media",
]


@overload
def load_media(
    modality: Literal["image"], *, data_b64: str | None, uri: str | None, limits: MediaLimits
) -> Image.Image: ...
@overload
def load_media(
    modality: Literal["audio"], *, data_b64: str | None, uri: str | None, limits: MediaLimits
) -> Waveform: ...
def load_media(
    modality: Literal["image", "audio"], *, data_b64: str | None, uri: str | None, limits: MediaLimits
) -> Image.Image | Waveform:
    """Fetch or base64-decode one media item and decode it: an RGB image or a mono waveform.

    Exactly one of `data_b64` and `uri` must be given (the schema guarantees it; passing both or
    neither is a programming error, hence ValueError and not MediaError).
    """
    if modality not in ("image", "audio"):
        raise ValueError(f"modality must be 'image' or 'audio', not {modality!r}")
    if data_b64 is not None and uri is None:
        data = decode_base64(data_b64, limits)
    elif uri is not None and data_b64 is None:
        data = fetch_uri(uri, limits)
    else:
        raise ValueError("pass exactly one of data_b64 and uri")
    return decode_image(data, limits) if modality == "image" else decode_audio(data, limits)


def fetch_uri(uri: str, limits: MediaLimits) -> bytes:
    """The bytes behind a `file://` or `http(s)://` URI, within the configured roots and limits."""
    try:
        parts = urlsplit(uri)
    except ValueError as e:
        raise MediaError(f"invalid URI {short(uri)!r}: {e}", code="invalid_uri") from e
    scheme = parts.scheme.lower()
    if scheme == "file":
        return read_file(parts, uri, limits)
    if scheme in ("http", "https"):
        if not limits.allow_http:
            fail("http_disabled", "http(s) URIs are disabled: send the data inline or set XMODAL_ALLOW_HTTP=true")
        return fetch_http(uri, limits)
    fail("uri_scheme_forbidden", f"URI scheme {scheme or '(none)'!r} is not accepted: use file://, http(s)://")
