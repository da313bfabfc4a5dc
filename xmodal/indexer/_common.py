"""What both backends share, so that their semantics cannot drift: input checks, filter meaning,
hit decoding and the order of results.

Filter meaning (both backends):
- `modalities`: the payload field `modality` is one of them; an empty list matches nothing.
- `filter`: for every key, `metadata.<key>` equals the value. Values are str, int or bool and match
  only their own JSON type (`True` never matches `1`, `"1"` never matches `1`); a key is one metadata
  key, dots included (`{"a.b": 1}` looks at `metadata["a.b"]`, not `metadata["a"]["b"]`); a metadata
  list matches when any element equals the value (Qdrant's array semantics).

Order: by score (cosine similarity) descending, then by item id. Engines break exact ties by internal
offsets, which differ between backends and between runs, so `top_k` settles them here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xmodal.errors import ConfigError, DimensionMismatch, EncodeError, SchemaError
from xmodal.indexer.base import Hit, IndexPoint

MetadataValue = str | int | bool
THUMBNAIL_FIELD = "thumbnail"  # payload field of IndexPoint.thumbnail

# Space names become directory and collection names.
_SPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_space(space: str) -> str:
    if not _SPACE_NAME.match(space):
        raise ConfigError(
            f"invalid space name {space!r}: use 1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return space


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"invalid vector dimension {dim!r}: must be a positive integer")
    return dim


def check_points(space: str, dim: int, points: Sequence[IndexPoint]) -> NDArray[np.float32]:
    """The points' vectors as one (n, dim) float32 matrix, after checking every row.

    A wrong length means the encoder is not the one the collection was built for (DimensionMismatch);
    a non-finite or zero vector has no cosine, and the engines would store it silently and rank it
    with NaN or 0 scores, so it is refused as the encoder's failure on that item (EncodeError, DLQ).
    """
    for p in points:
        shape = np.shape(p.vector)
        if shape != (dim,):
            raise DimensionMismatch(
                f"space {space!r} holds {dim}-d vectors; item {p.item_id!r} has a vector of shape {shape}"
            )
    matrix = np.asarray([p.vector for p in points], dtype=np.float32).reshape(len(points), dim)
    usable = np.isfinite(matrix).all(axis=1) & (np.abs(matrix).max(axis=1, initial=0.0) > 0)
    for row in np.flatnonzero(~usable)[:1]:
        why = "a zero vector" if np.isfinite(matrix[row]).all() else "non-finite values"
        raise EncodeError(f"space {space!r}: item {points[row].item_id!r} has {why}; it cannot be indexed by cosine")
    return matrix


def check_query(space: str, dim: int, vector: NDArray[np.float32]) -> list[float]:
    if np.shape(vector) != (dim,):
        raise DimensionMismatch(f"space {space!r} holds {dim}-d vectors; the query vector has shape {np.shape(vector)}")
    query = np.asarray(vector, dtype=np.float32)
    if not np.isfinite(query).all():
        raise EncodeError(f"space {space!r}: the query vector has non-finite values")
    return query.tolist()  # type: ignore[no-any-return]


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SchemaError(f"k must be a positive integer, got {k!r}", code="k_out_of_range", field="k")
    return k


def check_modalities(modalities: Sequence[str] | None) -> list[str] | None:
    if modalities is None:
        return None
    if isinstance(modalities, str) or not all(isinstance(m, str) for m in modalities):
        raise SchemaError(f"modalities must be a list of strings, got {modalities!r}", code="invalid_modality", field="modalities")
    return list(modalities)


def metadata_conditions(filter: Mapping[str, Any] | None) -> list[tuple[str, MetadataValue]]:
    """(payload path, value) for each metadata equality; the key is quoted so dots stay in it."""
    conditions: list[tuple[str, MetadataValue]] = []
    for key, value in (filter or {}).items():
        if not isinstance(key, str) or not key or '"' in key:
            # Qdrant's JSON path has no escape for a double quote inside a quoted key.
            raise SchemaError(f"filter key {key!r} is not usable: non-empty string without '\"'", code="invalid_filter", field="filter")
        if not isinstance(value, str | int) or (isinstance(value, int) and not -(2**63) <= value < 2**63):
            raise SchemaError(
                f"filter value for {key!r} must be a string, a 64-bit integer or a boolean, got {value!r}",
                code="invalid_filter",
                field=f"filter.{key}",
            )
        conditions.append((f'metadata."{key}"', value))
    return conditions


def sample_matrix(dim: int, vectors: Sequence[Any]) -> NDArray[np.float32]:
    """Stored vectors (lists from either engine) as one (m, dim) float32 matrix."""
    return np.asarray(vectors, dtype=np.float32).reshape(len(vectors), dim)


def hit_from_payload(payload: Mapping[str, Any] | None, score: float) -> Hit:
    payload = payload or {}
    return Hit(
        item_id=str(payload.get("item_id", "")),
        score=float(score),
        modality=str(payload.get("modality", "")),
        metadata=dict(payload.get("metadata") or {}),
        thumbnail=thumbnail if isinstance(thumbnail := payload.get(THUMBNAIL_FIELD), dict) else None,
    )


def top_k(fetch: Callable[[int], list[Hit]], k: int) -> list[Hit]:
    """The k best hits ordered by (score desc, item id) from `fetch(limit)`, an engine query.

    Fetch one more than k; when that extra hit ties the k-th, the tie group may run past the limit,
    so fetch more until it is complete. The usual cost is a single query for k + 1.
    """
    limit = k + 1
    while True:
        hits = fetch(limit)
        if len(hits) < limit or hits[-1].score != hits[k - 1].score:
            break
        limit *= 2
    hits.sort(key=lambda h: (-h.score, h.item_id))
    return hits[:k]
