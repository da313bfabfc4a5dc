"""Reranking on the path `xmodal up` runs: a Node (ingest agents + query service) on the real broker,
the shipped `mini` space and the rerank stage the Node builds from the settings (registry.py).

Images go in as MediaEvents through Kafka, so their thumbnails (the views the cross-encoder reads)
are the ones ingest makes. With the shipped checkpoint replies come back reranked; an install whose
checkpoint is missing (pointed at an absent file here) answers `rerank_unavailable` to a request
that asks, and refuses to start with XMODAL_RERANK=true.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from xmodal.encoders.mini.corpus import image_items, image_png
from xmodal.errors import ConfigError, SearchError
from xmodal.query_api import SearchClient
from xmodal.runtime import Node, Roles

pytestmark = [pytest.mark.broker, pytest.mark.slow]

try:
    from xmodal.encoders.mini.cross import cross_path

    SHIPPED = cross_path().is_file()
except ImportError:
    SHIPPED = False
needs_checkpoint = pytest.mark.skipif(not SHIPPED, reason="the mini cross-encoder checkpoint is not shipped in this tree")


@pytest.fixture
def without_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """An install without the checkpoint: the mini reranker looks for a file that is not there."""
    import xmodal.encoders.mini.cross as cross

    monkeypatch.setattr(cross, "cross_path", lambda weights_dir=None: tmp_path / "absent" / "cross.safetensors")

ITEMS = image_items(12, "seen", seed=3)


def ingest(node: Node) -> None:
    producer = Producer({"bootstrap.servers": node.bootstrap, "partitioner": "murmur2_random", "linger.ms": 5})
    for item in ITEMS:
        event = {"id": item.id, "modality": "image", "data": base64.b64encode(image_png(item.media)).decode()}
        producer.produce(node.settings.media_topic, key=item.id, value=orjson.dumps(event))
    assert producer.flush(30) == 0
    assert node.index is not None
    deadline = time.monotonic() + 60
    while node.index.count("mini") < len(ITEMS):
        assert time.monotonic() < deadline, "the images were not indexed within 60 s"
        time.sleep(0.1)


@pytest.fixture
def node(broker: str, make_settings: Any) -> Iterator[Node]:
    with Node(make_settings(kafka_bootstrap=broker, session_timeout_ms="3000"), Roles(ingest=True, query=True)) as running:
        ingest(running)
        yield running


@pytest.mark.usefixtures("without_checkpoint")
def test_without_the_checkpoint_asking_to_rerank_says_why(node: Node) -> None:
    with SearchClient(node.settings, node.bootstrap) as client:
        plain = client.search(ITEMS[0].caption, k=5, modalities=["image"])
        assert plain and all(hit.first_stage_score is None for hit in plain)
        with pytest.raises(SearchError) as caught:
            client.search(ITEMS[0].caption, k=5, modalities=["image"], rerank=True)
    assert caught.value.code == "rerank_unavailable"
    assert "mini" in caught.value.message and "cross" in caught.value.message


@pytest.mark.usefixtures("without_checkpoint")
def test_without_the_checkpoint_rerank_on_by_default_refuses_to_start(broker: str, make_settings: Any) -> None:
    with pytest.raises(ConfigError, match="XMODAL_RERANK=true but the mini reranker cannot load") as caught:
        Node(make_settings(kafka_bootstrap=broker, rerank="true"), Roles(ingest=False, query=True)).start()
    assert caught.value.code == "model_load_error"


@needs_checkpoint
def test_replies_come_back_reranked(node: Node) -> None:
    with SearchClient(node.settings, node.bootstrap) as client:
        first = client.search(ITEMS[0].caption, k=5, modalities=["image"])
        reranked = client.search(ITEMS[0].caption, k=5, modalities=["image"], rerank=True, rerank_k=12)
    assert all(hit.first_stage_score is None for hit in first)
    assert all(hit.first_stage_score is not None for hit in reranked)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    before = {h.id: h.score for h in first}
    for hit in reranked:
        if hit.id in before:
            assert hit.first_stage_score == pytest.approx(before[hit.id])


@needs_checkpoint
def test_rerank_on_by_default_loads_at_start_and_reranks_requests_that_do_not_say(broker: str, make_settings: Any) -> None:
    settings = make_settings(kafka_bootstrap=broker, session_timeout_ms="3000", rerank="true")
    with Node(settings, Roles(ingest=True, query=True)) as running:
        ingest(running)
        with SearchClient(running.settings, running.bootstrap) as client:
            hits = client.search(ITEMS[1].caption, k=3, modalities=["image"])
            off = client.search(ITEMS[1].caption, k=3, modalities=["image"], rerank=False)
    assert hits and all(hit.first_stage_score is not None for hit in hits)
    assert all(hit.first_stage_score is None for hit in off)
