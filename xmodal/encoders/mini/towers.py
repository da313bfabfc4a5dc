"""The `mini` space's image and audio towers: small CNNs that map media into MiniLM's 384-d space.

Preprocessing turns real user media into a tower's fixed input; the same functions feed training,
so what the towers saw in training is exactly what they see in service.

Image policy: any PIL image -> RGB (alpha composited over white) -> shorter side resized to 64 px
(bicubic, antialiased when shrinking) -> centre crop 64x64 -> float in [0, 1].

Audio policy: any Waveform -> 16 kHz (`Waveform.resampled`, libsoxr) -> leading and trailing
near-silence trimmed (samples below 1% of the clip's peak, -40 dB) -> centre crop to 2 s when
longer, centred zero padding to 2 s when shorter. The level is kept (loudness is an attribute).
The tower itself computes a log-magnitude spectrogram (512-point STFT, 32 ms hop, 0-8 kHz, dB
floored at -60) and runs a 2-D CNN over it; frequency position is kept to a coarse band axis that
is folded into channels, then pooled over time (mean and max) before the projection head.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import nn
from torch.nn import functional as F

from xmodal.encoders.base import Waveform

__all__ = [
    "AUDIO_RATE",
    "AUDIO_SAMPLES",
    "IMAGE_INPUT",
    "AudioTower",
    "AudioTowerConfig",
    "ImageTower",
    "ImageTowerConfig",
    "audio_batch",
    "build_tower",
    "encode_with",
    "fit_samples",
    "image_batch",
    "load_tower",
    "preprocess_audio",
    "preprocess_image",
    "save_tower",
]

IMAGE_INPUT = 64
AUDIO_RATE = 16_000
AUDIO_SECONDS = 2.0
AUDIO_SAMPLES = int(AUDIO_RATE * AUDIO_SECONDS)
SILENCE_FRACTION = 0.01  # -40 dB below the clip's peak


# --- preprocessing ------------------------------------------------------------------------------


def preprocess_image(image: Image.Image) -> NDArray[np.uint8]:
    """Any PIL image -> (64, 64, 3) uint8 RGB, by the policy in the module docstring."""
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            image = canvas
        else:
            image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (IMAGE_INPUT, IMAGE_INPUT):
        scale = IMAGE_INPUT / min(w, h)
        nw, nh = max(IMAGE_INPUT, round(w * scale)), max(IMAGE_INPUT, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - IMAGE_INPUT) // 2, (nh - IMAGE_INPUT) // 2
        image = image.crop((left, top, left + IMAGE_INPUT, top + IMAGE_INPUT))
    return np.asarray(image, dtype=np.uint8)


def image_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    """(n, 3, 64, 64) float32 in [0, 1]."""
    arr = np.stack([preprocess_image(im) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def fit_samples(samples: NDArray[np.floating], length: int = AUDIO_SAMPLES) -> NDArray[np.float32]:
    """Trim near-silence at both ends, then centre-crop or centre-pad to `length` samples."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if x.size:
        loud = np.flatnonzero(np.abs(x) > SILENCE_FRACTION * float(np.abs(x).max()))
        if loud.size:
            x = x[loud[0] : loud[-1] + 1]
    if x.size >= length:
        start = (x.size - length) // 2
        return np.ascontiguousarray(x[start : start + length])
    out = np.zeros(length, dtype=np.float32)
    start = (length - x.size) // 2
    out[start : start + x.size] = x
    return out


def preprocess_audio(clip: Waveform) -> NDArray[np.float32]:
    """Any Waveform -> (32000,) float32 at 16 kHz, by the policy in the module docstring."""
    samples = np.asarray(clip.samples, dtype=np.float32)
    if samples.ndim > 1:  # tolerate (n, channels) arrays: average to mono
        samples = samples.mean(axis=-1)
        clip = Waveform(np.ascontiguousarray(samples), clip.sample_rate)
    return fit_samples(clip.resampled(AUDIO_RATE).samples)


def audio_batch(clips: Sequence[Waveform]) -> torch.Tensor:
    """(n, 32000) float32."""
    return torch.from_numpy(np.stack([preprocess_audio(c) for c in clips]))


# --- towers -------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@dataclass(frozen=True)
class ImageTowerConfig:
    widths: tuple[int, int, int] = (32, 64, 128)
    dim: int = 384

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImageTower(nn.Module):
    """64x64 RGB in [0, 1] -> dim (not normalised). Stride-2 5x5 stem, three conv stages, avg+max pool, linear head."""

    def __init__(self, config: ImageTowerConfig = ImageTowerConfig()) -> None:
        super().__init__()
        self.config = config
        a, b, c = config.widths
        self.features = nn.Sequential(
            *_conv(3, a, 5, 2),  # 32x32
            *_conv(a, a),
            nn.MaxPool2d(2),  # 16x16
            *_conv(a, b),
            *_conv(b, b),
            nn.MaxPool2d(2),  # 8x8
            *_conv(b, c),
            *_conv(c, c),
        )
        self.head = nn.Linear(2 * c, config.dim)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features((x - self.mean) / 0.25)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


@dataclass(frozen=True)
class AudioTowerConfig:
    n_fft: int = 1024
    hop: int = 512
    frequency: str = "log"  # "log": log-spaced bins (bins_per_octave from f_min); "linear": the STFT's own bins
    bins_per_octave: int = 24
    f_min: float = 50.0
    f_max: float = 7600.0
    widths: tuple[int, ...] = (16, 32, 64, 96)
    pools: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (2, 2), (2, 1))
    hidden: int = 256
    global_pool: bool = True  # also pool the CNN's features over frequency (pitch-independent timbre)
    band_channels: int = 0  # >0: squeeze the CNN's channels to this many before the band readout
    heads: tuple[int, ...] = ()  # attribute bottleneck: values per attribute (empty: a plain linear head)
    head_inputs: tuple[str, ...] = ()  # per head: "global" (pitch-invariant), "bands" (pitch) or "all"
    dim: int = 384

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> AudioTowerConfig:
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        if "pools" in d:
            d["pools"] = tuple(tuple(p) for p in d["pools"])
        if "heads" in d:
            d["heads"] = tuple(d["heads"])
        if "head_inputs" in d:
            d["head_inputs"] = tuple(d["head_inputs"])
        return AudioTowerConfig(**d)

    @property
    def bins(self) -> int:
        if self.frequency == "linear":
            return self.n_fft // 2
        return math.floor(self.bins_per_octave * math.log2(self.f_max / self.f_min)) + 1


def log_frequency_matrix(config: AudioTowerConfig, rate: int = AUDIO_RATE) -> torch.Tensor:
    """(bins, n_fft/2 + 1): each row a triangle over the STFT bins, centred on a log-spaced frequency.

    Below the crossover where log spacing is finer than the STFT's bin spacing the triangle is
    one STFT bin wide on each side (linear interpolation); above it, one log step.
    """
    lin = torch.arange(config.n_fft // 2 + 1, dtype=torch.float64) * rate / config.n_fft
    centres = config.f_min * 2.0 ** (torch.arange(config.bins, dtype=torch.float64) / config.bins_per_octave)
    width = torch.maximum(centres * (2 ** (1 / config.bins_per_octave) - 1), torch.tensor(rate / config.n_fft))
    w = (1 - (lin[None, :] - centres[:, None]).abs() / width[:, None]).clamp_min(0)
    return (w / w.sum(dim=1, keepdim=True)).float()


class LogSpectrogram(nn.Module):
    """(n, samples) -> (n, 1, bins, frames): dB magnitude floored at -60, scaled to about [-2, 3]."""

    def __init__(self, config: AudioTowerConfig) -> None:
        super().__init__()
        self.n_fft, self.hop, self.bins = config.n_fft, config.hop, config.bins
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        matrix = log_frequency_matrix(config) if config.frequency == "log" else None
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(
                wave.float(), self.n_fft, self.hop, window=self.window, center=False, return_complex=True
            ).abs()
            spec = spec[:, : self.bins] if self.matrix is None else torch.matmul(self.matrix, spec)
            db = 20.0 * torch.log10(spec.clamp_min(1e-3))
        return ((db + 20.0) / 20.0).unsqueeze(1)


class AudioTower(nn.Module):
    """(n, 32000) waveform at 16 kHz -> dim (not normalised).

    Log spectrogram -> 2-D CNN (equivariant along the frequency axis) -> two readouts pooled over
    time (mean and max): frequency bands folded into channels (where: pitch, register) and, when
    `global_pool`, the features' maximum over frequency (what: timbre, noise colour) -> linear head.
    """

    def __init__(self, config: AudioTowerConfig = AudioTowerConfig()) -> None:
        super().__init__()
        self.config = config
        self.frontend = LogSpectrogram(config)
        layers: list[nn.Module] = []
        cin = 1
        bins = config.bins
        for cout, pool in zip(config.widths, config.pools, strict=True):
            layers += _conv(cin, cout)
            layers.append(nn.MaxPool2d(pool))
            cin = cout
            bins //= pool[0]
        self.features = nn.Sequential(*layers)
        squeeze = config.band_channels or cin
        self.squeeze = (
            nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True)) if config.band_channels else nn.Identity()
        )
        self.bands = nn.Sequential(nn.Conv1d(squeeze * bins, config.hidden, 1), nn.ReLU(inplace=True))
        sizes = {"bands": 2 * config.hidden, "global": 2 * cin if config.global_pool else 0}
        sizes["all"] = sizes["bands"] + sizes["global"]
        if config.heads:
            inputs = config.head_inputs or ("all",) * len(config.heads)
            self.head: nn.Module = AttributeBottleneck(sizes, config.heads, inputs, config.dim)
        else:
            self.head = nn.Linear(sizes["all"], config.dim)

    def pooled(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"bands": where-features, "global": features pooled over frequency, "all": both}."""
        h = self.features(self.frontend(wave))
        n, _, f, t = h.shape
        s = self.squeeze(h)
        b = self.bands(s.reshape(n, s.shape[1] * f, t))
        parts = {"bands": torch.cat([b.mean(dim=2), b.amax(dim=2)], dim=1)}
        if self.config.global_pool:
            g = h.amax(dim=2)
            parts["global"] = torch.cat([g.mean(dim=2), g.amax(dim=2)], dim=1)
        parts["all"] = torch.cat(list(parts.values()), dim=1)
        return parts

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        parts = self.pooled(wave)
        return self.head(parts) if isinstance(self.head, AttributeBottleneck) else self.head(parts["all"])

    def forward_with_logits(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(embedding, per-attribute logits) — training's view of a bottlenecked tower."""
        if not isinstance(self.head, AttributeBottleneck):
            raise TypeError("this tower has no attribute bottleneck")
        return self.head.forward_with_logits(self.pooled(wave))


class AttributeBottleneck(nn.Module):
    """features -> one softmax per attribute -> sum over attributes of expected value embeddings.

    The output is additive in the attributes by construction, so a combination of attribute
    values never seen together lands where the text tower puts its caption, provided each
    attribute is recognised on its own (the classifiers are trained with the attribute labels of
    the synthetic corpus beside the contrastive loss).
    """

    def __init__(self, features: dict[str, int], heads: tuple[int, ...], inputs: tuple[str, ...], dim: int) -> None:
        super().__init__()
        if len(inputs) != len(heads) or not set(inputs) <= set(features) or not all(features[i] for i in inputs):
            raise ValueError(f"head inputs {inputs} do not fit heads {heads} and features {features}")
        self.inputs = list(inputs)
        self.classify = nn.ModuleList(nn.Linear(features[i], n) for i, n in zip(inputs, heads, strict=True))
        self.values = nn.Parameter(torch.randn(sum(heads), dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward_with_logits(self, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        groups = [head(parts[i]).float() for head, i in zip(self.classify, self.inputs, strict=True)]
        probs = torch.cat([g.softmax(dim=1) for g in groups], dim=1)
        return probs @ self.values.float() + self.bias.float(), groups

    def forward(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_with_logits(parts)[0]


# --- building, saving, loading, encoding --------------------------------------------------------

Tower = ImageTower | AudioTower


def build_tower(modality: str, config: dict[str, Any] | None = None) -> Tower:
    """A fresh tower of `modality` ("image" or "audio") from its config dict (default config if None)."""
    if modality == "image":
        return ImageTower(ImageTowerConfig(**{k: tuple(v) if k == "widths" else v for k, v in (config or {}).items()}))
    if modality == "audio":
        return AudioTower(AudioTowerConfig.from_dict(config or {}))
    raise ValueError(f"no tower for modality {modality!r}; valid: image, audio")


def save_tower(tower: Tower, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Write the tower's weights as safetensors (fp32); its modality and config go in the metadata."""
    from safetensors.torch import save_file

    modality = "image" if isinstance(tower, ImageTower) else "audio"
    metadata = {"modality": modality, "config": json.dumps(tower.config.to_dict()), **(extra or {})}
    state = {k: v.detach().float().contiguous().cpu() for k, v in tower.state_dict().items() if v.is_floating_point()}
    state.update({k: v.detach().contiguous().cpu() for k, v in tower.state_dict().items() if not v.is_floating_point()})
    save_file(state, str(path), metadata=metadata)
    os.chmod(path, 0o644)  # package data: readable by everyone who installs it


def load_tower(path: str | Path, device: str | torch.device = "cpu") -> Tower:
    """Read a tower written by `save_tower`, in eval mode on `device`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    tower = build_tower(metadata["modality"], json.loads(metadata["config"]))
    tower.load_state_dict(load_file(str(path)))
    return tower.to(device).eval()


@torch.inference_mode()
def encode_with(tower: Tower, inputs: torch.Tensor, batch_size: int = 256) -> NDArray[np.float32]:
    """Run an eval-mode tower over preprocessed inputs in batches; unit rows, float32, on the CPU."""
    device = next(tower.parameters()).device
    out = []
    for start in range(0, len(inputs), batch_size):
        y = tower(inputs[start : start + batch_size].to(device)).float()
        out.append(F.normalize(y, dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, tower.config.dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
