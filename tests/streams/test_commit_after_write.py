"""Offsets move only after the index acknowledged the write: an index outage loses nothing.

The test uses batches of 4, so that when the first batch fails there are events read behind it:
that is what CPU load did in the CI run where the restarted node indexed 0 of 40 (faust acked the
events read after the failed batch and, the group having no committed offset yet, committed past
the batch; see xmodal/streams/app.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

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
               filter: Mapping[str, Any] | None = None, with_thumbnails: bool = False, exact: bool = False) -> list[Hit]:
        return self.inner.search(
            space, vector, k, modalities=modalities, filter=filter, with_thumbnails=with_thumbnails, exact=exact
        )

    def count(self, space: str) -> int:
        return self.inner.count(space)

    def close(self) -> None:
        self.inner.close()


def committed_offsets(broker: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (negative: none committed)."""
    admin = AdminClient({"bootstrap.servers": broker})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)}
    finally:
        consumer.close()


def test_an_index_outage_stops_the_worker_and_a_restart_indexes_everything(
    broker: str, make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(kafka_bootstrap=broker, batch_size="4")
    group = f"{settings.topic_prefix}-ingest"
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
    # Nothing was committed: not the failed batch, nor the events read behind it.
    assert all(offset < 0 for offset in committed_offsets(broker, group, settings.media_topic).values())

    restarted = OutageIndex(EdgeIndex(tmp_path / "idx"), down=False)
    with Node(settings, Roles(ingest=True, query=False), index=restarted):
        deadline = time.monotonic() + 60
        while restarted.count("mini") < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert restarted.count("mini") == 40  # the batch that failed was replayed, nothing lost
