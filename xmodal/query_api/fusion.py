"""Fusion of the ranked lists that several spaces return for one query.

Scores of different spaces are not comparable (CLIP cosines sit near 0.3, MiniLM's near 0.6), so
lists are fused by rank with reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009):

    score(item) = sum over the lists that hold it of 1 / (RRF_K + rank),  rank starting at 1

`RRF_K = 60` is the constant of the paper; it damps the head of each list so one space's top hit
does not outvote agreement between spaces. A query answered by a single space keeps its cosine
scores unchanged: there is nothing to fuse, and a cosine means more to the caller than a rank.

Ties (equal fused scores) keep the order in which items were first seen, walking the lists in
space order and each list by rank, so the output is deterministic for the same inputs. An item
found in several spaces keeps the modality and metadata of its first occurrence (they are the
same payload: point ids are shared across spaces).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from xmodal.indexer.base import Hit
from xmodal.schema import SearchHit

__all__ = ["RRF_K", "fuse", "to_search_hit"]

RRF_K = 60


def to_search_hit(hit: Hit, score: float | None = None) -> SearchHit:
    return SearchHit(
        id=hit.item_id,
        score=hit.score if score is None else score,
        modality=hit.modality,
        metadata=hit.metadata,
    )


def fuse(ranked: Mapping[str, Sequence[Hit]], k: int, *, rrf_k: int = RRF_K) -> list[SearchHit]:
    """The `k` best items of the per-space ranked lists `ranked` (space name -> hits, best first).

    One list: its hits with their cosine scores. Several: reciprocal rank fusion (module docstring).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if rrf_k < 0:
        raise ValueError(f"rrf_k must not be negative, got {rrf_k}")
    if len(ranked) == 1:
        (hits,) = ranked.values()
        return [to_search_hit(h) for h in hits[:k]]

    first: dict[str, Hit] = {}  # insertion order = first-seen order, which settles ties
    terms: dict[str, list[float]] = {}
    for hits in ranked.values():
        seen_here: set[str] = set()
        for rank, hit in enumerate(hits, start=1):
            if hit.item_id in seen_here:  # a list names an item once; ignore an engine repeat
                continue
            seen_here.add(hit.item_id)
            first.setdefault(hit.item_id, hit)
            terms.setdefault(hit.item_id, []).append(1.0 / (rrf_k + rank))
    # fsum is exact, so equal sets of ranks give bit-equal scores whatever the space order.
    scores = {item: math.fsum(t) for item, t in terms.items()}
    order = sorted(first, key=lambda item: -scores[item])  # stable: ties stay in first-seen order
    return [to_search_hit(first[item], scores[item]) for item in order[:k]]
