"""Train the `mini` cross-encoder (cross.py) in-house: image-text matching with hard negatives.

    python -m xmodal.encoders.mini.train_cross [--steps N] [--seed S] [--out DIR] [--minutes M]
    python -m xmodal.encoders.mini.train_cross --design mentions [--seed S] [--steps N] [--regions-from FILE] [--region-small-weight W] [--region-form-input] [--region-gray-share G] [--no-mirror]

`--design mentions` (the shipped design since 7d91d78, docs/mini.md) trains mentions.py
instead: the region encoder (stage 1, as below), then small heads on MiniLM's token states that
read each word's object's attributes, and fits alpha the same way; everything below is `cross`.

The ALBEF/BLIP recipe, small, on the synthetic corpus:

0. Region features (`--regions attributes`; the default `tower` is the first checkpoint's): stage 1 trains
   the region encoder (regions.py) from scratch on per-cell shape, colour and size labels from the renderer's masks
   (`train` split only; `--region-steps`), then freezes it; `--regions-from FILE` takes a trained
   one instead (a RegionEncoder state dict or a cross checkpoint). `--regions tower` (the first
   checkpoint's design): a copy of the shipped image tower's convolutions.
1. Pool: `--scenes` training binding scenes with their swapped-binding twins, and `--singles`
   single-object training images (corpus.scene_pairs, corpus.image_items); each image also in its
   stored view (the index's JPEG thumbnail, quality 80), which is what a candidate image is at query
   time; a batch takes the stored view with probability `--jpeg-share`, else the original (an image
   query), mirrored half of the time.
2. Captions, `--captions` per image: scenes get binding captions, each with its *swapped twin* (the
   same wording with the colours exchanged, a positive of the twin image and the hardest negative of
   the scene); single objects get captions stating random attributes (counts and sizes often) and as
   many *perturbed* captions (one stated attribute changed: "three" for "two", "small" for "large").
   Their MiniLM token states are computed once (the text tower is frozen).
3. Mined negatives: the first stage (the shipped image tower and MiniLM) ranks every caption for
   every pool image, and every pool image for every pool image; the top `--mine-from` that are wrong
   (the caption is not true of the image) are the nearest-but-wrong negatives.
4. Loss, per anchor image and one of its captions: binary cross-entropy (positives weighted 3) on
   four pairs: the positive; the twin's caption (scenes) or a perturbed one (single objects); a
   mined caption; and the anchor caption with a negative image (the twin for half of the scenes,
   else a mined image the caption is not true of); plus a softmax over the anchor's three captions
   and one over the caption's two images; every pair against a scene's twin (its caption, its
   image: the negative image of `--twin-image-share` of the scene anchors) weighs `--twin-weight`.
   AdamW, warmup then cosine decay. The region CNN is frozen by default (`--cnn-lr 0`): its 8x8
   maps of every pool image (four views: JPEG, original, each mirrored) are computed once, so a
   step trains only what reads them (with `--pixel-patches`, also an embedding of each region's
   own 8x8 pixels); `--cnn-lr` > 0 fine-tunes it instead (every step then runs it: over 1.6 s a
   step for the tower's copy on the loaded 2-core machine, against about 0.2 s frozen).
5. alpha: the scale of the adjustment (`alpha * logit`, added to the calibrated first-stage score),
   fitted on a validation gallery of *training* swap classes (fresh draws; evaluate_cross.fit_alpha);
   then the held-out gallery's figures (evaluate_cross.evaluate) go into `<out>/cross.json`.

`--steps N --seed S` repeats a run exactly on the same machine and thread count; `--minutes` is a
guard that stops the loop early (with a warning, recorded) on a machine much slower than expected.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from xmodal.encoders.mini import corpus
from xmodal.encoders.mini.cross import (
    CrossConfig,
    CrossModel,
    MiniCrossEncoder,
    MiniLMTokens,
    pad_states,
    write_checkpoint,
)
from xmodal.encoders.mini.evaluate_cross import (
    evaluate,
    fit_alpha,
    format_evaluation,
    measure,
    rerank_gallery,
    score_groups,
    stored_image,
)
from xmodal.encoders.mini.regions import RegionEncoder, RegionTrainConfig, train_regions
from xmodal.encoders.mini.space import WEIGHTS_DIR, MiniSpace
from xmodal.encoders.mini.towers import encode_with, load_tower, preprocess_image
from xmodal.encoders.mini.train import machine

# how often a single-object training caption states each attribute (counts and sizes often: the
# reranker must not break the count and size queries the first stage already answers)
MENTION_P = {"shape": 0.9, "colour": 0.9, "size": 0.6, "count": 0.6, "background": 0.4}
PERTURB = ("count", "size", "colour", "shape", "background")
PERTURB_P = (0.3, 0.3, 0.15, 0.15, 0.1)


@dataclass
class CrossTrainConfig:
    seed: int = 0
    steps: int = 4500
    minutes: float = 20.0
    batch: int = 32
    scene_share: float = 0.5
    scenes: int = 1600  # twin pairs: twice as many scene images
    singles: int = 1000
    captions: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    mine_from: int = 50
    mined: int = 8
    jpeg_share: float = 0.8
    # on a busy 2-core machine one thread was 7x faster per step than two (no waiting at OpenMP
    # barriers for a preempted thread), and float32 2x faster than bf16 autocast at these sizes
    bf16: bool = False
    threads: int = 1
    val_n: int = 60
    val_seed: int = 7
    eval_n: int = 100
    eval_seed: int = 0
    rerank_k: int = 50
    # learning rate of the copied image-tower convolutions; 0 keeps them frozen (their maps cached)
    cnn_lr: float = 0.0
    # the swapped twin is the point: the share of scene anchors whose negative image is the twin,
    # and the loss weight of every pair against a twin (its caption, its image)
    # (the shipped run: 0.5 and 1; 0.8 and 3 with pixel patches did worse, docs/mini.md)
    twin_image_share: float = 0.5
    twin_weight: float = 1.0
    token_cache: str | None = None  # directory: MiniLM token states kept across runs (the same texts, the same states)
    # the shipped checkpoint's design; `--regions attributes --token-min --maxsim 64` is the
    # region-label design (docs/mini.md: it binds better alone, but not at an alpha that keeps
    # counts and sizes)
    model: CrossConfig = CrossConfig()
    # stage 1 (model.regions "attributes"): the region encoder's own training, or a file to take it
    # from instead (a RegionEncoder state dict saved by torch.save, or a cross checkpoint)
    regions: RegionTrainConfig = field(default_factory=RegionTrainConfig)
    regions_from: str | None = None


# --- data ---------------------------------------------------------------------------------------


@dataclass
class Pool:
    originals: torch.Tensor  # (n, 3, 64, 64) uint8
    views: torch.Tensor  # the stored JPEG views, same shape
    attributes: list[dict[str, Any]]
    is_scene: np.ndarray  # (n,) bool
    twin: np.ndarray  # (n,) index of a scene's twin, -1 for single objects
    positives: list[list[int]]  # caption ids true of the image (its own captions)
    hard: list[list[int]]  # the twin's captions (scenes) / perturbed captions (single objects)
    # (n, 4, 64, 192) bfloat16 frozen feature maps: JPEG view, mirrored, original, mirrored
    features: torch.Tensor = None  # type: ignore[assignment]
    mined_texts: list[list[int]] = None  # type: ignore[assignment]
    mined_images: list[list[int]] = None  # type: ignore[assignment]


def _perturbed(attrs: dict[str, Any], mention: set[str], rng: np.random.Generator) -> tuple[dict[str, Any], set[str]]:
    """The attributes with one (preferably stated) attribute changed, and the mention set to describe them."""
    name = str(rng.choice(PERTURB, p=PERTURB_P))
    out = dict(attrs)
    values = [v for v in corpus.IMAGE_ATTRIBUTES[name] if v != attrs[name]]
    out[name] = values[int(rng.integers(len(values)))]
    return out, mention | {name}


def build_pool(cfg: CrossTrainConfig, log=print) -> tuple[Pool, list[corpus.Caption]]:
    t0 = time.monotonic()
    images: list[corpus.Item] = []
    for scene, twin in corpus.scene_pairs(cfg.scenes, "train", cfg.seed):
        images += [scene, twin]
    n_scene = len(images)
    images += corpus.image_items(cfg.singles, "train", cfg.seed)
    log(f"rendered {n_scene} scene images ({cfg.scenes} twin pairs) + {cfg.singles} single-object images "
        f"in {time.monotonic() - t0:.1f}s")  # fmt: skip
    t0 = time.monotonic()
    originals = torch.from_numpy(np.stack([preprocess_image(it.media) for it in images])).permute(0, 3, 1, 2)
    views = torch.from_numpy(np.stack([np.asarray(stored_image(it.media)) for it in images])).permute(0, 3, 1, 2)
    log(f"stored JPEG views of {len(images)} images in {time.monotonic() - t0:.1f}s")

    rng = np.random.default_rng((31, cfg.seed))
    captions: list[corpus.Caption] = []
    positives: list[list[int]] = [[] for _ in images]
    hard: list[list[int]] = [[] for _ in images]
    for k in range(0, n_scene, 2):
        a, b = images[k].attributes, images[k + 1].attributes
        for _ in range(cfg.captions):
            mention = {name for name, p in (("size", 0.25), ("background", 0.33)) if rng.random() < p}
            seed = int(rng.integers(2**63))
            # the same random stream: the same wording, each colour moved to the other shape
            cap_a = corpus.describe_scene(a, np.random.default_rng(seed), mention)
            cap_b = corpus.describe_scene(b, np.random.default_rng(seed), mention)
            positives[k].append(len(captions))
            hard[k + 1].append(len(captions))
            captions.append(cap_a)
            positives[k + 1].append(len(captions))
            hard[k].append(len(captions))
            captions.append(cap_b)
    for k in range(n_scene, len(images)):
        attrs = images[k].attributes
        for _ in range(cfg.captions):
            mention = {name for name, p in MENTION_P.items() if rng.random() < p}
            if not mention & {"shape", "colour"}:
                mention.add(str(rng.choice(["shape", "colour"])))
            seed = int(rng.integers(2**63))
            positives[k].append(len(captions))
            captions.append(corpus.describe("image", attrs, np.random.default_rng(seed), mention))
            wrong, wrong_mention = _perturbed(attrs, mention, rng)
            cap = corpus.describe("image", wrong, np.random.default_rng(seed), wrong_mention)
            if not cap.constraint.matches(attrs):
                hard[k].append(len(captions))
                captions.append(cap)
    twin = np.full(len(images), -1)
    twin[0:n_scene:2], twin[1:n_scene:2] = np.arange(1, n_scene, 2), np.arange(0, n_scene, 2)
    is_scene = np.arange(len(images)) < n_scene
    pool = Pool(originals, views, [it.attributes for it in images], is_scene, twin, positives, hard)
    return pool, captions


def mine_negatives(
    pool: Pool, captions: list[corpus.Caption], text_vecs: np.ndarray, cfg: CrossTrainConfig, log=print
) -> None:
    """For every pool image, the first stage's nearest captions and images that are wrong for it."""
    t0 = time.monotonic()
    tower = load_tower(WEIGHTS_DIR / "image.safetensors")
    image_vecs = encode_with(tower, pool.originals.float().div(255.0))
    mined_texts, mined_images = [], []
    for start in range(0, len(image_vecs), 512):
        block = image_vecs[start : start + 512]
        top_t = np.argsort(-(block @ text_vecs.T), axis=1)[:, : cfg.mine_from]
        top_i = np.argsort(-(block @ image_vecs.T), axis=1)[:, 1 : cfg.mine_from + 1]
        for row in range(len(block)):
            i = start + row
            attrs = pool.attributes[i]
            wrong = [int(c) for c in top_t[row] if not captions[c].constraint.matches(attrs)]
            mined_texts.append(wrong[: cfg.mined])
            mined_images.append([int(j) for j in top_i[row][: cfg.mined * 2]])
    pool.mined_texts, pool.mined_images = mined_texts, mined_images
    wrong_share = np.mean([len(m) > 0 for m in mined_texts])
    log(f"mined first-stage negatives (top {cfg.mine_from}) in {time.monotonic() - t0:.1f}s; "
        f"{wrong_share:.2f} of images have a wrong caption among their top {cfg.mine_from}")  # fmt: skip


# --- training -----------------------------------------------------------------------------------


def cached_token_states(tokens: MiniLMTokens, texts: list[str], cache: Path | None) -> list[torch.Tensor]:
    """Each text's MiniLM token states; with `cache`, kept in `cache/<sha256 of the texts>.pt`."""
    path = None
    if cache is not None:
        import hashlib

        path = cache / ("cross-" + hashlib.sha256("\n".join(texts).encode()).hexdigest() + ".pt")
        if path.is_file():
            return torch.load(path)
    states = tokens.encode_many(texts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(states, path)
    return states


def cache_features(model: CrossModel, pool: Pool) -> torch.Tensor:
    """The frozen region maps of every pool image in four views: stored JPEG, stored JPEG
    mirrored, original, original mirrored; (n, 4, 64, region_dim) bfloat16."""
    out = torch.empty(len(pool.attributes), 4, 64, model.region_dim, dtype=torch.bfloat16)
    model.eval()
    for start in range(0, len(out), 256):
        stop = start + 256
        for v, (source, flip) in enumerate([(pool.views, False), (pool.views, True), (pool.originals, False),
                                            (pool.originals, True)]):  # fmt: skip
            x = source[start:stop].float().div(255.0)
            out[start:stop, v] = model.feature_map(x.flip(3) if flip else x).to(torch.bfloat16)
    return out


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class _Batcher:
    def __init__(self, pool: Pool, captions: list[corpus.Caption], states: list[torch.Tensor], cfg: CrossTrainConfig):
        self.pool, self.captions, self.states, self.cfg = pool, captions, states, cfg
        self.rng = np.random.default_rng((32, cfg.seed))
        self.scene_ids = np.flatnonzero(pool.is_scene)
        self.single_ids = np.flatnonzero(~pool.is_scene)

    def _false_caption(self, i: int) -> int:
        while True:
            c = int(self.rng.integers(len(self.captions)))
            if not self.captions[c].constraint.matches(self.pool.attributes[i]):
                return c

    def _false_image(self, caption: int, near: list[int]) -> int:
        constraint = self.captions[caption].constraint
        for j in self.rng.permutation(near) if near else []:
            if not constraint.matches(self.pool.attributes[int(j)]):
                return int(j)
        while True:
            j = int(self.rng.integers(len(self.pool.attributes)))
            if not constraint.matches(self.pool.attributes[j]):
                return j

    def _pick(self, options: list[int]) -> int:
        return options[int(self.rng.integers(len(options)))]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (2B, 3, 64, 64) in [0, 1] and, when the convolutions are frozen, their cached
        feature maps (2B, 64, 192) [anchors, negative images]; text states (3B, L, 384) [positive,
        twin's or perturbed, mined], mask (3B, L); per anchor, whether its hard caption is the
        twin's (B,) and whether its negative image is the twin (B,)."""
        cfg, pool = self.cfg, self.pool
        n_scene = int(round(cfg.batch * cfg.scene_share))
        anchors = np.concatenate(
            [self.rng.choice(self.scene_ids, n_scene), self.rng.choice(self.single_ids, cfg.batch - n_scene)]
        )
        texts: list[list[int]] = [[], [], []]
        negatives = []
        twin_image = np.zeros(len(anchors), dtype=bool)
        for k, i in enumerate(anchors):
            i = int(i)
            p = self._pick(pool.positives[i])
            texts[0].append(p)
            texts[1].append(self._pick(pool.hard[i]) if pool.hard[i] else self._false_caption(i))
            texts[2].append(self._pick(pool.mined_texts[i]) if pool.mined_texts[i] else self._false_caption(i))
            if pool.is_scene[i] and self.rng.random() < cfg.twin_image_share:
                negatives.append(int(pool.twin[i]))
                twin_image[k] = True
            else:
                negatives.append(self._false_image(p, pool.mined_images[i]))
        ids = torch.from_numpy(np.concatenate([anchors, negatives]).astype(np.int64))
        # the stored JPEG view (a candidate) or the original (an image query), mirrored half of the time
        view = torch.from_numpy((self.rng.random(len(ids)) >= cfg.jpeg_share).astype(np.int64))
        flip = torch.from_numpy((self.rng.random(len(ids)) < 0.5).astype(np.int64))
        text = pad_states([self.states[c] for group in texts for c in group])
        twin_caption = torch.from_numpy(pool.is_scene[anchors])
        use_view = (view == 0).view(-1, 1, 1, 1)
        x = torch.where(use_view, pool.views[ids], pool.originals[ids]).float().div(255.0)
        images = torch.where(flip.bool().view(-1, 1, 1, 1), x.flip(3), x)
        features = pool.features[ids, view * 2 + flip] if pool.features is not None else None
        return images, features, text.states, text.mask, twin_caption, torch.from_numpy(twin_image)


def _region_features(model: CrossModel, cfg: CrossTrainConfig, t_start: float, log=print) -> dict[str, Any] | None:
    """Fill `model.features`: the image tower's convolutions ("tower"), or the region encoder
    ("attributes"), trained here (stage 1, its metrics returned) or taken from `cfg.regions_from`."""
    from safetensors.torch import load_file

    if cfg.model.regions == "tower":
        tower_state = load_file(str(WEIGHTS_DIR / "image.safetensors"))
        model.features.load_state_dict({k[9:]: v for k, v in tower_state.items() if k.startswith("features.")})
        return None
    if cfg.regions_from:
        source = Path(cfg.regions_from)
        if source.suffix == ".safetensors":
            state = {k[9:]: v for k, v in load_file(str(source)).items() if k.startswith("features.")}
        else:
            state = torch.load(source)
        model.features.load_state_dict(state)
        log(f"region encoder taken from {source}")
        return {"from": str(source)}
    # stage 1 may use at most half of the time guard
    encoder, metrics = train_regions(cfg.regions, log, deadline=t_start + cfg.minutes * 30)
    assert isinstance(model.features, RegionEncoder)
    model.features.load_state_dict(encoder.state_dict())
    model.features.requires_grad_(False)
    return metrics


def train(cfg: CrossTrainConfig, out: Path, log=print) -> dict[str, Any]:
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    pool, captions = build_pool(cfg, log)
    texts = [c.text for c in captions]
    t0 = time.monotonic()
    tokens = MiniLMTokens()
    tokens.load()
    states = cached_token_states(tokens, texts, Path(cfg.token_cache) if cfg.token_cache else None)
    pooled = torch.stack([s.float().mean(0) for s in states])  # MiniLM's own pooling: its sentence embedding
    text_vecs = F.normalize(pooled, dim=1).numpy()
    t_embed = time.monotonic() - t0
    log(f"{len(texts)} captions' MiniLM token states in {t_embed:.1f}s")
    mine_negatives(pool, captions, text_vecs, cfg, log)

    model = CrossModel(cfg.model)
    region_metrics = _region_features(model, cfg, t_start, log)
    tune_cnn = cfg.cnn_lr > 0
    if tune_cnn:
        model.features.requires_grad_(True)
    else:
        t0 = time.monotonic()
        pool.features = cache_features(model, pool)
        log(f"frozen feature maps of {len(pool.attributes)} images x 4 views in {time.monotonic() - t0:.1f}s")
    model.train()
    cnn = {id(p) for p in model.features.parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if p.ndim > 1 and id(p) not in cnn], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trained if p.ndim <= 1 and id(p) not in cnn], "weight_decay": 0.0},
    ]
    if tune_cnn:
        tuned = [p for p in trained if id(p) in cnn]
        groups.append({"params": tuned, "weight_decay": 0.0, "lr_scale": cfg.cnn_lr / cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    batcher = _Batcher(pool, captions, states, cfg)
    b = cfg.batch
    # pairs: (anchor, positive), (anchor, twin's/perturbed caption), (anchor, mined caption), (negative image, positive)
    image_index = torch.cat([torch.arange(b).repeat(3), torch.arange(b, 2 * b)])
    text_index = torch.cat([torch.arange(3 * b), torch.arange(b)])
    labels = torch.zeros(4 * b)
    labels[:b] = 1.0
    target = torch.zeros(b, dtype=torch.long)
    deadline = t_start + cfg.minutes * 60 - 150  # room for alpha and the evaluation
    t_loop = time.monotonic()
    losses, accs = [], []
    stopped_at = None
    for step in range(cfg.steps):
        if time.monotonic() > deadline:
            stopped_at = step
            log(f"WARNING: time guard reached at step {step} of {cfg.steps}")
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * g.get("lr_scale", 1.0) * _lr_factor(step, cfg.steps, cfg.warmup)
        images, features, s, m, twin_caption, twin_image = batcher.batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            if features is None:
                features = model.trainable_feature_map(images)
            regions = model.regions_from_features(features, images)
            logits = model.match(s, m, regions, text_index, image_index).float()
        by_text = torch.stack([logits[k * b : (k + 1) * b] for k in range(3)], dim=1)  # (b, 3): positive first
        by_image = torch.stack([logits[:b], logits[3 * b :]], dim=1)  # (b, 2)
        weights = torch.ones(4 * b)
        weights[b : 2 * b][twin_caption] = cfg.twin_weight
        weights[3 * b :][twin_image] = cfg.twin_weight
        bce = F.binary_cross_entropy_with_logits(logits, labels, weight=weights, pos_weight=torch.tensor(3.0))
        loss = bce + 0.5 * (F.cross_entropy(by_text, target) + F.cross_entropy(by_image, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        losses.append(loss.item())
        accs.append(float(((by_text.argmax(1) == 0).float().mean() + (by_image.argmax(1) == 0).float().mean()) / 2))
        if step % 50 == 0 or step == cfg.steps - 1:
            elapsed = time.monotonic() - t_loop
            log(f"step {step:5d}  loss {np.mean(losses[-50:]):.3f}  group acc {np.mean(accs[-50:]):.3f}  "
                f"{elapsed / (step + 1) * 1000:.0f} ms/step")  # fmt: skip
    t_train = time.monotonic() - t_loop
    steps_done = stopped_at if stopped_at is not None else cfg.steps
    model.eval()

    # alpha on a validation gallery of training swap classes, then the held-out figures
    space = MiniSpace()
    space.load()
    cross = MiniCrossEncoder.from_model(model, 1.0, tokens)
    t0 = time.monotonic()
    val = score_groups(space, cross, rerank_gallery(cfg.val_n, cfg.val_seed, "seen"), cfg.rerank_k)
    alpha, sweep = fit_alpha(val)
    val_figures = {g: {"first_stage": measure(s, None), "reranked": measure(s, alpha)} for g, s in val.items()}
    log(f"alpha {alpha} (validation, {time.monotonic() - t0:.1f}s): "
        + ", ".join(f"{g} S@1 {v['first_stage']['Success@1']:.2f}->{v['reranked']['Success@1']:.2f}"
                    for g, v in val_figures.items()))  # fmt: skip
    cross = MiniCrossEncoder.from_model(model, alpha, tokens)
    evaluation = evaluate(space, cross, cfg.eval_n, cfg.eval_seed, cfg.rerank_k, log=lambda s: None)
    log(format_evaluation(evaluation))

    record = {
        "model": "mini-cross",
        "trained": "in-house by xmodal (python -m xmodal.encoders.mini.train_cross), not pretrained",
        "config": {**asdict(cfg), "model": cfg.model.to_dict()},
        "regions": region_metrics,
        "seed": cfg.seed,
        "steps": steps_done,
        "stopped_early": stopped_at is not None,
        "repeat_with": _repeat_with(cfg),
        "alpha": alpha,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {
            "scene_images": int(pool.is_scene.sum()),
            "single_images": int((~pool.is_scene).sum()),
            "captions": len(captions),
        },
        "seconds": {
            "total": round(time.monotonic() - t_start, 1),
            "minilm_token_states": round(t_embed, 1),
            "training_loop": round(t_train, 1),
            "ms_per_step": round(1000 * t_train / max(1, steps_done), 1),
        },
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "final_group_accuracy": round(float(np.mean(accs[-50:])), 4),
        "machine": machine(),
        "metrics": {"validation": {"gallery": f"rerank_gallery({cfg.val_n}, {cfg.val_seed}, 'seen')",
                                   "groups": val_figures, "alpha_sweep": sweep},
                    "evaluation": evaluation},  # fmt: skip
    }
    return write_checkpoint(model, out, alpha, {"seed": str(cfg.seed), "steps": str(steps_done)}, record, log)


def _repeat_with(cfg: CrossTrainConfig) -> str:
    command = f"python -m xmodal.encoders.mini.train_cross --seed {cfg.seed} --steps {cfg.steps}"
    m = cfg.model
    if m.regions != "tower":
        command += f" --regions {m.regions} --region-steps {cfg.regions.steps}"
    if m.token_min:
        command += " --token-min"
    if m.maxsim:
        command += f" --maxsim {m.maxsim}"
    return command


def main(argv: list[str] | None = None) -> int:
    d = CrossTrainConfig()
    parser = argparse.ArgumentParser(prog="python -m xmodal.encoders.mini.train_cross", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--design", choices=("cross", "mentions"), default="cross",
                        help="cross: the transformer matcher (cross.py); mentions: attribute late interaction "
                        "(mentions.py, its own defaults: --steps 1500)")
    parser.add_argument("--steps", type=int, default=None, help=f"default {d.steps} (cross)")
    parser.add_argument("--minutes", type=float, default=d.minutes, help="guard: stop the loop early past this")
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--scenes", type=int, default=d.scenes, help="training scene twin pairs")
    parser.add_argument("--singles", type=int, default=d.singles)
    parser.add_argument("--captions", type=int, default=d.captions)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--cnn-lr", type=float, default=d.cnn_lr, help="the copied convolutions' (0: frozen)")
    parser.add_argument("--twin-weight", type=float, default=d.twin_weight)
    parser.add_argument("--twin-image-share", type=float, default=d.twin_image_share)
    parser.add_argument("--pixel-patches", action="store_true", help="regions also read their own 8x8 pixels")
    parser.add_argument("--regions", choices=("attributes", "tower"), default=d.model.regions,
                        help="region features: a CNN trained on per-region labels, or the image tower's maps")
    parser.add_argument("--token-min", action="store_true", help="add a soft minimum over per-word scores")
    parser.add_argument("--maxsim", type=int, default=d.model.maxsim, help="late-interaction width (0: none)")
    parser.add_argument("--region-steps", type=int, default=d.regions.steps, help="stage 1 steps")
    parser.add_argument("--regions-from", default=None, help="take the region encoder from this file (no stage 1)")
    parser.add_argument("--region-small-weight", type=float, default=d.regions.small_weight,
                        help="stage 1: loss weight of small objects' cells (over other object cells')")
    parser.add_argument("--region-form-input", action="store_true",
                        help="stage 1: shape and size read a colour-free silhouette (regions.RegionConfig.form_input)")
    parser.add_argument("--no-mirror", action="store_true",
                        help="mentions: read each candidate once, not also mirrored (half the region encoder's cost)")
    parser.add_argument("--region-gray-share", type=float, default=d.regions.gray_share,
                        help="stage 1: share of each batch shown in grayscale, its colour loss off")
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--val-n", type=int, default=d.val_n)
    parser.add_argument("--eval-n", type=int, default=d.eval_n)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (slower on the CPU at these sizes)")
    parser.add_argument("--token-cache", default=None, help="directory keeping MiniLM token states across runs")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    if args.design == "mentions":
        from xmodal.encoders.mini import mentions

        m = mentions.MentionsTrainConfig()
        mentions.train(
            mentions.MentionsTrainConfig(seed=args.seed, steps=args.steps or m.steps,
                                         model=replace(m.model, mirror=not args.no_mirror)), args.out,
            region_cfg=RegionTrainConfig(seed=args.seed, steps=args.region_steps, small_weight=args.region_small_weight,
                                         gray_share=args.region_gray_share, form_input=args.region_form_input),
            regions_from=args.regions_from, threads=args.threads, val=(args.val_n, d.val_seed), evaluation=(args.eval_n, d.eval_seed),
            rerank_k=d.rerank_k,
        )  # fmt: skip
        return 0
    cfg = CrossTrainConfig(
        seed=args.seed, steps=args.steps or d.steps, minutes=args.minutes, batch=args.batch, scenes=args.scenes,
        singles=args.singles, captions=args.captions, lr=args.lr, threads=args.threads, val_n=args.val_n,
        eval_n=args.eval_n, bf16=args.bf16, token_cache=args.token_cache, cnn_lr=args.cnn_lr,
        twin_weight=args.twin_weight, twin_image_share=args.twin_image_share,
        model=CrossConfig(pixel_patches=args.pixel_patches, regions=args.regions, token_min=args.token_min,
                          maxsim=args.maxsim),
        regions=RegionTrainConfig(seed=args.seed, steps=args.region_steps), regions_from=args.regions_from,
    )  # fmt: skip
    train(cfg, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
