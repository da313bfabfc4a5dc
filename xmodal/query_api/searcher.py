"""The search path as plain code, no Kafka: SearchRequest in, fused hits out.

    choose spaces -> decode the query (query_decode) -> encode it per space (query_encode)
                  -> search each (space, result modality) (search)
                  -> rerank the lists a cross-encoder can rescore, when asked (rerank.py)
                  -> calibrate against that modality's background and fuse (fusion.py)

Every refusal is an XmodalError with a stable code, which the query service puts in the error
reply: `unknown_space` (SchemaError), `unsupported_modality` (EncodeError), the media codes of
`xmodal.encoders.media` (MediaError), `encode_error` when a tower fails on the query,
`rerank_unavailable` (EncodeError) when a request asks to rerank and nothing it searches can be.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from xmodal.encoders.base import Encoder, Modality, SerializedEncoder, Vectors
from xmodal.encoders.media import MediaLimits, load_media
from xmodal.errors import EncodeError, SchemaError, XmodalError
from xmodal.indexer.base import VectorIndex
from xmodal.metrics import timed
from xmodal.query_api.backgrounds import Backgrounds
from xmodal.query_api.batching import DEFAULT_GATHER_S, NO_TICKET, Arrivals, TextBatcher, Ticket
from xmodal.query_api.fusion import RankedList, calibration, fuse
from xmodal.query_api.query_cache import DEFAULT_ENTRIES, QueryVectorCache
from xmodal.query_api.rerank import RerankStage
from xmodal.schema import Query, SearchHit, SearchRequest

__all__ = ["Searcher"]

RESULT_MODALITIES: tuple[Modality, ...] = ("text", "image", "audio")


class Searcher:
    """Answers SearchRequests against `index` with the encoders of `spaces` (name -> Encoder).

    Thread-safe: the query service calls `search` from several threads. Calls into one encoder
    run one at a time (SerializedEncoder: tokenizers are not reentrant, and torch already spreads
    one call over the cores); encoders that come serialised already, as `xmodal up` shares them
    with the ingest agents, are used as they are. Searches of the index run concurrently.
    """

    def __init__(
        self,
        spaces: Mapping[str, Encoder],
        index: VectorIndex,
        limits: MediaLimits,
        *,
        rerank: RerankStage | None = None,
        query_cache_entries: int = DEFAULT_ENTRIES,
        gather_s: float = DEFAULT_GATHER_S,
    ) -> None:
        """`rerank`: the rerank stage (RerankStage.from_settings); None: first stage only.
        `query_cache_entries`: text-query vectors kept per process (query_cache.py); 0: none.
        `gather_s`: how long a text query waits at most for the requests `arrivals` counts, to be
        encoded with them (batching.py); 0: never."""
        if not spaces:
            raise ValueError("a Searcher needs at least one space")
        self._spaces: dict[str, SerializedEncoder] = {
            name: e if isinstance(e, SerializedEncoder) else SerializedEncoder(e) for name, e in spaces.items()
        }
        self._index = index
        self._limits = limits.for_encoders(self._spaces.values())  # the same audio bound as ingest
        self._backgrounds = Backgrounds(index)
        self._rerank = rerank
        self.query_cache = QueryVectorCache(query_cache_entries)
        # The query service takes a ticket here for each request it hands to a worker (batching.py).
        self.arrivals = Arrivals()
        self.batchers = {
            name: TextBatcher(e.encode_texts, self.arrivals, gather_s=gather_s) for name, e in self._spaces.items()
        }

    @property
    def spaces(self) -> tuple[str, ...]:
        return tuple(self._spaces)

    def start(self, *, load_encoders: bool = True) -> None:
        """Start-up hook: load the towers (skip it when the ingest pipeline of the same process
        shares and has loaded them) and create or check every space's collection; load the
        rerankers when reranking is on by default (rerank.py)."""
        for name, encoder in self._spaces.items():
            if load_encoders:
                encoder.load()
            self._index.ensure_collection(name, encoder.dim)
        if self._rerank is not None:
            self._rerank.start()

    def search(self, request: SearchRequest, ticket: Ticket = NO_TICKET) -> list[SearchHit]:
        """The fused hits. `ticket`: from `arrivals.ticket()` when the request was taken (the
        query service's), done here once the request reached its encode or left before it."""
        try:
            return self._search(request, ticket)
        finally:
            ticket.done()

    def _search(self, request: SearchRequest, ticket: Ticket) -> list[SearchHit]:
        modality = request.query.kind
        spaces = self._choose_spaces(request.spaces, modality)
        result_modalities = request.modalities or RESULT_MODALITIES
        # Before any work: a request that asks to rerank what cannot be is refused at once.
        to_rerank = self._rerank.plan(request, spaces, modality, result_modalities) if self._rerank else frozenset()
        with timed("query_decode"):
            content = self._decode(request.query)
        vectors: dict[str, Vectors] = {}
        with timed("query_encode"):
            for name in spaces:
                vectors[name] = self._encode(name, modality, content, ticket)
            ticket.done()  # a cached text or a media query
        lists: list[RankedList] = []
        with timed("search"):
            for name in spaces:
                # One search per result modality: a modality's best items must not be crowded
                # out by another's higher raw cosines (fusion.py).
                for result_modality in result_modalities:
                    background = self._backgrounds.get(name, result_modality)
                    if len(background) == 0:
                        continue  # the space holds no item of this modality (cached, re-read each second)
                    reranking = (name, result_modality) in to_rerank
                    hits = self._index.search(
                        name,
                        vectors[name],
                        self._rerank.depth(request) if self._rerank and reranking else request.k,
                        modalities=[result_modality],
                        filter=request.filter or None,
                        # the reranker reads the candidates' stored views
                        with_thumbnails=request.with_thumbnails or reranking,
                    )
                    if hits:
                        lists.append(RankedList(name, result_modality, calibration(vectors[name], background), hits))
        if self._rerank is not None and to_rerank:
            with timed("rerank"):
                lists = [
                    self._rerank.rerank(modality, content, ranked, k=request.k, keep_thumbnails=request.with_thumbnails)
                    if (ranked.space, ranked.modality) in to_rerank
                    else ranked
                    for ranked in lists
                ]
        return fuse(lists, request.k)

    def _choose_spaces(self, requested: list[str] | None, modality: Modality) -> list[str]:
        """The spaces to search: those requested (default all), in order, that encode `modality`."""
        names = list(dict.fromkeys(requested)) if requested else list(self._spaces)
        unknown = [n for n in names if n not in self._spaces]
        if unknown:
            raise SchemaError(
                f"unknown space {', '.join(map(repr, unknown))}; this service searches: {', '.join(self._spaces)}",
                code="unknown_space",
                field="spaces",
            )
        able = [n for n in names if modality in self._spaces[n].modalities]
        if not able:
            with_modality = [n for n, e in self._spaces.items() if modality in e.modalities]
            hint = f"spaces here that do: {', '.join(with_modality)}" if with_modality else "no space here does"
            raise EncodeError(
                f"no space of {', '.join(names)} encodes {modality} queries; {hint}",
                code="unsupported_modality",
            )
        return able

    def _decode(self, query: Query) -> Any:
        """The query's content as its tower takes it: str, RGB PIL image or Waveform."""
        if query.text is not None:
            return query.text
        if query.image is not None:
            return load_media("image", data_b64=query.image, uri=None, limits=self._limits)
        if query.audio is not None:
            return load_media("audio", data_b64=query.audio, uri=None, limits=self._limits)
        if query.modality == "image":
            return load_media("image", data_b64=None, uri=query.uri, limits=self._limits)
        return load_media("audio", data_b64=None, uri=query.uri, limits=self._limits)

    def _encode(self, space: str, modality: Modality, content: Any, ticket: Ticket = NO_TICKET) -> Vectors:
        if modality == "text":  # a text seen lately is not encoded again (query_cache.py)
            return self.query_cache.get_or_encode(
                space, content, lambda: self._encode_now(space, modality, content, ticket)
            )
        ticket.done()  # media queries are not batched here: nothing waits for this one
        return self._encode_now(space, modality, content)

    def _encode_now(self, space: str, modality: Modality, content: Any, ticket: Ticket = NO_TICKET) -> Vectors:
        encoder = self._spaces[space]
        try:
            if modality == "text":  # with the text queries that arrive with it (batching.py)
                out = self.batchers[space].encode(content, ticket)[None, :]
            elif modality == "image":
                out = encoder.encode_images([content])
            else:
                out = encoder.encode_audio([content])
        except XmodalError:
            raise
        except Exception as e:  # a tower crash on this input: the caller's problem to see, not ours to hide
            raise EncodeError(f"space {space!r} failed to encode the {modality} query: {type(e).__name__}: {e}") from e
        if np.shape(out) != (1, encoder.dim):
            raise EncodeError(
                f"space {space!r} returned shape {np.shape(out)} for one query, expected (1, {encoder.dim})"
            )
        vector: Vectors = out[0]
        return vector
