"""The streaming core end to end: plain confluent-kafka producers -> tansu -> Faust agent -> qdrant-edge."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from xmodal.runtime import Node, Roles

pytestmark = [pytest.mark.broker, pytest.mark.slow]

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "grey"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart", "moon", "arrow"]
SIZES = ["tiny", "small", "medium", "large", "huge"]


def captions(n: int) -> list[str]:
    out = [f"a {s} {c} {sh} on a plain background" for s in SIZES for c in COLOURS for sh in SHAPES]
    return out[:n]


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def node(broker: str, make_settings: Any) -> Iterator[Node]:
    settings = make_settings(kafka_bootstrap=broker)
    with Node(settings, Roles(ingest=True, query=False)) as running:
        yield running


def producer(broker: str, compression: str = "none") -> Producer:
    # A plain client: no project code on the producer side, only the documented JSON. Producers
    # choose their own compression; the agent must read every codec.
    return Producer(
        {"bootstrap.servers": broker, "partitioner": "murmur2_random", "linger.ms": 5, "compression.type": compression}
    )


def text_event(item_id: str, text: str, **extra: Any) -> bytes:
    return orjson.dumps({"id": item_id, "modality": "text", "text": text, **extra})


def test_text_events_are_searchable_by_their_own_vector_and_deletes_remove_them(node: Node, broker: str) -> None:
    settings, index, mini = node.settings, node.index, node.spaces["mini"]
    assert index is not None
    texts = captions(300)
    p = producer(broker, "zstd")
    for i, text in enumerate(texts):
        p.produce(settings.media_topic, key=f"doc-{i}", value=text_event(f"doc-{i}", text, metadata={"n": i}))
    assert p.flush(30) == 0

    wait_until(lambda: index.count("mini") == len(texts), what="300 points indexed")

    sample = list(range(0, 300, 7))
    vectors = mini.encode_texts([texts[i] for i in sample])
    for i, vector in zip(sample, vectors):
        hits = index.search("mini", vector, 3)
        assert hits[0].item_id == f"doc-{i}"
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[0].modality == "text"
        assert hits[0].metadata == {"n": i}

    # Redelivery is harmless: the same ids again leave one point each.
    for i in range(20):
        p.produce(settings.media_topic, key=f"doc-{i}", value=text_event(f"doc-{i}", texts[i], metadata={"n": i}))
    # Deletes both ways: a tombstone and an explicit op.
    for i in range(20, 30):
        p.produce(settings.media_topic, key=f"doc-{i}", value=None)
    for i in range(30, 40):
        p.produce(settings.media_topic, key=f"doc-{i}", value=orjson.dumps({"id": f"doc-{i}", "op": "delete"}))
    # Upsert then delete of a new item in quick succession: the delete wins.
    p.produce(settings.media_topic, key="late", value=text_event("late", "a brief visitor"))
    p.produce(settings.media_topic, key="late", value=None)
    assert p.flush(30) == 0

    wait_until(lambda: index.count("mini") == len(texts) - 20, what="20 points deleted")
    deleted = mini.encode_texts([texts[25], texts[35], "a brief visitor"])
    for vector, gone in zip(deleted, ["doc-25", "doc-35", "late"]):
        assert gone not in {h.item_id for h in index.search("mini", vector, 10)}


def read_all(broker: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "unused", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])  # assign(): no group join
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                records.append(message)
    finally:
        consumer.close()
    return records


def test_bad_events_go_to_the_dlq_with_reasons_while_good_ones_in_the_same_batch_are_indexed(
    node: Node, broker: str
) -> None:
    settings, index = node.settings, node.index
    assert index is not None
    bad: dict[str, tuple[bytes | None, str]] = {  # key -> (value, expected code)
        "bad-json": (b'{"id": "bad-json", "modality": ', "invalid_json"),
        "not-object": (b"[1, 2, 3]", "invalid_json"),
        "bad-modality": (orjson.dumps({"id": "bad-modality", "modality": "video", "text": "x"}), "invalid_modality"),
        "no-text": (orjson.dumps({"id": "no-text", "modality": "text"}), "missing_field"),
        "extra": (orjson.dumps({"id": "extra", "modality": "text", "text": "x", "colour": 1}), "extra_field"),
        "mismatch": (text_event("other-id", "x"), "key_mismatch"),
        "bad-base64": (
            orjson.dumps({"id": "bad-base64", "modality": "image", "data": "%%% not base64 %%%"}),
            "invalid_base64",
        ),
    }
    p = producer(broker, "snappy")
    good = []
    for n, (key, (value, _)) in enumerate(bad.items()):
        p.produce(settings.media_topic, key=key, value=value, headers=[("trace", f"t{n}".encode())])
        good_id = f"good-{n}"
        good.append(good_id)
        p.produce(settings.media_topic, key=good_id, value=text_event(good_id, f"good event number {n}"))
    assert p.flush(30) == 0

    wait_until(lambda: index.count("mini") == len(good), what="the good events indexed")
    dead = read_all(broker, settings.dlq_topic, expected=len(bad))
    assert len(dead) == len(bad)
    by_key = {m.key().decode(): m for m in dead}
    assert set(by_key) == set(bad)
    for key, (value, code) in bad.items():
        message = by_key[key]
        headers = {k: v for k, v in message.headers()}
        assert headers["xmodal.error.code"].decode() == code, (key, headers)
        assert headers["xmodal.error.message"]
        assert headers["xmodal.error.stage"] == b"decode"
        assert headers["xmodal.error.topic"].decode() == settings.media_topic
        assert int(headers["xmodal.error.offset"]) >= 0
        assert headers["trace"].startswith(b"t")  # the producer's own headers survive
        assert message.value() == value  # original bytes, unchanged
