"""Index generations on a Qdrant server: one collection per generation behind an alias.

The same idea as the embedded layout (xmodal.indexer.generations), with Qdrant's own atomic switch:

    alias       <prefix>_<space>            what every search and write of a serving process names
    collection  <prefix>_<space>__g000001   a generation; its collection metadata records
                                            {"xmodal": {"generation", "dim", "model", "settings",
                                                        "state", "origin", "created_at"}}

`switch` repoints the alias in one `update_collection_aliases` call (delete + create, applied
atomically by the server), so every process follows at once and no request fails. A writer of a new
generation uses `QdrantIndex(client, prefix, pin={space: n})`. Collection metadata needs Qdrant 1.16+.

Collections made before generations (a real collection named `<prefix>_<space>`) keep working as
generation 0. An alias cannot take the name of a collection, so the first switch away from one
deletes it (`drop_legacy=True`: no rollback to it, and requests in the moment between the delete and
the alias fail once and are retried by the caller's policy).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qdrant_client import models

from xmodal.errors import VectorIndexError
from xmodal.indexer import _common as common
from xmodal.indexer.generations import Generation
from xmodal.indexer.settings import IndexSettings

if TYPE_CHECKING:
    from xmodal.indexer.remote import QdrantIndex

__all__ = [
    "ServingCache",
    "collection_name",
    "create_generation",
    "create_space",
    "drop_generation",
    "generations",
    "claim",
    "metadata",
    "release",
    "switch",
    "update_metadata",
]

META_KEY = "xmodal"
LEGACY_GENERATION = 0


def collection_name(base: str, number: int) -> str:
    return f"{base}__g{number:06d}"


def _base(index: QdrantIndex, space: str) -> str:
    return f"{index._prefix}_{common.check_space(space)}"


def _plain(index: QdrantIndex, op: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A client call that takes no collection name, under the index's retry policy."""
    return index._call(op, "(cluster)", lambda _name, *a, **k: fn(*a, **k), *args, **kwargs)


def _aliases(index: QdrantIndex) -> dict[str, str]:
    response = _plain(index, "get_aliases", index._client.get_aliases)
    return {a.alias_name: a.collection_name for a in response.aliases}


def _collections(index: QdrantIndex) -> list[str]:
    return [c.name for c in _plain(index, "get_collections", index._client.get_collections).collections]


def _describe(index: QdrantIndex, space: str, name: str, number: int) -> Generation:
    info = index._call("get_collection", name, index._client.get_collection)
    meta = dict((info.config.metadata or {}).get(META_KEY) or {})
    params = info.config.params.vectors
    dim = params.size if isinstance(params, models.VectorParams) else 0
    return Generation(
        space=space,
        number=number,
        dim=int(meta.get("dim", dim)),
        path=Path(name),  # on a server: the collection's name
        model=meta.get("model"),
        settings=meta.get("settings"),
        state=meta.get("state", "ready"),
        origin=meta.get("origin", "space"),
        created_at=float(meta.get("created_at", 0.0)),
        indexed_points=int(info.indexed_vectors_count or 0),
    )


def generations(index: QdrantIndex, space: str) -> list[Generation]:
    base = _base(index, space)
    pattern = re.compile(re.escape(base) + r"__g(\d{6})$")
    found = []
    for name in _collections(index):
        if name == base:
            found.append(_describe(index, space, name, LEGACY_GENERATION))
        elif match := pattern.match(name):
            found.append(_describe(index, space, name, int(match.group(1))))
    return sorted(found, key=lambda g: g.number)


def serving_number(index: QdrantIndex, space: str) -> int:
    """The generation the alias names now (one get_aliases call; 0 for a pre-generation collection)."""
    target = _aliases(index).get(_base(index, space))
    match = re.search(r"__g(\d{6})$", target or "")
    return int(match.group(1)) if match else LEGACY_GENERATION


class ServingCache:
    """`serving_number` per space for the live writer's per-batch question "which generation do my
    writes go to now?", re-read from the server at most every `ttl_s` (one get_aliases call each),
    and at once after a switch made through this index.

    A switch made by another process (a reindex job) is seen within `ttl_s`: the handoff argument
    (xmodal/streams/handoff.py) allows that, since the replay it starts re-applies, in order, every
    event below the batch at which the switch was seen, whatever was written meanwhile."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._numbers: dict[str, tuple[float, int]] = {}  # space -> (read at, number)

    def number(self, index: QdrantIndex, space: str) -> int:
        now = time.monotonic()
        with self._lock:
            read_at, number = self._numbers.get(space, (-1e18, LEGACY_GENERATION))
        if now - read_at < self._ttl_s:
            return number
        number = serving_number(index, space)
        with self._lock:
            self._numbers[space] = (now, number)
        return number

    def forget(self, space: str) -> None:
        with self._lock:
            self._numbers.pop(space, None)


def serving_generation(index: QdrantIndex, space: str) -> Generation:
    base = _base(index, space)
    target = _aliases(index).get(base)
    if target is None:
        if base in _collections(index):
            return _describe(index, space, base, LEGACY_GENERATION)
        raise VectorIndexError(f"space {space!r} has no collection {base!r} at {index._where}")
    match = re.search(r"__g(\d{6})$", target)
    if match is None:
        raise VectorIndexError(f"alias {base!r} at {index._where} names {target!r}, which is no xmodal generation")
    return _describe(index, space, target, int(match.group(1)))


def create_generation(
    index: QdrantIndex,
    space: str,
    dim: int,
    *,
    model: str | None,
    settings: IndexSettings | Mapping[str, Any] | None,
    origin: str,
    state: str = "building",
    number: int | None = None,
) -> Generation:
    common.check_dim(dim)
    base = _base(index, space)
    if number is None:
        taken = [g.number for g in generations(index, space)]
        number = max([*taken, LEGACY_GENERATION]) + 1
    name = collection_name(base, number)
    build = settings if isinstance(settings, IndexSettings) else index._index_settings
    record = settings.to_dict() if isinstance(settings, IndexSettings) else (dict(settings) if settings else None)
    meta = {
        "generation": number,
        "dim": dim,
        "model": model,
        "settings": record,
        "state": state,
        "origin": origin,
        "created_at": time.time(),
    }
    from xmodal.indexer.remote import collection_config

    index._call(
        "create_collection",
        name,
        index._client.create_collection,
        vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
        metadata={META_KEY: meta},
        **collection_config(build),
    )
    return _describe(index, space, name, number)


def create_space(index: QdrantIndex, space: str, dim: int) -> None:
    """Generation 1 and the alias onto it, for a space that has no collection yet."""
    base = _base(index, space)
    name = collection_name(base, 1)
    try:
        if not index._call("collection_exists", name, index._client.collection_exists):
            create_generation(index, space, dim, model=None, settings=None, origin="space", state="ready", number=1)
        _plain(
            index,
            "update_collection_aliases",
            index._client.update_collection_aliases,
            change_aliases_operations=[
                models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=name, alias_name=base))
            ],
        )
    except VectorIndexError:
        # Another worker may have created it since we looked; then check it like any other.
        if not index._call("collection_exists", base, index._client.collection_exists):
            raise


def mark_ready(index: QdrantIndex, space: str, number: int) -> Generation:
    update_metadata(index, space, number, state="ready")
    return _describe(index, space, number_name(index, space, number), number)


def number_name(index: QdrantIndex, space: str, number: int) -> str:
    base = _base(index, space)
    return base if number == LEGACY_GENERATION else collection_name(base, number)


def metadata(index: QdrantIndex, space: str, number: int) -> dict[str, Any]:
    """Everything a generation's collection metadata records under "xmodal", keys of other layers
    (a reindex job, its handoff) included."""
    name = number_name(index, space, number)
    info = index._call("get_collection", name, index._client.get_collection)
    return dict((info.config.metadata or {}).get(META_KEY) or {})


def update_metadata(index: QdrantIndex, space: str, number: int, **keys: Any) -> dict[str, Any]:
    """Set keys of a generation's metadata, keeping the others. Read-modify-write: callers that may
    race write the same values (xmodal.streams.reindex_server), or own the key alone."""
    name = number_name(index, space, number)
    record = {**metadata(index, space, number), **keys}
    index._call("update_collection", name, index._client.update_collection, metadata={META_KEY: record})
    return record


def switch(index: QdrantIndex, space: str, number: int, *, drop_legacy: bool) -> None:
    base = _base(index, space)
    name = collection_name(base, number)
    target = _describe(index, space, name, number)
    if target.state != "ready":
        raise VectorIndexError(f"generation {number} of space {space!r} is still building; mark_ready first")
    operations: list[Any] = []
    if base in _aliases(index):
        operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=base)))
    elif base in _collections(index):
        if not drop_legacy:
            raise VectorIndexError(
                f"collection {base!r} at {index._where} predates generations and an alias cannot take its name: "
                f"switching deletes it (no rollback to it); pass drop_legacy=True to do so"
            )
        index._call("delete_collection", base, index._client.delete_collection)
    operations.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=name, alias_name=base)))
    _plain(index, "update_collection_aliases", index._client.update_collection_aliases, change_aliases_operations=operations)


def drop_generation(index: QdrantIndex, space: str, number: int) -> None:
    base = _base(index, space)
    name = base if number == LEGACY_GENERATION else collection_name(base, number)
    if _aliases(index).get(base) == name or (number == LEGACY_GENERATION and base not in _aliases(index)):
        raise VectorIndexError(f"generation {number} serves space {space!r}; switch to another one first")
    index._call("delete_collection", name, index._client.delete_collection)



def _claim_name(index: QdrantIndex, space: str, number: int, what: str) -> str:
    # "__g000005__switch" does not match a generation's name: generations() never lists it.
    return f"{collection_name(_base(index, space), number)}__{what}"


def claim(index: QdrantIndex, space: str, number: int, what: str) -> bool:
    """Take the claim `what` on a generation, atomically across processes: a tiny collection that
    create_collection refuses to make twice. False when someone else holds it."""
    name = _claim_name(index, space, number, what)
    try:
        index._call(
            "create_collection", name, index._client.create_collection,
            vectors_config=models.VectorParams(size=1, distance=models.Distance.COSINE),
        )
        return True
    except VectorIndexError:
        if index._call("collection_exists", name, index._client.collection_exists):
            return False
        raise


def release(index: QdrantIndex, space: str, number: int, what: str) -> None:
    name = _claim_name(index, space, number, what)
    if index._call("collection_exists", name, index._client.collection_exists):
        index._call("delete_collection", name, index._client.delete_collection)
