"""Images: a format allow-list, the pixel cap from the header, complete decoding, RGB out."""

from __future__ import annotations

import io
import re
import struct
import zlib
from typing import NoReturn

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from xmodal.encoders.media._limits import MediaLimits, check_bytes, fail
from xmodal.errors import ConfigError, MediaError

__all__ = ["IMAGE_FORMATS", "decode_image"]

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

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
    check_bytes(len(data), limits, "image")
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
        fail("media_corrupt", f"PNG is truncated: pixel data holds {inflated} of {expected} bytes")
    if data.rfind(_PNG_IEND) < 0:
        fail("media_corrupt", "PNG is truncated: no IEND chunk")


def _too_many_pixels(what: str, limits: MediaLimits) -> NoReturn:
    fail(
        "image_too_many_pixels",
        f"image is too large: {what}, limit {limits.max_image_pixels} pixels (XMODAL_MAX_IMAGE_PIXELS)",
    )


def _unidentified_image(data: bytes) -> NoReturn:
    accepted = ", ".join(IMAGE_FORMATS)
    sniffed = _sniff_image(data)
    if sniffed is not None:
        fail("media_corrupt", f"data starts like {sniffed} but its header is truncated or invalid")
    refused = next((name for magic, name in _KNOWN_REFUSED if data.startswith(magic)), None)
    what = f"{refused} is not an accepted image format" if refused else "not a recognised image"
    fail("unsupported_format", f"{what}; send one of {accepted}")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I;16"):
        # 16-bit grey: Pillow's convert clips at 255 (nearly all white); keep the top 8 bits.
        im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
