"""Images and audio through the real broker into the `clip` and `clap` collections, with bad media in between.

Weights are the ones the session fixtures create (random-init open_clip ViT-B-32 checkpoint, tiny
CLAP saved with save_pretrained), loaded through the settings a user sets.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import soundfile as sf
from confluent_kafka import Consumer, Producer, TopicPartition
from PIL import Image

from xmodal.encoders.base import Waveform
from xmodal.runtime import Node, Roles

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def png(colour: tuple[int, int, int], size: int = 96) -> bytes:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste(colour, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def wav(freq: float, seconds: float = 1.0, rate: int = 22_050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wav_header(rate: int, channels: int, data_bytes: int, actual: int = 64) -> bytes:
    """A PCM WAV header claiming `data_bytes` of samples, followed by only `actual` bytes."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", 4 + len(body) - 4 + data_bytes) + body + b"\0" * actual


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def node(broker: str, make_settings: Any, clip_checkpoint: Path, tiny_clap_dir: Path, tmp_path: Path) -> Iterator[Node]:
    roots = tmp_path / "media"
    roots.mkdir()
    (roots / "red.png").write_bytes(png((220, 20, 20)))
    outside = tmp_path / "secret.png"
    outside.write_bytes(png((0, 0, 0)))
    (roots / "escape.png").symlink_to(outside)
    settings = make_settings(
        kafka_bootstrap=broker,
        spaces="clip,clap",
        clip_pretrained=str(clip_checkpoint),
        clap_model=str(tiny_clap_dir),
        media_roots=str(roots),
        allow_http="true",
        max_audio_seconds="60",
        batch_size="16",
    )
    with Node(settings, Roles(ingest=True, query=False)) as running:
        yield running


def bad_media(roots: Path) -> dict[str, tuple[dict[str, Any], str]]:
    good_png = png((10, 200, 10))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # claims 10^10 pixels
    bomb = good_png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + good_png[33:]
    return {
        "truncated-png": ({"modality": "image", "data": b64(good_png[: len(good_png) // 2])}, "media_corrupt"),
        "eps-as-png": ({"modality": "image", "data": b64(eps)}, "unsupported_format"),
        "pdf-as-png": ({"modality": "image", "data": b64(pdf)}, "unsupported_format"),
        "bomb": ({"modality": "image", "data": b64(bomb)}, "image_too_many_pixels"),
        "zero-bytes": ({"modality": "image", "data": ""}, "media_empty"),
        "random-bytes": ({"modality": "audio", "data": b64(b"\0" + np.random.default_rng(1).bytes(4096))}, "unsupported_format"),
        "rate-zero": ({"modality": "audio", "data": b64(wav_header(0, 1, 64))}, "audio_invalid_header"),
        "three-hours": ({"modality": "audio", "data": b64(wav_header(16_000, 1, 3 * 3600 * 16_000 * 2))}, "audio_too_long"),
        "outside-roots": ({"modality": "image", "uri": "file:///etc/passwd"}, "uri_outside_roots"),
        "symlink-escape": ({"modality": "image", "uri": f"file://{roots}/escape.png"}, "uri_outside_roots"),
        "loopback": ({"modality": "image", "uri": "http://127.0.0.1/x.png"}, "http_forbidden_address"),
        "metadata-ip": ({"modality": "image", "uri": "http://169.254.169.254/latest"}, "http_forbidden_address"),
        "decimal-ip": ({"modality": "image", "uri": "http://2130706433/x.png"}, "http_forbidden_address"),
        "ftp": ({"modality": "image", "uri": "ftp://example.org/x.png"}, "uri_scheme_forbidden"),
    }


def test_images_and_audio_reach_their_spaces_and_bad_media_is_dead_lettered(node: Node, broker: str) -> None:
    settings, index = node.settings, node.index
    assert index is not None
    roots = settings.media_roots[0]
    bad = bad_media(roots)
    good: dict[str, dict[str, Any]] = {
        "img/red": {"modality": "image", "uri": f"file://{roots}/red.png"},
        "img/blue": {"modality": "image", "data": b64(png((20, 20, 220)))},
        "snd/low": {"modality": "audio", "data": b64(wav(220.0))},
        "snd/long": {"modality": "audio", "data": b64(wav(880.0, seconds=12.0, rate=16_000))},  # 2 clap windows
        "txt/caption": {"modality": "text", "text": "a red square on white"},
    }
    rss_before = rss_bytes()
    p = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random", "compression.type": "lz4"})
    rounds = 5  # the bad corpus several times over: memory must not grow with it
    for r in range(rounds):
        for key, (fields, _) in bad.items():
            item_id = f"{key}#{r}"
            p.produce(settings.media_topic, key=item_id, value=orjson.dumps({"id": item_id, **fields}))
        if r == 2:  # good events in the middle of the bad ones
            for key, fields in good.items():
                p.produce(settings.media_topic, key=key, value=orjson.dumps({"id": key, **fields}))
    assert p.flush(30) == 0

    dead = Consumer({"bootstrap.servers": broker, "group.id": "unused", "enable.auto.commit": False})
    partitions = dead.list_topics(settings.dlq_topic, timeout=10).topics[settings.dlq_topic].partitions
    dead.assign([TopicPartition(settings.dlq_topic, n, 0) for n in partitions])
    codes: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while len(codes) < rounds * len(bad) and time.monotonic() < deadline:
        message = dead.poll(0.2)
        if message is not None and message.error() is None:
            codes[message.key().decode()] = dict(message.headers())["xmodal.error.code"].decode()
    dead.close()
    for key, (_, code) in bad.items():
        for r in range(rounds):
            assert codes.get(f"{key}#{r}") == code, (key, codes.get(f"{key}#{r}"))

    deadline = time.monotonic() + 120
    while (index.count("clip"), index.count("clap")) != (3, 3) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert index.count("clip") == 3  # two images + the caption
    assert index.count("clap") == 3  # two sounds + the caption
    assert rss_bytes() - rss_before < 300 * 1024**2

    clip, clap = node.spaces["clip"], node.spaces["clap"]
    blue = Image.open(io.BytesIO(png((20, 20, 220)))).convert("RGB")
    [hit, *_] = index.search("clip", clip.encode_images([blue])[0], 3, modalities=["image"])
    assert (hit.item_id, hit.modality) == ("img/blue", "image") and hit.score == pytest.approx(1.0, abs=1e-3)
    samples, rate = sf.read(io.BytesIO(wav(220.0)), dtype="float32")
    [hit, *_] = index.search("clap", clap.encode_audio([Waveform(samples, rate)])[0], 3, modalities=["audio"])
    assert (hit.item_id, hit.modality) == ("snd/low", "audio") and hit.score == pytest.approx(1.0, abs=1e-3)
    [hit] = index.search("clap", clap.encode_texts(["a red square on white"])[0], 1, modalities=["text"])
    assert hit.item_id == "txt/caption"
