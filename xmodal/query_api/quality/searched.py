"""The index as the query path sees it: every approximate search is offered to the recall monitor,
and freshness probes are kept out of answers that did not ask for them.

An adapter around any VectorIndex, so the Searcher (and the rerank stage after it) need no hook:
the node hands the Searcher this index instead of the raw one. Everything but `search` passes
through unchanged.

Probes (freshness.py) are real items of the index for a moment. A search whose filter does not
name the probe key asks the engine for `PROBE_HEADROOM` more hits and drops probes, so users
never see one and still get k hits. The recall check compares what users get with the exact
answer filtered the same way (the monitor searches through a SearchedIndex too): a probe that
comes and goes between the two searches must not read as a miss. Searches for probes (the
freshness monitor's) are not sampled: they measure freshness, and their item is deleted next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xmodal.indexer.base import Hit, VectorIndex
from xmodal.query_api.quality.freshness import PROBE_KEY
from xmodal.query_api.quality.recall import RecallMonitor

__all__ = ["PROBE_HEADROOM", "SearchedIndex"]

# Probes in the index at once: one per query-service instance probing; a few more for safety.
PROBE_HEADROOM = 4
MAX_K = 1000  # the protocol's largest k


class SearchedIndex:
    """VectorIndex that watches and filters the approximate searches of `inner`."""

    def __init__(self, inner: VectorIndex, recall: RecallMonitor | None = None) -> None:
        self._inner = inner
        self._recall = recall

    @property
    def inner(self) -> VectorIndex:
        return self._inner

    def __getattr__(self, name: str) -> Any:  # ensure_collection, upsert, sample, count, close, ...
        return getattr(self._inner, name)

    def search(
        self,
        space: str,
        vector: NDArray[np.float32],
        k: int,
        *,
        modalities: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        with_thumbnails: bool = False,
        exact: bool = False,
    ) -> list[Hit]:
        wants_probes = filter is not None and PROBE_KEY in filter
        limit = k
        if not wants_probes and isinstance(k, int) and not isinstance(k, bool) and k >= 1:  # else the index refuses k
            limit = max(k, min(k + PROBE_HEADROOM, MAX_K))
        hits = self._inner.search(
            space, vector, limit, modalities=modalities, filter=filter, with_thumbnails=with_thumbnails, exact=exact
        )
        if wants_probes:
            return hits
        visible = [h for h in hits if PROBE_KEY not in h.metadata][:k]
        if self._recall is not None and not exact:
            self._recall.offer(space, vector, k, modalities, filter, [h.item_id for h in visible])
        return visible
