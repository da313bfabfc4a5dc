"""Thumbnails made at ingest (xmodal/thumbnails.py): sizes, formats, the off switches."""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile as sf
from PIL import Image

from xmodal.encoders.base import Waveform
from xmodal.thumbnails import PREVIEW_RATE, TEXT_PREVIEW_CHARS, ThumbnailSpec, make_thumbnail


def decode(url: str, mime: str) -> bytes:
    head, _, data = url.partition(",")
    assert head == f"data:{mime};base64"
    return base64.b64decode(data, validate=True)


def test_image_thumbnail_fits_the_size_keeps_the_aspect_and_never_enlarges() -> None:
    wide = Image.new("RGB", (1000, 500), (200, 30, 30))
    thumb = make_thumbnail("image", wide, ThumbnailSpec(size=96))
    assert thumb is not None and set(thumb) == {"image"}
    small = Image.open(io.BytesIO(decode(thumb["image"], "image/jpeg")))
    assert small.size == (96, 48)
    assert abs(small.getpixel((48, 24))[0] - 200) < 12  # the picture, not a blank
    tiny = make_thumbnail("image", Image.new("RGB", (40, 30)), ThumbnailSpec(size=96))
    assert tiny is not None and Image.open(io.BytesIO(decode(tiny["image"], "image/jpeg"))).size == (40, 30)


def test_sound_gets_a_waveform_picture_and_a_short_16k_preview() -> None:
    t = np.arange(48_000 * 5) / 48_000
    clip = Waveform((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 48_000)
    thumb = make_thumbnail("audio", clip, ThumbnailSpec(size=128, audio_seconds=2.0))
    assert thumb is not None and set(thumb) == {"image", "audio"}
    picture = Image.open(io.BytesIO(decode(thumb["image"], "image/png")))
    assert picture.size == (128, 64)
    samples, rate = sf.read(io.BytesIO(decode(thumb["audio"], "audio/wav")))
    assert rate == PREVIEW_RATE and len(samples) == 2 * PREVIEW_RATE
    assert 0.4 < np.abs(samples).max() < 0.6  # the tone survives 8-bit PCM
    assert len(thumb["audio"]) < 45_000  # about 32 kB of WAV as base64


def test_text_keeps_its_start_and_the_settings_turn_pictures_and_previews_off() -> None:
    long = "word " * 200
    assert make_thumbnail("text", long, ThumbnailSpec()) == {"text": long[:TEXT_PREVIEW_CHARS]}
    off = ThumbnailSpec(size=0, audio_seconds=0)
    assert make_thumbnail("image", Image.new("RGB", (10, 10)), off) is None
    assert make_thumbnail("audio", Waveform(np.zeros(16_000, np.float32), 16_000), off) is None
    only_preview = make_thumbnail("audio", Waveform(np.zeros(16_000, np.float32), 16_000), ThumbnailSpec(0, 1.0))
    assert only_preview is not None and set(only_preview) == {"audio"}


def test_replies_carry_thumbnails_only_when_asked_and_within_the_budget() -> None:
    import orjson

    from xmodal.query_api.client import parse_reply
    from xmodal.query_api.service import thumbnails_within_budget
    from xmodal.schema import SearchHit, SearchReply, dump_reply

    def hit(item_id: str, chars: int) -> SearchHit:
        return SearchHit.model_validate(
            {"id": item_id, "score": 1.0, "modality": "image", "thumbnail": {"image": "x" * chars}}
        )

    hits = [hit("a", 400), hit("b", 400), hit("c", 100), SearchHit(id="d", score=0.5, modality="text")]
    kept = thumbnails_within_budget(hits, True, budget=600)
    assert [h.id for h in kept] == ["a", "b", "c", "d"]  # order and hits unchanged
    assert [h.thumbnail is not None for h in kept] == [True, False, True, False]
    assert all(h.thumbnail is None for h in thumbnails_within_budget(hits, False, budget=10**9))

    plain = orjson.loads(dump_reply(SearchReply(request_id="r", ok=True, hits=thumbnails_within_budget(hits, False))))
    assert all("thumbnail" not in h for h in plain["hits"])  # replies as before thumbnails existed
    rich = dump_reply(SearchReply(request_id="r", ok=True, hits=kept))
    assert orjson.loads(rich)["hits"][0]["thumbnail"] == {"image": "x" * 400}  # no null fields either
    assert parse_reply(rich).hits[0].thumbnail is not None


def _b64(image: Image.Image, fmt: str, **save: object) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return base64.b64encode(buf.getvalue()).decode()


def test_a_small_png_or_jpeg_keeps_its_own_bytes_and_anything_else_is_reencoded() -> None:
    spec = ThumbnailSpec(size=64)
    picture = Image.new("RGB", (64, 40), (10, 200, 30))
    for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        original = _b64(picture, fmt)
        thumb = make_thumbnail("image", picture, spec, original_b64=original)
        assert thumb == {"image": f"data:{mime};base64,{original}"}, fmt
    # Not kept: larger than the thumbnail, a format not passed through, an EXIF rotation the
    # decoder applied, base64 a browser may not take, or more bytes than a thumbnail should hold.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    refused = {
        "too large": (Image.new("RGB", (65, 10)), _b64(Image.new("RGB", (65, 10)), "PNG")),
        "gif": (picture, _b64(picture, "GIF")),
        "exif jpeg": (picture, _b64(picture, "JPEG", exif=exif.tobytes())),
        "exif png": (picture, _b64(picture, "PNG", exif=exif.tobytes())),
        "not strict base64": (picture, _b64(picture, "PNG")[:20] + "\n" + _b64(picture, "PNG")[20:]),
        "too many bytes": (noisy, _b64(noisy, "PNG")),
    }
    for why, (image, original) in refused.items():
        thumb = make_thumbnail("image", image, spec, original_b64=original)
        assert thumb is not None, why
        assert thumb["image"].startswith("data:image/jpeg;base64,") and original not in thumb["image"], why
        assert max(Image.open(io.BytesIO(decode(thumb["image"], "image/jpeg"))).size) == min(max(image.size), 64), why
