"""One ranking across result modalities and spaces: calibrated scores.

Raw cosines are not comparable across modalities: text–text pairs of MiniLM sit near 0.3–0.8,
text–image pairs of any two-tower model near 0.1–0.3 even when right (the modality gap; CLIP and
CLAP have it too), and scores of different spaces differ again. Merged by raw cosine, every
caption outranks every image. So each (space, result modality) is searched on its own and each
hit's cosine is calibrated against the same query's cosines with a background sample of that
space's items of that modality:

    score = (cosine - median(background)) / max(1.4826 * MAD(background), SCALE_FLOOR)

— how many (robust) standard deviations the hit stands above what this query scores against a
typical item of the hit's modality. A right image and a right caption both stand far above their
backgrounds, so they interleave by how good they are *for their modality*. Median and MAD are
robust to the few right items the sample itself may hold; `SCALE_FLOOR` keeps a uniform
background from inflating scores.

A small background says little (the median of two images is halfway between them), so both
statistics are shrunk towards a prior of unrelated unit vectors (center 0, scale `PRIOR_SCALE`)
with the weight of `PRIOR_ITEMS` items: w = n / (n + PRIOR_ITEMS). At 36 items the sample has
90 % of the weight; at 2 items, a third.

Properties callers rely on (docs/protocol.md): within one (space, modality) list the score is an
increasing affine function of the cosine, so order within a modality is the engine's order; an
item found in several spaces takes its best score; ties keep the order of the lists (spaces in
request order, modalities text, image, audio) and, within a list, the engine's order (score, id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from xmodal.indexer.base import Hit
from xmodal.schema import SearchHit

__all__ = ["PRIOR_ITEMS", "PRIOR_SCALE", "SCALE_FLOOR", "Calibration", "RankedList", "calibration", "fuse"]

SCALE_FLOOR = 0.02  # cosine units: below the spread of unrelated pairs in every space we ship
PRIOR_SCALE = 0.1  # spread of cosines between unrelated items, about what MiniLM, CLIP and CLAP show
PRIOR_ITEMS = 4
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True)
class Calibration:
    """Maps one query's cosines against one (space, modality) onto the shared score scale."""

    center: float
    scale: float

    def __call__(self, cosine: float) -> float:
        return (cosine - self.center) / self.scale


def calibration(query: NDArray[np.float32], background: NDArray[np.float32]) -> Calibration:
    """The calibration of `query` against `background`, an (m, dim) sample of unit vectors."""
    if len(background) == 0:
        return Calibration(0.0, PRIOR_SCALE)
    cosines = background @ np.asarray(query, dtype=np.float32)
    center = float(np.median(cosines))
    spread = max(float(np.median(np.abs(cosines - center))) * _MAD_TO_SIGMA, SCALE_FLOOR)
    weight = len(cosines) / (len(cosines) + PRIOR_ITEMS)
    return Calibration(weight * center, weight * spread + (1 - weight) * PRIOR_SCALE)


@dataclass(frozen=True)
class RankedList:
    """One (space, result modality) search: its hits, best first, and their calibration."""

    space: str
    modality: str
    calibration: Calibration
    hits: Sequence[Hit]


def fuse(lists: Sequence[RankedList], k: int) -> list[SearchHit]:
    """The `k` best items over `lists` by calibrated score (module docstring)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    best: dict[str, tuple[float, int, SearchHit]] = {}  # item id -> (score, first-seen order, hit)
    for ranked in lists:
        for hit in ranked.hits:
            score = ranked.calibration(hit.score)
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
                ),
            )
    ranked_hits = sorted(best.values(), key=lambda entry: (-entry[0], entry[1]))
    return [hit for _, _, hit in ranked_hits[:k]]
