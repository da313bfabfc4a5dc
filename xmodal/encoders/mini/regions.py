"""Region features for the `mini` cross-encoder: a small CNN trained with per-region attribute labels.

The image tower's maps were trained for one pooled description of the whole picture, and do not
keep "this place is red and a circle" together. Bottom-up region features of the early
vision-language cross-encoders (Anderson et al. 2018) were trained with object and attribute
labels instead; our renderer knows them exactly (corpus.render_image_with_masks,
render_scene_with_masks), so:

- `RegionEncoder`: 64x64 RGB -> an 8x8 map (3x3 convolutions, batch norm, GELU; three of stride
  2, then two more at 8x8: each cell sees 47 px, a whole object), with three heads per cell:
  the shape, colour and size of the object covering the cell, or background;
- `cell_labels`: each 8x8 cell's labels from the objects' coverage masks (the object covering most
  of the cell, if it covers at least `MIN_COVER` of it);
- `train_regions`: trained from scratch on single-object pictures (counts 1-3) and two-object
  scenes of the `train` split only (never a held-out combination or swap class), each seen as the
  original or as its stored JPEG view, mirrored half of the time; optionally a share of each batch
  in grayscale with its colour loss off (`gray_share`), and a check of how it reads (shape, colour)
  pairs it never saw, on validation pictures only (`hold_back`).

    python -m xmodal.encoders.mini.regions [--seed 0] [--steps 900] [--small-weight W] [--gray-share G] [--hold-back K] [--out FILE]

trains stage 1 alone and writes the state dict (`train_cross --regions-from FILE` takes it) with its
figures beside it (FILE.json).

The cross-encoder reads `RegionEncoder.features`: each cell's hidden state and its three heads'
probabilities side by side (cross.py, `regions="attributes"`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F

from xmodal.encoders.mini import corpus

__all__ = [
    "HEADS",
    "MIN_COVER",
    "RegionConfig",
    "RegionEncoder",
    "RegionSet",
    "RegionTrainConfig",
    "cell_accuracy",
    "cell_labels",
    "region_set",
    "train_regions",
]

GRID = 8  # cells per side: 8x8 regions of 8x8 pixels
CELL = corpus.IMAGE_SIZE // GRID
MIN_COVER = 0.25  # an object labels a cell when it covers at least this share of it
# per-cell classes: 0 is background, then the vocabulary's order
HEADS: dict[str, tuple[str, ...]] = {"shape": corpus.SHAPES, "colour": corpus.COLOURS, "size": corpus.SIZES}
_SMALL = corpus.SIZES.index("small") + 1  # the size head's class id of "small"


@dataclass(frozen=True)
class RegionConfig:
    widths: tuple[int, ...] = (24, 48, 96)  # each a stride-2 3x3 convolution: 64 -> 8x8
    extra: int = 2  # 3x3 convolutions at 8x8 after the strided ones (receptive field 47 px)
    # the shape and size heads read a body of their own over the picture's colour-free silhouette
    # (`silhouette`), so no colour can be a cue for a shape: a held-out combination is an unseen
    # shape-colour pair; False (the first encoders): every head reads the RGB body
    form_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> RegionConfig:
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return RegionConfig(**d)

    @property
    def feature_dim(self) -> int:
        """Width of a region's feature: its hidden state and the heads' probabilities."""
        return self.widths[-1] * (2 if self.form_input else 1) + sum(len(v) + 1 for v in HEADS.values())


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601, Pillow's "L"


def luma(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n, 1, H, W): the luminance Pillow's "L" conversion gives."""
    return (images * _LUMA.to(images)).sum(1, keepdim=True)


def silhouette(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) in [0, 1] -> (n, 1, H, W): where an object is, whatever its colour.

    The corpus's backgrounds are achromatic (white, black, gray: saturation <= 0.1) and its objects
    chromatic (saturation >= 0.25), so chroma (max - min channel) above the background's (the
    border's median) marks them; the luminance step from the background keeps full resolution
    where the JPEG view halves the chroma's. Both are clipped to [0, 1] at a margin above the
    background's own jitter, so what is left of an object's colour is at most how steep its edge is."""
    chroma = images.amax(1) - images.amin(1)

    def above_background(plane: torch.Tensor) -> torch.Tensor:
        border = torch.cat([plane[:, 0], plane[:, -1], plane[:, :, 0], plane[:, :, -1]], dim=1)
        return plane - border.median(dim=1).values.view(-1, 1, 1)

    chroma, step = above_background(chroma), above_background(luma(images).squeeze(1)).abs()
    return torch.maximum((chroma / 0.12).clamp(0, 1), (step / 0.1).clamp(0, 1)).unsqueeze(1)


def _body(cin: int, config: RegionConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in config.widths:
        layers += _block(cin, w, 2)
        cin = w
    for _ in range(config.extra):
        layers += _block(cin, cin, 1)
    return nn.Sequential(*layers)


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


class RegionEncoder(nn.Module):
    """(n, 3, 64, 64) in [0, 1] -> an 8x8 map and per-cell shape / colour / size logits."""

    def __init__(self, config: RegionConfig = RegionConfig()) -> None:
        super().__init__()
        self.config = config
        self.body = _body(3, config)
        # with form_input, shape and size come from the silhouette's body (`form`), colour from the RGB one
        self.form = _body(1, config) if config.form_input else None
        width = config.widths[-1]
        self.heads = nn.ModuleDict({name: nn.Conv2d(width, len(v) + 1, 1) for name, v in HEADS.items()})
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(hidden (n, C, 8, 8), {head: logits (n, classes, 8, 8)})."""
        hidden = self.body((images - self.mean) / 0.25)
        if self.form is None:
            return hidden, {name: head(hidden) for name, head in self.heads.items()}
        form = self.form((silhouette(images) - 0.5) / 0.25)
        logits = {name: head(hidden if name == "colour" else form) for name, head in self.heads.items()}
        return torch.cat([hidden, form], dim=1), logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 64 regions in row order, feature_dim): hidden state and the heads' probabilities."""
        hidden, logits = self(images)
        parts = [hidden] + [logits[name].softmax(1) for name in HEADS]
        return torch.cat(parts, dim=1).flatten(2).transpose(1, 2)


def cell_labels(masks: NDArray[np.float32], objects: Sequence[tuple[str, str, str]]) -> NDArray[np.int64]:
    """(objects, 64, 64) coverage and each object's (shape, colour, size) -> (3, 8, 8) class ids
    (shape, colour, size; 0 = background): the object covering most of a cell, if >= MIN_COVER."""
    out = np.zeros((len(HEADS), GRID, GRID), dtype=np.int64)
    if len(masks) == 0:
        return out
    cover = masks.reshape(len(masks), GRID, CELL, GRID, CELL).mean(axis=(2, 4))  # (objects, 8, 8)
    best = cover.argmax(0)
    covered = cover.max(0) >= MIN_COVER
    for k, (name, vocab) in enumerate(HEADS.items()):
        ids = np.array([vocab.index(obj[k]) + 1 for obj in objects])
        out[k] = np.where(covered, ids[best], 0)
    return out


@dataclass
class RegionSet:
    """Images (n, 3, 64, 64) uint8 as drawn and as stored (the index's JPEG view), labels (n, 3, 8, 8)."""

    originals: torch.Tensor
    views: torch.Tensor
    labels: torch.Tensor
    is_scene: NDArray[np.bool_]


def region_set(
    singles: int,
    scenes: int,
    split: corpus.Split = "train",
    seed: int = 0,
    pairs: Callable[[tuple[str, str]], bool] | None = None,
) -> RegionSet:
    """Fresh draws of `split`: `singles` single-object pictures (counts 1-3) and `scenes` two-object
    scenes, with their cells' labels (only training combinations and swap classes for "train").
    With `pairs`, a picture is drawn again until `pairs` accepts each of its (shape, colour) pairs
    (without it, the draws are the same as they always were)."""
    from xmodal.encoders.mini.evaluate_cross import stored_image

    def accepted(objects: Sequence[tuple[str, ...]]) -> bool:
        return pairs is None or all(pairs((shape, colour)) for shape, colour, *_ in objects)

    rng = np.random.default_rng((41, corpus.SPLITS.index(split), seed))
    images, labels = [], []
    for _ in range(singles):
        attrs = corpus.sample_attributes("image", split, rng)
        while not accepted([(attrs["shape"], attrs["colour"])]):
            attrs = corpus.sample_attributes("image", split, rng)
        image, masks = corpus.render_image_with_masks(attrs, np.random.default_rng(rng.integers(2**63)))
        obj = (attrs["shape"], attrs["colour"], attrs["size"])
        images.append(image)
        labels.append(cell_labels(masks, [obj] * len(masks)))
    for _ in range(scenes):
        attrs = corpus.sample_scene(split, rng)
        while not accepted(attrs["objects"]):
            attrs = corpus.sample_scene(split, rng)
        image, masks = corpus.render_scene_with_masks(attrs, np.random.default_rng(rng.integers(2**63)))
        images.append(image)
        labels.append(cell_labels(masks, attrs["objects"]))
    originals = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous()
    views = torch.from_numpy(np.stack([np.asarray(stored_image(im)) for im in images])).permute(0, 3, 1, 2)
    is_scene = np.arange(len(images)) >= singles
    return RegionSet(originals, views.contiguous(), torch.from_numpy(np.stack(labels)), is_scene)


@dataclass
class RegionTrainConfig:
    seed: int = 0
    steps: int = 900
    batch: int = 64
    singles: int = 2000
    scenes: int = 2000
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    jpeg_share: float = 0.6
    # object cells are a minority: their loss weighs this much more than a background cell's
    object_weight: float = 2.0
    # cells of small objects (a small square may cover one cell, whose shape is hardest to read)
    # weigh this much more again; 1.0 (the first runs) weighs them like any object cell
    small_weight: float = 1.0
    # share of each batch shown in grayscale with its colour loss off: the shape and size heads have
    # to read form rather than lean on the colours each shape came in (a held-out combination is an
    # unseen shape-colour pair); 0.0 (the first runs): none
    gray_share: float = 0.0
    # a check, not a shipped setting: this many of the training (shape, colour) pairs are kept out of
    # the training pictures, and validation pictures of them measure how unseen pairs are read
    # (the held-out split stays untouched); 0: none
    hold_back: int = 0
    form_input: bool = False  # RegionConfig.form_input of the encoder trained
    val: int = 400  # validation images ("seen" split), half single objects, half scenes


def held_back_pairs(k: int) -> frozenset[tuple[str, str]]:
    """Up to `k` training (shape, colour) pairs for `hold_back`, a fixed draw: one per shape of the
    first `k`, each colour at most once (like corpus's own held-out pattern), a shape left out
    when every colour not yet taken makes a held-out pair with it (k = 8 gives 7)."""
    held = corpus.heldout_pairs("image")
    order = np.random.default_rng(20261201).permutation(len(corpus.COLOURS))
    picked: list[tuple[str, str]] = []
    for i, shape in enumerate(corpus.SHAPES[:k]):
        for offset in range(len(corpus.COLOURS)):
            colour = corpus.COLOURS[int(order[(i + offset) % len(order)])]
            if (shape, colour) not in held and colour not in {c for _, c in picked}:
                picked.append((shape, colour))
                break
    return frozenset(picked)




def _sample(data: RegionSet, ids: torch.Tensor, rng: np.random.Generator, jpeg_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] (stored view or original, mirrored half of the time) and their labels."""
    use_view = torch.from_numpy(rng.random(len(ids)) < jpeg_share).view(-1, 1, 1, 1)
    x = torch.where(use_view, data.views[ids], data.originals[ids]).float().div(255.0)
    y = data.labels[ids]
    flip = torch.from_numpy(rng.random(len(ids)) < 0.5)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    y = torch.where(flip.view(-1, 1, 1, 1), y.flip(3), y)
    return x, y


@torch.no_grad()
def cell_accuracy(model: RegionEncoder, data: RegionSet, use_views: bool = True) -> dict[str, float]:
    """Per-head accuracy on the cells an object covers, and the share of object cells with all three right."""
    model.eval()
    right = {name: 0 for name in HEADS}
    all_right = total = small_shape_right = small_all_right = small_total = 0
    for start in range(0, len(data.labels), 256):
        source = data.views if use_views else data.originals
        x = source[start : start + 256].float().div(255.0)
        y = data.labels[start : start + 256]
        _, logits = model(x)
        obj = y[:, 0] > 0
        small = y[:, 2] == _SMALL
        ok = torch.ones_like(obj)
        for k, name in enumerate(HEADS):
            hit = logits[name].argmax(1) == y[:, k]
            right[name] += int((hit & obj).sum())
            ok &= hit
            if name == "shape":
                small_shape_right += int((hit & small).sum())
        all_right += int((ok & obj).sum())
        small_all_right += int((ok & small).sum())
        total += int(obj.sum())
        small_total += int(small.sum())
    out = {f"{name}_accuracy": round(right[name] / max(1, total), 4) for name in HEADS}
    out["all_three"] = round(all_right / max(1, total), 4)
    out["object_cells"] = total
    out["small_shape_accuracy"] = round(small_shape_right / max(1, small_total), 4)
    out["small_all_three"] = round(small_all_right / max(1, small_total), 4)
    out["small_object_cells"] = small_total
    return out


def train_regions(
    cfg: RegionTrainConfig, log: Callable[[str], None] = print, deadline: float | None = None
) -> tuple[RegionEncoder, dict[str, Any]]:
    """Stage 1: the region encoder with dense attribute supervision (module docstring)."""
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    held_back = held_back_pairs(cfg.hold_back) if cfg.hold_back else frozenset()
    data = region_set(cfg.singles, cfg.scenes, "train", cfg.seed, (lambda p: p not in held_back) if held_back else None)
    val = region_set(cfg.val // 2, cfg.val // 2, "seen", cfg.seed + 1000)
    unseen = region_set(cfg.val // 2, 0, "seen", cfg.seed + 2000, lambda p: p in held_back) if held_back else None
    log(f"regions: {len(data.labels)} training images and {len(val.labels)} validation images with cell "
        f"labels in {time.monotonic() - t0:.1f}s")  # fmt: skip
    model = RegionEncoder(RegionConfig(form_input=cfg.form_input))
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=cfg.lr
    )
    rng = np.random.default_rng((42, cfg.seed))
    t_loop = time.monotonic()
    losses: list[float] = []
    steps_done = cfg.steps
    for step in range(cfg.steps):
        if deadline is not None and time.monotonic() > deadline:
            steps_done = step
            log(f"WARNING: regions: time guard reached at step {step} of {cfg.steps}")
            break
        factor = (step + 1) / cfg.warmup if step < cfg.warmup else 0.5 * (
            1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))  # fmt: skip
        for g in opt.param_groups:
            g["lr"] = cfg.lr * factor
        model.train()
        ids = torch.from_numpy(rng.integers(0, len(data.labels), cfg.batch))
        x, y = _sample(data, ids, rng, cfg.jpeg_share)
        colour_weight = torch.ones(len(ids), 1, 1)
        if cfg.gray_share:
            gray = torch.from_numpy(rng.random(len(ids)) < cfg.gray_share)
            x = torch.where(gray.view(-1, 1, 1, 1), luma(x).expand_as(x), x)
            colour_weight = (~gray).float().view(-1, 1, 1)
        _, logits = model(x)
        weight = 1.0 + (cfg.object_weight - 1.0) * (y[:, 0] > 0).float()
        weight = weight * torch.where(y[:, 2] == _SMALL, cfg.small_weight, 1.0)
        loss = sum(
            (F.cross_entropy(logits[name], y[:, k], reduction="none") * weight
             * (colour_weight if name == "colour" else 1.0)).mean()
            for k, name in enumerate(HEADS)
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"regions step {step:5d}  loss {np.mean(losses[-100:]):.3f}  "
                f"{(time.monotonic() - t_loop) / (step + 1) * 1000:.0f} ms/step")  # fmt: skip
    t_train = time.monotonic() - t_loop
    model.eval()
    metrics = {
        "steps": steps_done,
        "images": len(data.labels),
        "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
        "seconds": round(time.monotonic() - t0, 1),
        "ms_per_step": round(1000 * t_train / max(1, steps_done), 1),
        "validation_cells": {"stored_view": cell_accuracy(model, val, True), "original": cell_accuracy(model, val, False)},
        "config": asdict(cfg),
    }
    log(f"regions: validation object cells (stored view) {metrics['validation_cells']['stored_view']}")
    if unseen is not None:
        metrics["held_back_pairs"] = sorted(held_back)
        metrics["validation_cells_held_back_pairs"] = cell_accuracy(model, unseen, True)
        log(f"regions: single objects of the {len(held_back)} held-back pairs (stored view) "
            f"{metrics['validation_cells_held_back_pairs']}")  # fmt: skip
    return model, metrics


def main(argv: Sequence[str] | None = None) -> int:
    d = RegionTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m xmodal.encoders.mini.regions", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--small-weight", type=float, default=d.small_weight)
    parser.add_argument("--gray-share", type=float, default=d.gray_share)
    parser.add_argument("--form-input", action="store_true", help="shape and size read a colour-free silhouette")
    parser.add_argument("--hold-back", type=int, default=d.hold_back, help="training pairs kept out, for the check")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the state dict here (and FILE.json)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.gray_share <= 1.0:
        parser.error("--gray-share must be between 0 and 1")
    if not 0 <= args.hold_back <= len(corpus.SHAPES):
        parser.error(f"--hold-back must be between 0 and {len(corpus.SHAPES)} (one pair per shape)")
    torch.set_num_threads(args.threads)
    cfg = RegionTrainConfig(
        seed=args.seed, steps=args.steps, small_weight=args.small_weight, gray_share=args.gray_share,
        hold_back=args.hold_back, form_input=args.form_input,
    )  # fmt: skip
    model, metrics = train_regions(cfg)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out)
        args.out.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
