"""Embedded Qdrant: the real Qdrant engine in-process (qdrant-edge), one shard per space generation.

Layout (xmodal.indexer.generations): `<root>/<space>/xmodal-space.json` is the durable pointer; it
names the serving generation and records its dimension, so that reopening with another encoder fails
with DimensionMismatch instead of corrupting the index. Each generation `<root>/<space>/gNNNNNN/` is
one edge shard (`wal/`, `segments/`, `edge_config.json`) with `xmodal-generation.json` (dim, model
fingerprint, settings, state). A space written before generations (the shard directly in
`<root>/<space>/`) is moved into `g000000/` the first time it is opened.

Generations: `create_generation` makes an empty one beside the serving one; a writer opens it with
`EdgeIndex(root, pin={space: number})`, fills it, `mark_ready`, `switch` (one atomic rename of the
pointer; the old generation stays for rollback until `drop_generation`). An EdgeIndex serving a space
looks at the pointer at most once per `watch_interval_s` (1 s) and, when another process moved it,
opens the new generation (once its writer closed it) and swaps it in; operations running on the old
shard finish there and it closes after the last one. A switch made in this process holds writes for
its duration, so no write lands in the old generation after it. Writes another process's switch
catches in flight (the pointer moved, this process has not looked yet: up to about a second) land in
the old generation: a switcher that builds from the log keeps consuming it for longer than that.
`adopt_build` + `journal` are the in-process switch of a background HNSW build (xmodal.indexer.builder).

Durability: `upsert` and `delete` return after the engine appended the operation to the shard's
write-ahead log and applied it. From then on the write survives a crash of the process (kill -9,
`os._exit`): the next open replays the log. The log is not fsynced per write, so an OS crash or
power loss can lose the writes made since the last flush; `close()` flushes (fsync of log and
segments, after which the log is trimmed). Each shard keeps about 96 MiB of log files.

HNSW: edge never builds an HNSW index by itself. Until `optimize(space)` runs, every search is an
exact brute-force scan (about 16 ms at 100k x 384-d on 2 cores). The graph, quantization and payload
indexes follow `IndexSettings` (xmodal.indexer.settings; measured in docs/scale.md); the manifest
records the build settings the shard is configured with (`index`) and those its segments were last
optimized with (`index_built`): a change applies from the next `optimize`, which rebuilds from the
stored vectors. `optimize` builds the index
in-process (minutes at 100k points; a collection of a few thousand points is left as it is and
stays exact) and blocks; the binding holds the GIL for the whole build, which stops every other
Python thread of the process, Kafka heartbeats included. Run it from a maintenance command while
the worker is stopped: a shard directory can be open in one process only (its log is file-locked).
A serving process never calls it: `xmodal up` builds a new generation in a builder process and
switches to it (xmodal.indexer.builder).

Threads: one EdgeIndex may be shared by the ingest agents and the query consumer. The engine
locks internally (a mutex on the log, a read-write lock on the segments), so searches, upserts and
flushes may come from any thread; this class only locks to open and close shards. The binding does
not release the GIL during engine calls, so they run one at a time and briefly stall the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe
from numpy.typing import NDArray

from xmodal.errors import DimensionMismatch, VectorIndexError
from xmodal.indexer import _common as common
from xmodal.indexer.base import Hit, IndexPoint, point_id
from xmodal.indexer.generations import (
    ENGINE_CONFIG,
    GENERATION_MANIFEST,
    SPACE_MANIFEST,
    Generation,
    GenerationLock,
    SpaceLayout,
)
from xmodal.indexer.settings import IndexSettings, describe_changes

__all__ = ["EdgeIndex", "engine_config", "search_params"]

log = logging.getLogger(__name__)

MANIFEST = SPACE_MANIFEST
WATCH_INTERVAL_S = 1.0  # how often a serving index looks whether another process moved the pointer
UPSERT_CHUNK = 1024  # points per engine update: bounds the size of one log record
_EXACT = qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(ignore=True))

T = TypeVar("T")


@dataclass(eq=False)
class _Shard:
    """One open generation of a space. `users` and `retired` are guarded by EdgeIndex._lock."""

    engine: qe.EdgeShard
    dim: int
    path: Path  # the generation's directory
    generation: int
    lock: GenerationLock
    users: int = 0  # operations running on it now
    retired: bool = False  # replaced by another generation: closed when the last user leaves


class EdgeIndex:
    """VectorIndex on qdrant-edge shards under `root` (created on first use, not here).

    `index_settings` (xmodal.indexer.settings) shape the shards it creates and every search; a shard
    built with other settings is opened with the new ones, which its next `optimize()` builds.
    """

    def __init__(
        self,
        root: Path,
        *,
        index_settings: IndexSettings | None = None,
        pin: Mapping[str, int] | None = None,
        watch_interval_s: float = WATCH_INTERVAL_S,
        indexing_threads: int = 0,
    ) -> None:
        """`pin`: {space: generation} to open instead of the serving one (a writer of a new
        generation); a pinned space does not follow the pointer. `indexing_threads`: threads
        `optimize()` builds HNSW with (0: one per CPU; a background builder leaves CPUs to searches)."""
        self._indexing_threads = indexing_threads
        self._root = Path(root)
        self._index_settings = index_settings or IndexSettings()
        self._search_params = search_params(self._index_settings)
        self._pin = dict(pin or {})
        self._watch_interval_s = watch_interval_s
        self._shards: dict[str, _Shard] = {}
        self._lock = threading.Lock()  # guards _shards, _closed, _watch and every _Shard's users/retired
        self._closed = False
        self._watch: dict[str, tuple[float, tuple[int, int, int] | None]] = {}  # space: (checked at, stamp)
        self._switching: set[str] = set()  # spaces whose next generation is being opened
        self._write_gates: dict[str, threading.RLock] = {}  # one writer at a time per space (journal order)
        self._journals: dict[str, list[qe.UpdateOperation]] = {}  # writes a background build replays

    # -- protocol ---------------------------------------------------------------------------

    def ensure_collection(self, space: str, dim: int) -> None:
        common.check_space(space)
        common.check_dim(dim)
        with self._lock:
            shard = self._shards.get(space) or self._open(space, dim)
        if shard.dim != dim:
            raise self._mismatch(space, shard.dim, dim, self._root / space)

    def upsert(self, space: str, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        with self._lease(space) as shard:
            vectors = common.check_points(space, shard.dim, points)
            for start in range(0, len(points), UPSERT_CHUNK):
                batch = [
                    qe.Point(point_id(p.item_id), vectors[start + i].tolist(), p.payload())
                    for i, p in enumerate(points[start : start + UPSERT_CHUNK])
                ]
                # Durable against a process crash once update() returns: it appends to the WAL first.
                self._write(space, shard, "upsert", qe.UpdateOperation.upsert_points(batch))

    def delete(self, space: str, item_ids: Sequence[str]) -> None:
        if not item_ids:
            return
        ids: list[Any] = [point_id(i) for i in item_ids]
        with self._lease(space) as shard:
            self._write(space, shard, "delete", qe.UpdateOperation.delete_points(ids))

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
        with self._lease(space) as shard:
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
                    params=_EXACT if exact else self._search_params,
                )
                scored = self._call(space, "search", shard.engine.query, request)
                return [common.hit_from_payload(p.payload, p.score) for p in scored]

            return common.top_k(fetch, k)

    def sample(self, space: str, modality: str, n: int) -> NDArray[np.float32]:
        request = qe.ScrollRequest(
            limit=common.check_k(n), filter=_engine_filter([modality], None), with_vector=True, with_payload=False
        )
        with self._lease(space) as shard:
            records, _next = self._call(space, "sample", shard.engine.scroll, request)
            return common.sample_matrix(shard.dim, [r.vector for r in records])

    def count(self, space: str) -> int:
        with self._lease(space) as shard:
            return self._call(space, "count", shard.engine.count, qe.CountRequest(exact=True))

    def close(self) -> None:
        """Flush every shard to disk and close it. Later calls raise VectorIndexError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shards, self._shards = list(self._shards.items()), {}
            for _space, shard in shards:
                shard.retired = True
        failures = []
        for space, shard in shards:
            try:
                _close_shard(shard)
            except VectorIndexError as e:  # keep closing the others; report all below
                failures.append(f"{space}: {e}")
        if failures:
            raise VectorIndexError("closing the embedded index failed: " + "; ".join(failures))

    @property
    def root(self) -> Path:
        return self._root

    @property
    def index_settings(self) -> IndexSettings:
        return self._index_settings

    # -- generations (not part of the protocol; xmodal.indexer.generations) -------------------

    def generations(self, space: str) -> list[Generation]:
        """Every generation of the space on disk, oldest first (opens nothing)."""
        layout = self._layout(space)
        if layout.is_legacy():
            return [self._legacy_generation(layout)]
        return layout.generations()

    def serving_generation(self, space: str) -> Generation:
        """The generation the durable pointer names (opens nothing; any process may ask)."""
        layout = self._layout(space)
        if not layout.exists():
            raise VectorIndexError(f"space {space!r} has no collection under {self._root}")
        if layout.is_legacy():
            return self._legacy_generation(layout)
        return layout.generation(layout.pointer().serving)

    def create_generation(
        self,
        space: str,
        dim: int,
        *,
        model: str | None = None,
        settings: IndexSettings | Mapping[str, Any] | None = None,
        origin: str = "reindex",
    ) -> Generation:
        """A new, empty, not yet serving generation (state "building"). Write into it with
        `EdgeIndex(root, pin={space: g.number})` (ensure_collection creates its shard), then
        `mark_ready` and `switch`. `model` is the fingerprint of the encoder that fills it."""
        common.check_dim(dim)
        record = settings.to_dict() if isinstance(settings, IndexSettings) else settings
        return self._layout(space).create_generation(dim, model=model, settings=record, origin=origin)

    def mark_ready(self, space: str, generation: int) -> Generation:
        """Record that a generation is complete: only a ready generation may serve."""
        return self._layout(space).mark_ready(generation)

    def switch(self, space: str, generation: int) -> None:
        """Make a ready `generation` serve `space`, durably (one atomic rename of the pointer).

        Here, operations move to it at once (writes wait for the switch; the old shard closes once
        the searches running on it are done). Another process serving the space follows within
        about `watch_interval_s` once it can open the generation: a writer that pinned it must
        flush and close its index after switching (this method flushes a pinned shard first)."""
        layout = self._layout(space)
        target = layout.generation(generation)
        if target.state != "ready":
            raise VectorIndexError(f"generation {generation} of space {space!r} is still building; mark_ready first")
        with self._lock:
            current = self._shards.get(space)
        if current is not None and space in self._pin:
            if current.generation == generation:
                self._call(space, "flush", current.engine.flush)
            current = None  # a pinned index does not serve: it only moves the pointer
        opened = None
        if current is not None and current.generation != generation:
            opened = self._open_generation(space, target)
        self._switch_to(layout, target, opened, [])

    def drop_generation(self, space: str, generation: int) -> None:
        """Delete a generation that is neither serving nor open anywhere (e.g. the rollback one)."""
        layout = self._layout(space)
        if layout.exists() and layout.pointer().serving == generation:
            raise VectorIndexError(f"generation {generation} serves space {space!r}; switch to another one first")
        with self._lock:
            shard = self._shards.get(space)
        if shard is not None and shard.generation == generation:
            raise VectorIndexError(f"generation {generation} of space {space!r} is open in this index")
        layout.delete_generation(generation)

    def adopt_build(
        self, space: str, generation: int, journal: list[qe.UpdateOperation], *, replaces: int | None = None
    ) -> None:
        """Serve a generation a builder filled from a snapshot: replay `journal` (the writes made
        here since the snapshot began, in order) into it, then switch. Writes are held only for
        the last few journal entries and the switch itself. `replaces`: the generation the
        snapshot was taken from; if another one serves by now (a reindex switched), nothing moves."""
        layout = self._layout(space)
        target = layout.generation(generation)
        opened = self._open_generation(space, target)
        try:
            done = 0
            while len(journal) - done > 32:  # catch up while writes continue
                end = len(journal)
                for operation in journal[done:end]:
                    self._call(space, "replay", opened.engine.update, operation)
                done = end
        except BaseException:
            _close_shard(opened)
            raise
        self._switch_to(layout, layout.mark_ready(generation), opened, journal, replayed=done, replaces=replaces)

    @contextlib.contextmanager
    def journal(self, space: str) -> Iterator[list[qe.UpdateOperation]]:
        """Within the block, every write to `space` is also appended, in order, to the list."""
        entries: list[qe.UpdateOperation] = []
        with self._gate(space):
            self._journals[space] = entries
        try:
            yield entries
        finally:
            with self._gate(space):
                if self._journals.get(space) is entries:
                    del self._journals[space]

    def scroll(
        self, space: str, offset: Any, limit: int, *, with_vectors: bool = False
    ) -> tuple[list[qe.Record], Any]:
        """One page of the space's points with payloads (ids in order; vectors `with_vectors`) and the
        offset of the next page (None after the last), like QdrantIndex.scroll."""
        request = qe.ScrollRequest(offset=offset, limit=limit, with_vector=with_vectors, with_payload=True)
        with self._lease(space) as shard:
            return self._call(space, "scroll", shard.engine.scroll, request)

    def write_records(self, space: str, ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[Any]) -> None:
        """Write points as they were stored (point ids, not item ids): a builder's import."""
        with self._lease(space) as shard:
            batch = [qe.Point(i, v.tolist(), p) for i, v, p in zip(ids, vectors, payloads, strict=True)]
            self._write(space, shard, "import", qe.UpdateOperation.upsert_points(batch))

    # -- maintenance (not part of the protocol) -----------------------------------------------

    def optimize(self, space: str) -> bool:
        """Build the HNSW index and merge/vacuum segments; True if anything changed.

        Blocks, holding the GIL, until done (see the module docstring): a maintenance step, or the
        work of a builder process (xmodal.indexer.builder) on a generation nobody serves yet.
        """
        with self._lease(space) as shard:
            changed = self._call(space, "optimize", shard.engine.optimize)
            points = self._call(space, "count", shard.engine.count, qe.CountRequest(exact=True))
            # Every segment now has the configured build settings (the engine rebuilds mismatched ones).
            with self._lock:
                _record_built(shard.path / GENERATION_MANIFEST)
            self._layout(space).record_indexed(shard.generation, points)
        return changed

    def writing_generation(self, space: str) -> int:
        """The generation writes of `space` go to now, after following the pointer as a write does
        (no engine call: the live pipeline asks before every batch)."""
        with self._lease(space) as shard:
            return shard.generation

    def index_report(self, space: str) -> dict[str, Any]:
        """The space's index settings and state: what it is configured with, what its segments were
        built with (they differ until the next optimize), vectors in HNSW, payload indexes."""
        with self._lease(space) as shard:
            info = self._call(space, "info", shard.engine.info)
            record = _read_manifest(shard.path / GENERATION_MANIFEST)
            generation = shard.generation
        return {
            "generation": generation,
            "settings": record.get("index"),
            "built_with": record.get("index_built"),
            "rebuild_pending": record.get("index") != record.get("index_built"),
            "search": self._index_settings.search(),
            "points": info.points_count,
            "indexed_vectors": info.indexed_vectors_count,
            "segments": info.segments_count,
            "payload_indexes": sorted(info.payload_schema),
        }

    # -- internals ----------------------------------------------------------------------------

    def _layout(self, space: str) -> SpaceLayout:
        return SpaceLayout(self._root, common.check_space(space))

    @contextlib.contextmanager
    def _lease(self, space: str) -> Iterator[_Shard]:
        """The space's current shard, kept open until the block ends (a switch closes it after)."""
        common.check_space(space)
        with self._lock:
            shard = self._shards.get(space) or self._open(space, None)
            moved_to = self._pointer_moved(space, shard)
        if moved_to is not None:
            self._follow(space, moved_to)
        with self._lock:
            shard = self._shards.get(space) or self._open(space, None)
            shard.users += 1
        try:
            yield shard
        finally:
            with self._lock:
                shard.users -= 1
                close_now = shard.retired and shard.users == 0
            if close_now:
                _close_quietly(space, shard)

    def _gate(self, space: str) -> threading.RLock:
        with self._lock:
            return self._write_gates.setdefault(space, threading.RLock())

    def _write(self, space: str, shard: _Shard, op: str, operation: qe.UpdateOperation) -> None:
        """Apply a write to the space's current shard (re-read under the gate: a switch may have
        happened since `shard` was leased) and journal it while a build runs."""
        with self._gate(space):
            with self._lock:
                target = self._shards.get(space, shard)
                target.users += 1
            try:
                self._call(space, op, target.engine.update, operation)
                journal = self._journals.get(space)
                if journal is not None:
                    journal.append(operation)
            finally:
                with self._lock:
                    target.users -= 1
                    close_now = target.retired and target.users == 0
                if close_now:
                    _close_quietly(space, target)

    def _pointer_moved(self, space: str, shard: _Shard) -> int | None:
        """The generation another process switched the space to, checked once per interval. Caller holds the lock."""
        if space in self._pin or space in self._switching:
            return None
        now = time.monotonic()
        checked_at, stamp = self._watch.get(space, (0.0, None))
        if now - checked_at < self._watch_interval_s:
            return None
        layout = self._layout(space)
        current = layout.stamp()
        self._watch[space] = (now, stamp)
        if current == stamp:
            return None
        try:
            serving = layout.pointer().serving
        except VectorIndexError as e:
            log.warning("space %r: cannot read the serving pointer: %s", space, e.message)
            return None
        if serving == shard.generation:
            self._watch[space] = (now, current)
            return None
        self._switching.add(space)
        return serving

    def _follow(self, space: str, number: int) -> None:
        """Open the generation another process switched to and serve it; on failure keep serving
        the old one and try again at the next interval (e.g. while its writer still has it open)."""
        layout = self._layout(space)
        try:
            target = layout.generation(number)
            stamp = layout.stamp()
            opened = self._open_generation(space, target)
            with self._gate(space):
                self._install(space, opened, stamp)
            log.info("space %r: now serving generation %d (switched by another process)", space, number)
        except VectorIndexError as e:
            log.warning("space %r: cannot open generation %d yet, still serving the old one: %s", space, number, e.message)
        finally:
            with self._lock:
                self._switching.discard(space)

    def _switch_to(
        self,
        layout: SpaceLayout,
        target: Generation,
        opened: _Shard | None,
        journal: list[qe.UpdateOperation],
        *,
        replayed: int = 0,
        replaces: int | None = None,
    ) -> None:
        space = layout.space
        try:
            with self._gate(space):  # no write lands in the old generation from here on
                if replaces is not None and (serving := layout.pointer().serving) != replaces:
                    raise VectorIndexError(
                        f"space {space!r} switched to generation {serving} while generation {target.number} "
                        f"was built from generation {replaces}; the build is discarded"
                    )
                if opened is not None:
                    for operation in journal[replayed:]:
                        self._call(space, "replay", opened.engine.update, operation)
                if self._journals.get(space) is journal:
                    del self._journals[space]
                layout.write_pointer(target.number, target.dim)
                if opened is not None:
                    self._install(space, opened, layout.stamp())
        except BaseException:
            if opened is not None:
                with self._lock:
                    installed = self._shards.get(space) is opened
                if not installed:
                    _close_quietly(space, opened)
            raise

    def _install(self, space: str, shard: _Shard, stamp: tuple[int, int, int] | None) -> None:
        with self._lock:
            if self._closed:
                shard.retired = True
                old = shard
            else:
                old = self._shards.get(space)
                self._shards[space] = shard
                self._watch[space] = (time.monotonic(), stamp)
                if old is not None:
                    old.retired = True
            close_now = old is not None and old.users == 0
        if close_now and old is not None:
            _close_quietly(space, old)

    def _open(self, space: str, dim: int | None) -> _Shard:
        """Open the space's serving (or pinned) generation; given `dim`, create the space. Caller holds the lock."""
        if self._closed:
            raise VectorIndexError(f"the embedded index at {self._root} is closed")
        layout = self._layout(space)
        pinned = self._pin.get(space)
        generation = layout.generation(pinned) if pinned is not None else self._serving(layout, dim)
        if dim is not None and generation.dim != dim:
            raise self._mismatch(space, generation.dim, dim, layout.path)
        shard = self._open_generation(space, generation)
        self._shards[space] = shard
        self._watch[space] = (time.monotonic(), layout.stamp())
        return shard

    def _serving(self, layout: SpaceLayout, dim: int | None) -> Generation:
        """The serving generation, after migrating a legacy space, creating a new one (given
        `dim`) and removing what crashed builds left behind."""
        space, path = layout.space, layout.path
        if layout.has_orphan_shard() or (not layout.exists() and layout.numbers()):
            raise VectorIndexError(
                f"{path} holds a qdrant-edge shard without {MANIFEST}, so its space and dimension are unknown; "
                f"move it away or delete it and re-ingest"
            )
        if not layout.exists():
            if dim is None:
                raise VectorIndexError(f"space {space!r} has no collection under {self._root}; call ensure_collection first")
            # Pointer first: a crash before the generation exists leaves a pointer, and the next open creates it.
            layout.write_pointer(1, dim)
        if layout.is_legacy():
            self._migrate(layout)
        pointer = layout.pointer()
        if dim is not None and pointer.dim != dim:
            raise self._mismatch(space, pointer.dim, dim, path)
        layout.remove_strays()
        for abandoned in layout.abandoned():
            log.warning("space %r: removing generation %d, a build that never finished", space, abandoned.number)
            layout.delete_generation(abandoned.number)
        if pointer.serving in layout.numbers():
            return layout.generation(pointer.serving)
        return layout.create_generation(
            pointer.dim,
            model=None,
            settings=self._index_settings.to_dict(),
            origin="space",
            state="ready",
            number=pointer.serving,
        )

    def _migrate(self, layout: SpaceLayout) -> None:
        """Move a pre-generation shard into generation 0 once nobody has it open."""
        begun = layout.generation_path(0).exists()  # then a load would recreate what was moved
        if (layout.path / ENGINE_CONFIG).exists() and not begun:
            try:
                qe.EdgeShard.load(str(layout.path)).close()  # takes the engine's WAL lock: fails if open
            except Exception as e:  # the binding raises plain Exception
                hint = " (is another process, or another EdgeIndex, using it?)" if "WAL" in str(e) else ""
                raise VectorIndexError(
                    f"cannot open the embedded index of space {layout.space!r} at {layout.path}{hint}: {e}"
                ) from e
        layout.migrate_legacy()
        log.info("space %r: moved the index into generation 0 of the generation layout", layout.space)

    def _open_generation(self, space: str, generation: Generation) -> _Shard:
        """Open (or create the shard of) one generation; holds its lock file while open."""
        lock = GenerationLock(generation).acquire()
        path = generation.path
        # load() with a config makes it the shard's config (edge_config.json is rewritten): new
        # segments and the next optimize() use it; segments built before keep theirs until then.
        config = engine_config(generation.dim, self._index_settings, indexing_threads=self._indexing_threads)
        try:
            if (path / ENGINE_CONFIG).exists():
                previous = _engine_build_settings(path / ENGINE_CONFIG)  # before load() rewrites it
                engine = qe.EdgeShard.load(str(path), config)
            else:
                previous = None
                engine = qe.EdgeShard.create(str(path), config)
            _ensure_payload_indexes(engine, self._index_settings)
            _record_settings(space, path / GENERATION_MANIFEST, self._index_settings, previous)
        except Exception as e:  # the binding raises plain Exception
            lock.release()
            if isinstance(e, VectorIndexError):
                raise
            hint = " (is another process, or another EdgeIndex, using it?)" if "WAL" in str(e) else ""
            raise VectorIndexError(f"cannot open the embedded index of space {space!r} at {path}{hint}: {e}") from e
        return _Shard(engine, generation.dim, path, generation.number, lock)

    @staticmethod
    def _legacy_generation(layout: SpaceLayout) -> Generation:
        return Generation(layout.space, 0, layout.pointer().dim, layout.path)

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


def _close_shard(shard: _Shard, *, flush: bool = True) -> None:
    try:
        try:
            if flush:
                shard.engine.flush()  # close() flushes too, but only logs a failure
        finally:
            shard.engine.close()
    except Exception as e:  # the binding raises plain Exception
        raise VectorIndexError(f"closing generation {shard.generation} at {shard.path} failed: {e}") from e
    finally:
        shard.lock.release()


def _close_quietly(space: str, shard: _Shard) -> None:
    """Close a shard replaced by another generation. No separate flush: its writes are in its log
    either way, and each engine call holds the GIL (a flush of a large shard is a stall)."""
    try:
        _close_shard(shard, flush=False)
    except VectorIndexError as e:
        log.warning("space %r: %s", space, e.message)


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


def engine_config(dim: int, settings: IndexSettings, *, indexing_threads: int = 0) -> qe.EdgeConfig:
    """The qdrant-edge shard config for `dim`-d cosine vectors built with `settings`
    (`indexing_threads`: threads an optimize() may build HNSW with, 0: one per CPU)."""
    quantization: Any = None
    if settings.quantization == "int8":
        quantization = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
    elif settings.quantization == "binary":
        # One bit per stored dimension; the query keeps 8 bits (asymmetric), which at 384-d about
        # doubles recall over 1-bit queries for the same memory (docs/scale.md).
        quantization = qe.BinaryQuantizationConfig(
            always_ram=True, query_encoding=qe.BinaryQuantizationQueryEncoding.Scalar8Bits
        )
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(
            m=settings.hnsw_m,
            ef_construct=settings.hnsw_ef_construct,
            full_scan_threshold=settings.full_scan_threshold_kb,
            max_indexing_threads=indexing_threads,
        ),
        quantization_config=quantization,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=settings.indexing_threshold_kb),
    )


def search_params(settings: IndexSettings) -> qe.SearchParams:
    """What every approximate search sends: HNSW ef and, on a quantized index, rescoring."""
    if not settings.quantized:
        return qe.SearchParams(hnsw_ef=settings.search_ef)
    rescore = settings.quantization_rescore
    # Oversampling only widens the candidates that rescoring re-ranks; without it, it does nothing.
    oversampling = settings.quantization_oversampling if rescore else None
    return qe.SearchParams(
        hnsw_ef=settings.search_ef,
        quantization=qe.QuantizationSearchParams(rescore=rescore, oversampling=oversampling),
    )


def _payload_paths(settings: IndexSettings) -> list[str]:
    """Engine path of each keyword index; the metadata paths are quoted like the filters'."""
    return ["modality", "item_id", *(f'metadata."{key}"' for key in settings.payload_indexes)]


def _ensure_payload_indexes(engine: qe.EdgeShard, settings: IndexSettings) -> None:
    # The engine reports `metadata."a"` as `metadata.a` (quotes only where needed): compare both.
    existing = set(engine.info().payload_schema)
    for path in _payload_paths(settings):
        if path in existing or path.replace('"', "") in existing:
            continue
        engine.update(qe.UpdateOperation.create_field_index(path, qe.PayloadSchemaType.Keyword))


def _engine_build_settings(engine_config_file: Path) -> dict[str, Any]:
    """The build settings (IndexSettings.build() names) a shard's edge_config.json records; a shard
    made before xmodal set them has the engine's defaults (m 16, ef_construct 100, no quantization)."""
    try:
        config = json.loads(engine_config_file.read_text())
    except (OSError, ValueError) as e:
        raise VectorIndexError(f"cannot read {engine_config_file}: {e}") from e
    hnsw = config.get("hnsw_config") or {}
    quantization = config.get("quantization_config") or {}
    kind = "int8" if "scalar" in quantization else "binary" if "binary" in quantization else "none"
    return {
        "hnsw_m": hnsw.get("m", 16),
        "hnsw_ef_construct": hnsw.get("ef_construct", 100),
        "quantization": kind if kind != "none" or not quantization else "other",
        "full_scan_threshold_kb": hnsw.get("full_scan_threshold", 10_000),
    }


def _record_settings(
    space: str, manifest: Path, settings: IndexSettings, previous: dict[str, Any] | None = None
) -> None:
    """Record the build settings the shard is now configured with, and say what a change means.

    `previous`: what the shard's engine config said before this open, for a shard whose manifest
    records no build yet (made before xmodal recorded them)."""
    record = _read_manifest(manifest)
    wanted = settings.build()
    built = record.get("index_built")
    if built is None and previous is not None:
        record["index_built"] = built = previous
    if built is None:  # a new shard: nothing built yet
        record["index_built"] = wanted
    elif changes := settings.build_changes(built):
        log.warning(
            "space %r: index settings differ from those its segments were built with (%s); they apply to new "
            "segments now and the next optimize (`xmodal optimize`, or the background build of `xmodal up`) "
            "rebuilds the old ones from the stored vectors; no `xmodal reindex` is needed for this",
            space,
            describe_changes(changes),
        )
    record["index"] = wanted
    record["payload_indexes"] = list(settings.payload_indexes)
    if record != _read_manifest(manifest):
        _write_manifest(manifest, record)


def _record_built(manifest: Path) -> None:
    record = _read_manifest(manifest)
    if record.get("index") is not None and record.get("index_built") != record["index"]:
        record["index_built"] = record["index"]
        _write_manifest(manifest, record)


def _read_manifest(manifest: Path) -> dict[str, Any]:
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise VectorIndexError(f"cannot read {manifest}: {e}") from e
    if not isinstance(record, dict):
        raise VectorIndexError(f"{manifest} is not a JSON object")
    return record


def _write_manifest(manifest: Path, record: dict[str, Any]) -> None:
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, manifest)  # atomic: a reader never sees half a manifest
