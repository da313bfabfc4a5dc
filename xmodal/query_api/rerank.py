"""The rerank stage of the query path: a cross-encoder rescores the first stage's best candidates.

    first stage (searcher.py): max(k, rerank_k) candidates of one (space, result modality) list,
                               with their stored thumbnails
    -> decode each candidate's view (thumbnail text, JPEG/PNG data URL, WAV preview)
    -> reranker.score(query modality, query, candidate modality, views): one adjustment each
    -> final = calibrated first-stage score + adjustment; the list re-sorted by final, cut to k
    -> fusion (fusion.py) as for any list; a reranked hit carries `first_stage_score`

Which lists: those whose (query modality, result modality) pair the space's reranker supports
(registry.py: mini -> the project's cross-encoder, clip -> BLIP, clap -> none), when the request's
`rerank` (default XMODAL_RERANK) is true. Other lists stay first-stage in the same reply.

Decisions, also in docs/quality.md:
- A request that says `"rerank": true` when no list it searches can be reranked (no reranker for
  the space, none for the pair, or the reranker's weights cannot load) gets the error
  `rerank_unavailable`, naming why for each space: it asked for something it would not get.
  A service default (XMODAL_RERANK=true) reranks what it can and answers the rest first-stage.
- A candidate with no stored view (indexed with XMODAL_THUMBNAIL_SIZE=0 or
  XMODAL_AUDIO_PREVIEW_SECONDS=0, or a view that no longer decodes) is not scored: its adjustment
  is 0, so it keeps its first-stage score and is ranked among the scored ones by it. Counted in
  xmodal_rerank_unscored_total{space}.
- Loading: with XMODAL_RERANK=true every reranker is loaded at start-up and a missing checkpoint
  stops the service there. Otherwise a reranker is loaded on the first request that asks for it,
  once (a lock per reranker; concurrent first requests wait for the one load); a failed load is
  that request's `rerank_unavailable` error and is tried again by the next request.
- One score() call per reranker at a time (a lock per reranker): tokenizers are not reentrant and
  torch already spreads one call over the cores.
- Thumbnails fetched only to rerank are dropped before the reply unless it asked `with_thumbnails`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xmodal.encoders.base import Modality
from xmodal.encoders.media import MediaLimits, load_media
from xmodal.encoders.rerank.base import Reranker
from xmodal.errors import ConfigError, EncodeError, XmodalError
from xmodal.indexer.base import Hit
from xmodal.metrics import RERANK_UNSCORED
from xmodal.query_api.fusion import RankedList
from xmodal.schema import SearchRequest

if TYPE_CHECKING:
    from xmodal.config import Settings

__all__ = ["RerankStage", "candidate_view"]

log = logging.getLogger(__name__)

_DATA_URL_MARK = ";base64,"


def candidate_view(modality: str, hit: Hit, limits: MediaLimits) -> Any | None:
    """What a reranker reads of a candidate: its stored view, decoded; None when it has none.

    Texts: the thumbnail's text (the item's first 280 characters). Images: the JPEG/PNG thumbnail
    as an RGB image. Sounds: the WAV preview as a Waveform (the picture of an audio item is its
    waveform, not something a cross-encoder should look at). A view that does not decode (it
    was written by something else than xmodal's ingest) counts as none; it is logged.
    """
    stored = hit.thumbnail or {}
    if modality == "text":
        text = stored.get("text")
        return text if isinstance(text, str) and text.strip() else None
    field = "image" if modality == "image" else "audio"
    url = stored.get(field)
    if not isinstance(url, str) or _DATA_URL_MARK not in url:
        return None
    try:
        return load_media(field, data_b64=url.split(_DATA_URL_MARK, 1)[1], uri=None, limits=limits)
    except XmodalError as e:
        log.warning("the stored %s view of %r does not decode (%s: %s); it is not reranked", field, hit.item_id, e.code, e.message)
        return None


class RerankStage:
    """Reranks the lists of a search with the rerankers of `rerankers` (space -> Reranker).

    `unavailable` says, per space that has no reranker, why (registry.py); `default` is
    XMODAL_RERANK, `rerank_k` XMODAL_RERANK_K. Thread-safe (module docstring).
    """

    def __init__(
        self,
        rerankers: Mapping[str, Reranker],
        limits: MediaLimits,
        *,
        default: bool = False,
        rerank_k: int = 50,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        if rerank_k < 1:
            raise ValueError(f"rerank_k must be at least 1, got {rerank_k}")
        self._rerankers = dict(rerankers)
        self._limits = limits
        self._default = default
        self._rerank_k = rerank_k
        self._unavailable = dict(unavailable or {})
        self._loaded: set[str] = set()
        self._load_locks = {space: threading.Lock() for space in self._rerankers}
        self._score_locks = {space: threading.Lock() for space in self._rerankers}

    @classmethod
    def from_settings(cls, settings: Settings, spaces: Iterable[str], limits: MediaLimits) -> RerankStage:
        from xmodal.encoders.rerank.registry import build_rerankers

        rerankers, unavailable = build_rerankers(settings, spaces)
        return cls(rerankers, limits, default=settings.rerank, rerank_k=settings.rerank_k, unavailable=unavailable)

    @property
    def default(self) -> bool:
        return self._default

    def start(self) -> None:
        """Start-up hook: with reranking on by default, load every reranker now (a missing
        checkpoint fails start-up with its ConfigError); say which spaces cannot rerank."""
        for space, why in self._unavailable.items():
            log.log(logging.WARNING if self._default else logging.INFO, "rerank: %s", why)
        if not self._default:
            return
        for space in self._rerankers:
            try:
                self._ensure_loaded(space)
            except XmodalError as e:
                raise ConfigError(
                    f"XMODAL_RERANK=true but the {space} reranker cannot load: {e.message}", code="model_load_error"
                ) from e

    def wanted(self, request: SearchRequest) -> bool:
        return self._default if request.rerank is None else request.rerank

    def depth(self, request: SearchRequest) -> int:
        """First-stage candidates fetched for a reranked list: at least k, else rerank_k."""
        return max(request.k, request.rerank_k if request.rerank_k is not None else self._rerank_k)

    def plan(
        self, request: SearchRequest, spaces: Sequence[str], query_modality: Modality, result_modalities: Sequence[Modality]
    ) -> frozenset[tuple[str, Modality]]:
        """The (space, result modality) lists of this request to rerank; loads their rerankers.

        Raises EncodeError `rerank_unavailable` when the request itself asked and none can be."""
        if not self.wanted(request):
            return frozenset()
        lists = set()
        reasons: list[str] = []
        for space in spaces:
            reranker = self._rerankers.get(space)
            if reranker is None:
                reasons.append(self._unavailable.get(space, f"{space}: no reranker"))
                continue
            able = [m for m in result_modalities if (query_modality, m) in reranker.pairs]
            if not able:
                pairs = ", ".join(sorted(f"{q}->{c}" for q, c in reranker.pairs)) or "none"
                wanted = ", ".join(f"{query_modality}->{m}" for m in result_modalities)
                reasons.append(f"the {space} reranker {reranker.name} scores {pairs}, not {wanted}")
                continue
            try:
                self._ensure_loaded(space)
            except XmodalError as e:
                if request.rerank:
                    raise EncodeError(f"the {space} reranker cannot load: {e.message}", code="rerank_unavailable") from e
                raise  # only reachable if start() was skipped: a default-on stage loads everything there
            lists.update((space, m) for m in able)
        if not lists and request.rerank:
            raise EncodeError(
                "rerank was asked, but no searched list can be reranked: " + "; ".join(reasons),
                code="rerank_unavailable",
            )
        return frozenset(lists)

    def rerank(self, query_modality: Modality, query: Any, ranked: RankedList, *, k: int, keep_thumbnails: bool) -> RankedList:
        """`ranked` rescored by its space's reranker: hits in final order, the best `k` (module docstring)."""
        space = ranked.space
        reranker = self._rerankers[space]
        candidate_modality: Modality = ranked.modality  # type: ignore[assignment]
        views = [candidate_view(candidate_modality, hit, self._limits) for hit in ranked.hits]
        scored = [i for i, view in enumerate(views) if view is not None]
        adjustments = np.zeros(len(ranked.hits), dtype=np.float64)
        if scored:
            try:
                with self._score_locks[space]:
                    raw = reranker.score(query_modality, query, candidate_modality, [views[i] for i in scored])
            except XmodalError:
                raise
            except Exception as e:  # a model crash on this query: the caller's to see, as for the towers
                raise EncodeError(
                    f"the {space} reranker {reranker.name} failed on this {query_modality} query: {type(e).__name__}: {e}"
                ) from e
            out = np.asarray(raw, dtype=np.float64)
            if out.shape != (len(scored),) or not np.isfinite(out).all():
                raise EncodeError(
                    f"the {space} reranker {reranker.name} returned {out.shape} adjustments for {len(scored)} candidates"
                    " (or non-finite ones)"
                )
            adjustments[scored] = out
        if len(scored) < len(ranked.hits):
            RERANK_UNSCORED.labels(space).inc(len(ranked.hits) - len(scored))
        first_stage = np.array([ranked.calibration(hit.score) for hit in ranked.hits], dtype=np.float64)
        # Stable: equal final scores keep the engine's order.
        order = sorted(range(len(ranked.hits)), key=lambda i: -(first_stage[i] + adjustments[i]))[:k]
        hits = [ranked.hits[i] if keep_thumbnails else dataclasses.replace(ranked.hits[i], thumbnail=None) for i in order]
        return dataclasses.replace(ranked, hits=hits, adjustments=[float(adjustments[i]) for i in order])

    def _ensure_loaded(self, space: str) -> None:
        if space in self._loaded:
            return
        with self._load_locks[space]:
            if space in self._loaded:  # another request loaded it while this one waited
                return
            self._rerankers[space].load()
            self._loaded.add(space)
            log.info("rerank: loaded the %s reranker %s", space, self._rerankers[space].name)
