"""Background HNSW builds of the embedded index, in a builder process, without stalling the server.

qdrant-edge builds HNSW only in `optimize()`, which holds the GIL for the whole build (minutes at
100k points): inside the serving process it would stop every search, write and Kafka heartbeat. So
the serving process never calls it. A build makes a new generation instead (xmodal.indexer.generations):

    serving process                                   builder process (`python -m xmodal.indexer.builder`)
    create generation N (state building, origin build)
    journal every write to the space from now on
    scroll the serving generation in pages  ──stdin──►  EdgeIndex(root, pin={space: N}): write the points
                                                        optimize() with its own GIL, at nice 10
                                                        flush, close, report {"points", "indexed"}, exit
    adopt_build: open N, replay the journal in order (writes held only for its last entries),
    move the pointer, close the old generation after its in-flight searches, delete it

Replaying the journal after the snapshot is exact: the journal starts before the first page is read,
so every point's final state is its snapshot state followed by its journaled writes, in order.
A crash or kill at any moment leaves the serving generation untouched; the half-built generation
(state "building", origin "build") is deleted when the space is next opened, or at once on failure.

`AutoBuild` is what `xmodal up` runs: it starts a build for a space once it holds at least
`optimize_after_points` points not covered by the last build (and at least a quarter of those
covered, so that rebuilding everything each time stays linear in the gallery's growth).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import orjson

from xmodal.errors import VectorIndexError, XmodalError
from xmodal.indexer.edge import EdgeIndex
from xmodal.indexer.generations import Generation
from xmodal.indexer.settings import IndexSettings

if TYPE_CHECKING:
    from xmodal.config import Settings

__all__ = ["AutoBuild", "Build", "BuildResult", "auto_build", "build_due"]

log = logging.getLogger(__name__)

PAGE = 64  # points per scroll page: reading and converting one holds the server's GIL (~1.5 ms at 384-d)
BUILDER_NICE = 10  # the build yields the CPU to the serving process's searches
# HNSW threads of the builder: on a small machine all of them would leave searches no core.
BUILDER_THREADS = max(1, (os.cpu_count() or 2) // 2)
_FRAME = struct.Struct(">I")


@dataclass(frozen=True)
class BuildResult:
    space: str
    generation: int
    points: int  # streamed from the serving generation
    replayed: int  # journaled writes applied after the snapshot
    indexed: int  # vectors in HNSW after the build (the engine's count)
    seconds: float


def build_due(count: int, indexed: int, threshold: int) -> bool:
    """Whether a space of `count` points, `indexed` of them covered by the last build, needs one."""
    if threshold <= 0:
        return False
    return count - indexed >= max(threshold, indexed // 4)


class Build:
    """One background build of `space`: `start()`, then `wait()` (or `cancel()`)."""

    def __init__(self, index: EdgeIndex, space: str, *, page: int = PAGE, nice: int = BUILDER_NICE) -> None:
        self._index = index
        self._space = space
        self._page = page
        self._nice = nice
        self._process: subprocess.Popen[bytes] | None = None
        self._generation: Generation | None = None
        self._journal_cm: Any = None
        self._journal: list[Any] = []
        self._streamed = 0
        self._stream_error: BaseException | None = None
        self._streamer: threading.Thread | None = None
        self._started = 0.0
        self._abandon_lock = threading.Lock()
        self._abandoned = False
        self._source: int | None = None  # the serving generation the snapshot is taken from
        self._out: IO[bytes] | None = None
        self._err: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def generation(self) -> Generation | None:
        return self._generation

    def start(self) -> Build:
        index, space = self._index, self._space
        serving = index.serving_generation(space)
        self._source = serving.number
        self._started = time.monotonic()
        self._generation = index.create_generation(
            space, serving.dim, model=serving.model, settings=index.index_settings.to_dict(), origin="build"
        )
        header = {
            "root": str(index.root),
            "space": space,
            "generation": self._generation.number,
            "dim": serving.dim,
            "settings": index.index_settings.to_dict(),
            "nice": self._nice,
            "threads": BUILDER_THREADS,
        }
        try:
            # Output to files, not pipes: a builder blocked on a full pipe nobody reads would hang.
            self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "xmodal.indexer.builder"],
                stdin=subprocess.PIPE,
                stdout=self._out,
                stderr=self._err,
            )
            # The journal starts before the first page is read: see the module docstring.
            self._journal_cm = index.journal(space)
            self._journal = self._journal_cm.__enter__()
            self._streamer = threading.Thread(
                target=self._stream, args=(header,), name=f"xmodal-build-{space}", daemon=True
            )
            self._streamer.start()
        except BaseException:
            self._abandon()
            raise
        return self

    def wait(self, timeout: float | None = None) -> BuildResult:
        """Wait for the builder, then adopt its generation (the switch). Raises VectorIndexError if
        the build failed; the serving generation is untouched then and the new one removed."""
        process = self._process
        if process is None or self._generation is None:
            raise VectorIndexError("the build was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if self._streamer is not None:  # it closes the builder's stdin when done (or when it died)
                self._streamer.join(timeout)
            try:
                process.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise VectorIndexError(f"the HNSW build of space {self._space!r} did not finish in {timeout} s") from None
            out, err = _read_all(self._out), _read_all(self._err)
            if process.returncode != 0 or self._stream_error is not None:
                why = err.decode(errors="replace").strip().splitlines()[-3:] or [f"exit status {process.returncode}"]
                if self._stream_error is not None and process.returncode == 0:
                    why = [repr(self._stream_error)]
                raise VectorIndexError(f"the HNSW build of space {self._space!r} failed: {' / '.join(why)}")
            report = json.loads(out.decode().strip().splitlines()[-1])
            replayed = len(self._journal)
            self._index.adopt_build(self._space, self._generation.number, self._journal, replaces=self._source)
        except BaseException:
            self._abandon()
            raise
        self._close_journal()
        if self._source is not None:  # only the one it replaced: others may be a reindex's, or a rollback
            self._drop_when_free(self._source)
        return BuildResult(
            space=self._space,
            generation=self._generation.number,
            points=self._streamed,
            replayed=replayed,
            indexed=int(report["indexed"]),
            seconds=time.monotonic() - self._started,
        )

    def cancel(self) -> None:
        """Stop the builder and remove its generation; the serving generation is untouched."""
        self._abandon()

    # -- internals ----------------------------------------------------------------------------

    def _stream(self, header: dict[str, Any]) -> None:
        """Send the header, then the serving generation's points page by page, then an end frame."""
        assert self._process is not None and self._process.stdin is not None
        pipe = self._process.stdin
        try:
            _send(pipe, orjson.dumps(header))
            offset: Any = None
            while True:
                records, offset = self._index.scroll(self._space, offset, self._page, with_vectors=True)
                if records:
                    ids = [r.id for r in records]
                    vectors = np.asarray([r.vector for r in records], dtype=np.float32)
                    _send(pipe, orjson.dumps({"ids": ids, "payloads": [r.payload for r in records]}))
                    _send(pipe, vectors.tobytes())
                    self._streamed += len(records)
                if offset is None:
                    break
                time.sleep(0)  # let a waiting search take the GIL between pages
            _send(pipe, b"")
        except (OSError, ValueError, XmodalError) as e:  # a dead builder (broken pipe), a closed index
            self._stream_error = e
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def _close_journal(self) -> None:
        for file in (self._out, self._err):
            if file is not None:
                file.close()
        self._out = self._err = None
        if self._journal_cm is not None:
            self._journal_cm.__exit__(None, None, None)
            self._journal_cm = None

    def _abandon(self) -> None:
        with self._abandon_lock:  # cancel() (another thread) and a failing wait() may both get here
            if self._abandoned:
                return
            self._abandoned = True
        self._close_journal()
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if self._streamer is not None:
            self._streamer.join(timeout=10)
        if self._generation is not None:
            try:
                self._index.drop_generation(self._space, self._generation.number)
            except XmodalError as e:  # it is removed when the space is next opened instead
                log.warning("space %r: could not remove the failed build's generation now: %s", self._space, e.message)

    def _drop_when_free(self, number: int) -> None:
        """The replaced generation closes after its last in-flight search: retry for a few seconds."""
        deadline = time.monotonic() + 10
        while True:
            try:
                self._index.drop_generation(self._space, number)
                return
            except XmodalError as e:
                if time.monotonic() > deadline:
                    log.warning("space %r: generation %d kept: %s", self._space, number, e.message)
                    return
                time.sleep(0.05)


class AutoBuild:
    """What `xmodal up` runs: a thread that builds a space's HNSW in the background when due."""

    def __init__(
        self, index: EdgeIndex, spaces: Sequence[str], threshold: int, *, check_interval_s: float = 30.0
    ) -> None:
        self._index = index
        self._spaces = list(spaces)
        self._threshold = threshold
        self._interval = check_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._build: Build | None = None
        self._lock = threading.Lock()
        self.results: list[BuildResult] = []

    def start(self) -> AutoBuild:
        if self._threshold > 0 and self._spaces:
            self._thread = threading.Thread(target=self._run, name="xmodal-autobuild", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            build = self._build
        if build is not None:
            build.cancel()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def check(self) -> None:
        """Build every space that is due, one after the other (also called by the thread)."""
        for space in self._spaces:
            if self._stop.is_set():
                return
            try:
                count = self._index.count(space)
                indexed = self._index.serving_generation(space).indexed_points
            except XmodalError:
                continue  # no collection yet
            if not build_due(count, indexed, self._threshold):
                continue
            log.info("space %r: building HNSW over %d points in the background", space, count)
            build = Build(self._index, space)
            with self._lock:
                if self._stop.is_set():
                    return
                self._build = build
            try:
                result = build.start().wait()
                self.results.append(result)
                log.info(
                    "space %r: now serving generation %d, HNSW over %d vectors (%d writes replayed) in %.1f s",
                    space,
                    result.generation,
                    result.indexed,
                    result.replayed,
                    result.seconds,
                )
            except XmodalError as e:
                if not self._stop.is_set():
                    log.warning("space %r: background HNSW build failed, searches stay exact: %s", space, e.message)
            finally:
                with self._lock:
                    self._build = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()


def auto_build(settings: Settings, index: object) -> AutoBuild | None:
    """The background builds `xmodal up` runs on its embedded index (None: a server, or disabled)."""
    if not isinstance(index, EdgeIndex) or settings.optimize_after_points <= 0:
        return None
    return AutoBuild(index, settings.spaces, settings.optimize_after_points).start()


def _read_all(file: IO[bytes] | None) -> bytes:
    if file is None:
        return b""
    file.seek(0)
    return file.read()


def _send(pipe: IO[bytes], body: bytes) -> None:
    pipe.write(_FRAME.pack(len(body)))
    pipe.write(body)


def _receive(pipe: IO[bytes]) -> bytes:
    head = pipe.read(_FRAME.size)
    if len(head) != _FRAME.size:
        raise VectorIndexError("the serving process closed the stream before its end")
    (size,) = _FRAME.unpack(head)
    body = pipe.read(size)
    if len(body) != size:
        raise VectorIndexError("the serving process closed the stream mid-frame")
    return body


def _build_main() -> int:
    """The builder process: fill the pinned generation from stdin, optimize it, report, exit."""
    from pathlib import Path

    stdin = sys.stdin.buffer
    header = orjson.loads(_receive(stdin))
    os.nice(int(header.get("nice", BUILDER_NICE)))
    space, number, dim = header["space"], int(header["generation"]), int(header["dim"])
    settings = IndexSettings.from_dict(header["settings"])
    threads = int(header.get("threads", BUILDER_THREADS))
    index = EdgeIndex(Path(header["root"]), index_settings=settings, pin={space: number}, indexing_threads=threads)
    try:
        index.ensure_collection(space, dim)
        while meta := _receive(stdin):
            chunk = orjson.loads(meta)
            vectors = np.frombuffer(_receive(stdin), dtype=np.float32).reshape(-1, dim)
            index.write_records(space, chunk["ids"], vectors, chunk["payloads"])
        index.optimize(space)
        indexed = index.index_report(space)["indexed_vectors"]
        points = index.count(space)
    finally:
        index.close()
    print(json.dumps({"points": points, "indexed": indexed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_build_main())
