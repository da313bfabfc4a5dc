"""The `mini` space: works offline everywhere (demo, tests, CI).

Text: all-MiniLM-L6-v2, frozen. Image and audio: small towers trained LiT-style into the MiniLM
space by `python -m xmodal.encoders.mini.train`, shipped in `weights/` (image.safetensors,
audio.safetensors, each with a JSON of its training run and figures). See docs/mini.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xmodal.encoders._torch import TorchRuntime, concat_rows, finish_vectors
from xmodal.encoders.base import Modality, Vectors, Waveform
from xmodal.encoders.mini.text import MINILM_DIM, MiniLMText
from xmodal.errors import EncodeError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from xmodal.config import Settings
    from xmodal.encoders.mini.text_runtime import OnnxMiniLMText
    from xmodal.encoders.mini.towers import Tower

__all__ = ["TRAIN_COMMAND", "WEIGHTS_DIR", "MiniSpace", "tower_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TRAIN_COMMAND = "python -m xmodal.encoders.mini.train --modality both"


def tower_path(modality: str, weights_dir: Path | None = None) -> Path:
    """Where the shipped tower of `modality` lives."""
    return (weights_dir or WEIGHTS_DIR) / f"{modality}.safetensors"


class MiniSpace:
    """Frozen MiniLM text tower + the project's image and audio towers, all into 384-d unit vectors."""

    name = "mini"
    dim = MINILM_DIM
    # The tower's 2 s are the centre of the clip's loud part, so they depend on the whole clip; it
    # reads the first 30 s instead (far above the 1-2 s training sounds, whose encoding is
    # unchanged, and room to get past leading silence), so media decoding can stop there.
    audio_seconds = 30.0

    def __init__(
        self, settings: Settings | None = None, weights_dir: Path | None = None, batch_size: int = 256
    ) -> None:
        self._settings = settings
        self._weights_dir = weights_dir or WEIGHTS_DIR
        self._batch_size = batch_size
        self._text: MiniLMText | OnnxMiniLMText = MiniLMText()
        self._towers: dict[str, Tower] = {}
        self._runtime: TorchRuntime | None = None
        self.modalities: frozenset[Modality] = frozenset({"text", "image", "audio"})

    @property
    def fingerprint(self) -> str:
        """The MiniLM weights and both towers' files (xmodal/encoders/fingerprint.py)."""
        from xmodal.encoders.fingerprint import directory_weights, make_fingerprint
        from xmodal.encoders.mini.text import minilm_dir

        files = [(f"text/{name}", path) for name, path in directory_weights(minilm_dir())]
        files += [(m, tower_path(m, self._weights_dir)) for m in ("image", "audio") if tower_path(m, self._weights_dir).is_file()]
        return make_fingerprint(self.name, "minilm-l6+towers", files)

    def load(self) -> None:
        """Load the text model and both towers; ModelLoadError names a missing file and how to make it."""
        import torch

        from xmodal.encoders.mini.towers import load_tower

        paths = {modality: tower_path(modality, self._weights_dir) for modality in ("image", "audio")}
        for modality, path in paths.items():
            if not path.is_file():
                raise ModelLoadError(
                    f"the mini space's {modality} tower is missing: no file {path}; "
                    f"train it with `{TRAIN_COMMAND}` (or reinstall xmodal, which ships it)"
                )
        if self._settings is not None:
            self._runtime = TorchRuntime.from_settings(self._settings)
        else:
            self._runtime = TorchRuntime(torch.device("cpu"), None)
        if self._settings is not None and self._settings.text_runtime == "onnx" and self._runtime.device.type == "cpu":
            # Same vectors as torch (cosine >= 0.999, tests/encoders/test_text_runtime.py), hence the
            # same fingerprint; faster per query on CPUs (docs/performance.md). GPUs keep torch.
            from xmodal.encoders.mini.text_runtime import OnnxMiniLMText

            self._text = OnnxMiniLMText(self._settings.data_dir / "models", threads=self._settings.torch_threads)
        self._text.load()
        for modality, path in paths.items():
            try:
                self._towers[modality] = load_tower(path, self._runtime.device)
            except Exception as e:  # a corrupt or incompatible file: say which one
                raise ModelLoadError(f"cannot load the mini space's {modality} tower from {path}: {e}") from e

    def _tower(self, modality: str) -> Tower:
        try:
            return self._towers[modality]
        except KeyError:
            raise RuntimeError("MiniSpace.load() was not called") from None

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        return self._text.encode(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        """Unit (n, 384) float32 rows; any size or mode of image (see towers.preprocess_image)."""
        from xmodal.encoders.mini.towers import image_batch

        tower = self._tower("image")
        try:
            batch = image_batch(images) if images else None
        except (OSError, ValueError) as e:
            raise EncodeError(f"the mini image tower cannot read an image: {e}", code="bad_media") from e
        return self._run(tower, batch, len(images))

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        """Unit (n, 384) float32 rows; any rate or length of clip, of which the first `audio_seconds`
        count (then towers.preprocess_audio)."""
        from xmodal.encoders.mini.towers import audio_batch

        tower = self._tower("audio")
        try:
            batch = audio_batch([clip.head(self.audio_seconds) for clip in clips]) if clips else None
        except (OSError, ValueError) as e:
            raise EncodeError(f"the mini audio tower cannot read a clip: {e}", code="bad_media") from e
        return self._run(tower, batch, len(clips))

    def _run(self, tower: Tower, batch: torch.Tensor | None, count: int) -> Vectors:
        assert self._runtime is not None
        if batch is None:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        with self._runtime.inference():
            for start in range(0, count, self._batch_size):
                chunk = batch[start : start + self._batch_size].to(self._runtime.device)
                outputs.append(tower(chunk).float().cpu().numpy())
        return finish_vectors(concat_rows(outputs, self.dim), count, self.dim, space=self.name)
