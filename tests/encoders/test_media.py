"""xmodal.encoders.media: a corpus of bad media (each refused with its code) and good media.

Every input is built in the test (crafted bytes, no binary fixtures). The only sockets opened are
to 127.0.0.1 servers started here; refusals are checked to happen before any DNS or connect.
"""

from __future__ import annotations

import base64
import gc
import io
import ipaddress
import os
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageFile

from xmodal.config import load_settings
from xmodal.encoders.base import SerializedEncoder, Waveform, audio_seconds_needed
from xmodal.encoders.clap import ClapSpace
from xmodal.encoders.clip import ClipSpace
from xmodal.encoders.media import (
    IPAddress,
    MediaLimits,
    decode_audio,
    decode_base64,
    decode_image,
    fetch_uri,
    is_public_address,
    load_media,
)
from xmodal.encoders.mini.space import MiniSpace
from xmodal.errors import ConfigError, MediaError

LIMITS = MediaLimits()
FIRST_TENTH = MediaLimits(audio_seconds=0.1)  # decodes only the first 0.1 s: the bad corpus must not care
RNG_SEED = 7


def code_of(fn: Callable[[], object]) -> str:
    with pytest.raises(MediaError) as info:
        fn()
    assert info.value.message  # every refusal says something a producer can act on
    return info.value.code


def pixel(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = im.getpixel(xy)
    assert isinstance(value, tuple)
    return value


# ---------------------------------------------------------------------------------------------
# Builders


def noise(height: int, width: int, channels: int = 3) -> np.ndarray:
    """Incompressible pixels, so a cut file really loses pixel data."""
    rng = np.random.default_rng(RNG_SEED)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_header(width: int, height: int, idat: bytes = zlib.compress(b"\0" * 16)) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT: a bomb that costs nothing to build."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def raw_png(width: int, height: int, depth: int, colour: int, *, interlace: bool, short_by: int = 0) -> bytes:
    """A PNG of grey-ish pixels in any depth / colour type / interlacing, written by hand (Pillow
    cannot write interlaced or 16-bit colour PNGs); `short_by` drops bytes off the pixel data."""
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    raw = b""
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w and h:
            raw += (b"\0" + b"\x55" * ((w * bits + 7) // 8)) * h
    raw = raw[: len(raw) - short_by]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, int(interlace))
    palette = png_chunk(b"PLTE", bytes(range(48))) if colour == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + palette
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def wav_bytes(
    rate: int = 8000,
    channels: int = 1,
    bits: int = 16,
    data: bytes = b"\x00\x01" * 800,
    claimed: int | None = None,
    fmt_tag: int = 1,
) -> bytes:
    """A RIFF/WAVE file written by hand, so the header can say whatever the test needs."""
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block_align, block_align, bits)
    size = len(data) if claimed is None else claimed
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", min(len(body) + size - len(data), 0xFFFFFFFF)) + body


def audio_bytes(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
FITS = b"SIMPLE  =                    T".ljust(80) + b"BITPIX  =                    8".ljust(80) + b"END".ljust(80)
RANDOM = np.random.default_rng(RNG_SEED).bytes(4096)
assert not RANDOM.startswith((b"BM", b"\xff")), "pick another seed: random bytes must not look like media"


# ---------------------------------------------------------------------------------------------
# Limits, base64, entry point


def test_limits_from_settings() -> None:
    settings = load_settings(
        {},
        media_roots="/srv/a:/srv/b",
        allow_http=True,
        max_media_bytes=4096,
        max_image_pixels=2048,
        max_audio_seconds=3.5,
        http_timeout_s=2.0,
    )
    limits = MediaLimits.from_settings(settings)
    assert limits.media_roots == (Path("/srv/a"), Path("/srv/b"))
    assert (limits.max_bytes, limits.max_image_pixels, limits.max_audio_seconds) == (4096, 2048, 3.5)
    assert limits.allow_http and limits.http_timeout_s == 2.0 and limits.max_redirects == 5
    assert limits.allow_address is is_public_address


def test_base64_roundtrip_and_strictness() -> None:
    assert decode_base64(base64.b64encode(b"hello!").decode(), LIMITS) == b"hello!"
    assert code_of(lambda: decode_base64("", LIMITS)) == "media_empty"
    for bad in ("aGVsbG8", "aGVs bG8h", "aGVs\nbG8h", "aGVsbG8h!", "aGVsbG8_", "é" * 8):
        assert code_of(lambda: decode_base64(bad, LIMITS)) == "invalid_base64", bad
    with pytest.raises(MediaError, match="strip the 'data:"):
        decode_base64("data:image/png;base64,aGVsbG8h", LIMITS)


def test_base64_size_is_checked_from_the_encoded_length(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded an oversized payload")

    limits = MediaLimits(max_bytes=1024)
    monkeypatch.setattr(base64, "b64decode", never)
    assert code_of(lambda: decode_base64("A" * 4 * 342, limits)) == "media_too_large"  # 1026 bytes
    monkeypatch.undo()
    assert len(decode_base64(base64.b64encode(b"x" * 1024).decode(), limits)) == 1024


def test_load_media_dispatch() -> None:
    png = encode(Image.new("RGB", (5, 4), "red"), "PNG")
    image = load_media("image", data_b64=base64.b64encode(png).decode(), uri=None, limits=LIMITS)
    assert isinstance(image, Image.Image) and image.size == (5, 4)
    wav = base64.b64encode(audio_bytes(tone(0.1, 8000), 8000, "WAV")).decode()
    clip = load_media("audio", data_b64=wav, uri=None, limits=LIMITS)
    assert isinstance(clip, Waveform) and clip.sample_rate == 8000
    # An image sent as audio is refused by the audio decoder, with a format code.
    assert code_of(lambda: load_media("audio", data_b64=base64.b64encode(png).decode(), uri=None, limits=LIMITS)) == (
        "unsupported_format"
    )
    with pytest.raises(ValueError):
        load_media("image", data_b64=None, uri=None, limits=LIMITS)
    with pytest.raises(ValueError):
        load_media("image", data_b64="AAAA", uri="file:///x", limits=LIMITS)
    with pytest.raises(ValueError):
        load_media("text", data_b64="AAAA", uri=None, limits=LIMITS)  # type: ignore[call-overload]


# ---------------------------------------------------------------------------------------------
# Images: good inputs


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    src = Image.new("RGB", (37, 23), (200, 30, 40))
    im = decode_image(encode(src, fmt), LIMITS)
    assert im.mode == "RGB" and im.size == (37, 23)
    assert all(abs(a - b) <= 12 for a, b in zip(pixel(im, (18, 11)), (200, 30, 40)))  # lossy codecs


def test_exif_orientation_is_applied() -> None:
    # 40 wide, 20 high: left half red, right half blue. Orientation 6 = shown rotated 90° clockwise.
    src = Image.new("RGB", (40, 20), "blue")
    src.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    im = decode_image(encode(src, "JPEG", exif=exif, quality=95), LIMITS)
    assert im.size == (20, 40)
    top, bottom = pixel(im, (10, 5)), pixel(im, (10, 35))
    assert top[0] > 200 and top[2] < 60, top  # the red left edge is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    assert 0x0112 not in im.getexif()


def test_alpha_is_composited_on_white() -> None:
    src = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    src.putpixel((1, 0), (255, 0, 0, 255))
    src.putpixel((2, 0), (0, 0, 255, 128))
    im = decode_image(encode(src, "PNG"), LIMITS)
    assert im.mode == "RGB"
    assert pixel(im, (0, 0)) == (255, 255, 255)
    assert pixel(im, (1, 0)) == (255, 0, 0)
    r, g, b = pixel(im, (2, 0))
    assert 125 <= r <= 129 and 125 <= g <= 129 and b == 255  # half-transparent blue over white


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P", "GIF"), ("1", "BMP"), ("CMYK", "JPEG"), ("CMYK", "TIFF")],
)
def test_modes_convert_to_rgb(mode: str, fmt: str) -> None:
    src = Image.new("RGB", (6, 5), (90, 140, 200)).convert(mode)
    im = decode_image(encode(src, fmt), LIMITS)
    assert im.mode == "RGB" and im.size == (6, 5)
    expected = pixel(src.convert("RGB"), (3, 2))
    assert all(abs(a - b) <= 3 for a, b in zip(pixel(im, (3, 2)), expected)), (pixel(im, (3, 2)), expected)


def test_palette_transparency_becomes_white() -> None:
    src = Image.new("P", (3, 1), 0)
    src.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    src.putpixel((1, 0), 1)
    im = decode_image(encode(src, "PNG", transparency=0), LIMITS)
    assert pixel(im, (0, 0)) == (255, 255, 255) and pixel(im, (1, 0)) == (200, 0, 0)


def test_sixteen_bit_grey_keeps_its_range() -> None:
    src = Image.fromarray(np.array([[0, 256 * 100, 65535]], dtype=np.uint16))
    im = decode_image(encode(src, "PNG"), LIMITS)
    assert [pixel(im, (x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


PNG_FLAVOURS = [
    (depth, colour)
    for colour, depths in ((0, (1, 2, 4, 8, 16)), (2, (8, 16)), (3, (1, 2, 4, 8)), (4, (8, 16)), (6, (8, 16)))
    for depth in depths
]


@pytest.mark.parametrize("interlace", [False, True], ids=["progressive-rows", "adam7"])
@pytest.mark.parametrize(("depth", "colour"), PNG_FLAVOURS)
def test_png_flavours_decode_and_short_ones_do_not(depth: int, colour: int, interlace: bool) -> None:
    # Odd sizes so that the last byte of a row is partly padding and some Adam7 passes are tiny.
    im = decode_image(raw_png(13, 7, depth, colour, interlace=interlace), LIMITS)
    assert im.mode == "RGB" and im.size == (13, 7)
    # A stream that ends on a row boundary is what Pillow alone lets through (rows come back black).
    last_row = 1 + (13 * depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour] + 7) // 8
    for short_by in (1, last_row):
        short = raw_png(13, 7, depth, colour, interlace=interlace, short_by=short_by)
        assert code_of(lambda: decode_image(short, LIMITS)) == "media_corrupt", short_by


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert pixel(decode_image(data, LIMITS), (4, 4)) == (255, 0, 0)


# ---------------------------------------------------------------------------------------------
# Images: the bad corpus


def _cuts(data: bytes) -> list[int]:
    return [20, 40, 100, len(data) // 2, len(data) - 20, len(data) - 2]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_corrupt(fmt: str) -> None:
    data = encode(Image.fromarray(noise(64, 48)), fmt)
    for cut in _cuts(data):
        assert code_of(lambda: decode_image(data[:cut], LIMITS)) == "media_corrupt", (fmt, cut, len(data))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_other_formats_are_corrupt(fmt: str) -> None:
    data = encode(Image.fromarray(noise(64, 48)), fmt)
    assert code_of(lambda: decode_image(data[: len(data) // 2], LIMITS)) == "media_corrupt"


def test_lying_png_header_is_corrupt() -> None:
    # IHDR claims twice the rows the IDAT holds: refused, not returned half black.
    good = encode(Image.fromarray(noise(32, 32)), "PNG")
    ihdr_end = 8 + 8 + 13 + 4
    ihdr = struct.pack(">IIBBBBB", 32, 64, 8, 2, 0, 0, 0)
    lying = good[:8] + png_chunk(b"IHDR", ihdr) + good[ihdr_end:]
    assert code_of(lambda: decode_image(lying, LIMITS)) == "media_corrupt"


def test_png_bomb_header_is_refused_without_allocating() -> None:
    bomb = png_with_header(100_000, 100_000)  # 10^10 pixels: past Pillow's own ceiling too
    tracemalloc.start()
    try:
        with pytest.raises(MediaError) as info:
            decode_image(bomb, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == "image_too_many_pixels"
    assert "40000000" in info.value.message  # the configured cap, not Pillow's global
    assert peak < 2_000_000


def test_pixel_cap_is_the_configured_one() -> None:
    # 2000 x 2000 is far under Pillow's global limit; our cap of 1 Mpx refuses it before decoding.
    bomb = png_with_header(2000, 2000)
    assert code_of(lambda: decode_image(bomb, MediaLimits(max_image_pixels=1_000_000))) == "image_too_many_pixels"
    small = encode(Image.new("RGB", (64, 48)), "PNG")
    assert code_of(lambda: decode_image(small, MediaLimits(max_image_pixels=1024))) == "image_too_many_pixels"
    assert decode_image(small, MediaLimits(max_image_pixels=64 * 48)).size == (64, 48)


def test_byte_cap_before_decoding() -> None:
    data = encode(Image.fromarray(noise(64, 64)), "PNG")
    assert code_of(lambda: decode_image(data, MediaLimits(max_bytes=len(data) - 1))) == "media_too_large"
    assert code_of(lambda: decode_image(b"", LIMITS)) == "media_empty"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(EPS, id="eps"),
        pytest.param(b"\xc5\xd0\xd3\xc6" + b"\x00" * 60, id="eps-dos-binary"),
        pytest.param(PDF, id="pdf"),
        pytest.param(FITS.ljust(2880), id="fits"),
        pytest.param(RANDOM, id="random"),
        pytest.param(b"\x89PN", id="png-signature-cut"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "PPM"), id="ppm-pillow-reads-it"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "ICO"), id="ico-pillow-reads-it"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "TGA"), id="tga-pillow-reads-it"),
    ],
)
def test_unaccepted_formats(data: bytes) -> None:
    assert code_of(lambda: decode_image(data, LIMITS)) == "unsupported_format"


def test_refused_format_is_named() -> None:
    with pytest.raises(MediaError, match="PDF is not an accepted image format.*JPEG, PNG"):
        decode_image(PDF, LIMITS)


def test_load_truncated_images_must_stay_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigError):
        decode_image(encode(Image.new("RGB", (2, 2)), "PNG"), LIMITS)


# ---------------------------------------------------------------------------------------------
# Audio: good inputs


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAVEX", "PCM_24"), ("FLAC", None), ("OGG", "VORBIS")],
)
def test_audio_formats_decode(fmt: str, subtype: str | None) -> None:
    clip = decode_audio(audio_bytes(tone(0.5, 16000), 16000, fmt, subtype), LIMITS)
    assert clip.sample_rate == 16000 and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert len(clip.samples) == 8000
    assert 0.3 < float(np.abs(clip.samples).max()) <= 0.55


def test_mp3_decodes_when_libsndfile_has_it() -> None:
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    clip = decode_audio(audio_bytes(tone(1.0, 16000), 16000, "MP3", "MPEG_LAYER_III"), LIMITS)
    assert clip.sample_rate == 16000 and abs(len(clip.samples) - 16000) < 1200


def test_stereo_is_downmixed() -> None:
    left, right = np.full(800, 0.5, np.float32), np.full(800, 0.25, np.float32)
    clip = decode_audio(audio_bytes(np.stack([left, right], axis=1), 8000, "FLAC"), LIMITS)
    assert clip.samples.shape == (800,)
    assert np.allclose(clip.samples, 0.375, atol=1e-3)


def test_native_rate_then_resampled() -> None:
    clip = decode_audio(audio_bytes(tone(1.0, 44100), 44100, "WAV"), LIMITS)
    assert clip.sample_rate == 44100 and len(clip.samples) == 44100
    at16k = clip.resampled(16000)
    assert at16k.sample_rate == 16000 and len(at16k.samples) == 16000
    assert clip.resampled(48000).samples.shape == (48000,)


def test_float_audio_is_clipped_and_nan_refused() -> None:
    loud = decode_audio(audio_bytes(np.full(100, 2.0, np.float32), 8000, "WAV", "FLOAT"), LIMITS)
    assert float(loud.samples.max()) == 1.0
    nan = np.full(100, np.nan, np.float32)
    assert code_of(lambda: decode_audio(audio_bytes(nan, 8000, "WAV", "FLOAT"), LIMITS)) == "media_corrupt"


# ---------------------------------------------------------------------------------------------
# Audio: the bad corpus


def _flac_claiming(total_samples: int) -> bytes:
    data = bytearray(audio_bytes(tone(0.5, 16000), 16000, "FLAC"))
    field = int.from_bytes(data[18:26], "big")  # STREAMINFO: rate/channels/bits, then 36-bit total
    data[18:26] = ((field & ~(2**36 - 1)) | total_samples).to_bytes(8, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(wav_bytes(rate=0), "audio_invalid_header", id="wav-rate-0"),
        pytest.param(wav_bytes(rate=1_000_000), "audio_invalid_header", id="wav-rate-1MHz"),
        pytest.param(wav_bytes(channels=0), "audio_invalid_header", id="wav-0-channels"),
        pytest.param(wav_bytes(channels=100, data=b"\0" * 2000), "audio_invalid_header", id="wav-100-channels"),
        pytest.param(wav_bytes(bits=0), "audio_invalid_header", id="wav-0-bits"),
        pytest.param(wav_bytes(claimed=3 * 3600 * 8000 * 2), "audio_too_long", id="wav-claims-3h"),
        pytest.param(wav_bytes(claimed=3200), "media_corrupt", id="wav-truncated"),
        pytest.param(wav_bytes(data=b""), "media_empty", id="wav-no-samples"),
        pytest.param(wav_bytes()[:30], "audio_invalid_header", id="wav-cut-in-fmt"),
        pytest.param(b"RIFF\x00\x00\x00\x00WAVE", "audio_invalid_header", id="wav-no-chunks"),
        pytest.param(_flac_claiming(3 * 3600 * 16000), "audio_too_long", id="flac-claims-3h"),
        pytest.param(_flac_claiming(16000), "media_corrupt", id="flac-claims-more-than-it-has"),
        pytest.param(audio_bytes(tone(1.0, 16000), 16000, "FLAC")[:4000], "media_corrupt", id="flac-truncated"),
        pytest.param(audio_bytes(tone(0.2, 16000), 16000, "AIFF"), "unsupported_format", id="aiff"),
        pytest.param(RANDOM, "unsupported_format", id="random"),
        pytest.param(b"", "media_empty", id="zero-bytes"),
    ],
)
@pytest.mark.parametrize("limits", [LIMITS, FIRST_TENTH], ids=["whole-clip", "first-0.1s"])
def test_bad_audio(data: bytes, code: str, limits: MediaLimits) -> None:
    assert code_of(lambda: decode_audio(data, limits)) == code


def test_wav_duration_limit_is_configurable() -> None:
    one_second = audio_bytes(tone(1.0, 8000), 8000, "WAV")
    assert decode_audio(one_second, MediaLimits(max_audio_seconds=1.0)).seconds == 1.0
    assert code_of(lambda: decode_audio(one_second, MediaLimits(max_audio_seconds=0.5))) == "audio_too_long"
    flac = audio_bytes(tone(1.0, 8000), 8000, "FLAC")
    assert code_of(lambda: decode_audio(flac, MediaLimits(max_audio_seconds=0.5))) == "audio_too_long"
    assert code_of(lambda: decode_audio(flac, MediaLimits(max_bytes=1024))) == "media_too_large"


@pytest.mark.parametrize("limits", [LIMITS, FIRST_TENTH], ids=["whole-clip", "first-0.1s"])
def test_lying_audio_header_does_not_size_the_allocation(limits: MediaLimits) -> None:
    # Claims 590 s (under the limit) but holds 0.5 s: memory must follow the real samples.
    lying = _flac_claiming(590 * 16000)
    tracemalloc.start()
    try:
        assert code_of(lambda: decode_audio(lying, limits)) == "media_corrupt"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak  # a 590 s float32 buffer would be 37 MB


def test_audio_header_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("decoded audio whose header was already refused")

    monkeypatch.setattr(sf.SoundFile, "read", never)
    assert code_of(lambda: decode_audio(_flac_claiming(3 * 3600 * 16000), LIMITS)) == "audio_too_long"
    assert code_of(lambda: decode_audio(wav_bytes(claimed=3 * 3600 * 8000 * 2), LIMITS)) == "audio_too_long"


# ---------------------------------------------------------------------------------------------
# Audio: decoding only the start the towers read (MediaLimits.audio_seconds)

LONG_RATE = 8000  # 600 s of 16-bit mono at 8 kHz is 9.6 MB: a maximum-length clip within the byte cap


def _peak_bytes(fn: Callable[[], object]) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_600_s_wav_is_decoded_only_as_far_as_the_towers_read() -> None:
    samples = np.random.default_rng(RNG_SEED).uniform(-0.5, 0.5, 600 * LONG_RATE).astype(np.float32)
    data = audio_bytes(samples, LONG_RATE, "WAV", "PCM_16")
    del samples
    whole, whole_peak = _peak_bytes(lambda: decode_audio(data, LIMITS))
    head, head_peak = _peak_bytes(lambda: decode_audio(data, replace(LIMITS, audio_seconds=2.0)))
    assert isinstance(whole, Waveform) and isinstance(head, Waveform)
    assert whole.samples.shape == (600 * LONG_RATE,) and head.samples.shape == (2 * LONG_RATE,)
    assert head.sample_rate == LONG_RATE
    np.testing.assert_array_equal(head.samples, whole.head(2.0).samples)  # the same samples a tower cuts to
    # 600 s of float32 samples is 19.2 MB; 2 s of them is 64 kB.
    assert whole_peak > 19_000_000, whole_peak
    assert head_peak < 1_000_000, head_peak


def test_load_media_passes_the_bound_to_the_decoder() -> None:
    payload = base64.b64encode(audio_bytes(tone(5.0, 8000), 8000, "FLAC")).decode("ascii")
    clip = load_media("audio", data_b64=payload, uri=None, limits=MediaLimits(audio_seconds=1.5))
    assert clip.samples.shape == (12000,)


def test_a_bound_longer_than_the_clip_changes_nothing() -> None:
    data = audio_bytes(tone(1.0, 8000), 8000, "FLAC")
    np.testing.assert_array_equal(
        decode_audio(data, MediaLimits(audio_seconds=30.0)).samples, decode_audio(data, LIMITS).samples
    )


def test_the_header_cap_still_applies_to_the_whole_clip() -> None:
    short_cap = MediaLimits(max_audio_seconds=0.5, audio_seconds=0.1)
    for fmt in ("WAV", "FLAC"):
        one_second = audio_bytes(tone(1.0, 8000), 8000, fmt)
        assert code_of(lambda: decode_audio(one_second, short_cap)) == "audio_too_long"


@pytest.mark.parametrize(("fmt", "subtype"), [("FLAC", None), ("WAV", "PCM_16"), ("MP3", "MPEG_LAYER_III")])
def test_a_long_file_cut_after_the_decoded_start_is_still_corrupt(fmt: str, subtype: str | None) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile has no {fmt} support")
    samples = np.random.default_rng(RNG_SEED).uniform(-0.5, 0.5, 60 * LONG_RATE).astype(np.float32)
    data = audio_bytes(samples, LONG_RATE, fmt, subtype)
    first_two_seconds = MediaLimits(audio_seconds=2.0)
    assert decode_audio(data, first_two_seconds).samples.shape == (2 * LONG_RATE,)  # complete: accepted
    cut = data[: len(data) * 3 // 4]  # 45 s of 60 s: far past the 2 s decoded
    assert code_of(lambda: decode_audio(cut, LIMITS)) == "media_corrupt"
    assert code_of(lambda: decode_audio(cut, first_two_seconds)) == "media_corrupt"


def test_non_finite_samples_in_the_decoded_start_are_still_corrupt() -> None:
    samples = np.zeros(8000, np.float32)
    samples[10] = np.nan
    data = audio_bytes(samples, 8000, "WAV", "FLOAT")
    assert code_of(lambda: decode_audio(data, MediaLimits(audio_seconds=0.1))) == "media_corrupt"


def test_audio_seconds_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="audio_seconds"):
            MediaLimits(audio_seconds=bad)


def test_limits_for_encoders_take_the_longest_read_of_the_audio_towers() -> None:
    settings = load_settings({})
    mini, clap, clip = MiniSpace(), ClapSpace(settings), ClipSpace(settings)  # constructed, nothing loaded
    assert mini.audio_seconds == 30.0 and clap.audio_seconds is None
    assert LIMITS.for_encoders([mini]).audio_seconds == 30.0
    assert LIMITS.for_encoders([SerializedEncoder(mini)]).audio_seconds == 30.0  # as `xmodal up` shares them
    assert LIMITS.for_encoders([mini, clip]).audio_seconds == 30.0  # clip has no audio tower: no say
    assert LIMITS.for_encoders([mini, clap]).audio_seconds is None  # clap reads whole clips
    assert audio_seconds_needed([clip]) is None and audio_seconds_needed([]) is None
    capped = replace(LIMITS, max_audio_seconds=60.0)
    assert capped.for_encoders([mini]) == replace(capped, audio_seconds=30.0)  # only the bound changes


# ---------------------------------------------------------------------------------------------
# file:// URIs


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "good.png").write_bytes(encode(Image.new("RGB", (7, 3), "green"), "PNG"))
    (root / "sub" / "clip.wav").write_bytes(audio_bytes(tone(0.25, 8000), 8000, "WAV"))
    (root / "evil.png").write_bytes(EPS)
    (root / "report.png").write_bytes(PDF)
    (tmp_path / "secret.png").write_bytes(encode(Image.new("RGB", (2, 2)), "PNG"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.png").write_bytes(encode(Image.new("RGB", (2, 2)), "PNG"))
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    (root / "escape_dir").symlink_to(tmp_path / "outside")
    (root / "alias.png").symlink_to(root / "good.png")
    return root


def _uri(path: Path | str) -> str:
    return "file://" + quote(str(path))


def test_file_uri_inside_roots(media_root: Path) -> None:
    limits = MediaLimits(media_roots=(media_root,))
    image = load_media("image", data_b64=None, uri=_uri(media_root / "good.png"), limits=limits)
    assert image.size == (7, 3)
    clip = load_media("audio", data_b64=None, uri=_uri(media_root / "sub" / "clip.wav"), limits=limits)
    assert clip.sample_rate == 8000
    assert fetch_uri(_uri(media_root / "alias.png"), limits) == (media_root / "good.png").read_bytes()
    assert fetch_uri("file://localhost" + quote(str(media_root / "good.png")), limits)
    assert fetch_uri(_uri(media_root / "sub" / ".." / "good.png"), limits)  # `..` that stays inside


def test_file_uri_roots_may_be_symlinks_and_relative(media_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    link = media_root.parent / "root_link"
    link.symlink_to(media_root)
    assert fetch_uri(_uri(link / "good.png"), MediaLimits(media_roots=(link,)))
    monkeypatch.chdir(media_root.parent)
    assert fetch_uri(_uri(media_root / "good.png"), MediaLimits(media_roots=(Path("root"),)))


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("../secret.png", "uri_outside_roots"),
        ("sub/../../secret.png", "uri_outside_roots"),
        ("%2e%2e/secret.png", "uri_outside_roots"),
        ("escape.png", "uri_outside_roots"),
        ("escape_dir/x.png", "uri_outside_roots"),
        ("missing.png", "uri_not_found"),
        ("sub", "uri_not_found"),
        ("evil.png", "unsupported_format"),
        ("report.png", "unsupported_format"),
    ],
)
def test_file_uri_refusals(media_root: Path, path: str, code: str) -> None:
    uri = "file://" + quote(str(media_root)) + "/" + path
    limits = MediaLimits(media_roots=(media_root,))
    assert code_of(lambda: load_media("image", data_b64=None, uri=uri, limits=limits)) == code


def test_file_uri_absolute_paths_outside(media_root: Path) -> None:
    limits = MediaLimits(media_roots=(media_root,))
    assert code_of(lambda: fetch_uri("file:///etc/passwd", limits)) == "uri_outside_roots"
    assert code_of(lambda: fetch_uri(_uri(media_root.parent / "root2" / "x"), limits)) == "uri_outside_roots"
    assert code_of(lambda: fetch_uri("file://fileserver/share/x.png", limits)) == "invalid_uri"
    assert code_of(lambda: fetch_uri("file:good.png", limits)) == "invalid_uri"
    assert code_of(lambda: fetch_uri(_uri(media_root) + "/good.png%00.txt", limits)) == "invalid_uri"


def test_file_uri_needs_roots(media_root: Path) -> None:
    with pytest.raises(MediaError, match="XMODAL_MEDIA_ROOTS") as info:
        fetch_uri(_uri(media_root / "good.png"), MediaLimits())
    assert info.value.code == "uri_scheme_forbidden"


def test_file_uri_fifo_does_not_hang(media_root: Path) -> None:
    os.mkfifo(media_root / "pipe.png")
    started = time.monotonic()
    assert code_of(lambda: fetch_uri(_uri(media_root / "pipe.png"), MediaLimits(media_roots=(media_root,)))) == (
        "uri_not_found"
    )
    assert time.monotonic() - started < 2


def test_file_uri_byte_cap(media_root: Path) -> None:
    (media_root / "big.bin").write_bytes(b"\0" * 5000)
    limits = MediaLimits(media_roots=(media_root,), max_bytes=4096)
    assert code_of(lambda: fetch_uri(_uri(media_root / "big.bin"), limits)) == "media_too_large"
    (media_root / "empty.png").write_bytes(b"")
    assert code_of(lambda: fetch_uri(_uri(media_root / "empty.png"), limits)) == "media_empty"


@pytest.mark.parametrize(
    "uri", ["ftp://example.com/x.png", "gopher://x/", "data:image/png;base64,AAAA", "javascript:alert(1)", "x.png", ""]
)
def test_other_schemes_are_refused(uri: str) -> None:
    assert code_of(lambda: fetch_uri(uri, MediaLimits(allow_http=True))) == "uri_scheme_forbidden"


# ---------------------------------------------------------------------------------------------
# http(s):// URIs: nothing may touch the network unless the test server is the target

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def loopback_only(ip: IPAddress) -> bool:
    return ip == LOOPBACK


class NetworkSpy:
    """Replaces DNS and connect: records every attempt, lets through only 127.0.0.1 connections
    and the names in `dns`, and fails the test on anything else instead of touching the network."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.connects: list[tuple[str, int]] = []
        self.lookups: list[str] = []
        self.dns: dict[str, list[str]] = {}
        real_connect = socket.create_connection

        def connect(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
            self.connects.append(address)
            if address[0] != "127.0.0.1":
                raise AssertionError(f"tried to connect to {address}")
            return real_connect(address, *args, **kwargs)  # type: ignore[arg-type]

        real_getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
            if host == "127.0.0.1":  # create_connection's own numeric lookup: no DNS involved
                return real_getaddrinfo(host, port, *args, **kwargs)  # type: ignore[arg-type]
            self.lookups.append(host)
            if host not in self.dns:
                raise AssertionError(f"tried to resolve {host!r}")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in self.dns[host]]

        monkeypatch.setattr(socket, "create_connection", connect)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> NetworkSpy:
    return NetworkSpy(monkeypatch)


def test_http_disabled_by_default(net: NetworkSpy) -> None:
    with pytest.raises(MediaError, match="XMODAL_ALLOW_HTTP") as info:
        fetch_uri("http://example.com/a.png", LIMITS)
    assert info.value.code == "http_disabled"
    assert code_of(lambda: fetch_uri("https://example.com/a.png", LIMITS)) == "http_disabled"
    assert net.connects == [] and net.lookups == []


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "https://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://0/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[2002:7f00:1::]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[ff02::1]/",
        "http://8.8.8.8:99999/",
    ],
)
def test_forbidden_addresses_are_refused_before_connecting(net: NetworkSpy, uri: str) -> None:
    code = code_of(lambda: fetch_uri(uri, MediaLimits(allow_http=True)))
    assert code == ("invalid_uri" if "99999" in uri else "http_forbidden_address")
    assert net.connects == [] and net.lookups == []  # numeric hosts never reach DNS


def test_names_resolving_to_private_addresses_are_refused(net: NetworkSpy) -> None:
    net.dns = {
        "intranet.test": ["10.1.2.3"],
        "mixed.test": ["8.8.8.8", "192.168.0.7"],  # one good answer does not excuse a bad one
        "meta.test": ["169.254.169.254"],
    }
    limits = MediaLimits(allow_http=True)
    for host in net.dns:
        assert code_of(lambda: fetch_uri(f"http://{host}/x.png", limits)) == "http_forbidden_address"
    assert net.connects == []


def test_unresolvable_host_and_credentials(net: NetworkSpy, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = MediaLimits(allow_http=True)

    def fail(host: str, *args: object, **kwargs: object) -> list[tuple]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    assert code_of(lambda: fetch_uri("http://nowhere.test/", limits)) == "http_error"
    assert code_of(lambda: fetch_uri("http://user:pw@8.8.8.8/", limits)) == "invalid_uri"
    assert net.connects == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("100.127.255.255", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("::", False),
        ("::1", False),
        ("::127.0.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("fc00::1", False),
        ("fd00::1", False),
        ("fe80::1", False),
        ("ff02::1", False),
        ("2002:7f00:1::", False),
        ("2002:a00:1::", False),
        ("64:ff9b::7f00:1", False),
        ("2001:db8::1", False),
    ],
)
def test_default_address_policy(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    png = encode(Image.new("RGB", (9, 4), "blue"), "PNG")
    release = threading.Event()
    hosts: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.hosts.append(self.headers.get("Host", ""))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/image.png":
            self._send(200, self.png, {"Content-Type": "image/png"})
        elif url.path == "/redirect":
            self._send(302, headers={"Location": query["to"]})
        elif url.path.startswith("/chain/"):
            left = int(url.path.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/chain/{left - 1}" if left else "/image.png"})
        elif url.path == "/big":
            self._send(200, b"\0" * 200_000)
        elif url.path == "/big-unsized":
            self.send_response(200)
            self.send_header("Connection", "close")  # no length: the body runs until the socket closes
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"\0" * 4096)
        elif url.path == "/stall":
            self.release.wait(10)
        elif url.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                if self.release.wait(0.05):
                    return
                self.wfile.write(b"\0")
                self.wfile.flush()
        elif url.path == "/empty":
            self._send(200)
        else:
            self._send(404, b"not here")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        _Handler.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def http_limits() -> MediaLimits:
    return MediaLimits(allow_http=True, allow_address=loopback_only, http_timeout_s=5.0, max_bytes=64 * 1024)


def test_fetch_from_test_server(server: str, http_limits: MediaLimits, net: NetworkSpy) -> None:
    image = load_media("image", data_b64=None, uri=f"{server}/image.png", limits=http_limits)
    assert image.size == (9, 4) and pixel(image, (0, 0)) == (0, 0, 255)
    assert code_of(lambda: fetch_uri(f"{server}/nothing", http_limits)) == "http_error"
    assert code_of(lambda: fetch_uri(f"{server}/empty", http_limits)) == "media_empty"
    assert set(net.connects) == {("127.0.0.1", int(server.rsplit(":", 1)[1]))}


def test_redirects_are_rechecked_every_hop(server: str, http_limits: MediaLimits, net: NetworkSpy) -> None:
    def via(target: str) -> str:
        return f"{server}/redirect?to={quote(target, safe='')}"

    assert fetch_uri(via("/image.png"), http_limits) == _Handler.png  # relative Location
    assert fetch_uri(via(f"{server}/image.png"), http_limits) == _Handler.png
    private = ("http://10.0.0.1/x.png", "http://169.254.169.254/latest/", "http://[::1]/", "http://0xa9fea9fe/")
    for target in private:
        assert code_of(lambda: fetch_uri(via(target), http_limits)) == "http_forbidden_address", target
    assert code_of(lambda: fetch_uri(via("file:///etc/passwd"), http_limits)) == "uri_scheme_forbidden"
    assert code_of(lambda: fetch_uri(via("ftp://example.com/x"), http_limits)) == "uri_scheme_forbidden"
    assert all(host == "127.0.0.1" for host, _port in net.connects)
    assert net.lookups == []


def test_redirect_limit(server: str, http_limits: MediaLimits, net: NetworkSpy) -> None:
    assert fetch_uri(f"{server}/chain/4", http_limits) == _Handler.png  # 5 redirects: allowed
    assert code_of(lambda: fetch_uri(f"{server}/chain/5", http_limits)) == "too_many_redirects"
    assert code_of(lambda: fetch_uri(f"{server}/chain/1", replace(http_limits, max_redirects=1))) == (
        "too_many_redirects"
    )


def test_response_byte_cap(server: str, http_limits: MediaLimits, net: NetworkSpy) -> None:
    assert code_of(lambda: fetch_uri(f"{server}/big", http_limits)) == "media_too_large"  # Content-Length
    assert code_of(lambda: fetch_uri(f"{server}/big-unsized", http_limits)) == "media_too_large"  # streamed


def test_total_timeout(server: str, http_limits: MediaLimits, net: NetworkSpy) -> None:
    limits = replace(http_limits, http_timeout_s=0.5)
    for path in ("/stall", "/drip"):  # no answer at all; one byte every 50 ms, each read "on time"
        started = time.monotonic()
        assert code_of(lambda: fetch_uri(f"{server}{path}", limits)) == "http_timeout", path
        assert time.monotonic() - started < 3.0, path  # per-read timeouts alone would allow ~50 s


def test_dns_is_asked_once_and_the_checked_address_is_used(
    server: str, http_limits: MediaLimits, net: NetworkSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding resolver would answer 10.0.0.1 the second time; there must be no second time.
    port = int(server.rsplit(":", 1)[1])
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    real = socket.getaddrinfo

    def rebinding(host: str, *args: object, **kwargs: object) -> list[tuple]:
        net.dns[host] = next(answers)
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    _Handler.hosts.clear()
    assert fetch_uri(f"http://media.test:{port}/image.png", http_limits) == _Handler.png
    assert net.lookups == ["media.test"]
    assert net.connects == [("127.0.0.1", port)]
    assert _Handler.hosts == [f"media.test:{port}"]  # the server still sees the name


# ---------------------------------------------------------------------------------------------
# Memory


def test_bad_media_in_a_loop_does_not_grow_memory() -> None:
    corpus: list[tuple[Callable[[bytes, MediaLimits], object], bytes]] = [
        (decode_image, encode(Image.fromarray(noise(64, 48)), "PNG")[:3000]),
        (decode_image, encode(Image.fromarray(noise(64, 48)), "JPEG")[:1500]),
        (decode_image, png_with_header(100_000, 100_000)),
        (decode_image, png_with_header(3000, 3000)),
        (decode_image, EPS),
        (decode_image, RANDOM),
        (decode_audio, wav_bytes(rate=0)),
        (decode_audio, wav_bytes(claimed=3 * 3600 * 8000 * 2)),
        (decode_audio, wav_bytes(claimed=3200)),
        (decode_audio, _flac_claiming(16000)),
    ]
    limits = MediaLimits(max_image_pixels=1_000_000)

    def run(n: int) -> None:
        for i in range(n):
            decode, data = corpus[i % len(corpus)]
            with pytest.raises(MediaError):
                decode(data, limits)

    run(len(corpus))  # warm up: codec tables, imports, caches
    gc.collect()
    rss_before = _rss_bytes()
    # Deep tracebacks, so that what this thread's decodes keep can be told from what threads left
    # running by earlier tests (Kafka clients, servers) allocate meanwhile.
    tracemalloc.start(64)
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        run(200)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        ours = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, __file__, all_frames=True)])
    finally:
        tracemalloc.stop()
    kept = sum(stat.size for stat in ours.statistics("filename"))
    assert kept < 256 * 1024, kept
    assert peak - baseline < 8 * 1024 * 1024, peak - baseline
    if rss_before is not None:  # C-side allocations (Pillow, libsndfile) are invisible to tracemalloc
        assert _rss_bytes() - rss_before < 32 * 1024 * 1024  # type: ignore[operator]


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None
