"""Offsets move only after the index acknowledged the write: an index outage loses nothing."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from xmodal.errors import VectorIndexError
from xmodal.indexer.base import Hit, IndexPoint
from xmodal.indexer.edge import EdgeIndex
from xmodal.runtime import Node, Roles

pytestmark = [pytest.mark.broker, pytest.mark.slow]


class OutageIndex:
    """The real embedded index, behind a switch that makes writes fail as an unreachable Qdrant does."""

    def __init__(self, inner: EdgeIndex, down: bool) -> None:
        self.inner, self.down = inner, down

    def ensure_collection(self, space: str, dim: int) -> None:
        self.inner.ensure_collection(space, dim)

    def upsert(self, space: str, points: Sequence[IndexPoint]) -> None:
        if self.down:
            raise VectorIndexError("connection refused (outage)")
        self.inner.upsert(space, points)

    def delete(self, space: str, item_ids: Sequence[str]) -> None:
        self.inner.delete(space, item_ids)

    def search(self, space: str, vector: Any, k: int, *, modalities: Sequence[str] | None = None,
               filter: Mapping[str, Any] | None = None) -> list[Hit]:
        return self.inner.search(space, vector, k, modalities=modalities, filter=filter)

    def count(self, space: str) -> int:
        return self.inner.count(space)

    def close(self) -> None:
        self.inner.close()


def test_an_index_outage_stops_the_worker_and_a_restart_indexes_everything(
    broker: str, make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(kafka_bootstrap=broker)
    p = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random"})
    for i in range(40):
        p.produce(settings.media_topic, key=f"d{i}",
                  value=orjson.dumps({"id": f"d{i}", "modality": "text", "text": f"document {i}"}))
    assert p.flush(30) == 0

    node = Node(settings, Roles(ingest=True, query=False), index=OutageIndex(EdgeIndex(tmp_path / "idx"), down=True))
    node.start()
    try:
        deadline = time.monotonic() + 60
        while node.failure is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert isinstance(node.failure, VectorIndexError)  # stopped, rather than acking what it could not write
    finally:
        node.stop()

    restarted = OutageIndex(EdgeIndex(tmp_path / "idx"), down=False)
    with Node(settings, Roles(ingest=True, query=False), index=restarted):
        deadline = time.monotonic() + 60
        while restarted.count("mini") < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert restarted.count("mini") == 40  # the batch that failed was replayed, nothing lost
