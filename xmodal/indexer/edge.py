"""Embedded Qdrant: the real Qdrant engine in-process (qdrant-edge), one shard directory per space.

Layout: `<root>/<space>/` is one edge shard (its `wal/`, `segments/`, `edge_config.json`) plus
`xmodal-space.json`, which records the space's dimension so that reopening with another encoder
fails with DimensionMismatch instead of corrupting the index.

Durability: `upsert` and `delete` return after the engine appended the operation to the shard's
write-ahead log and applied it. From then on the write survives a crash of the process (kill -9,
`os._exit`): the next open replays the log. The log is not fsynced per write, so an OS crash or
power loss can lose the writes made since the last flush; `close()` flushes (fsync of log and
segments, after which the log is trimmed). Each shard keeps about 96 MiB of log files.

HNSW: edge never builds an HNSW index by itself. Until `optimize(space)` runs, every search is an
exact brute-force scan (about 16 ms at 100k x 384-d on 2 cores). `optimize` builds the index
in-process (minutes at 100k points; a collection of a few thousand points is left as it is and
stays exact) and blocks; the binding holds the GIL for the whole build, which stops every other
Python thread of the process, Kafka heartbeats included. Run it from a maintenance command while
the worker is stopped: a shard directory can be open in one process only (its log is file-locked).

Threads: one EdgeIndex may be shared by the ingest agents and the query consumer. The engine
locks internally (a mutex on the log, a read-write lock on the segments), so searches, upserts and
flushes may come from any thread; this class only locks to open and close shards. The binding does
not release the GIL during engine calls, so they run one at a time and briefly stall the event loop.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe
from numpy.typing import NDArray

from xmodal.errors import DimensionMismatch, VectorIndexError
from xmodal.indexer import _common as common
from xmodal.indexer.base import Hit, IndexPoint, point_id

__all__ = ["EdgeIndex"]

MANIFEST = "xmodal-space.json"
ENGINE_CONFIG = "edge_config.json"  # written by qdrant-edge when a shard is created
UPSERT_CHUNK = 1024  # points per engine update: bounds the size of one log record
_EXACT = qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(ignore=True))

T = TypeVar("T")


@dataclass(frozen=True)
class _Shard:
    engine: qe.EdgeShard
    dim: int
    path: Path


class EdgeIndex:
    """VectorIndex on qdrant-edge shards under `root` (created on first use, not here)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._shards: dict[str, _Shard] = {}
        self._lock = threading.Lock()  # guards _shards and _closed: opening, creating, closing
        self._closed = False

    # -- protocol ---------------------------------------------------------------------------

    def ensure_collection(self, space: str, dim: int) -> None:
        common.check_space(space)
        common.check_dim(dim)
        with self._lock:
            shard = self._shards.get(space) or self._open(space, dim)
        if shard.dim != dim:
            raise self._mismatch(space, shard.dim, dim, shard.path)

    def upsert(self, space: str, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        shard = self._shard(space)
        vectors = common.check_points(space, shard.dim, points)
        for start in range(0, len(points), UPSERT_CHUNK):
            batch = [
                qe.Point(point_id(p.item_id), vectors[start + i].tolist(), p.payload())
                for i, p in enumerate(points[start : start + UPSERT_CHUNK])
            ]
            operation = qe.UpdateOperation.upsert_points(batch)
            # Durable against a process crash once update() returns: it appends to the WAL first.
            self._call(space, "upsert", shard.engine.update, operation)

    def delete(self, space: str, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        shard = self._shard(space)
        ids: list[Any] = [point_id(i) for i in item_ids]
        self._call(space, "delete", shard.engine.update, qe.UpdateOperation.delete_points(ids))

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
        shard = self._shard(space)
        query = common.check_query(space, shard.dim, vector)
        engine_filter = _engine_filter(common.check_modalities(modalities), filter)
        if modalities is not None and not modalities:
            return []

        payload = True if with_thumbnails else qe.PayloadSelector.Exclude([common.THUMBNAIL_FIELD])

        def fetch(limit: int) -> list[Hit]:
            request = qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(query),
                filter=engine_filter,
                with_payload=payload,
                params=_EXACT if exact else None,
            )
            scored = self._call(space, "search", shard.engine.query, request)
            return [common.hit_from_payload(p.payload, p.score) for p in scored]

        return common.top_k(fetch, k)

    def sample(self, space: str, modality: str, n: int) -> NDArray[np.float32]:
        shard = self._shard(space)
        request = qe.ScrollRequest(
            limit=common.check_k(n), filter=_engine_filter([modality], None), with_vector=True, with_payload=False
        )
        records, _next = self._call(space, "sample", shard.engine.scroll, request)
        return common.sample_matrix(shard.dim, [r.vector for r in records])

    def count(self, space: str) -> int:
        shard = self._shard(space)
        return self._call(space, "count", shard.engine.count, qe.CountRequest(exact=True))

    def close(self) -> None:
        """Flush every shard to disk and close it. Later calls raise VectorIndexError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shards, self._shards = list(self._shards.items()), {}
        failures = []
        for space, shard in shards:
            try:
                try:
                    shard.engine.flush()  # close() flushes too, but only logs a failure
                finally:
                    shard.engine.close()
            except Exception as e:  # keep closing the others; report all below
                failures.append(f"{space}: {e}")
        if failures:
            raise VectorIndexError("closing the embedded index failed: " + "; ".join(failures))

    # -- maintenance (not part of the protocol) -----------------------------------------------

    def optimize(self, space: str) -> bool:
        """Build the HNSW index and merge/vacuum segments; True if anything changed.

        Blocks, holding the GIL, until done (see the module docstring): a maintenance step.
        """
        shard = self._shard(space)
        return self._call(space, "optimize", shard.engine.optimize)

    # -- internals ----------------------------------------------------------------------------

    def _shard(self, space: str) -> _Shard:
        common.check_space(space)
        with self._lock:
            return self._shards.get(space) or self._open(space, None)

    def _open(self, space: str, dim: int | None) -> _Shard:
        """Open (or, given `dim`, create) the space's shard. Caller holds the lock."""
        if self._closed:
            raise VectorIndexError(f"the embedded index at {self._root} is closed")
        path = self._root / space
        manifest = path / MANIFEST
        if manifest.exists():
            stored = _read_dim(manifest)
            if dim is not None and stored != dim:
                raise self._mismatch(space, stored, dim, path)
            dim = stored
        elif (path / ENGINE_CONFIG).exists():
            raise VectorIndexError(
                f"{path} holds a qdrant-edge shard without {MANIFEST}, so its space and dimension are unknown; "
                f"move it away or delete it and re-ingest"
            )
        elif dim is None:
            raise VectorIndexError(f"space {space!r} has no collection under {self._root}; call ensure_collection first")
        else:
            # Manifest first: a crash before the shard exists leaves a manifest, and the next open creates it.
            _write_dim(manifest, space, dim)

        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine))
        try:
            if (path / ENGINE_CONFIG).exists():
                engine = qe.EdgeShard.load(str(path), config)
            else:
                engine = qe.EdgeShard.create(str(path), config)
                for field in ("modality", "item_id"):
                    engine.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
        except Exception as e:  # the binding raises plain Exception
            hint = " (is another process, or another EdgeIndex, using it?)" if "WAL" in str(e) else ""
            raise VectorIndexError(f"cannot open the embedded index of space {space!r} at {path}{hint}: {e}") from e
        shard = _Shard(engine, dim, path)
        self._shards[space] = shard
        return shard

    @staticmethod
    def _call(space: str, op: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except Exception as e:  # the binding raises plain Exception for every failure
            raise VectorIndexError(f"embedded index: {op} in space {space!r} failed: {e}") from e

    @staticmethod
    def _mismatch(space: str, stored: int, dim: int, path: Path) -> DimensionMismatch:
        return DimensionMismatch(
            f"space {space!r}: the embedded index at {path} holds {stored}-d vectors but the encoder makes "
            f"{dim}-d vectors; delete or rename {path} and re-ingest to rebuild it for this encoder"
        )


def _engine_filter(modalities: Sequence[str] | None, filter: Mapping[str, Any] | None) -> qe.Filter | None:
    conditions: list[Any] = []
    if modalities is not None:
        conditions.append(qe.FieldCondition("modality", match=qe.MatchAny(list(modalities))))
    for path, value in common.metadata_conditions(filter):
        conditions.append(qe.FieldCondition(path, match=qe.MatchValue(_engine_value(value))))
    return qe.Filter(must=conditions) if conditions else None


def _engine_value(value: common.MetadataValue) -> Any:
    # qdrant-edge-py 0.9 turns a Python bool into the integer 0/1 (bool subclasses int, and the
    # binding tries Integer before Bool), so MatchValue(True) would match 1 and never true.
    # numpy.bool_ is no int (no __index__), so it reaches the Bool variant.
    return np.bool_(value) if isinstance(value, bool) else value


def _read_dim(manifest: Path) -> int:
    try:
        dim = json.loads(manifest.read_text())["dim"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VectorIndexError(f"cannot read {manifest}: {e}") from e
    if not isinstance(dim, int) or dim < 1:
        raise VectorIndexError(f"{manifest} records an invalid dimension {dim!r}")
    return dim


def _write_dim(manifest: Path, space: str, dim: int) -> None:
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"space": space, "dim": dim, "distance": "cosine"}) + "\n")
    os.replace(tmp, manifest)  # atomic: a reader never sees half a manifest
