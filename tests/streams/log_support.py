"""Helpers of the verify and reindex tests: a live node on either index backend, plain producers,
and waiting until the ingest group has committed the end of the media topic."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from confluent_kafka import Producer

from xmodal.config import Settings
from xmodal.indexer.base import VectorIndex
from xmodal.streams.logread import committed_offsets, end_offsets, ingest_group

BACKENDS = ("edge", "qdrant-local")


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def producer(broker: str) -> Producer:
    # A plain client, as any producer would be: the documented JSON and murmur2 keys.
    return Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random", "linger.ms": 5})


def text_event(item_id: str, text: str, **extra: Any) -> bytes:
    return orjson.dumps({"id": item_id, "modality": "text", "text": text, **extra})


def group_caught_up(settings: Settings, broker: str, group: str | None = None, ends: Mapping[int, int] | None = None) -> bool:
    """The group committed up to `ends` (default: the end of the media topic now)."""
    ends = ends if ends is not None else end_offsets(settings, broker, settings.media_topic)
    committed = committed_offsets(settings, broker, settings.media_topic, group or ingest_group(settings))
    return all(committed.get(p, 0) >= end for p, end in ends.items())


def remote_index(topic_prefix: str) -> VectorIndex:
    """qdrant-client's local mode: the server backend's code path, in process."""
    from qdrant_client import QdrantClient

    from xmodal.indexer.remote import QdrantIndex

    return QdrantIndex(QdrantClient(":memory:"), collection_prefix=topic_prefix)
