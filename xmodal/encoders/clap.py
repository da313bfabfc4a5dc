"""The `clap` space: CLAP text and audio towers (transformers `ClapModel` + `ClapProcessor`).

`XMODAL_CLAP_MODEL` is a local directory (what `save_pretrained` or `hf download --local-dir` wrote)
or a hub id such as `laion/clap-htsat-unfused` that must already be in the local hub cache; nothing
is downloaded, so an offline machine fails at start-up at once with a message saying how to pre-seed.

Audio policy. The audio tower sees 10 s at 48 kHz (both read from the feature extractor). Clips are
resampled to that rate. A clip of at most 10 s is one window, repeated to fill 10 s ("repeatpad").
A longer clip is cut into ceil(seconds / 10) full 10 s windows with evenly spaced starts (the last
one ends at the clip's end, so every window is real audio and the whole clip is covered), at most
`max_windows` of them (default 12: two minutes fully covered; longer clips are sampled by that many
evenly spaced windows). The window embeddings are averaged and the mean is re-normalised.

Determinism: the feature extractor crops randomly ("rand_trunc", or "fusion" crops for fused models)
only when it is given more than 10 s. It never is: every window is at most 10 s, so the same clip
always encodes to the same vector, alone or in any batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmodal.encoders.base import Modality, Vectors, Waveform
from xmodal.encoders._hub import resolve_model_dir
from xmodal.encoders._torch import TorchRuntime, concat_rows, finish_vectors
from xmodal.errors import EncodeError, ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

    from xmodal.config import Settings

__all__ = ["DEFAULT_MAX_WINDOWS", "ClapSpace", "audio_windows", "resolve_clap_dir"]

DEFAULT_MAX_WINDOWS = 12
# Largest number of texts / 10 s windows run through a tower at once: bounds activation memory.
MAX_TOWER_BATCH = 32
PRESEED_HINT = (
    "pre-seed it on a connected machine with `hf download laion/clap-htsat-unfused --local-dir clap-htsat-unfused` "
    "(or `huggingface-cli download ...`), copy that directory here and set "
    "XMODAL_CLAP_MODEL=/path/to/clap-htsat-unfused; see docs/spaces.md"
)


def resolve_clap_dir(model: str, hub_cache: str | Path | None = None) -> Path:
    """The local directory holding `XMODAL_CLAP_MODEL`, or ModelLoadError. Never touches the network."""
    return resolve_model_dir("clap", model, hint=PRESEED_HINT, hub_cache=hub_cache)


def audio_windows(n_samples: int, window: int, max_windows: int = DEFAULT_MAX_WINDOWS) -> list[tuple[int, int]]:
    """[start, end) sample ranges of the windows a clip is encoded as (see the module docstring)."""
    if n_samples <= window:
        return [(0, n_samples)]
    count = min(math.ceil(n_samples / window), max_windows)
    starts = np.linspace(0, n_samples - window, count).round().astype(int)
    return [(int(s), int(s) + window) for s in starts]


@dataclass
class _Loaded:
    model: Any  # transformers.ClapModel
    processor: Any  # transformers.ClapProcessor
    runtime: TorchRuntime
    dim: int
    sample_rate: int  # what the audio tower was trained on (48 kHz for LAION CLAP)
    window: int  # samples per window (10 s)
    fused: bool  # a fusion model takes 4 mel channels per window


class ClapSpace:
    """CLAP text and audio towers. Construct with the settings, then call `load()` once."""

    name = "clap"
    modalities: frozenset[Modality] = frozenset({"text", "audio"})
    # Reads whole clips: past max_windows windows, they are spread evenly over all of it.
    audio_seconds: float | None = None

    def __init__(
        self,
        settings: Settings,
        *,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        hub_cache: str | Path | None = None,
    ) -> None:
        # hub_cache: None means huggingface_hub's default (HF_HUB_CACHE / HF_HOME); tests pass their own.
        if max_windows < 1:
            raise ValueError("max_windows must be at least 1")
        self._settings = settings
        self._max_windows = max_windows
        self._hub_cache = hub_cache
        self._dir: Path | None = None
        self._config_dim: int | None = None
        self._loaded: _Loaded | None = None

    @property
    def dim(self) -> int:
        """Output width: `projection_dim` from config.json before `load()` (no weights are read), so the
        collection can be checked first; after `load()`, what the model really produces."""
        if self._loaded is not None:
            return self._loaded.dim
        if self._config_dim is None:
            from transformers import ClapConfig

            try:
                config = ClapConfig.from_pretrained(self._resolve(), local_files_only=True)
            except (OSError, ValueError) as e:
                raise ModelLoadError(f"cannot read the clap config in {self._resolve()}: {e}") from e
            self._config_dim = int(config.projection_dim)
        return self._config_dim

    @property
    def fingerprint(self) -> str:
        """The model directory's weights and configs (xmodal/encoders/fingerprint.py)."""
        from xmodal.encoders.fingerprint import directory_weights, make_fingerprint

        return make_fingerprint(self.name, "clap", directory_weights(self._resolve()))

    def _resolve(self) -> Path:
        if self._dir is None:
            self._dir = resolve_clap_dir(self._settings.clap_model, self._hub_cache)
        return self._dir

    def load(self) -> None:
        if self._loaded is not None:
            return
        path = self._resolve()
        runtime = TorchRuntime.from_settings(self._settings)
        from transformers import ClapModel, ClapProcessor

        try:
            processor = ClapProcessor.from_pretrained(path, local_files_only=True)
            model = ClapModel.from_pretrained(path, local_files_only=True)
        except Exception as e:  # start-up boundary: whatever transformers raise, the model is unusable
            raise ModelLoadError(f"cannot load the clap model from {path}: {e}; {PRESEED_HINT}") from e
        model.to(runtime.device).eval()
        extractor = processor.feature_extractor
        self._loaded = _Loaded(
            model,
            processor,
            runtime,
            dim=int(model.config.projection_dim),
            sample_rate=int(extractor.sampling_rate),
            window=int(extractor.nb_max_samples),
            fused=bool(model.config.audio_config.enable_fusion),
        )

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        loaded = self._require()
        outputs = []
        for start in range(0, len(texts), MAX_TOWER_BATCH):
            chunk = list(texts[start : start + MAX_TOWER_BATCH])
            tokens = loaded.processor.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")
            tokens = tokens.to(loaded.runtime.device)
            with loaded.runtime.inference():
                out = loaded.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
            outputs.append(_pooled(out))
        return finish_vectors(concat_rows(outputs, loaded.dim), len(texts), loaded.dim, space="clap")

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        raise EncodeError("the clap space has no image tower", code="unsupported_modality")

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        loaded = self._require()
        windows: list[np.ndarray] = []
        owners: list[int] = []  # which clip each window belongs to
        for index, clip in enumerate(clips):
            samples = clip.resampled(loaded.sample_rate).samples
            if samples.size == 0 or not np.isfinite(samples).all():
                raise EncodeError(f"audio clip {index} is empty or has non-finite samples", code="invalid_audio")
            for start, end in audio_windows(samples.size, loaded.window, self._max_windows):
                windows.append(samples[start:end])
                owners.append(index)
        starts = range(0, len(windows), MAX_TOWER_BATCH)
        parts = [self._run_audio(loaded, windows[start : start + MAX_TOWER_BATCH]) for start in starts]
        embedded = concat_rows(parts, loaded.dim)
        if embedded.shape != (len(windows), loaded.dim):
            raise EncodeError(f"clap audio tower returned {embedded.shape}, expected {(len(windows), loaded.dim)}")
        # Mean of the (unit) window embeddings per clip; finish_vectors re-normalises it.
        sums = np.zeros((len(clips), loaded.dim), dtype=np.float32)
        np.add.at(sums, np.asarray(owners, dtype=np.int64), embedded)
        counts = np.bincount(np.asarray(owners, dtype=np.int64), minlength=len(clips)).astype(np.float32)
        return finish_vectors(sums / np.maximum(counts, 1)[:, None], len(clips), loaded.dim, space="clap")

    def _run_audio(self, loaded: _Loaded, windows: list[np.ndarray]) -> np.ndarray:
        import torch

        features = loaded.processor.feature_extractor(
            windows,
            sampling_rate=loaded.sample_rate,
            # Every window is <= 10 s, so neither mode crops at random; fusion is what a fused model expects.
            truncation="fusion" if loaded.fused else "rand_trunc",
            padding="repeatpad",
            return_tensors="pt",
        )
        # With "fusion" and no window longer than 10 s, the extractor marks one random window as longer;
        # no window is, so say so and keep the encoding deterministic and independent of the batch.
        is_longer = torch.zeros((len(windows), 1), dtype=torch.bool)
        with loaded.runtime.inference():
            out = loaded.model.get_audio_features(
                input_features=features["input_features"].to(loaded.runtime.device),
                is_longer=is_longer.to(loaded.runtime.device),
            )
        return _pooled(out)

    def _require(self) -> _Loaded:
        if self._loaded is None:
            raise EncodeError("the clap space is not loaded; call load() at start-up", code="not_loaded")
        return self._loaded


def _pooled(out: Any) -> np.ndarray:
    """The projected embeddings from get_*_features: a tensor in transformers 4.x, the `pooler_output`
    of a BaseModelOutputWithPooling in 5.x (the projection, already normalised there)."""
    import torch

    tensor = out if isinstance(out, torch.Tensor) else out.pooler_output
    return np.asarray(tensor.float().cpu().numpy(), dtype=np.float32)
