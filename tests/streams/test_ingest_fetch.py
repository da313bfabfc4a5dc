"""The ingest consumer's fetch settings (xmodal/streams/app.py): faust hard-codes aiokafka's
fetch_max_wait_ms at 1500, and tansu answers an empty fetch only when that wait ends, so the wait
comes from XMODAL_INGEST_FETCH_WAIT_MS; a backlog larger than the stream buffer on every partition
is still indexed whole (the consumer's own re-asking of its fetcher and wait for the buffer to drop)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from xmodal.runtime import Node, Roles
from xmodal.streams.app import IngestApp

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def node(broker: str, make_settings: Any) -> Iterator[Node]:
    # Batches of 4 and a stream buffer of 8 events: any backlog keeps every buffer full.
    settings = make_settings(kafka_bootstrap=broker, ingest_fetch_wait_ms="120", batch_size="4")
    with Node(settings, Roles(ingest=True, query=False)) as running:
        yield running


def _aiokafka_consumer(node: Node) -> Any:
    app = node._faust._app  # type: ignore[union-attr]
    assert isinstance(app, IngestApp)
    return app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]


def test_the_consumer_fetches_with_the_configured_wait_and_indexes_a_backlog_whole(node: Node, broker: str) -> None:
    consumer = _aiokafka_consumer(node)
    assert consumer._fetch_max_wait_ms == 120
    assert consumer._fetcher._fetch_max_wait_ms == 120  # what the fetch requests carry

    producer = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random"})
    ids = [f"backlog-{i}" for i in range(120)]
    for item_id in ids:
        producer.produce(
            node.settings.media_topic, key=item_id, value=orjson.dumps({"id": item_id, "modality": "text", "text": f"caption {item_id}"})
        )
    producer.flush(10)
    index = node.index
    assert index is not None
    deadline = time.monotonic() + 120
    while index.count("mini") < len(ids):
        assert node.failure is None, node.failure
        assert time.monotonic() < deadline, f"{index.count('mini')} of {len(ids)} indexed after 120 s"
        time.sleep(0.1)
    assert index.count("mini") == len(ids) and node.failure is None
