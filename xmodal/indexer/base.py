"""The VectorIndex protocol: what the streams and the query path need from a vector store.

One collection per space. Point id = UUID5 of the item id, so the same item has the same point id
in every space and an upsert replayed after a redelivery overwrites instead of duplicating.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["ITEM_NAMESPACE", "Hit", "IndexPoint", "VectorIndex", "point_id"]

# Fixed forever: changing it would orphan every indexed point.
ITEM_NAMESPACE = uuid.UUID("6f1c3b52-6a0e-5d3c-9f1e-2b7d8c4a9e10")


def point_id(item_id: str) -> str:
    return str(uuid.uuid5(ITEM_NAMESPACE, item_id))


@dataclass(frozen=True)
class IndexPoint:
    """One item's vector in one space, with the payload stored beside it."""

    item_id: str
    vector: NDArray[np.float32]
    modality: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    ts: int | None = None  # event time, ms since epoch
    source: Mapping[str, Any] | None = None  # {"topic", "partition", "offset"} of the event
    thumbnail: Mapping[str, str] | None = None  # xmodal/thumbnails.py; stored only when given
    model: str | None = None  # fingerprint of the encoder that made the vector; stored only when given
    index_settings: str | None = None  # IndexSettings' tag the generation was made with; stored only when given

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "item_id": self.item_id,
            "modality": self.modality,
            "metadata": dict(self.metadata),
            "ts": self.ts,
            "source": dict(self.source) if self.source is not None else None,
        }
        if self.thumbnail is not None:
            payload["thumbnail"] = dict(self.thumbnail)
        if self.model is not None:
            payload["model"] = self.model
        if self.index_settings is not None:
            payload["index_settings"] = self.index_settings
        return payload


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float
    modality: str
    metadata: dict[str, Any]
    thumbnail: dict[str, str] | None = None  # the payload's thumbnail, when one was stored


@runtime_checkable
class VectorIndex(Protocol):
    def ensure_collection(self, space: str, dim: int) -> None:
        """Create the space's collection if missing; raise DimensionMismatch if it has another dim."""
        ...

    def upsert(self, space: str, points: Sequence[IndexPoint]) -> None:
        """Write points and return only once the engine acknowledged them (wait=true)."""
        ...

    def delete(self, space: str, item_ids: Sequence[str]) -> None: ...

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
        """Nearest items by cosine; `modalities` keeps only those; `filter` is metadata equality.

        Stored thumbnails are read only `with_thumbnails` (they are most of a payload's bytes).
        `exact` scans every point with full vectors (no HNSW, no quantization): the ground truth
        that live recall monitoring compares the approximate answer with."""
        ...

    def sample(self, space: str, modality: str, n: int) -> NDArray[np.float32]:
        """Up to `n` stored vectors of `modality` as an (m, dim) matrix, m <= n.

        Points are taken in point-id order; ids are UUID5 hashes of item ids, so that order is
        independent of content and arrival: a fixed pseudo-random sample of the items.
        """
        ...

    def count(self, space: str) -> int: ...

    def close(self) -> None: ...
