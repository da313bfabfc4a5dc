"""Train the `mini` space's image and audio towers LiT-style against the frozen MiniLM text tower.

    python -m xmodal.encoders.mini.train [--modality image|audio|both] [--minutes M] [--seed S] [--out DIR]

What one run of a tower does:
1. Caption bank: for every attribute combination of the training split, `--captions-per-combo`
   captions in random wordings stating random subsets of the attributes (corpus.caption_variants);
   the unique texts are embedded once by the frozen MiniLM tower.
2. Pool: `--pool` training items rendered once; augmentation (flips, shifts, colour/level jitter,
   blur, noise, gain) is applied on the fly to each batch.
3. Loss: symmetric InfoNCE with a learnable temperature (logit scale from 20, capped at 200) and
   several positives: a caption is a positive of every item it is true of. image->text ranks each
   item against the whole caption bank plus texts that are never positives (the other modality's
   training captions and unrelated everyday sentences, `--extra-negatives` of them sampled per
   step with a log(N/K) correction so the softmax stays an estimate of the one over all of them);
   text->image ranks each batch caption against the batch.
4. Budget: without `--steps`, the step count is fixed after timing the first steps so that the
   run, evaluation included, ends within `--minutes` (the tower's cosine schedule then completes);
   the JSON records it and `repeat_with` (`--steps N --seed S`, plus `--stop-at K` when a busier
   machine cut the run at the budget) repeats a run exactly (same machine and thread count).
5. Report: held-out combinations (all directions, R@k/P@k against chance), the same items in one
   mixed gallery with every modality's captions and unrelated sentences, unfiltered (with the
   other modality's tower as shipped in `--out`), cosine statistics of non-matching pairs, and
   foreign-made media hit@1 (evaluate.py), printed and written with the run's configuration next
   to the checkpoint. `python -m xmodal.encoders.mini.evaluate --write` refreshes the mixed-gallery
   figures of both JSONs once both towers are final.

Writes `<out>/<modality>.safetensors` (fp32 weights, tower config in its metadata) and
`<out>/<modality>.json`; `--out` defaults to the package's `weights/` directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F

from xmodal.encoders.base import Vectors, Waveform
from xmodal.encoders.mini import corpus
from xmodal.encoders.mini.evaluate import (
    cosine_statistics,
    evaluate_foreign,
    evaluate_heldout,
    evaluate_mixed,
    format_mixed,
    format_results,
    mixed_gallery,
    mixed_record,
)
from xmodal.encoders.mini.space import WEIGHTS_DIR
from xmodal.encoders.mini.text import MiniLMText
from xmodal.encoders.mini.towers import (
    AUDIO_SAMPLES,
    Tower,
    audio_batch,
    build_tower,
    encode_with,
    fit_samples,
    image_batch,
    load_tower,
    preprocess_image,
    save_tower,
)

Modality = Literal["image", "audio"]

LOGIT_SCALE_INIT = 20.0
LOGIT_SCALE_MAX = 200.0


@dataclass
class TrainConfig:
    modality: Modality
    minutes: float = 9.0
    seed: int = 0
    steps: int | None = None
    stop_at: int | None = None  # end after this many steps of a `steps`-long schedule (repeats a run cut by its budget)
    batch: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: int = 100
    pool: int = 12000
    captions_per_combo: int = 16
    eval_n: int = 300
    eval_seed: int = 0
    attribute_loss: float = 1.0  # weight of the attribute classifiers' loss (bottlenecked towers)
    # texts that are never positives, in the item -> bank softmax: the other modality's training
    # captions and unrelated sentences (what a mixed index holds next to this tower's items)
    cross_negatives: bool = True
    unrelated: int = 6000  # unrelated sentences drawn (train split; duplicates dropped)
    extra_negatives: int = 4096  # of those sampled per step (with a log(N/K) correction); 0: all, every step
    extra_weight: float = 1.0  # weight of the extra negatives in the softmax's denominator
    bf16: bool = True
    threads: int = 2
    device: str = "cpu"
    tower: dict[str, Any] = field(default_factory=dict)
    embedding_cache: str | None = None  # directory for caption embeddings reused across runs

    @staticmethod
    def defaults(modality: Modality) -> TrainConfig:
        if modality == "image":
            return TrainConfig(modality)
        heads = [len(values) for values in corpus.AUDIO_ATTRIBUTES.values()]
        # pitch is read where it is (frequency bands); everything else from features pooled over
        # frequency, which a pitch shift (a translation on the log-frequency axis) leaves alone
        inputs = ["bands" if name == "pitch" else "global" for name in corpus.AUDIO_ATTRIBUTES]
        tower = {
            "heads": heads,
            "head_inputs": inputs,
            "bins_per_octave": 12,
            "band_channels": 8,
            "pools": [[2, 1], [2, 2], [2, 2], [1, 1]],
        }
        # all negative-only texts every step: on the same 2710 steps this beat 4096 sampled ones
        # (held-out audio->text R@1 0.927 vs 0.913 in a mixed gallery, foreign sounds 9/9 vs 7/9)
        # for 25 ms more per step
        return TrainConfig(modality, batch=64, pool=6000, captions_per_combo=40, tower=tower, extra_negatives=0)


# --- data ---------------------------------------------------------------------------------------


def training_combos(modality: Modality) -> list[dict[str, Any]]:
    """Every attribute combination the training split can draw (held-out pairs excluded)."""
    held = corpus.heldout_pairs(modality)
    out: list[dict[str, Any]] = []
    if modality == "image":
        for shape in corpus.SHAPES:
            for colour in corpus.COLOURS:
                if (shape, colour) in held:
                    continue
                for count in corpus.COUNTS:
                    for size in corpus.SIZES[:2] if count == 3 else corpus.SIZES:
                        for bg in corpus.BACKGROUNDS:
                            out.append(
                                {"shape": shape, "colour": colour, "size": size, "count": count, "background": bg}
                            )
        return out
    for source in corpus.SOURCES:
        pitches: tuple[Any, ...] = corpus.PITCHES if source in corpus.TIMBRES else (None,)
        contours: tuple[Any, ...] = corpus.CONTOURS if source in corpus.TIMBRES else (None,)
        for pitch in pitches:
            if (source, pitch) in held:
                continue
            for contour in contours:
                for reps in corpus.REPETITIONS:
                    for loud in corpus.LOUDNESS:
                        out.append(
                            {
                                "source": source,
                                "pitch": pitch,
                                "contour": contour,
                                "repetitions": reps,
                                "loudness": loud,
                            }
                        )
    return out


def _codes(modality: Modality, attributes: dict[str, Any]) -> list[int]:
    return [values.index(attributes[name]) for name, values in corpus.ATTRIBUTES[modality].items()]


@dataclass
class CaptionBank:
    texts: list[str]
    positives: torch.Tensor  # (combos, captions) bool: combo satisfies caption
    combo_captions: list[list[int]]  # captions written for each combo
    embeddings: torch.Tensor | None = None  # (captions, 384) float32, unit rows


def build_bank(modality: Modality, combos: list[dict[str, Any]], per_combo: int, seed: int) -> CaptionBank:
    rng = np.random.default_rng((seed, 99, 1 if modality == "image" else 2))
    index: dict[str, int] = {}
    masks: list[list[int]] = []
    combo_captions: list[list[int]] = []
    attrs = corpus.ATTRIBUTES[modality]
    for combo in combos:
        mine = []
        for cap in corpus.caption_variants(modality, combo, rng, per_combo):
            if cap.text not in index:
                index[cap.text] = len(masks)
                mask = []
                for name, values in attrs.items():
                    allowed = cap.constraint.allowed.get(name)
                    bits = sum(1 << i for i, v in enumerate(values) if allowed is None or v in allowed)
                    mask.append(bits)
                masks.append(mask)
            mine.append(index[cap.text])
        combo_captions.append(sorted(set(mine)))
    codes = torch.tensor([_codes(modality, c) for c in combos])  # (combos, attrs)
    bits = torch.tensor(masks)  # (captions, attrs)
    positives = torch.ones(len(combos), len(masks), dtype=torch.bool)
    for a in range(codes.shape[1]):
        positives &= ((bits[None, :, a] >> codes[:, a, None]) & 1).bool()
    for c, caps in enumerate(combo_captions):  # a combo's own captions are true of it
        assert bool(positives[c, caps].all()), combos[c]
    return CaptionBank(list(index), positives, combo_captions)


@dataclass
class Pool:
    media: torch.Tensor  # images (n, 3, 64, 64) uint8 | audio (n, 32000) float16
    combo: torch.Tensor  # (n,) combo index of each item
    extent: torch.Tensor | None = None  # audio: (n, 2) first/last non-silent sample after fitting


def build_pool(modality: Modality, n: int, seed: int, combos: list[dict[str, Any]]) -> Pool:
    lookup = {tuple(_codes(modality, c)): i for i, c in enumerate(combos)}
    make = corpus.image_items if modality == "image" else corpus.sound_items
    items = make(n, "train", seed)
    combo = torch.tensor([lookup[tuple(_codes(modality, it.attributes))] for it in items])
    if modality == "image":
        arr = np.stack([preprocess_image(it.media) for it in items])
        return Pool(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), combo)
    fitted = np.stack([fit_samples(it.media.samples) for it in items])
    nz = np.abs(fitted) > 0
    first = nz.argmax(axis=1)
    last = AUDIO_SAMPLES - 1 - nz[:, ::-1].argmax(axis=1)
    return Pool(torch.from_numpy(fitted.astype(np.float16)), combo, torch.from_numpy(np.stack([first, last], 1)))


# --- augmentation -------------------------------------------------------------------------------


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g, device=g.device)


def augment_images(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """uint8 (b, 3, 64, 64) -> float in [0, 1], jittered in ways that keep every attribute.

    One affine resampling per batch (mirror, shift of up to 4 px, scale within 6%, edges
    replicated), then contrast/brightness jitter, a 3x3 blur for a quarter of the batch, pixel noise.
    """
    b, _, h, w = x.shape
    x = x.float() / 255.0
    flip = torch.where(_rand(g, b) < 0.5, -1.0, 1.0)
    scale = 1 + (_rand(g, b) - 0.5) * 0.12
    shift = (_rand(g, b, 2) - 0.5) * (2 * 4 * 2 / w)  # +-4 px in [-1, 1] coordinates
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = flip * scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1 + (_rand(g, b, 1, 1, 1) - 0.5) * 0.3
    bright = (_rand(g, b, 1, 1, 1) - 0.5) * 0.1
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + bright
    blur = _rand(g, b) < 0.25
    x = torch.where(blur[:, None, None, None], F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
    sigma = _rand(g, b, 1, 1, 1) * 0.03
    x = x + sigma * torch.randn(x.shape, generator=g, device=g.device)
    return x.clamp_(0, 1)


def augment_audio(x: torch.Tensor, extent: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """float16 (b, 32000) -> float32, shifted within its silence, +-3 dB, faint noise."""
    b, n = x.shape
    x = x.float()
    lo = -extent[:, 0]
    hi = n - 1 - extent[:, 1]
    shift = lo + (_rand(g, b) * (hi - lo + 1).float()).long()
    index = (torch.arange(n, device=x.device)[None, :] - shift[:, None]) % n
    x = torch.gather(x, 1, index)
    gain = 10 ** ((_rand(g, b, 1) - 0.5) * 6 / 20)
    noise = (_rand(g, b, 1) < 0.5) * _rand(g, b, 1) * 0.002
    return x * gain + noise * torch.randn(x.shape, generator=g, device=g.device)


# --- training -----------------------------------------------------------------------------------


def embed_texts(text: MiniLMText, texts: list[str], cache: Path | None = None) -> Vectors:
    """MiniLM embeddings of many texts, shortest first (less padding: about 2.5x faster), in input order.

    With `cache`, the result is kept in `cache/<sha256 of the texts>.npy` and read back next time
    (for repeated experiments; the frozen text tower gives the same vectors every time).
    """
    path = None
    if cache is not None:
        import hashlib

        path = cache / (hashlib.sha256("\n".join(texts).encode()).hexdigest() + ".npy")
        if path.is_file():
            return np.load(path)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), text.dim), dtype=np.float32)
    out[order] = text.encode([texts[i] for i in order])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


def negative_texts(cfg: TrainConfig, exclude: set[str]) -> list[str]:
    """Texts that are never positives of this tower: the other modality's training captions (the
    caption bank its own tower trains on) and unrelated sentences, unique, none of `exclude`."""
    texts: list[str] = []
    if cfg.cross_negatives:
        other: Modality = "audio" if cfg.modality == "image" else "image"
        per_combo = TrainConfig.defaults(other).captions_per_combo
        texts += build_bank(other, training_combos(other), per_combo, cfg.seed).texts
    if cfg.unrelated:
        texts += corpus.unrelated_sentences(cfg.unrelated, "train", cfg.seed)
    seen = set(exclude)
    out = []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


class _Probe:
    """An evaluation view of towers (one being trained; the other as shipped): the calls MiniSpace answers."""

    def __init__(self, text: MiniLMText, towers: dict[str, Tower]) -> None:
        self.text, self.towers = text, towers

    def encode_texts(self, texts: list[str]) -> Vectors:
        return self.text.encode(texts)

    def encode_images(self, images: list[Any]) -> Vectors:
        return encode_with(self.towers["image"], image_batch(images))

    def encode_audio(self, clips: list[Waveform]) -> Vectors:
        return encode_with(self.towers["audio"], audio_batch(clips))


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def towers_files(out: Path, towers: dict[str, Tower], trained: str) -> dict[str, str]:
    """Which checkpoint each modality's figures came from (the trained one is being written now)."""
    return {
        m: ("this run" if m == trained else f"{out / f'{m}.safetensors'} sha256 {_sha256(out / f'{m}.safetensors')}")
        for m in towers
    }


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
    }


def train_tower(cfg: TrainConfig, text: MiniLMText, out: Path, log=print) -> dict[str, Any]:
    t_start = time.monotonic()
    deadline = t_start + cfg.minutes * 60
    modality = cfg.modality
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    combos = training_combos(modality)
    bank = build_bank(modality, combos, cfg.captions_per_combo, cfg.seed)
    extra = negative_texts(cfg, set(bank.texts))
    t0 = time.monotonic()
    embedded = torch.from_numpy(
        embed_texts(text, bank.texts + extra, Path(cfg.embedding_cache) if cfg.embedding_cache else None)
    ).to(dev)
    bank.embeddings, extra_emb = embedded[: len(bank.texts)], embedded[len(bank.texts) :]
    t_embed = time.monotonic() - t0
    log(
        f"[{modality}] {len(combos)} training combinations, {len(bank.texts)} unique captions "
        f"+ {len(extra)} negative-only texts embedded in {t_embed:.1f}s"
    )
    n_extra = len(extra)
    sample_extra = 0 < cfg.extra_negatives < n_extra
    # log(N/K): a uniform sample of K of the N extra negatives stands for all of them in the denominator
    extra_bias = math.log(cfg.extra_weight) + (math.log(n_extra / cfg.extra_negatives) if sample_extra else 0.0)
    t0 = time.monotonic()
    pool = build_pool(modality, cfg.pool, cfg.seed, combos)
    log(f"[{modality}] pool of {cfg.pool} items rendered in {time.monotonic() - t0:.1f}s")

    pool = Pool(pool.media.to(dev), pool.combo.to(dev), None if pool.extent is None else pool.extent.to(dev))
    tower = build_tower(modality, cfg.tower or None).to(dev)
    tower.train()
    log_scale = torch.nn.Parameter(torch.tensor(math.log(LOGIT_SCALE_INIT), device=dev))
    decay = [p for n, p in tower.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in tower.named_parameters() if p.ndim <= 1] + [log_scale]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    emb = bank.embeddings
    combo_codes = torch.tensor([_codes(modality, c) for c in combos], device=dev)
    bottleneck = bool(getattr(tower.config, "heads", ()))
    positives = bank.positives.to(dev)
    combo_caps = bank.combo_captions
    n_caps = torch.tensor([len(c) for c in combo_caps], device=dev)
    cap_table = torch.full((len(combo_caps), int(n_caps.max())), -1, dtype=torch.long, device=dev)
    for i, caps in enumerate(combo_caps):
        cap_table[i, : len(caps)] = torch.tensor(caps, device=dev)

    reserve = 30.0 if modality == "image" else 45.0  # evaluation and saving
    total = cfg.steps
    # timed over steps 5..60, inside the warmup (whose learning rates do not depend on the total),
    # so `--steps <total>` repeats the run exactly
    calibrate_at = (5, min(60, cfg.warmup))
    t_cal = 0.0
    step = 0
    losses: list[float] = []
    t_train = time.monotonic()
    stopped_early = False
    while (total is None or step < total) and (cfg.stop_at is None or step < cfg.stop_at):
        if total is None and step == calibrate_at[0]:
            t_cal = time.monotonic()
        if total is None and step == calibrate_at[1]:
            per_step = (time.monotonic() - t_cal) / (calibrate_at[1] - calibrate_at[0])
            # 5% spare: logging and a neighbour's load make later steps a little slower than these
            total = max(step + 1, int(0.95 * (deadline - time.monotonic() - reserve) / per_step) + step)
            log(f"[{modality}] {per_step * 1000:.0f} ms/step -> {total} steps within {cfg.minutes:g} min")
        if cfg.steps is None and step > calibrate_at[1] and time.monotonic() > deadline - reserve:
            log(
                f"[{modality}] WARNING: time budget reached at step {step} of {total} (machine busier than at calibration)"
            )
            stopped_early = True
            break
        lr = _lr_at(step, total or 10**9, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.from_numpy(rng.integers(0, len(pool.combo), cfg.batch)).to(dev)
        combo = pool.combo[idx]
        pick = (_rand(gen, cfg.batch) * n_caps[combo]).long()
        caps = cap_table[combo, pick]
        if modality == "image":
            x = augment_images(pool.media[idx], gen)
        else:
            assert pool.extent is not None
            x = augment_audio(pool.media[idx], pool.extent[idx], gen)
        attr_loss = torch.zeros((), device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            if bottleneck:
                y, groups = tower.forward_with_logits(x)
                labels = combo_codes[combo]
                attr_loss = sum(F.cross_entropy(g.float(), labels[:, a]) for a, g in enumerate(groups)) / len(groups)
            else:
                y = tower(x)
        f = F.normalize(y.float(), dim=-1)
        scale = log_scale.clamp(max=math.log(LOGIT_SCALE_MAX)).exp()
        # item -> every caption in the bank; the target is spread over the captions true of the item
        pos_ib = positives[combo].float()
        logits_ib = scale * f @ emb.T
        if n_extra:
            if sample_extra:
                negs = extra_emb[torch.randint(n_extra, (cfg.extra_negatives,), generator=gen, device=dev)]
            else:
                negs = extra_emb
            logits_ib = torch.cat([logits_ib, scale * f @ negs.T + extra_bias], dim=1)
        logp_ib = F.log_softmax(logits_ib, dim=1)[:, : emb.shape[0]]
        loss_i = -(pos_ib * logp_ib).sum(1).div(pos_ib.sum(1)).mean()
        # batch caption -> batch items; the target is spread over the items the caption is true of
        pos_ti = positives[combo][:, caps].T.float()
        logp_ti = F.log_softmax(scale * emb[caps] @ f.T, dim=1)
        loss_t = -(pos_ti * logp_ti).sum(1).div(pos_ti.sum(1)).mean()
        loss = 0.5 * (loss_i + loss_t) + cfg.attribute_loss * attr_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if total and (step % max(1, total // 10) == 0 or step == total):
            recent = float(np.mean(losses[-50:]))
            log(
                f"[{modality}] step {step}/{total} loss {recent:.3f} scale {float(scale):.1f} "
                f"lr {lr:.2e} {time.monotonic() - t_start:.0f}s"
            )
    t_loop = time.monotonic() - t_train

    tower.eval()
    t0 = time.monotonic()
    other: Modality = "audio" if modality == "image" else "image"
    towers: dict[str, Tower] = {modality: tower}
    other_path = out / f"{other}.safetensors"
    if other_path.is_file():
        try:
            towers[other] = load_tower(other_path, dev)
        except (OSError, RuntimeError, ValueError, KeyError) as e:  # an unreadable or incompatible file
            log(f"[{modality}] the mixed gallery leaves out {other}: cannot load {other_path}: {e}")
    probe = _Probe(text, towers)
    heldout = evaluate_heldout(probe, modality, n=cfg.eval_n, seed=cfg.eval_seed)
    foreign = evaluate_foreign(probe, modality)
    present: list[Modality] = [m for m in ("image", "audio") if m in towers]  # type: ignore[misc]
    gallery = mixed_gallery(cfg.eval_n, cfg.eval_seed, present)
    mixed = evaluate_mixed(probe, gallery=gallery)
    cosines = cosine_statistics(probe, gallery=gallery)
    t_eval = time.monotonic() - t0
    elapsed = time.monotonic() - t_start
    log(f"[{modality}] held-out combinations ({cfg.eval_n} held-out + {cfg.eval_n} seen items), after {step} steps:")
    log(format_results(heldout, foreign))
    log(
        f"[{modality}] one mixed gallery, unfiltered ({' + '.join(present)} items, all their captions, "
        f"{cfg.eval_n} unrelated sentences; R@k = Success@k; {other} tower: "
        f"{'as shipped in ' + str(other_path) if other in towers else 'none'}):"
    )
    log(format_mixed(mixed, heldout))
    log(f"[{modality}] total {elapsed:.0f}s (training loop {t_loop:.0f}s, evaluation {t_eval:.0f}s)")

    info = machine()
    info["device"] = str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    record = {
        "modality": modality,
        "command": " ".join(["python -m xmodal.encoders.mini.train", *sys.argv[1:]]),
        "train_config": asdict(cfg),
        "tower_config": tower.config.to_dict(),
        "steps": step,
        "schedule_steps": total,
        "stopped_early": stopped_early,
        "repeat_with": f"--modality {modality} --seed {cfg.seed} --steps {total}"
        + (f" --stop-at {step}" if step != total else ""),
        "logit_scale": float(log_scale.clamp(max=math.log(LOGIT_SCALE_MAX)).exp()),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "attributes": list(corpus.ATTRIBUTES[modality]),
        "training_combinations": len(combos),
        "unique_captions": len(bank.texts),
        "negative_only_texts": n_extra,
        "heldout_pairs": sorted(list(p) for p in corpus.heldout_pairs(modality)),
        "seconds": {
            "total": round(elapsed, 1),
            "caption_embedding": round(t_embed, 1),
            "loop": round(t_loop, 1),
            "eval": round(t_eval, 1),
        },
        "machine": info,
        "metrics": {
            "heldout": {k: v.to_dict() for k, v in heldout.items()},
            "foreign": foreign.to_dict(),
            "mixed_gallery": mixed_record(mixed, gallery, towers_files(out, towers, modality)),
            "cosine_statistics": cosines,
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    save_tower(tower, out / f"{modality}.safetensors", {"steps": str(step), "seed": str(cfg.seed)})
    (out / f"{modality}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    log(f"[{modality}] wrote {out / f'{modality}.safetensors'} and {out / f'{modality}.json'}")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.encoders.mini.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", choices=["image", "audio", "both"], default="both")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget per tower, evaluation included")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="directory for <modality>.safetensors/.json")
    p.add_argument("--steps", type=int, default=None, help="fixed step count (repeats a run); default: fit --minutes")
    p.add_argument(
        "--stop-at", type=int, default=None, help="end after this many of the --steps (a run cut short by its budget)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--pool", type=int, default=None, help="training items rendered once")
    p.add_argument("--captions-per-combo", type=int, default=None)
    p.add_argument("--eval-n", type=int, default=None, help="held-out items in the evaluation gallery (as many seen)")
    p.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    p.add_argument(
        "--extra-negatives", type=int, default=None, help="negative-only texts sampled per step (0: all of them)"
    )
    p.add_argument("--extra-weight", type=float, default=None, help="weight of the negative-only texts")
    p.add_argument("--embedding-cache", default=None, help="directory to keep caption embeddings in across runs")
    p.add_argument("--unrelated", type=int, default=None, help="unrelated sentences drawn as negatives")
    p.add_argument(
        "--no-cross-negatives", action="store_true", help="leave the other modality's captions out of the bank"
    )
    p.add_argument("--no-bf16", action="store_true", help="train in float32 (bf16 autocast is the default on CPU)")
    p.add_argument(
        "--tower",
        type=json.loads,
        default=None,
        help="tower config overrides as JSON, e.g. '{\"widths\": [32, 64, 128]}'",
    )
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    text = MiniLMText(batch_size=256)
    text.load()
    modalities: list[Modality] = ["image", "audio"] if args.modality == "both" else [args.modality]
    for modality in modalities:
        cfg = TrainConfig.defaults(modality)
        cfg.minutes, cfg.seed, cfg.steps, cfg.threads = args.minutes, args.seed, args.steps, args.threads
        cfg.stop_at = args.stop_at
        cfg.bf16, cfg.device = not args.no_bf16, args.device
        cfg.cross_negatives = not args.no_cross_negatives
        for name in (
            "batch",
            "lr",
            "pool",
            "captions_per_combo",
            "eval_n",
            "extra_negatives",
            "extra_weight",
            "unrelated",
            "embedding_cache",
        ):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
        if args.tower:
            cfg.tower = {**cfg.tower, **args.tower}
        train_tower(cfg, text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
