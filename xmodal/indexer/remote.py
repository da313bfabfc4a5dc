"""Qdrant through qdrant-client: a server (`QdrantClient(url=...)`) or its local mode
(`QdrantClient(":memory:")` or `path=`), one collection `<prefix>_<space>` per space.

Same meaning as the embedded backend (xmodal.indexer._common): cosine scores, ties by item id,
the same filters; tests/indexer runs one suite on both and compares their results.

Writes wait for the server (`wait=True`) and go in batches. Transient failures (connection errors,
timeouts, 429/502/503/504) are retried with exponential backoff by `RetryPolicy`; every operation is
idempotent (point ids are derived from item ids), so a retry after a lost reply is harmless.
Anything else, and a DimensionMismatch above all, fails at once as an VectorIndexError.

Threads: the server client (httpx) is thread-safe. Local mode is not, so calls on it are serialised
by a lock here; local mode with `path=` also needs `force_disable_check_same_thread=True` when used
from several threads (its SQLite connection refuses other threads otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np
from numpy.typing import NDArray
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from xmodal.errors import DimensionMismatch, VectorIndexError, XmodalError
from xmodal.indexer import _common as common
from xmodal.indexer import remote_generations
from xmodal.indexer.base import Hit, IndexPoint, point_id
from xmodal.indexer.generations import Generation
from xmodal.indexer.settings import IndexSettings, describe_changes

__all__ = ["QdrantIndex", "RetryPolicy"]

_EXACT = models.SearchParams(exact=True, quantization=models.QuantizationSearchParams(ignore=True))

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; the waits between them double from `base_delay_s` up to `max_delay_s`."""

    attempts: int = 4
    base_delay_s: float = 0.2
    max_delay_s: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"invalid {self!r}: attempts >= 1 and non-negative delays")

    def delay(self, retry: int) -> float:
        return min(self.base_delay_s * 2.0**retry, self.max_delay_s)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: the request may not have reached the server, or the server is overloaded."""
    if isinstance(error, UnexpectedResponse):
        return error.status_code in _TRANSIENT_STATUS
    return isinstance(error, ResponseHandlingException | httpx.TransportError | ConnectionError | TimeoutError)


class QdrantIndex:
    """VectorIndex on qdrant-client. Owns `client`: `close()` closes it."""

    def __init__(
        self,
        client: QdrantClient,
        collection_prefix: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        batch_size: int = 256,
        index_settings: IndexSettings | None = None,
        pin: Mapping[str, int] | None = None,
    ) -> None:
        """`pin`: {space: generation} to read and write that generation's collection instead of the
        alias (a writer of a new generation)."""
        self._client = client
        self._index_settings = index_settings or IndexSettings()
        self._pin = dict(pin or {})
        self._serving = remote_generations.ServingCache()  # the live writer's per-batch generation

        self._prefix = collection_prefix
        self._retry = retry
        self._batch_size = batch_size
        options = client.init_options
        self._local = options.get("location") == ":memory:" or options.get("path") is not None
        self._where = str(options.get("url") or options.get("host") or options.get("path") or options.get("location"))
        # Local mode keeps numpy arrays that a concurrent upsert may reallocate under a search.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self._local else contextlib.nullcontext()
        )
        self._dims: dict[str, int] = {}
        self._closed = False
        # Local mode scans every point and warns about search params it cannot use.
        self._search_params = None if self._local else search_params(self._index_settings)
        self._exact_params = None if self._local else _EXACT

    # -- protocol ---------------------------------------------------------------------------

    def ensure_collection(self, space: str, dim: int) -> None:
        name = self.collection(space)
        common.check_dim(dim)
        if not self._call("collection_exists", name, self._client.collection_exists):
            if space in self._pin:
                raise VectorIndexError(f"generation collection {name!r} does not exist at {self._where}; create_generation first")
            # A new space: generation 1 behind the alias `name` (xmodal.indexer.remote_generations).
            remote_generations.create_space(self, space, dim)
        stored = self._stored_dim(space)
        if stored != dim:
            raise DimensionMismatch(
                f"space {space!r}: Qdrant collection {name!r} at {self._where} holds {stored}-d vectors but the "
                f"encoder makes {dim}-d vectors; delete that collection (or choose another XMODAL_TOPIC_PREFIX) "
                f"and re-ingest to rebuild it for this encoder"
            )
        if not self._local:  # local mode ignores payload indexes (and warns about them), HNSW and quantization
            self._apply_build_settings(space)
            keys = self._index_settings.payload_indexes
            for field in ("modality", "item_id", *(f'metadata."{key}"' for key in keys)):
                self._call(
                    "create_payload_index",
                    name,
                    self._client.create_payload_index,
                    field,
                    field_schema=models.PayloadSchemaType.KEYWORD,
                    wait=True,
                )

    def upsert(self, space: str, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        name = self.collection(space)
        vectors = common.check_points(space, self._dim(space), points)
        for start in range(0, len(points), self._batch_size):
            batch = points[start : start + self._batch_size]
            structs = [
                models.PointStruct(id=point_id(p.item_id), vector=vectors[start + i].tolist(), payload=p.payload())
                for i, p in enumerate(batch)
            ]
            self._call("upsert", name, self._client.upsert, points=structs, wait=True)

    def delete(self, space: str, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        selector = models.PointIdsList(points=[point_id(i) for i in item_ids])
        self._call("delete", self.collection(space), self._client.delete, points_selector=selector, wait=True)

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
        common.check_k(k)
        name = self.collection(space)
        query = common.check_query(space, self._dim(space), vector)
        query_filter = _query_filter(common.check_modalities(modalities), filter)
        if modalities is not None and not modalities:
            return []

        def fetch(limit: int) -> list[Hit]:
            response = self._call(
                "search",
                name,
                self._client.query_points,
                query=query,
                query_filter=query_filter,
                limit=limit,
                with_payload=True if with_thumbnails else models.PayloadSelectorExclude(exclude=[common.THUMBNAIL_FIELD]),
                search_params=self._exact_params if exact else self._search_params,
            )
            return [common.hit_from_payload(p.payload, p.score) for p in response.points]

        return common.top_k(fetch, k)

    def sample(self, space: str, modality: str, n: int) -> NDArray[np.float32]:
        records, _next = self._call(
            "sample",
            self.collection(space),
            self._client.scroll,
            scroll_filter=_query_filter([modality], None),
            limit=common.check_k(n),
            with_vectors=True,
            with_payload=False,
        )
        return common.sample_matrix(self._dim(space), [r.vector for r in records])

    def count(self, space: str) -> int:
        return self._call("count", self.collection(space), self._client.count, exact=True).count

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def collection(self, space: str) -> str:
        """The Qdrant collection (an alias of the serving generation's) that holds `space`."""
        base = f"{self._prefix}_{common.check_space(space)}"
        pinned = self._pin.get(space)
        return base if pinned is None else remote_generations.collection_name(base, pinned)

    # -- generations (xmodal.indexer.remote_generations: collection aliases) ------------------

    def generations(self, space: str) -> list[Generation]:
        return remote_generations.generations(self, space)

    def serving_generation(self, space: str) -> Generation:
        return remote_generations.serving_generation(self, space)

    def writing_generation(self, space: str) -> int:
        """The generation writes of `space` go to now: the pin, else the alias's, cached for about a
        second (remote_generations.ServingCache) where index_report asks the server every time."""
        pinned = self._pin.get(space)
        return pinned if pinned is not None else self._serving.number(self, space)

    def create_generation(
        self,
        space: str,
        dim: int,
        *,
        model: str | None = None,
        settings: IndexSettings | Mapping[str, Any] | None = None,
        origin: str = "reindex",
        number: int | None = None,
    ) -> Generation:
        """`number`: this one instead of the next free one (refused when it exists)."""
        return remote_generations.create_generation(
            self, space, dim, model=model, settings=settings, origin=origin, number=number
        )

    def mark_ready(self, space: str, generation: int) -> Generation:
        return remote_generations.mark_ready(self, space, generation)

    def switch(self, space: str, generation: int, *, drop_legacy: bool = False) -> None:
        remote_generations.switch(self, space, generation, drop_legacy=drop_legacy)
        self._serving.forget(space)
        self._dims.pop(space, None)

    def drop_generation(self, space: str, generation: int) -> None:
        remote_generations.drop_generation(self, space, generation)

    def generation_metadata(self, space: str, generation: int) -> dict[str, Any]:
        return remote_generations.metadata(self, space, generation)

    def update_generation_metadata(self, space: str, generation: int, **keys: Any) -> dict[str, Any]:
        return remote_generations.update_metadata(self, space, generation, **keys)

    def claim(self, space: str, generation: int, what: str) -> bool:
        return remote_generations.claim(self, space, generation, what)

    def release_claim(self, space: str, generation: int, what: str) -> None:
        remote_generations.release(self, space, generation, what)

    def scroll(self, space: str, offset: Any, limit: int) -> tuple[list[Any], Any]:
        """One page of the space's points with payloads, no vectors (ids in order), and the offset
        of the next page (None after the last): what `xmodal verify` reads."""
        return self._call(  # type: ignore[no-any-return]
            "scroll", self.collection(space), self._client.scroll,
            offset=offset, limit=limit, with_payload=True, with_vectors=False,
        )

    def index_report(self, space: str) -> dict[str, Any]:
        """The collection's index settings as the server reports them, and its indexing state.

        Local mode keeps no HNSW or quantization (it scans), so it reports the configured settings."""
        name = self.collection(space)
        info = self._call("get_collection", name, self._client.get_collection)
        built = self._index_settings.build() if self._local else _built_settings(info)
        pinned = self._pin.get(space)
        return {
            # Which generation the alias (or the pin) names now: the live handoff follows it.
            "generation": pinned if pinned is not None else remote_generations.serving_number(self, space),
            "settings": self._index_settings.build(),
            "built_with": built,
            # A server rebuilds in the background after update_collection; it reports status "yellow" meanwhile.
            "rebuild_pending": built != self._index_settings.build() or info.status != models.CollectionStatus.GREEN,
            "search": self._index_settings.search(),
            "points": info.points_count,
            "indexed_vectors": info.indexed_vectors_count,
            "segments": info.segments_count,
            "payload_indexes": sorted(info.payload_schema),
        }

    # -- internals ----------------------------------------------------------------------------

    def _apply_build_settings(self, space: str) -> None:
        """Bring an existing collection's HNSW/quantization/thresholds to the settings: the server
        then rebuilds its segments in the background from the stored vectors, serving meanwhile."""
        name = self.collection(space)
        info = self._call("get_collection", name, self._client.get_collection)
        changes = self._index_settings.build_changes(_built_settings(info))
        if not changes:
            return
        log.warning(
            "space %r: Qdrant collection %r at %s was built with other index settings (%s); updating it, "
            "the server rebuilds its segments in the background (no `xmodal reindex` needed for this)",
            space,
            name,
            self._where,
            describe_changes(changes),
        )
        config = collection_config(self._index_settings)
        if config["quantization_config"] is None:
            config["quantization_config"] = models.Disabled.DISABLED
        self._call("update_collection", name, self._client.update_collection, **config)

    def _dim(self, space: str) -> int:
        dim = self._dims.get(space)
        return dim if dim is not None else self._stored_dim(space)

    def _stored_dim(self, space: str) -> int:
        name = self.collection(space)
        if not self._call("collection_exists", name, self._client.collection_exists):
            raise VectorIndexError(
                f"space {space!r} has no collection {name!r} at {self._where}; call ensure_collection first"
            )
        params = self._call("get_collection", name, self._client.get_collection).config.params.vectors
        if not isinstance(params, models.VectorParams) or params.distance != models.Distance.COSINE:
            raise VectorIndexError(
                f"collection {name!r} at {self._where} was not made by xmodal (it needs one unnamed cosine "
                f"vector, it has {params!r}); delete it or choose another XMODAL_TOPIC_PREFIX"
            )
        self._dims[space] = params.size
        return params.size

    def _call(self, op: str, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(name, *args, **kwargs)` under the retry policy; every failure leaves as an XmodalError."""
        if self._closed:
            raise VectorIndexError(f"the Qdrant index at {self._where} is closed")
        for attempt in range(1, self._retry.attempts + 1):
            try:
                with self._lock:
                    return fn(name, *args, **kwargs)
            except XmodalError:
                raise
            except Exception as e:
                what = f"Qdrant {op} on {name!r} at {self._where}"
                if not is_transient(e):
                    raise VectorIndexError(f"{what} failed: {e}") from e
                if attempt == self._retry.attempts:
                    raise VectorIndexError(f"{what} failed after {attempt} attempts: {e}") from e
                delay = self._retry.delay(attempt - 1)
                log.warning("%s failed (%s); retry %d in %.2fs", what, e, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises


def collection_config(settings: IndexSettings) -> dict[str, Any]:
    """create_collection/update_collection arguments for the build settings."""
    quantization: models.QuantizationConfig | None = None
    if settings.quantization == "int8":
        quantization = models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
    elif settings.quantization == "binary":
        # As on the embedded index: 1-bit stored vectors, 8-bit queries (asymmetric).
        quantization = models.BinaryQuantization(
            binary=models.BinaryQuantizationConfig(
                always_ram=True, query_encoding=models.BinaryQuantizationQueryEncoding.SCALAR8BITS
            )
        )
    return {
        "hnsw_config": models.HnswConfigDiff(
            m=settings.hnsw_m, ef_construct=settings.hnsw_ef_construct, full_scan_threshold=settings.full_scan_threshold_kb
        ),
        "quantization_config": quantization,
        "optimizers_config": models.OptimizersConfigDiff(indexing_threshold=settings.indexing_threshold_kb),
    }


def search_params(settings: IndexSettings) -> models.SearchParams:
    """What every approximate search sends: HNSW ef and, on a quantized index, rescoring."""
    if not settings.quantized:
        return models.SearchParams(hnsw_ef=settings.search_ef)
    rescore = settings.quantization_rescore
    # Oversampling only widens the candidates that rescoring re-ranks; without it, it does nothing.
    return models.SearchParams(
        hnsw_ef=settings.search_ef,
        quantization=models.QuantizationSearchParams(
            rescore=rescore, oversampling=settings.quantization_oversampling if rescore else None
        ),
    )


def _built_settings(info: models.CollectionInfo) -> dict[str, Any]:
    """The build settings (IndexSettings.build() names) a collection reports."""
    config = info.config
    quantization = config.quantization_config
    kind = (
        "int8"
        if isinstance(quantization, models.ScalarQuantization)
        else "binary"
        if isinstance(quantization, models.BinaryQuantization)
        else "other"
        if quantization is not None
        else "none"
    )
    return {
        "hnsw_m": config.hnsw_config.m,
        "hnsw_ef_construct": config.hnsw_config.ef_construct,
        "quantization": kind,
        "full_scan_threshold_kb": config.hnsw_config.full_scan_threshold,
        "indexing_threshold_kb": config.optimizer_config.indexing_threshold,
    }


def _query_filter(modalities: list[str] | None, filter: Mapping[str, Any] | None) -> models.Filter | None:
    conditions: list[models.Condition] = []
    if modalities is not None:
        conditions.append(models.FieldCondition(key="modality", match=models.MatchAny(any=modalities)))
    for path, value in common.metadata_conditions(filter):
        conditions.append(models.FieldCondition(key=path, match=models.MatchValue(value=value)))
    return models.Filter(must=conditions) if conditions else None
