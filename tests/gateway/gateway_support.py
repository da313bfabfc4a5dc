"""Gallery and system of the gateway tests (see conftest.py). One real system for the gateway tests: tansu (the session's broker), a Node with the ingest agents
and the query service on the `mini` space and qdrant-edge, a small gallery ingested through Kafka,
and the HTTP gateway on a free port in front of it."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from PIL import Image

from xmodal.config import Settings
from xmodal.encoders.base import Waveform
from xmodal.encoders.mini.corpus import image_png, render_image, render_sound, waveform_wav
from xmodal.gateway.server import GatewayServer
from xmodal.runtime import Node

UPLOAD_LIMIT = 200_000

# id -> attributes; ids with slashes, as file paths are
IMAGES = {
    "images/red-circle.png": {"shape": "circle", "colour": "red", "size": "large", "count": 1, "background": "white"},
    "images/blue-square.png": {"shape": "square", "colour": "blue", "size": "large", "count": 1, "background": "white"},
    "images/green-triangle.png": {"shape": "triangle", "colour": "green", "size": "large", "count": 1, "background": "black"},
    "images/yellow-star.png": {"shape": "star", "colour": "yellow", "size": "medium", "count": 2, "background": "gray"},
    "images/purple-heart.png": {"shape": "heart", "colour": "purple", "size": "large", "count": 1, "background": "white"},
    "images/orange-ring.png": {"shape": "ring", "colour": "orange", "size": "medium", "count": 1, "background": "black"},
}
SOUNDS = {
    "sounds/low-hum.wav": {"source": "sine", "pitch": "very low", "contour": "steady", "repetitions": 1, "loudness": "loud"},
    "sounds/high-bell.wav": {"source": "bell", "pitch": "very high", "contour": "steady", "repetitions": 3, "loudness": "loud"},
    "sounds/noise.wav": {"source": "white noise", "pitch": None, "contour": None, "repetitions": 1, "loudness": "loud"},
}
TEXTS = {
    "notes/budget": ("quarterly budget meeting notes", {"team": "finance", "year": "2024"}),  # a string year
    "notes/rain": ("heavy rain falling on a tin roof", {"team": "weather"}),
    "notes/crayon": ("a child's crayon drawing of the sea", {"team": "art"}),
}


def image_of(item_id: str, seed: int = 0) -> Image.Image:
    return render_image(IMAGES[item_id], np.random.default_rng(seed))


def sound_of(item_id: str, seed: int = 0) -> Waveform:
    return render_sound(SOUNDS[item_id], np.random.default_rng(seed))


def gallery_events() -> list[tuple[str, bytes]]:
    events: list[dict[str, Any]] = []
    for item_id in IMAGES:
        data = base64.b64encode(image_png(image_of(item_id))).decode()
        events.append({"id": item_id, "modality": "image", "data": data, "metadata": {"kind": "shape"}})
    for item_id in SOUNDS:
        data = base64.b64encode(waveform_wav(sound_of(item_id))).decode()
        events.append({"id": item_id, "modality": "audio", "data": data, "metadata": {"kind": "sound"}})
    for item_id, (text, metadata) in TEXTS.items():
        events.append({"id": item_id, "modality": "text", "text": text, "metadata": metadata})
    return [(e["id"], orjson.dumps(e)) for e in events]


@dataclass
class System:
    settings: Settings
    node: Node
    server: GatewayServer

    @property
    def url(self) -> str:
        return self.server.url
