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
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import math
import os
import re
import socket
import ssl
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, overload
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit, urlunsplit

import httpcore
import numpy as np
import soundfile as sf  # type: ignore[import-untyped]
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from xmodal.encoders.base import Waveform
from xmodal.errors import ConfigError, MediaError

if TYPE_CHECKING:
    from xmodal.config import Settings

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

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
AUDIO_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "MP3"})
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 32
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_URL_SAFE = "/%:@!$&'()*+,;=?~"


def _fail(code: str, message: str) -> NoReturn:
    raise MediaError(message, code=code)


def _short(uri: str) -> str:
    """The URI as quoted in messages: never echo megabytes back to a producer."""
    return uri if len(uri) <= 200 else uri[:200] + "..."


# ---------------------------------------------------------------------------------------------
# Limits and address policy


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses: the default SSRF policy.

    `ipaddress.is_global` alone is not enough on Python 3.11: it calls multicast global, does not
    look inside IPv4-mapped / 6to4 / NAT64 IPv6 addresses, and misses IPv4-compatible `::a.b.c.d`.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_public_address(ip.sixtofour)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    elif ip in _CGNAT:
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


@dataclass(frozen=True)
class MediaLimits:
    """Everything media decoding may consume. Build it once with `from_settings`.

    `allow_address` decides which resolved IP addresses an http(s) fetch may connect to; leave the
    default (`is_public_address`) in production: tests replace it to reach a loopback server.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_audio_seconds: float = 600.0
    media_roots: tuple[Path, ...] = ()
    allow_http: bool = False
    http_timeout_s: float = 10.0
    max_redirects: int = 5
    allow_address: Callable[[IPAddress], bool] = is_public_address

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


def _check_bytes(size: int, limits: MediaLimits, what: str) -> None:
    if size == 0:
        _fail("media_empty", f"{what} is empty (0 bytes)")
    if size > limits.max_bytes:
        _fail(
            "media_too_large",
            f"{what} is {size} bytes, over the limit of {limits.max_bytes} (XMODAL_MAX_MEDIA_BYTES)",
        )


# ---------------------------------------------------------------------------------------------
# Entry point


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


# ---------------------------------------------------------------------------------------------
# Base64


def decode_base64(text: str, limits: MediaLimits) -> bytes:
    """Strict standard base64 (RFC 4648 alphabet, padded, no whitespace), size-checked first.

    The decoded size follows from the encoded length, so an oversized payload is refused before
    a single byte is allocated for it.
    """
    if not text:
        _fail("media_empty", "data is empty")
    padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
    if len(text) // 4 * 3 - padding > limits.max_bytes:
        _fail(
            "media_too_large",
            f"data decodes to {len(text) // 4 * 3 - padding} bytes, over the limit of {limits.max_bytes} "
            "(XMODAL_MAX_MEDIA_BYTES)",
        )
    if text.startswith("data:"):
        _fail("invalid_base64", "data must be bare base64: strip the 'data:...;base64,' prefix")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        _fail("invalid_base64", f"data is not valid base64 ({e}); send standard padded base64, no newlines")


# ---------------------------------------------------------------------------------------------
# Images

# Leading bytes of the formats we accept, to tell "truncated header" from "not an image we take".
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_KNOWN_REFUSED = (
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"SIMPLE  =", "FITS"),
)


def _sniff_image(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _IMAGE_MAGIC if data.startswith(magic)), None)


def decode_image(data: bytes, limits: MediaLimits) -> Image.Image:
    """Decode an image fully (no lazy or partial pixels) into an RGB image, EXIF rotation applied.

    Accepted: JPEG, PNG, WebP, GIF (first frame), BMP, TIFF (first page). Transparent pixels are
    composited on white, so a transparent logo looks like it does on a web page.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped Pillow's global: we would silently return half images. Refuse loudly.
        raise ConfigError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; xmodal requires it to stay False")
    _check_bytes(len(data), limits, "image")
    try:
        # formats= keeps Pillow from trying every plugin it has (EPS would run Ghostscript).
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            width, height = im.size
            if width * height > limits.max_image_pixels:
                _too_many_pixels(f"{width}x{height} = {width * height} pixels", limits)
            im.load()  # decode everything now: truncation surfaces here, not later in a tower
            if im.format == "PNG":
                _check_png_complete(data)
            return _to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as e:
        # Pillow's own ceiling (2 x Image.MAX_IMAGE_PIXELS) fired before our check could run.
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        _too_many_pixels(f"header claims {claimed.group(1) if claimed else 'too many'} pixels", limits)
    except UnidentifiedImageError:
        _unidentified_image(data)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, TypeError) as e:
        # Pillow reports truncated and inconsistent files through all of these.
        raise MediaError(f"image is truncated or corrupt: {e}", code="media_corrupt") from e


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _check_png_complete(data: bytes) -> None:
    """Pillow accepts two kinds of short PNG without complaint: a zlib stream that ends before
    the last row (the missing rows come back black) and a file cut after its pixel data. Count
    the inflated bytes against what IHDR promises (bounded: 1 MiB at a time), and want IEND."""
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    bits = depth * _PNG_CHANNELS.get(colour, 1)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w and h:
            expected += h * (1 + (w * bits + 7) // 8)  # one filter byte per row
    inflater, inflated, pos, seen_idat = zlib.decompressobj(), 0, 8, False
    while pos + 8 <= len(data) and inflated < expected:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind != b"IDAT" and seen_idat:
            break  # IDAT chunks are consecutive: the image data is over
        if kind == b"IDAT":
            seen_idat, pending = True, data[pos + 8 : pos + 8 + length]
            while pending and inflated < expected and not inflater.eof:
                inflated += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
        pos += 12 + length
    if inflated < expected:
        _fail("media_corrupt", f"PNG is truncated: pixel data holds {inflated} of {expected} bytes")
    if data.rfind(_PNG_IEND) < 0:
        _fail("media_corrupt", "PNG is truncated: no IEND chunk")


def _too_many_pixels(what: str, limits: MediaLimits) -> NoReturn:
    _fail(
        "image_too_many_pixels",
        f"image is too large: {what}, limit {limits.max_image_pixels} pixels (XMODAL_MAX_IMAGE_PIXELS)",
    )


def _unidentified_image(data: bytes) -> NoReturn:
    accepted = ", ".join(IMAGE_FORMATS)
    sniffed = _sniff_image(data)
    if sniffed is not None:
        _fail("media_corrupt", f"data starts like {sniffed} but its header is truncated or invalid")
    refused = next((name for magic, name in _KNOWN_REFUSED if data.startswith(magic)), None)
    what = f"{refused} is not an accepted image format" if refused else "not a recognised image"
    _fail("unsupported_format", f"{what}; send one of {accepted}")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I;16"):
        # 16-bit grey: Pillow's convert clips at 255 (nearly all white); keep the top 8 bits.
        im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Audio


def _sniff_audio(data: bytes) -> bool:
    return (
        (data[:4] == b"RIFF" and data[8:12] == b"WAVE")
        or data.startswith((b"fLaC", b"OggS", b"ID3"))
        or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)  # MPEG frame sync
    )


def decode_audio(data: bytes, limits: MediaLimits) -> Waveform:
    """Decode WAV, FLAC, OGG or MP3 to a mono float32 waveform at the file's own sample rate.

    Rate, channels and duration are checked from the header before any sample is decoded, and
    decoding reads at most `max_audio_seconds` of frames whatever the header claimed.
    """
    _check_bytes(len(data), limits, "audio")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        _check_wav_header(data, limits)
    try:
        info = sf.info(io.BytesIO(data))
    except sf.SoundFileError as e:
        if _sniff_audio(data):
            raise MediaError(
                f"audio header is invalid or truncated (libsndfile: {_sf_reason(e)})", code="audio_invalid_header"
            ) from e
        raise MediaError(
            "not a recognised audio file; send WAV, FLAC, OGG or MP3", code="unsupported_format"
        ) from e
    if info.format not in AUDIO_FORMATS:
        _fail("unsupported_format", f"{info.format} audio is not accepted; send WAV, FLAC, OGG or MP3")
    _check_stream(info.samplerate, info.channels)
    _check_seconds(info.frames / info.samplerate, limits, "header says")

    mono = _decode_mono(data, info, limits)
    if len(mono) == 0:
        _fail("media_empty", "audio has no samples (empty, or truncated before its first frame)")
    # MP3 frame counts are estimates (bitrate or Xing header); every other format's is exact.
    slack = info.frames // 20 if info.format == "MP3" else 0
    if len(mono) < info.frames - slack:
        _fail("media_corrupt", f"audio is truncated: header says {info.frames} frames, decoded {len(mono)}")
    if not np.isfinite(mono).all():
        _fail("media_corrupt", "audio contains NaN or infinite samples")
    return Waveform(np.clip(mono, -1.0, 1.0), int(info.samplerate))


_BLOCK_FRAMES = 1 << 16


def _decode_mono(data: bytes, info: Any, limits: MediaLimits) -> np.ndarray:
    """Decode block by block, downmixing as we go: memory follows the samples actually decoded
    (one channel of them), never the frame and channel counts a header claims."""
    max_frames = math.floor(limits.max_audio_seconds * info.samplerate)
    blocks: list[np.ndarray] = []
    decoded = 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            while decoded <= max_frames:
                block = f.read(min(_BLOCK_FRAMES, max_frames + 1 - decoded), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(block.mean(axis=1, dtype=np.float32))
                decoded += len(block)
    except sf.SoundFileError as e:
        raise MediaError(f"audio is truncated or corrupt (libsndfile: {_sf_reason(e)})", code="media_corrupt") from e
    if decoded > max_frames:  # more samples than the header admitted to
        _check_seconds(decoded / info.samplerate, limits, "decoded audio is over")
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _sf_reason(e: sf.SoundFileError) -> str:
    # libsndfile's text after "Error opening <_io.BytesIO ...>: " is the useful part, except its
    # "File does not exist" for in-memory data it could not parse, which would mislead a producer.
    reason = str(e).rsplit(": ", 1)[-1]
    return "unparseable stream" if reason.startswith("File does not exist") else reason


def _check_stream(rate: int, channels: int) -> None:
    if not 0 < rate <= MAX_SAMPLE_RATE:
        _fail("audio_invalid_header", f"sample rate {rate} Hz is invalid (must be 1..{MAX_SAMPLE_RATE})")
    if not 0 < channels <= MAX_CHANNELS:
        _fail("audio_invalid_header", f"channel count {channels} is invalid (must be 1..{MAX_CHANNELS})")


def _check_seconds(seconds: float, limits: MediaLimits, what: str) -> None:
    if seconds > limits.max_audio_seconds:
        _fail(
            "audio_too_long",
            f"audio is too long: {what} {seconds:.1f} s, limit {limits.max_audio_seconds:g} s "
            "(XMODAL_MAX_AUDIO_SECONDS)",
        )


def _check_wav_header(data: bytes, limits: MediaLimits) -> None:
    """Walk the RIFF chunks ourselves: libsndfile quietly clamps a data chunk that claims more
    than the file holds, and reports a sample rate of 0 as an internal error."""
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + 16 > len(data):
                _fail("audio_invalid_header", "WAV fmt chunk is too short")
            _tag, channels, rate, _byte_rate, block_align, _bits = struct.unpack_from("<HHIIHH", data, body)
            _check_stream(rate, channels)
            if block_align == 0:
                _fail("audio_invalid_header", "WAV block align is 0")
            fmt = (rate, block_align)
        elif chunk == b"data":
            if fmt is None:
                _fail("audio_invalid_header", "WAV data chunk comes before its fmt chunk")
            available = len(data) - body
            if size == 0xFFFFFFFF:  # streaming writers' "length unknown": trust the file
                size = available
            rate, block_align = fmt
            _check_seconds(size / block_align / rate, limits, "WAV header claims")
            if size > available:
                _fail("media_corrupt", f"WAV is truncated: header claims {size} data bytes, file has {available}")
            return
        pos = body + size + (size & 1)  # chunks are word-aligned
    _fail("audio_invalid_header", "WAV has no fmt and data chunks")


# ---------------------------------------------------------------------------------------------
# URIs


def fetch_uri(uri: str, limits: MediaLimits) -> bytes:
    """The bytes behind a `file://` or `http(s)://` URI, within the configured roots and limits."""
    try:
        parts = urlsplit(uri)
    except ValueError as e:
        raise MediaError(f"invalid URI {_short(uri)!r}: {e}", code="invalid_uri") from e
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _read_file(parts, uri, limits)
    if scheme in ("http", "https"):
        if not limits.allow_http:
            _fail("http_disabled", "http(s) URIs are disabled: send the data inline or set XMODAL_ALLOW_HTTP=true")
        return _fetch_http(uri, limits)
    _fail("uri_scheme_forbidden", f"URI scheme {scheme or '(none)'!r} is not accepted: use file://, http(s)://")


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(os.path.commonpath([path, root]) == root for root in roots)


def _read_file(parts: SplitResult, uri: str, limits: MediaLimits) -> bytes:
    if not limits.media_roots:
        _fail(
            "uri_scheme_forbidden",
            "file:// URIs are disabled: set XMODAL_MEDIA_ROOTS to the directories media may be read from",
        )
    if parts.netloc not in ("", "localhost"):
        _fail("invalid_uri", f"file URI must not name a host: use file:///absolute/path, not {_short(uri)!r}")
    path = unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        _fail("invalid_uri", f"file URI needs an absolute path: {_short(uri)!r}")
    roots = [os.path.realpath(root) for root in limits.media_roots]
    # realpath resolves `..` and every symlink, so the check is on where the file really is.
    real = os.path.realpath(path)
    if not _inside(real, roots):
        _fail("uri_outside_roots", f"{_short(uri)!r} is outside the media roots (XMODAL_MEDIA_ROOTS)")
    try:
        # O_NONBLOCK: opening a FIFO must not hang the worker; O_NOFOLLOW: no last-second symlink.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as e:
        raise MediaError(f"file not found: {_short(uri)!r}", code="uri_not_found") from e
    except OSError as e:
        raise MediaError(f"cannot open {_short(uri)!r}: {e.strerror}", code="uri_not_found") from e
    try:
        _check_opened(fd, uri, roots, limits)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as f:
        data = f.read(limits.max_bytes + 1)  # the file may have grown since fstat
    _check_bytes(len(data), limits, f"file {_short(uri)!r}")
    return data


def _check_opened(fd: int, uri: str, roots: Sequence[str], limits: MediaLimits) -> None:
    opened = f"/proc/self/fd/{fd}"  # Linux: where the descriptor really points
    if os.path.islink(opened) and not _inside(os.readlink(opened), roots):
        # A directory on the way was swapped for a symlink between the check and the open.
        _fail("uri_outside_roots", f"{_short(uri)!r} is outside the media roots (XMODAL_MEDIA_ROOTS)")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        _fail("uri_not_found", f"not a regular file: {_short(uri)!r}")
    _check_bytes(st.st_size, limits, f"file {_short(uri)!r}")


@dataclass(frozen=True)
class _Target:
    url: str
    host: str  # the name as written in the URL: Host header, SNI, certificate check
    port: int
    host_header: str


def _http_target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise MediaError(f"invalid URI {_short(url)!r}: {e}", code="invalid_uri") from e
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        _fail("uri_scheme_forbidden", f"redirect to {scheme or '(no scheme)'!r} URI refused: only http(s) is followed")
    if parts.username is not None or parts.password is not None:
        _fail("invalid_uri", "credentials in http(s) URIs are not accepted")
    host = parts.hostname
    if not host:
        _fail("invalid_uri", f"http(s) URI has no host: {_short(url)!r}")
    try:
        host.encode("idna")
    except UnicodeError as e:
        raise MediaError(f"invalid host name {host!r}", code="invalid_uri") from e
    default_port = 443 if scheme == "https" else 80
    # The Host header is rebuilt from the parsed host, so what we check is what the server sees.
    shown = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
    host_header = shown if port in (None, default_port) else f"{shown}:{port}"
    # httpcore takes ASCII only: percent-encode what a producer left raw, keep existing escapes.
    path = quote(parts.path or "/", safe=_URL_SAFE)
    query = quote(parts.query, safe=_URL_SAFE)
    url = urlunsplit((scheme, host_header, path, query, ""))
    return _Target(url, host, port or default_port, host_header)


def _ip_literal(host: str) -> IPAddress | None:
    """The address a numeric host means, in every spelling libc accepts: `2130706433`, `0x7f.1`,
    `0177.0.0.1` and `127.1` are all 127.0.0.1, and must be checked as such, without DNS."""
    bare = host[:-1] if host.endswith(".") else host
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9][0-9a-fA-FxX.]*", bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def _resolve_checked(target: _Target, limits: MediaLimits) -> list[IPAddress]:
    literal = _ip_literal(target.host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise MediaError(f"cannot resolve host {target.host!r}: {e}", code="http_error") from e
        # Drop IPv6 scope ids ("fe80::1%eth0"); keep resolver order, without duplicates.
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    # Every answer must pass, not just one: a mixed answer is an attack, not a fallback list.
    for ip in addresses:
        if not limits.allow_address(ip):
            _fail(
                "http_forbidden_address",
                f"host {target.host!r} resolves to {ip}, which is not a public address; "
                "only publicly routable hosts may be fetched",
            )
    if not addresses:
        _fail("http_error", f"host {target.host!r} has no addresses")
    return addresses


def _fetch_http(uri: str, limits: MediaLimits) -> bytes:
    deadline = time.monotonic() + limits.http_timeout_s
    url = uri
    for _hop in range(limits.max_redirects + 1):
        target = _http_target(url)
        addresses = _resolve_checked(target, limits)
        try:
            location, body = _http_get(target, addresses, limits, deadline)
        except httpcore.TimeoutException as e:
            raise MediaError(
                f"fetching {_short(uri)!r} took longer than {limits.http_timeout_s:g} s", code="http_timeout"
            ) from e
        except (httpcore.NetworkError, httpcore.ProtocolError, ssl.SSLError) as e:
            raise MediaError(f"fetching {_short(url)!r} failed: {e or type(e).__name__}", code="http_error") from e
        if location is None:
            return body
        url = urljoin(url, location)
    _fail("too_many_redirects", f"{_short(uri)!r} redirected more than {limits.max_redirects} times")


def _http_get(
    target: _Target, addresses: Sequence[IPAddress], limits: MediaLimits, deadline: float
) -> tuple[str | None, bytes]:
    """One GET: (redirect location, b"") for a redirect, (None, body) for a 200."""
    backend = _PinnedBackend(addresses, deadline)
    timeout = max(deadline - time.monotonic(), 0.001)
    # httpcore, not httpx: no proxy variables from the environment, no automatic redirects.
    with httpcore.ConnectionPool(network_backend=backend, retries=0, max_connections=1) as pool:
        with pool.stream(
            "GET",
            target.url,
            headers=[("Host", target.host_header), ("Accept-Encoding", "identity"), ("User-Agent", "xmodal")],
            extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)},
        ) as response:
            status = response.status
            if status in _REDIRECT_STATUSES:
                location = _header(response.headers, b"location")
                if location is None:
                    _fail("http_error", f"HTTP {status} redirect without a Location header")
                return location, b""
            if status != 200:
                _fail("http_error", f"HTTP {status} from {_short(target.url)!r}")
            length = _header(response.headers, b"content-length")
            if length is not None and length.isdigit():
                _check_bytes(int(length), limits, "HTTP response")
            chunks, total = [], 0
            for chunk in response.iter_stream():
                total += len(chunk)
                if total > limits.max_bytes:
                    _fail(
                        "media_too_large",
                        f"HTTP response is over the limit of {limits.max_bytes} bytes (XMODAL_MAX_MEDIA_BYTES)",
                    )
                chunks.append(chunk)
    body = b"".join(chunks)
    _check_bytes(len(body), limits, "HTTP response")
    return None, body


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1").strip() for k, v in headers if k.lower() == name), None)


def _budget(deadline: float, timeout: float | None, exc: type[httpcore.TimeoutException]) -> float:
    """Per-operation timeout clamped to what is left of the whole fetch, so a server dripping one
    byte just inside every read timeout still cannot hold a worker past `http_timeout_s`."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("total time for the fetch is spent")
    return left if timeout is None else min(timeout, left)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the addresses the guard checked, whatever name the URL carries.

    httpcore still puts the name in the Host header, SNI and certificate check, so TLS works as
    usual, but DNS is asked once, by us: a rebinding answer cannot swap the address after the check.
    """

    def __init__(self, addresses: Sequence[IPAddress], deadline: float) -> None:
        self._addresses = addresses
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: httpcore.ConnectError | None = None
        for ip in self._addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=_budget(self._deadline, timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
                return _DeadlineStream(stream, self._deadline)
            except httpcore.ConnectError as e:
                error = e
        raise error or httpcore.ConnectError("no address to connect to")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for media")


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _budget(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _budget(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        budget = _budget(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, budget), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
