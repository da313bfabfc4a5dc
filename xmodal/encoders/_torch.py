"""Torch plumbing shared by the torch-backed spaces: device and precision, batching, output checks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xmodal.encoders.base import Vectors, l2_normalize
from xmodal.errors import EncodeError, ModelLoadError

if TYPE_CHECKING:
    import torch

    from xmodal.config import Settings

__all__ = ["TorchRuntime", "chunks", "concat_rows", "finish_vectors"]

def finish_vectors(raw: np.ndarray, count: int, dim: int, *, space: str) -> Vectors:
    """Check a tower's raw output and L2-normalise it in float32 (half-precision norms lose digits)."""
    if raw.shape != (count, dim):
        raise EncodeError(f"{space} tower returned shape {raw.shape}, expected {(count, dim)}")
    if not np.isfinite(raw).all():
        raise EncodeError(f"{space} tower returned non-finite values (half-precision overflow?)")
    return l2_normalize(raw)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def concat_rows(outputs: list[np.ndarray], dim: int) -> np.ndarray:
    """The per-chunk outputs as one (n, dim) array; (0, dim) for an empty batch."""
    return np.concatenate(outputs) if outputs else np.zeros((0, dim), dtype=np.float32)


@dataclass(frozen=True)
class TorchRuntime:
    """Where and how a tower runs: device, and mixed precision on GPUs."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full float32 (CPU)

    @classmethod
    def from_settings(cls, settings: Settings) -> TorchRuntime:
        import torch

        # Process-wide and idempotent: every torch space sets the same value from the same settings.
        torch.set_num_threads(settings.torch_threads or _usable_cores())
        if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ModelLoadError("XMODAL_DEVICE=cuda but torch sees no CUDA device; use auto or cpu")
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return cls(torch.device("cuda"), dtype)
        # CPU autocast to bf16 is slower than float32 on most CPUs and changes the vectors: stay in float32.
        return cls(torch.device("cpu"), None)

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        import torch

        with torch.inference_mode():
            if self.autocast_dtype is None:
                yield
            else:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    yield


def _usable_cores() -> int:
    # The cores this process may run on (cgroup/affinity aware), not the host's count.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
