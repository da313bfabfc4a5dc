"""The `mini` space: works offline everywhere (demo, tests, CI).

Text: all-MiniLM-L6-v2, frozen. Image and audio: small towers trained LiT-style into the MiniLM
space by `python -m xmodal.encoders.mini.train`, shipped in `weights/`. A modality whose tower
is not shipped raises EncodeError(code="unsupported_modality").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from xmodal.encoders.base import Modality, Vectors, Waveform
from xmodal.encoders.mini.text import MINILM_DIM, MiniLMText
from xmodal.errors import EncodeError

if TYPE_CHECKING:
    from PIL import Image

    from xmodal.config import Settings

__all__ = ["MiniSpace"]


class MiniSpace:
    name = "mini"
    dim = MINILM_DIM

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._text = MiniLMText()
        self.modalities: frozenset[Modality] = frozenset({"text"})

    def load(self) -> None:
        self._text.load()

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        return self._text.encode(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        raise EncodeError("the mini space has no image tower yet", code="unsupported_modality")

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        raise EncodeError("the mini space has no audio tower yet", code="unsupported_modality")
