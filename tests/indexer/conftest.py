"""Both index backends behind one fixture, so every index test runs on each of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from xmodal.indexer import EdgeIndex, QdrantIndex, VectorIndex

BACKENDS = ("edge", "qdrant-local")
PREFIX = "t"


class Backend:
    """One backend's store and the index handle on it; `reopen()` gives a fresh handle on the same store.

    edge: shards under a tmp dir; reopening closes the handle and loads the shards from disk.
    qdrant-local: qdrant-client's in-memory mode; reopening makes a new QdrantIndex on the same client.
    """

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.root = tmp_path / "index"
        self._client = QdrantClient(":memory:") if kind == "qdrant-local" else None
        self.index = self._open()

    def _open(self) -> VectorIndex:
        if self._client is not None:
            return QdrantIndex(self._client, collection_prefix=PREFIX)
        return EdgeIndex(self.root)

    def reopen(self) -> VectorIndex:
        if self.kind == "edge":
            self.index.close()
        self.index = self._open()
        return self.index

    def location(self, space: str) -> str:
        """What a DimensionMismatch must name so the user knows what to delete."""
        return str(self.root / space) if self.kind == "edge" else f"{PREFIX}_{space}"

    def close(self) -> None:
        self.index.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


@pytest.fixture
def index(backend: Backend) -> VectorIndex:
    return backend.index
