"""One ranking across result modalities and spaces: calibrated scores.

Raw cosines are not comparable across modalities: text–text pairs of MiniLM sit near 0.3–0.8,
text–image pairs of any two-tower model near 0.1–0.3 even when right (the modality gap; CLIP and
CLAP have it too), and scores of different spaces differ again. Merged by raw cosine, every
caption outranks every image. So each (space, result modality) is searched on its own and each
hit's cosine is calibrated against the same query's cosines with a background sample of that
space's items of that modality:

    score = (cosine - q95(background)) / max(std(background), SCALE_FLOOR)

— how many standard deviations the hit stands above the 95th percentile of what this query scores
against items of the hit's modality. The reference is the upper tail, not the median, because a
modality's nearest competitors are what a hit must beat: a text query about a sound scores every
sound caption well above the image captions, and against the median all of them would look like
matches and crowd out the sound itself; against the upper tail only a caption that stands out of
its cluster does. The spread is the standard deviation, so a modality whose cosines are spread
wide (dense clusters of similar captions) needs a larger margin than one where the right item
stands alone. A right image and a right caption both stand above their modality's tail, so they
interleave by how good they are *for their modality*; `SCALE_FLOOR` keeps a uniform background
from inflating scores.

The background's best item is left out of the reference: in a small gallery the sample holds the
hits themselves, and the best hit must not be hidden by its own cosine sitting in the tail. (One
item, the same for every hit of the list, so the score stays an affine function of the cosine.)

A small background says little, so its spread is shrunk towards a prior spread of unrelated unit
vectors (`PRIOR_SCALE`) with the weight of `PRIOR_ITEMS` items: w = n / (n + PRIOR_ITEMS), scale =
w·std + (1 − w)·PRIOR_SCALE (at 36 items the sample has 90 % of the weight; at 2 items, a third).
A modality with a single item has no competitor to measure against: its center is 0, the cosine
of unrelated unit vectors. Below about 20 items of a modality, scores lean on the prior and are rough.

Reply order: the best items of every modality first. Calibrated scores make modalities comparable
but not equally reliable — in a gallery of a thousand captions, MiniLM finds dozens of captions
nearly as close as the right one, and by score alone they would fill the first page and push the
right image and sound out of it. So hits are placed in rounds: the best hit of every (space,
modality) list, then every list's second best, and so on, by score within a round (with two spaces
that both hold images, a round has two image places); only hits that stand out of their modality
(score > 0: above the 95th percentile of its other items) take part, and the rest follow by score.
A list with nothing that stands out adds nothing to the rounds.

Reranked lists (rerank.py): a list the cross-encoder rescored carries one adjustment per hit, and
its hits are in the reranked order; a hit's score is its calibrated score plus its adjustment, and
`first_stage_score` keeps the calibrated score alone. The rounds then use the reranked ranks and
scores: a hit stands out when its final score is above 0.

Properties callers rely on (docs/protocol.md): within one (space, modality) list that was not
reranked the score is an increasing affine function of the cosine, so order within a modality is
the engine's order (in a reranked list, order is by final score); an
item found in several spaces takes its best score (and the rank it has in that space's list); ties
keep the order of the lists (spaces in request order, modalities text, image, audio) and, within a
list, the engine's order (score, id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from xmodal.indexer.base import Hit
from xmodal.schema import SearchHit

__all__ = ["CENTER_QUANTILE", "PRIOR_ITEMS", "PRIOR_SCALE", "SCALE_FLOOR", "Calibration", "RankedList", "calibration", "fuse"]

SCALE_FLOOR = 0.02  # cosine units: below the spread of unrelated pairs in every space we ship
PRIOR_SCALE = 0.1  # spread of cosines between unrelated items, about what MiniLM, CLIP and CLAP show
PRIOR_ITEMS = 4
CENTER_QUANTILE = 0.95
_AFTER_THE_ROUNDS = 1 << 30


@dataclass(frozen=True)
class Calibration:
    """Maps one query's cosines against one (space, modality) onto the shared score scale."""

    center: float
    scale: float

    def __call__(self, cosine: float) -> float:
        return (cosine - self.center) / self.scale


def calibration(query: NDArray[np.float32], background: NDArray[np.float32]) -> Calibration:
    """The calibration of `query` against `background`, an (m, dim) sample of unit vectors."""
    cosines = np.sort(background @ np.asarray(query, dtype=np.float32)).astype(np.float64)
    if len(cosines) == 0:
        return Calibration(0.0, PRIOR_SCALE)
    others = cosines[:-1]  # without the best item: it may be the hit itself
    center = float(np.quantile(others, CENTER_QUANTILE)) if len(others) else 0.0
    weight = len(cosines) / (len(cosines) + PRIOR_ITEMS)
    spread = max(float(np.std(cosines)), SCALE_FLOOR)
    return Calibration(center, weight * spread + (1 - weight) * PRIOR_SCALE)


@dataclass(frozen=True)
class RankedList:
    """One (space, result modality) search: its hits, best first, and their calibration."""

    space: str
    modality: str
    calibration: Calibration
    hits: Sequence[Hit]
    # Reranked lists only: what the cross-encoder adds to each hit's calibrated score (aligned with hits).
    adjustments: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.adjustments is not None and len(self.adjustments) != len(self.hits):
            raise ValueError(f"{len(self.adjustments)} adjustments for {len(self.hits)} hits")


def fuse(lists: Sequence[RankedList], k: int) -> list[SearchHit]:
    """The `k` best items over `lists`, in reply order (module docstring)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    # item id -> (score, first-seen order, hit, rank in the list that gave the score)
    best: dict[str, tuple[float, int, SearchHit, int]] = {}
    for ranked in lists:
        for rank, hit in enumerate(ranked.hits):
            first_stage = ranked.calibration(hit.score)
            reranked = ranked.adjustments is not None
            score = first_stage + float(ranked.adjustments[rank]) if ranked.adjustments is not None else first_stage
            seen = best.get(hit.item_id)
            if seen is not None and seen[0] >= score:
                continue
            order = seen[1] if seen is not None else len(best)
            best[hit.item_id] = (
                score,
                order,
                SearchHit(
                    id=hit.item_id,
                    score=score,
                    cosine=hit.score,
                    space=ranked.space,
                    modality=hit.modality,
                    metadata=hit.metadata,
                    thumbnail=hit.thumbnail,
                    first_stage_score=first_stage if reranked else None,
                ),
                rank,
            )
    ranked_hits = sorted(best.values(), key=_reply_order)
    return [hit for _, _, hit, _ in ranked_hits[:k]]


def _reply_order(entry: tuple[float, int, SearchHit, int]) -> tuple[int, float, int]:
    """Rounds by rank within a modality for the hits that stand out (score > 0), then the rest;
    by score within a round; first-seen order between equals."""
    score, order, _hit, rank = entry
    return (rank if score > 0 else _AFTER_THE_ROUNDS, -score, order)
