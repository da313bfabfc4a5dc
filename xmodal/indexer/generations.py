"""Index generations of the embedded index: the on-disk layout, the durable serving pointer, locks.

A space's vectors live in one generation at a time. A new generation (an HNSW build, a reindex
with another model or other settings) is written beside the serving one while that one serves,
then the durable pointer moves to it in one atomic rename; the old one stays for rollback until
dropped. Layout under the index root:

    <root>/<space>/
        xmodal-space.json      the pointer: {"space", "dim", "distance", "serving": 3, "switched_at"}
        g000003/               a generation: one qdrant-edge shard (wal/, segments/, edge_config.json)
            xmodal-generation.json   {"generation", "dim", "model", "settings", "state", "origin",
                                      "created_at", "indexed_points"}
            xmodal-generation.lock   flock-ed by the one EdgeIndex (any process) that has it open
        g000004/               e.g. a build or reindex in progress (state "building")

- `state`: "building" until its writer calls `mark_ready`; only a ready generation can serve.
- `model`: the fingerprint of the encoder that made its vectors (a string its creator passes; None
  for generations made before fingerprints existed); `settings`: the index settings it was made with.
- `origin`: who made it ("space": the first one; "build": a background HNSW build; e.g. "reindex").
  A "build" generation still building and open nowhere is abandoned (its builder died): the owner of
  the space deletes it on open. Other origins are left to their maker to resume or drop.
- `indexed_points`: points covered by its last HNSW build (0: never built; searches scan exactly).

Legacy layout (before generations): the shard directly in `<root>/<space>/` with a
`xmodal-space.json` that has no "serving". `migrate_legacy` moves its entries into `g000000/` one
atomic rename at a time and then writes the pointer; a crash midway is finished by the next call.

Writes are crash-safe: every JSON file is written to a temporary file, fsynced and renamed over the
old one, then the directory is fsynced. The pointer is only ever moved to a ready generation.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from xmodal.errors import VectorIndexError
from xmodal.pidlock import PidLock

__all__ = [
    "ENGINE_CONFIG",
    "GENERATION_MANIFEST",
    "SPACE_MANIFEST",
    "Generation",
    "GenerationBusy",
    "GenerationLock",
    "Pointer",
    "SpaceLayout",
    "generation_name",
]

SPACE_MANIFEST = "xmodal-space.json"
GENERATION_MANIFEST = "xmodal-generation.json"
GENERATION_LOCK = "xmodal-generation.lock"
ENGINE_CONFIG = "edge_config.json"  # written by qdrant-edge when a shard is created
LEGACY_GENERATION = 0

State = Literal["building", "ready"]
_GENERATION_DIR = re.compile(r"^g(\d{6})$")


def generation_name(number: int) -> str:
    return f"g{number:06d}"


class GenerationBusy(VectorIndexError):
    """The generation is open in another EdgeIndex (this process or another one)."""


@dataclass(frozen=True)
class Pointer:
    """What `xmodal-space.json` says: the serving generation and its dimension."""

    space: str
    dim: int
    serving: int
    switched_at: float | None = None


@dataclass(frozen=True)
class Generation:
    space: str
    number: int
    dim: int
    path: Path
    model: str | None = None
    settings: Mapping[str, Any] | None = None
    state: State = "ready"
    origin: str = "space"
    created_at: float = 0.0
    indexed_points: int = 0

    @property
    def name(self) -> str:
        return generation_name(self.number)

    def manifest(self) -> dict[str, Any]:
        return {
            "generation": self.number,
            "space": self.space,
            "dim": self.dim,
            "model": self.model,
            "settings": dict(self.settings) if self.settings is not None else None,
            "state": self.state,
            "origin": self.origin,
            "created_at": self.created_at,
            "indexed_points": self.indexed_points,
        }


class GenerationLock:
    """An exclusive flock on a generation's lock file, held while one EdgeIndex has it open.

    It mirrors the engine's own WAL lock with a clear message (and the holder's pid), and lets
    drop/cleanup tell an abandoned generation from one in use without loading its shard."""

    def __init__(self, generation: Generation) -> None:
        self._generation = generation
        self._lock = PidLock(generation.path / GENERATION_LOCK)

    def acquire(self) -> GenerationLock:
        owner = self._lock.try_acquire()
        if owner is not None:
            raise GenerationBusy(
                f"generation {self._generation.name} of space {self._generation.space!r} at "
                f"{self._generation.path} is in use by another process, or another EdgeIndex (pid {owner})"
            )
        return self

    def release(self) -> None:
        self._lock.release()


class SpaceLayout:
    """The files of one space under the index root. Reads and writes manifests; opens no shard."""

    def __init__(self, root: Path, space: str) -> None:
        self.space = space
        self.path = Path(root) / space

    @property
    def manifest_path(self) -> Path:
        return self.path / SPACE_MANIFEST

    # -- the pointer ----------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def is_legacy(self) -> bool:
        """A pre-generation space: a manifest without "serving" (its shard at the top level)."""
        return self.exists() and "serving" not in _read_json(self.manifest_path)

    def has_orphan_shard(self) -> bool:
        """A shard at the top level but no manifest: space and dimension unknown."""
        return not self.exists() and (self.path / ENGINE_CONFIG).exists()

    def pointer(self) -> Pointer:
        data = _read_json(self.manifest_path)
        try:
            dim, serving = data["dim"], data.get("serving", LEGACY_GENERATION)
            switched_at = data.get("switched_at")
        except (KeyError, AttributeError) as e:
            raise VectorIndexError(f"{self.manifest_path} lacks {e}") from e
        if not _positive_int(dim) or not _non_negative_int(serving):
            raise VectorIndexError(f"{self.manifest_path} records an invalid dim {dim!r} or generation {serving!r}")
        return Pointer(self.space, dim, serving, switched_at)

    def write_pointer(self, serving: int, dim: int) -> Pointer:
        pointer = Pointer(self.space, dim, serving, time.time())
        body = {"space": self.space, "dim": dim, "distance": "cosine", "serving": serving, "switched_at": pointer.switched_at}
        _write_json(self.manifest_path, body)
        return pointer

    def stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever the pointer file is replaced: cheap to poll (one stat)."""
        try:
            st = self.manifest_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # -- generations ---------------------------------------------------------------------------

    def generation_path(self, number: int) -> Path:
        return self.path / generation_name(number)

    def generation(self, number: int) -> Generation:
        path = self.generation_path(number)
        manifest = path / GENERATION_MANIFEST
        if not manifest.exists():
            raise VectorIndexError(f"space {self.space!r} has no generation {number} ({manifest} is missing)")
        data = _read_json(manifest)
        try:
            generation = Generation(
                space=self.space,
                number=number,
                dim=data["dim"],
                path=path,
                model=data.get("model"),
                settings=data.get("settings"),
                state=data["state"],
                origin=data.get("origin", "space"),
                created_at=float(data.get("created_at", 0.0)),
                indexed_points=int(data.get("indexed_points", 0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise VectorIndexError(f"cannot read {manifest}: {e!r}") from e
        if not _positive_int(generation.dim) or generation.state not in ("building", "ready"):
            raise VectorIndexError(f"{manifest} records an invalid dim or state")
        return generation

    def numbers(self) -> list[int]:
        """Generation numbers on disk (directories with a manifest), ascending."""
        if not self.path.is_dir():
            return []
        found = []
        for entry in self.path.iterdir():
            match = _GENERATION_DIR.match(entry.name)
            if match and (entry / GENERATION_MANIFEST).exists():
                found.append(int(match.group(1)))
        return sorted(found)

    def generations(self) -> list[Generation]:
        return [self.generation(n) for n in self.numbers()]

    def create_generation(
        self,
        dim: int,
        *,
        model: str | None,
        settings: Mapping[str, Any] | None,
        origin: str,
        state: State = "building",
        number: int | None = None,
    ) -> Generation:
        """A new empty generation directory with its manifest (no shard yet: the opener creates it).

        The number is the next free one; mkdir is atomic, so two creators never share one."""
        self.path.mkdir(parents=True, exist_ok=True)
        candidate = number if number is not None else max([*self._dir_numbers(), LEGACY_GENERATION]) + 1
        while True:
            path = self.generation_path(candidate)
            try:
                path.mkdir()
                break
            except FileExistsError:
                if number is not None:
                    raise VectorIndexError(f"generation {candidate} of space {self.space!r} exists already") from None
                candidate += 1
        generation = Generation(
            space=self.space,
            number=candidate,
            dim=dim,
            path=path,
            model=model,
            settings=dict(settings) if settings is not None else None,
            state=state,
            origin=origin,
            created_at=time.time(),
        )
        self.write_generation(generation)
        return generation

    def write_generation(self, generation: Generation) -> None:
        """Write the manifest, keeping keys others recorded in it (e.g. the index build settings)."""
        path = generation.path / GENERATION_MANIFEST
        record = _read_json(path) if path.exists() else {}
        record.update(generation.manifest())
        _write_json(path, record)

    def mark_ready(self, number: int) -> Generation:
        generation = replace(self.generation(number), state="ready")
        self.write_generation(generation)
        return generation

    def record_indexed(self, number: int, points: int) -> Generation:
        generation = replace(self.generation(number), indexed_points=points)
        self.write_generation(generation)
        return generation

    def delete_generation(self, number: int) -> None:
        """Remove a generation's directory; refuses the serving one and one open anywhere."""
        if self.exists() and self.pointer().serving == number:
            raise VectorIndexError(f"generation {number} serves space {self.space!r}; switch to another one first")
        generation = self.generation(number)
        with self.locked(generation):
            # Manifest first: a crash while deleting leaves a directory that is no generation.
            (generation.path / GENERATION_MANIFEST).unlink()
            shutil.rmtree(generation.path, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self, generation: Generation) -> Iterator[None]:
        lock = GenerationLock(generation).acquire()
        try:
            yield
        finally:
            lock.release()

    def abandoned(self) -> list[Generation]:
        """Background builds that never finished and that no process has open."""
        serving = self.pointer().serving if self.exists() else None
        found = []
        for generation in self.generations():
            if generation.state != "building" or generation.origin != "build" or generation.number == serving:
                continue
            try:
                with self.locked(generation):
                    found.append(generation)
            except GenerationBusy:
                continue
        return found

    def remove_strays(self) -> None:
        """Directories named like generations without a manifest: a creation or deletion cut short."""
        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            if _GENERATION_DIR.match(entry.name) and not (entry / GENERATION_MANIFEST).exists():
                if entry.name == generation_name(LEGACY_GENERATION) and self.is_legacy():
                    continue  # a migration in progress: migrate_legacy finishes it
                shutil.rmtree(entry, ignore_errors=True)

    # -- legacy --------------------------------------------------------------------------------

    def migrate_legacy(self) -> None:
        """Move a pre-generation shard into generation 0 and write the pointer. Idempotent.

        The caller makes sure no process has the shard open (by loading and closing it)."""
        dim = self.pointer().dim
        target = self.generation_path(LEGACY_GENERATION)
        target.mkdir(exist_ok=True)
        for entry in list(self.path.iterdir()):
            if entry.name in (SPACE_MANIFEST, target.name) or entry.name.endswith(".tmp"):
                continue
            if _GENERATION_DIR.match(entry.name):
                continue
            os.replace(entry, target / entry.name)  # one atomic rename per entry
        if not (target / GENERATION_MANIFEST).exists():
            self.write_generation(
                Generation(self.space, LEGACY_GENERATION, dim, target, state="ready", origin="space", created_at=time.time())
            )
        _fsync_dir(target)
        self.write_pointer(LEGACY_GENERATION, dim)

    def _dir_numbers(self) -> list[int]:
        if not self.path.is_dir():
            return []
        return [int(m.group(1)) for e in self.path.iterdir() if (m := _GENERATION_DIR.match(e.name))]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VectorIndexError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise VectorIndexError(f"{path} holds no JSON object")
    return data


def _write_json(path: Path, body: Mapping[str, Any]) -> None:
    """Atomic and durable: a reader sees the old file or the new one, and a crash keeps one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(body) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
