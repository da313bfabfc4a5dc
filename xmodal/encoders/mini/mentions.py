"""The "mentions" design of the `mini` cross-encoder: structured late interaction in attribute space.

Trained in-house by `python -m xmodal.encoders.mini.train_cross --design mentions` on the synthetic
corpus; not pretrained. See docs/mini.md, *Cross-encoder*, "mentions".

The learned text-to-region matchers of cross.py did not generalise to held-out colour-shape
combinations; this design factorises the match instead, so that each held-out combination is made
of attributes that were each seen:

- image: the region encoder (regions.py, trained with per-cell shape, colour and size labels from
  the renderer's masks) gives each of the 8x8 cells a distribution over shape (background + 8),
  colour (background + 8) and size (background + 3); in the shipped one shape and size are read
  from the picture's colour-free silhouette (`RegionConfig.form_input`), so an unseen colour-shape
  pair is read like a seen one;
- text: small heads on the frozen MiniLM's contextual token states predict, per word piece, (a)
  whether it is part of an object word (a shape noun, "shape"/"object"/"thing", a colour or a size
  word) and (b) the shape, colour and size *of the object that word belongs to*, each with an
  "unspecified" class: the state of "circle" in "a red circle and a blue square" knows "red", so
  its colour head says red. The labels come from the corpus's own vocabulary and caption
  constraints (`token_labels`);
- score of (caption, image) = text term + `region_weight` * image term, both means of
  log(eps + match) (so at most log(1 + eps) each; one miss costs at most log(eps)):
  text term: over the caption's object words (weighted by (a)), how well the *one* best cell fits
  all three of the word's attributes at once, f_shape ** 0.15 * f_colour * f_size ** 0.15 with
  f_attr = p[unspecified] + sum_k p[k] * P_cell[k]: "red circle" needs a cell that is red *and* a
  circle, which is what binds (the small powers: a small shape's outline is a few pixels, its
  shape and size are read less surely than its colour);
  image term: over the colours the image shows (each weighted by its presence ** 4: stray faint
  readings do not count), how well the caption's best object word covers it: "a red circle" is
  not a full description of a red circle beside a blue square.
  Cells are read as drawn (and mirrored, averaged, with `mirror`) and sharpened (power 3, renormalised).

The reranker's adjustment is `alpha * score` (alpha fitted on a validation gallery of training
swap classes, evaluate_cross.fit_alpha), like cross.py's `alpha * logit`.

Limit: a closed attribute vocabulary (the corpus's shapes, colours and sizes); a reranker for the
`mini` space, not an open-vocabulary model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xmodal.encoders.mini import corpus
from xmodal.encoders.mini.regions import HEADS, RegionConfig, RegionEncoder

__all__ = [
    "DESIGN",
    "ATTRIBUTES",
    "MentionsConfig",
    "MentionsModel",
    "TokenLabels",
    "find_mentions",
    "token_labels",
]

DESIGN = "mentions"
ATTRIBUTES = ("shape", "colour", "size")  # regions.HEADS's order; class 0 is background / unspecified
IGNORE = -100  # F.cross_entropy's ignore_index: no attribute label for tokens that are not object words


@dataclass(frozen=True)
class MentionsConfig:
    text_dim: int = 384
    hidden: int = 192
    # self-attention layers over the caption's tokens before the heads: the word "star" in "a star
    # in rosy" must read its colour two words on
    context_layers: int = 2
    context_heads: int = 4
    eps: float = 0.05  # floor inside the logs: one unmatched word costs at most log(eps)
    top: int = 1  # a region's evidence is the mean of its best `top` cells
    region_weight: float = 1.0  # weight of the image term (does the caption cover every object?)
    # an object's weight in the image term is its presence to this power: faint stray evidence
    # (a few percent spread over many shape-colour pairs) must not outweigh the objects shown
    presence_power: float = 4.0
    # the text term's factors are f_shape ** power[0] * f_colour ** power[1] * f_size ** power[2]:
    # below 1 an uncertain cell (a small shape's outline is a few pixels) costs less
    attribute_power: tuple[float, float, float] = (0.15, 1.0, 0.15)
    # the score is at least this (None: log(eps) * (1 + region_weight) at worst): a misread cell of
    # a small object cannot sink the right image much further than a clear mismatch sinks a wrong one
    floor: float | None = None
    # each cell's probabilities are raised to this power and renormalised before matching: a small
    # shape's cells are often right but unsure (0.7 circle), which must not cost it against a big one
    sharpen: float = 3.0
    # what the image term checks the caption covers: each "colour" shown (read at 98.6% per cell,
    # small shapes included) or each "shape-colour" pair (a stray cell read as another shape counts)
    image_objects: str = "colour"
    # read each image as drawn and mirrored (the region encoder was trained on both) and average
    mirror: bool = True
    region: RegionConfig = RegionConfig()
    design: str = DESIGN

    def __post_init__(self) -> None:
        if self.design != DESIGN:
            raise ValueError(f"a MentionsConfig is design {DESIGN!r}, not {self.design!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> MentionsConfig:
        d = dict(d)
        if "region" in d:
            d["region"] = RegionConfig.from_dict(d["region"])
        if "attribute_power" in d:
            d["attribute_power"] = tuple(d["attribute_power"])
        return MentionsConfig(**d)


# --- labels from the corpus's vocabulary ----------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """A vocabulary phrase in a caption: its character span and what it names."""

    start: int
    end: int
    kind: str  # "shape", "colour", "size" or "generic" (shape/object/thing)
    value: str | None  # the attribute value (None for a generic noun)


def _vocabulary() -> dict[str, tuple[str, str | None]]:
    words: dict[str, tuple[str, str | None]] = {}
    for shape, forms in corpus._SHAPE_WORDS.items():
        for form in forms:
            for w in form:
                words[w] = ("shape", shape)
    for forms in corpus._GENERIC_SHAPE:
        for w in forms:
            words[w] = ("generic", None)
    for colour, ws in corpus._COLOUR_WORDS.items():
        for w in ws:
            words[w] = ("colour", colour)
    for size, ws in corpus._SIZE_WORDS.items():
        for w in ws:
            words[w] = ("size", size)
    return words


_VOCABULARY = _vocabulary()
# longest phrase first, so "hollow circle" is a ring, "light pink" a colour, "five-pointed star" one
# star; a word only counts whole ("yellow" in "lemon-yellow" is not a second colour word)
_PATTERN = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(_VOCABULARY, key=len, reverse=True)) + r")(?![\w-])"
)


def find_mentions(text: str) -> list[Mention]:
    """The corpus-vocabulary phrases of a caption, left to right, longest match first."""
    out = []
    for m in _PATTERN.finditer(text.lower()):
        kind, value = _VOCABULARY[m.group(1)]
        out.append(Mention(m.start(), m.end(), kind, value))
    return out


Object = tuple[str | None, str | None, str | None]  # (shape, colour, size); None: not stated


def _assign(caption: corpus.Caption, mentions: list[Mention]) -> list[Object | None]:
    """Each mention's object as the caption states it (None: not an object word, e.g. "two shapes:")."""
    constraint = caption.constraint
    if isinstance(constraint, corpus.SceneConstraint):
        objects = constraint.objects
        by_shape = {o[0]: o for o in objects}
        by_colour = {o[1]: o for o in objects}
        shape_at = [(m.start, by_shape[m.value]) for m in mentions if m.kind == "shape" and m.value in by_shape]
        out: list[Object | None] = []
        for m in mentions:
            if m.kind == "shape":
                out.append(by_shape.get(m.value))
            elif m.kind == "colour":
                out.append(by_colour.get(m.value))
            elif m.kind == "size" and shape_at:
                # a size word comes before its noun (corpus._object_phrase): the next shape word
                after = [o for start, o in shape_at if start > m.start]
                out.append(after[0] if after else shape_at[-1][1])
            else:  # "two shapes: ..." names both objects, not one
                out.append(None)
        return out
    allowed = constraint.allowed

    def stated(name: str) -> str | None:
        values = allowed.get(name)
        return next(iter(values)) if values is not None and len(values) == 1 else None

    one = (stated("shape"), stated("colour"), stated("size"))
    return [one for _ in mentions]


@dataclass
class TokenLabels:
    """Per word piece: is it part of an object word (0/1) and its object's class per attribute
    (0 unspecified, k: the vocabulary's k-th value; IGNORE where it is not an object word)."""

    word: list[int]
    shape: list[int]
    colour: list[int]
    size: list[int]


def _class(attribute: str, value: str | None) -> int:
    return 0 if value is None else HEADS[attribute].index(value) + 1


def token_labels(caption: corpus.Caption, offsets: Sequence[tuple[int, int]]) -> TokenLabels:
    """Labels of a caption's word pieces, given the tokenizer's character offsets ((0, 0): a special token)."""
    mentions = find_mentions(caption.text)
    objects = _assign(caption, mentions)
    labels = TokenLabels([], [], [], [])
    for start, end in offsets:
        hit = None
        if end > start:
            for m, obj in zip(mentions, objects, strict=True):
                if start < m.end and m.start < end and obj is not None:
                    hit = obj
                    break
        labels.word.append(int(hit is not None))
        for k, name in enumerate(ATTRIBUTES):
            getattr(labels, name).append(IGNORE if hit is None else _class(name, hit[k]))
    return labels


# --- the model ----------------------------------------------------------------------------------


def pair_rows(
    texts: Sequence[torch.Tensor | None],
    images: Sequence[torch.Tensor | None],
    text_index: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """The rows of scored pairs (text text_index[p], image image_index[p]) from per-text and
    per-image tensors (a None stays None); without indices pair i is (text i, image i), and a
    single text or a single image is shared by every pair (expanded, not copied). Both models'
    `match` take their pairs this way."""
    n_texts = len(next(t for t in texts if t is not None))
    n_images = len(next(t for t in images if t is not None))
    n = max(n_texts, n_images) if text_index is None else len(text_index)

    def rows(tensors: Sequence[torch.Tensor | None], index: torch.Tensor | None, count: int) -> list[torch.Tensor | None]:
        if index is not None:
            return [None if t is None else t[index] for t in tensors]
        if count == 1 and n > 1:
            return [None if t is None else t.expand(n, *t.shape[1:]) for t in tensors]
        return list(tensors)

    return rows(texts, text_index, n_texts), rows(images, image_index, n_images)


class MentionsModel(nn.Module):
    """(token states (n, L, 384), mask (n, L), images (n, 3, 64, 64) in [0, 1]) -> scores (n,).

    The same interface as cross.CrossModel (`regions`, `match`), so MiniCrossEncoder and
    evaluate_cross use either: here a region is a cell's probabilities (shape 9, colour 9, size 4).
    """

    def __init__(self, config: MentionsConfig = MentionsConfig()) -> None:
        super().__init__()
        self.config = config
        self.features = RegionEncoder(config.region)
        self.features.requires_grad_(False)
        self.text_in = nn.Sequential(nn.LayerNorm(config.text_dim), nn.Linear(config.text_dim, config.hidden))
        self.context = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.hidden, config.context_heads, 2 * config.hidden, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )  # fmt: skip
            for _ in range(config.context_layers)
        )
        self.text_out = nn.Sequential(nn.LayerNorm(config.hidden), nn.Linear(config.hidden, config.hidden), nn.GELU())
        self.word_head = nn.Linear(config.hidden, 1)
        self.attribute_heads = nn.ModuleDict(
            {name: nn.Linear(config.hidden, len(HEADS[name]) + 1) for name in ATTRIBUTES}
        )
        self.sizes = [len(HEADS[name]) + 1 for name in ATTRIBUTES]

    def train(self, mode: bool = True) -> MentionsModel:
        super().train(mode)
        self.features.eval()  # frozen, batch-norm statistics included
        return self

    def regions(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, 64, 64) -> (n, 64 cells, 9 + 9 + 4): each cell's shape, colour and size probabilities."""
        with torch.no_grad():
            _, logits = self.features(images)
            probs = torch.cat([logits[name].softmax(1) for name in ATTRIBUTES], 1)
            if self.config.mirror:
                _, logits = self.features(images.flip(3))
                probs = (probs + torch.cat([logits[name].softmax(1) for name in ATTRIBUTES], 1).flip(3)) / 2
            return probs.flatten(2).transpose(1, 2)

    def token_logits(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(n, L, 384), mask (n, L) -> (word logits (n, L), {attribute: (n, L, classes)}), class 0 = unspecified."""
        h = self.text_in(states)
        pad = ~mask
        for layer in self.context:
            h = layer(h, src_key_padding_mask=pad)
        h = self.text_out(h)
        return self.word_head(h).squeeze(-1), {name: head(h) for name, head in self.attribute_heads.items()}

    def mentions(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Object-word weights (n, L), zero on padding, and each attribute's probabilities."""
        word, logits = self.token_logits(states, mask)
        weight = torch.sigmoid(word) * mask.to(word.dtype)
        return weight, [logits[name].softmax(-1) for name in ATTRIBUTES]

    def score(self, weight: torch.Tensor, probs: list[torch.Tensor], regions: torch.Tensor) -> torch.Tensor:
        """Scores of pairs (text i, regions i): weight (n, L), probs [(n, L, c)], regions (n, 64, 22)."""
        c = self.config
        parts = torch.split(regions, self.sizes, dim=-1)
        if c.sharpen != 1.0:
            parts = tuple(F.normalize(part.clamp_min(1e-12) ** c.sharpen, p=1.0, dim=-1) for part in parts)
        # text term: each word against each cell, all three attributes at once
        fit = None
        for p, cell, power in zip(probs, parts, c.attribute_power, strict=True):
            f = p[..., :1] + torch.einsum("nlk,nrk->nlr", p[..., 1:], cell[..., 1:])  # (n, L, 64)
            if power != 1.0:
                f = f.clamp_min(0.0) ** power
            fit = f if fit is None else fit * f
        assert fit is not None
        best = fit.topk(c.top, dim=-1).values.mean(-1)  # (n, L)
        text_term = (weight * torch.log(c.eps + best)).sum(-1) / weight.sum(-1).clamp_min(1e-3)
        if not c.region_weight:
            return text_term if c.floor is None else text_term.clamp_min(c.floor)
        # image term: the objects the image shows, (shape, colour) pairs with their presence; sizes
        # are left to the text term (a size the caption states must fit; one it leaves out is free)
        shape, colour = parts[0][..., 1:], parts[1][..., 1:]
        ps, pc = ((p[..., :1] + p[..., 1:]) for p in probs[:2])  # a word's fit to each value
        if c.image_objects == "colour":
            joint, cover = colour, pc * weight.unsqueeze(-1)
        else:
            joint = torch.einsum("nrs,nrc->nrsc", shape, colour).flatten(2)  # (n, 64, 64)
            cover = torch.einsum("nls,nlc->nlsc", ps, pc).flatten(2) * weight.unsqueeze(-1)
        presence = joint.topk(c.top, dim=1).values.mean(1) ** c.presence_power
        covered = cover.amax(1)  # (n, 64): the caption's best word for each object
        image_term = (presence * torch.log(c.eps + covered)).sum(-1) / presence.sum(-1).clamp_min(1e-3)
        score = text_term + c.region_weight * image_term
        return score if c.floor is None else score.clamp_min(c.floor)

    def match(
        self,
        states: torch.Tensor,
        mask: torch.Tensor,
        regions: torch.Tensor,
        text_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores of pairs (text text_index[p], regions image_index[p]); without indices, pair i is
        (text i, image i), and a single text or a single image is shared by every pair."""
        weight, probs = self.mentions(states, mask)
        (weight, *probs), (regions,) = pair_rows([weight, *probs], [regions], text_index, image_index)
        return self.score(weight, probs, regions)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.match(states, mask, self.regions(images))


# --- training the text heads ----------------------------------------------------------------------


@dataclass
class MentionsTrainConfig:
    seed: int = 0
    steps: int = 1500
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    singles: int = 1500  # train-split single-object pictures' attributes, `captions` each
    scenes: int = 1500  # train-split binding scenes' attributes, `captions` each
    captions: int = 2
    val: int = 600  # "seen" split captions (half singles, half scenes) for token accuracy
    model: MentionsConfig = field(default_factory=MentionsConfig)


def training_captions(singles: int, scenes: int, captions: int, split: corpus.Split, seed: int) -> list[corpus.Caption]:
    """Caption variants of `split`'s single objects (every kind of mention: counts, sizes, generic
    nouns) and binding scenes (both word orders, sizes sometimes), fresh draws."""
    rng = np.random.default_rng((61, corpus.SPLITS.index(split), seed))
    out: list[corpus.Caption] = []
    for _ in range(singles):
        attrs = corpus.sample_attributes("image", split, rng)
        out += corpus.caption_variants("image", attrs, rng, captions)
    for _ in range(scenes):
        attrs = corpus.sample_scene(split, rng)
        out += corpus.scene_caption_variants(attrs, rng, captions)
    return out


def label_tensors(tokenizer: Any, captions: Sequence[corpus.Caption], max_tokens: int) -> list[torch.Tensor]:
    """Per caption a (tokens, 4) int64 tensor: word, shape, colour, size labels (token_labels)."""
    out = []
    for caption in captions:
        enc = tokenizer(caption.text, truncation=True, max_length=max_tokens, return_offsets_mapping=True)
        lab = token_labels(caption, enc["offset_mapping"])
        out.append(torch.tensor([lab.word, lab.shape, lab.colour, lab.size], dtype=torch.long).T.contiguous())
    return out


def _pad(rows: Sequence[torch.Tensor], fill: float) -> torch.Tensor:
    length = max(int(r.shape[0]) for r in rows)
    out = torch.full((len(rows), length, *rows[0].shape[1:]), fill, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def token_loss(model: MentionsModel, states: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the object-word head on every real token, cross-entropy of the
    attribute heads on the object words."""
    word, logits = model.token_logits(states, mask)
    loss = F.binary_cross_entropy_with_logits(word[mask], labels[..., 0][mask].float())
    for k, name in enumerate(ATTRIBUTES, start=1):
        loss = loss + F.cross_entropy(logits[name].flatten(0, 1), labels[..., k].flatten(), ignore_index=IGNORE)
    return loss


@torch.no_grad()
def token_accuracy(model: MentionsModel, states: list[torch.Tensor], labels: list[torch.Tensor]) -> dict[str, float]:
    """Object-word detection accuracy on every token, attribute accuracy on object words, and the
    share of object words with all three attributes right."""
    model.eval()
    right = {"word": 0, **{name: 0 for name in ATTRIBUTES}, "all_three": 0}
    tokens = words = 0
    for start in range(0, len(states), 256):
        s, y = _pad([r.float() for r in states[start : start + 256]], 0.0), _pad(labels[start : start + 256], IGNORE)
        mask = y[..., 0] != IGNORE
        word, logits = model.token_logits(s, mask)
        right["word"] += int((((word > 0).long() == y[..., 0]) & mask).sum())
        tokens += int(mask.sum())
        obj = y[..., 0] == 1
        ok = obj.clone()
        for k, name in enumerate(ATTRIBUTES, start=1):
            hit = logits[name].argmax(-1) == y[..., k]
            right[name] += int((hit & obj).sum())
            ok &= hit
        right["all_three"] += int(ok.sum())
        words += int(obj.sum())
    out = {"word_accuracy": round(right["word"] / max(1, tokens), 4)}
    out.update({f"{name}_accuracy": round(right[name] / max(1, words), 4) for name in (*ATTRIBUTES, "all_three")})
    out["object_words"] = words
    return out


def train_text_heads(
    model: MentionsModel, cfg: MentionsTrainConfig, tokens: Any, log: Any = print
) -> dict[str, Any]:
    """Stage 2: the token heads on frozen MiniLM states, `train` captions only; "seen" for validation."""
    import math
    import time

    from xmodal.encoders.mini.cross import CROSS_MAX_TOKENS

    t0 = time.monotonic()
    train_caps = training_captions(cfg.singles, cfg.scenes, cfg.captions, "train", cfg.seed)
    val_caps = training_captions(cfg.val // 4, cfg.val // 4, 2, "seen", cfg.seed + 1000)
    tokenizer = tokens._tokenizer
    train_labels = label_tensors(tokenizer, train_caps, CROSS_MAX_TOKENS)
    val_labels = label_tensors(tokenizer, val_caps, CROSS_MAX_TOKENS)
    train_states = tokens.encode_many([c.text for c in train_caps])
    val_states = tokens.encode_many([c.text for c in val_caps])
    for s, y in zip(train_states + val_states, train_labels + val_labels, strict=True):
        if s.shape[0] != y.shape[0]:
            raise RuntimeError("token states and labels disagree on a caption's word pieces")
    t_data = time.monotonic() - t0
    log(f"mentions: {len(train_caps)} training and {len(val_caps)} validation captions labelled and "
        f"encoded in {t_data:.1f}s")  # fmt: skip
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng((62, cfg.seed))
    losses: list[float] = []
    t_loop = time.monotonic()
    model.train()
    for step in range(cfg.steps):
        warm = 50
        progress = (step - warm) / max(1, cfg.steps - warm)
        factor = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * factor
        ids = rng.integers(0, len(train_caps), cfg.batch)
        s = _pad([train_states[i].float() for i in ids], 0.0)
        y = _pad([train_labels[i] for i in ids], IGNORE)
        loss = token_loss(model, s, y[..., 0] != IGNORE, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 250 == 0 or step == cfg.steps - 1:
            log(f"mentions step {step:5d}  loss {np.mean(losses[-100:]):.4f}  "
                f"{(time.monotonic() - t_loop) / (step + 1) * 1000:.1f} ms/step")  # fmt: skip
    model.eval()
    metrics = {
        "steps": cfg.steps,
        "captions": {"train": len(train_caps), "validation": len(val_caps)},
        "final_loss": round(float(np.mean(losses[-100:])), 5),
        "seconds": {"data": round(t_data, 1), "training_loop": round(time.monotonic() - t_loop, 1)},
        "validation_tokens": token_accuracy(model, val_states, val_labels),
    }
    log(f"mentions: validation tokens ('seen' split) {metrics['validation_tokens']}")
    return metrics


# --- the whole run (python -m xmodal.encoders.mini.train_cross --design mentions) ------------------


def train(
    cfg: MentionsTrainConfig,
    out: Any,
    region_cfg: Any = None,
    regions_from: str | None = None,
    threads: int = 1,
    val: tuple[int, int] = (60, 7),
    evaluation: tuple[int, int] = (100, 0),
    rerank_k: int = 50,
    log: Any = print,
) -> dict[str, Any]:
    """Stage 1 (the region encoder, regions.train_regions, or `regions_from`), stage 2 (the text
    heads), alpha on the validation gallery ("seen" swap classes), the held-out figures; writes
    `<out>/cross.safetensors` and `<out>/cross.json`."""
    import json
    import time
    from pathlib import Path

    from xmodal.encoders.mini.cross import MiniCrossEncoder, MiniLMTokens, write_checkpoint
    from xmodal.encoders.mini.evaluate_cross import (
        evaluate,
        fit_alpha,
        format_evaluation,
        measure,
        rerank_gallery,
        score_groups,
    )
    from xmodal.encoders.mini.regions import RegionTrainConfig, train_regions
    from xmodal.encoders.mini.space import MiniSpace
    from xmodal.encoders.mini.train import machine

    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(threads)
    region_cfg = region_cfg or RegionTrainConfig(seed=cfg.seed)
    if region_cfg.form_input != cfg.model.region.form_input:  # the model holds the encoder stage 1 trains
        cfg = replace(cfg, model=replace(cfg.model, region=replace(cfg.model.region, form_input=region_cfg.form_input)))
    model = MentionsModel(cfg.model)
    if regions_from:
        model.features.load_state_dict(torch.load(regions_from))
        region_metrics: dict[str, Any] = {"from": str(regions_from)}
        sidecar = Path(regions_from).with_suffix(".json")  # the stage-1 run's own figures, if kept
        if sidecar.is_file():
            region_metrics["stage_1"] = json.loads(sidecar.read_text())
        log(f"region encoder taken from {regions_from}")
    else:
        encoder, region_metrics = train_regions(region_cfg, log)
        model.features.load_state_dict(encoder.state_dict())
    model.features.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    tokens = MiniLMTokens()
    tokens.load()
    text_metrics = train_text_heads(model, cfg, tokens, log)
    model.eval()

    space = MiniSpace()
    space.load()
    t0 = time.monotonic()
    unscaled = MiniCrossEncoder.from_model(model, 1.0, tokens)
    scored = score_groups(space, unscaled, rerank_gallery(*val, "seen"), rerank_k)
    alpha, sweep = fit_alpha(scored)
    val_figures = {g: {"first_stage": measure(s, None), "reranked": measure(s, alpha)} for g, s in scored.items()}
    log(f"alpha {alpha} (validation, {time.monotonic() - t0:.1f}s): "
        + ", ".join(f"{g} S@1 {v['first_stage']['Success@1']:.2f}->{v['reranked']['Success@1']:.2f}"
                    for g, v in val_figures.items()))  # fmt: skip
    cross = MiniCrossEncoder.from_model(model, alpha, tokens)
    figures = evaluate(space, cross, *evaluation, rerank_k, log=lambda s: None)
    log(format_evaluation(figures))

    command = f"python -m xmodal.encoders.mini.train_cross --design mentions --seed {cfg.seed}"
    default_regions = RegionTrainConfig(seed=cfg.seed)
    if cfg.steps != MentionsTrainConfig().steps:
        command += f" --steps {cfg.steps}"
    if region_cfg.steps != default_regions.steps:
        command += f" --region-steps {region_cfg.steps}"
    if region_cfg.small_weight != default_regions.small_weight:
        command += f" --region-small-weight {region_cfg.small_weight:g}"
    if region_cfg.form_input:
        command += " --region-form-input"
    if region_cfg.gray_share != default_regions.gray_share:
        command += f" --region-gray-share {region_cfg.gray_share:g}"
    if not cfg.model.mirror:
        command += " --no-mirror"
    if val != (60, 7):
        command += f" --val-n {val[0]}"
    record = {
        "model": "mini-cross",
        "design": DESIGN,
        "trained": "in-house by xmodal (python -m xmodal.encoders.mini.train_cross --design mentions), not pretrained",
        "labels": "region cells: the renderer's coverage masks (regions.cell_labels); word pieces: the corpus's "
        "vocabulary and each caption's constraint (mentions.token_labels); train split only",
        "config": {**asdict(cfg), "regions": asdict(region_cfg), "threads": threads},
        "regions": region_metrics,
        "text_heads": text_metrics,
        "seed": cfg.seed,
        "repeat_with": command,
        "alpha": alpha,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": {"total": round(time.monotonic() - t_start, 1)},
        "machine": machine(),
        "metrics": {"validation": {"gallery": f"rerank_gallery({val[0]}, {val[1]}, 'seen')",
                                   "groups": val_figures, "alpha_sweep": sweep},
                    "evaluation": figures},  # fmt: skip
    }
    return write_checkpoint(model, out, alpha, {"seed": str(cfg.seed), "steps": str(cfg.steps)}, record, log)
