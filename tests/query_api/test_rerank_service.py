"""Reranking through the query service on the real tansu broker and qdrant-edge.

The service's Searcher has the rerank stage with RuleReranker on the toy gallery (rerank_support.py)
and the real MiniLM `mini` space without a reranker. One service and one client for the module.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from qa_support import CORPUS, MiniText, ToySpace, open_backend, png_bytes, settings  # noqa: F401 - a fixture
from rerank_support import RuleReranker, expected_adjustment, populate_gallery

from xmodal.config import Settings, load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.errors import SearchError
from xmodal.indexer import IndexPoint, VectorIndex
from xmodal.query_api import QueryService, SearchClient, Searcher
from xmodal.query_api.rerank import RerankStage
from xmodal.schema import SearchReply
from xmodal.streams.kafka import ensure_topics

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def index(mini: MiniText, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorIndex]:
    idx = open_backend("edge", tmp_path_factory.mktemp("edge"))
    populate_gallery(idx)
    idx.ensure_collection("mini", mini.dim)
    ids = list(CORPUS)
    vectors = mini.encode_texts([CORPUS[i][1] for i in ids])
    idx.upsert("mini", [IndexPoint(i, vectors[n], CORPUS[i][0], CORPUS[i][3]) for n, i in enumerate(ids)])
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def rules() -> RuleReranker:
    return RuleReranker()


@pytest.fixture(scope="module")
def client(broker: str, settings: Settings, mini: MiniText, index: VectorIndex, rules: RuleReranker) -> Iterator[SearchClient]:
    limits = MediaLimits.from_settings(settings)
    stage = RerankStage(
        {"toy": rules}, limits, rerank_k=settings.rerank_k, unavailable={"mini": "no reranker for mini in this test"}
    )
    searcher = Searcher({"toy": ToySpace(), "mini": mini}, index, limits, rerank=stage)
    searcher.start(load_encoders=False)
    with QueryService(settings, broker, searcher), SearchClient(settings, broker) as c:
        yield c


def ask(client: SearchClient, request: dict[str, Any]) -> SearchReply:
    """A hand-written request, as any Kafka client (or an old one) would send it."""
    request_id = uuid.uuid4().hex
    body = {"request_id": request_id, "reply_to": client.reply_topic, **request}
    return client.send_raw(orjson.dumps(body), request_id, timeout=10).result(15)


def test_a_reranked_reply_carries_first_stage_scores_in_the_new_order(client: SearchClient) -> None:
    first = client.search("a red thing", k=4, modalities=["image"], spaces=["toy"])
    reranked = client.search("a red thing", k=4, modalities=["image"], spaces=["toy"], rerank=True)
    assert [h.id for h in first][:2] == ["img/a-decoy", "img/d-noview"]
    assert [h.id for h in reranked] == ["img/b-red", "img/d-noview", "img/a-decoy", "img/c-green"]
    before = {h.id: h.score for h in first}
    for hit in reranked:
        assert hit.first_stage_score == pytest.approx(before[hit.id])
        assert hit.score == pytest.approx(hit.first_stage_score + expected_adjustment(hit.id, "a red thing"))
        assert hit.thumbnail is None  # fetched to rerank, not asked for
    assert all(hit.first_stage_score is None for hit in first)


def raw_replies(broker: str, settings: Settings, requests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Send hand-written requests and read the replies' JSON as it is on the wire, no xmodal client."""
    reply_topic = f"{settings.topic_prefix}.raw.replies"
    ensure_topics(settings, broker, [reply_topic])
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "raw", "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    consumer.assign([TopicPartition(reply_topic, p, 0) for p in range(settings.topic_partitions)])
    producer = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random"})
    for request_id, request in requests.items():
        body = {"request_id": request_id, "reply_to": reply_topic, **request}
        producer.produce(settings.requests_topic, orjson.dumps(body), key=request_id.encode())
    producer.flush(10)
    replies: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    try:
        while len(replies) < len(requests) and time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None and msg.value() is not None:
                replies[msg.key().decode()] = orjson.loads(msg.value())
    finally:
        consumer.close()
    assert set(replies) == set(requests), "not every raw request was answered"
    return replies


def test_the_reply_json_has_the_new_field_only_where_reranked(client: SearchClient, broker: str, settings: Settings) -> None:
    query = {"query": {"text": "a high tone"}, "k": 2, "modalities": ["audio"], "spaces": ["toy"]}
    replies = raw_replies(broker, settings, {"rr-on": {**query, "rerank": True}, "rr-old": query})
    reranked, old = replies["rr-on"]["hits"], replies["rr-old"]["hits"]
    assert [h["id"] for h in reranked] == ["snd/b-high", "snd/a-low"]
    assert all(isinstance(h["first_stage_score"], float) and "thumbnail" not in h for h in reranked)
    # an old client's request gets the reply it always got: not one key more
    assert all(set(h) == {"id", "score", "modality", "metadata", "cosine", "space"} for h in old)


def test_an_old_client_request_is_answered_first_stage(client: SearchClient) -> None:
    """No rerank fields (a client older than them): first stage, as before."""
    reply = ask(client, {"query": {"text": "a high tone"}, "k": 2, "modalities": ["audio"], "spaces": ["toy"]})
    assert reply.ok and [h.id for h in reply.hits] == ["snd/a-low", "snd/b-high"]
    assert all(hit.first_stage_score is None for hit in reply.hits)
    off = ask(client, {"query": {"text": "a high tone"}, "k": 2, "modalities": ["audio"], "spaces": ["toy"], "rerank": False})
    assert off.hits == reply.hits


def test_rerank_k_is_honoured_per_request(client: SearchClient, rules: RuleReranker) -> None:
    narrow = client.search("a red thing", k=1, modalities=["image"], spaces=["toy"], rerank=True, rerank_k=2)
    assert [h.id for h in narrow] == ["img/d-noview"]  # the red image, third in the first stage, was not scored
    assert rules.calls[-1] == ("image", 1)  # two candidates, one without a view
    wide = client.search("a red thing", k=1, modalities=["image"], spaces=["toy"], rerank=True)  # settings: 50
    assert [h.id for h in wide] == ["img/b-red"]
    assert rules.calls[-1] == ("image", 3)  # every image with a view
    refused = ask(client, {"query": {"text": "x"}, "rerank": True, "rerank_k": 0})
    assert not refused.ok and refused.error is not None and refused.error.code == "out_of_range"


def test_thumbnails_come_back_only_when_asked(client: SearchClient) -> None:
    hits = client.search("a red thing", k=4, modalities=["image"], spaces=["toy"], rerank=True, with_thumbnails=True)
    assert hits[0].id == "img/b-red" and hits[0].thumbnail is not None and hits[0].thumbnail.image
    assert hits[0].first_stage_score is not None


def test_rerank_where_nothing_can_is_an_error_reply(client: SearchClient) -> None:
    reply = ask(client, {"query": {"text": "a dog barks"}, "spaces": ["mini"], "rerank": True})
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "rerank_unavailable"
    assert "no reranker for mini in this test" in reply.error.message
    with pytest.raises(SearchError) as caught:
        client.search("a dog barks", spaces=["mini"], rerank=True)
    assert caught.value.code == "rerank_unavailable"
    # both spaces: toy's lists are reranked, mini's answered first-stage, in one reply
    hits = client.search("a red thing", k=20, rerank=True)
    assert {h.space for h in hits if h.first_stage_score is not None} == {"toy"}
    assert {h.space for h in hits if h.first_stage_score is None} == {"mini"}


def test_xmodal_eval_compares_first_stage_and_reranked(client: SearchClient, broker: str, settings: Settings, tmp_path: Path) -> None:
    """`xmodal eval --no-rerank` and `--rerank` (the real command, in-process) against this service."""
    from typer.testing import CliRunner

    from xmodal.cli import app

    queries, qrels = tmp_path / "queries.jsonl", tmp_path / "qrels.txt"
    queries.write_text(
        '{"query_id": "red", "query": {"text": "a red thing"}, "modalities": ["image"]}\n'
        '{"query_id": "high", "query": {"text": "a high tone"}, "modalities": ["audio"]}\n'
    )
    qrels.write_text("red 0 img/b-red 1\nhigh 0 snd/b-high 1\n")
    env = {
        "XMODAL_KAFKA_BOOTSTRAP": broker,
        "XMODAL_TOPIC_PREFIX": settings.topic_prefix,
        "XMODAL_DATA_DIR": str(tmp_path / "data"),
        "XMODAL_METRICS_PORT": "0",
    }
    figures = {}
    for flag in ("--no-rerank", "--rerank", None):
        args = ["eval", "--queries", str(queries), "--qrels", str(qrels), "--k", "1", "--json"] + ([flag] if flag else [])
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        figures[flag] = orjson.loads(result.stdout)
    first, reranked, default = figures["--no-rerank"], figures["--rerank"], figures[None]
    assert first["metrics"]["Success@1"] == 0.0 and first["counts"]["reranked"] == 0 and first["rerank"] is False
    assert reranked["metrics"]["Success@1"] == 1.0 and reranked["counts"]["reranked"] == 2 and reranked["rerank"] is True
    assert default["rerank"] is None and default["metrics"] == first["metrics"]  # this service's default: off
    narrow = CliRunner().invoke(app, ["eval", "--queries", str(queries), "--qrels", str(qrels), "--k", "1", "--json", "--rerank", "--rerank-k", "1"], env=env)
    # rerank_k=1 < depth 10: all ten are still scored (max(k, rerank_k)), so the gain stays
    assert narrow.exit_code == 0 and orjson.loads(narrow.stdout)["metrics"]["Success@1"] == 1.0


def test_xmodal_search_rerank(client: SearchClient, broker: str, settings: Settings, tmp_path: Path) -> None:
    """`xmodal search --rerank` (the real command, in-process): reranked order, the first-stage column."""
    from typer.testing import CliRunner

    from xmodal.cli import app

    env = {
        "XMODAL_KAFKA_BOOTSTRAP": broker,
        "XMODAL_TOPIC_PREFIX": settings.topic_prefix,
        "XMODAL_DATA_DIR": str(tmp_path / "data"),
        "XMODAL_METRICS_PORT": "0",
        "COLUMNS": "200",
    }
    runner = CliRunner()
    reranked = runner.invoke(app, ["search", "a red thing", "--modality", "image", "-k", "4", "--rerank", "--json"], env=env)
    assert reranked.exit_code == 0, reranked.output
    hits = orjson.loads(reranked.stdout)
    assert [h["id"] for h in hits][:1] == ["img/b-red"]
    assert all(("first_stage_score" in h) == (h["space"] == "toy") for h in hits)  # mini's images: no reranker
    plain = runner.invoke(app, ["search", "a red thing", "--modality", "image", "-k", "4", "--json"], env=env)
    assert plain.exit_code == 0 and all("first_stage_score" not in h for h in orjson.loads(plain.stdout))
    table = runner.invoke(app, ["search", "a red thing", "--modality", "image", "-k", "4", "--rerank"], env=env)
    assert table.exit_code == 0 and "1st stage" in table.stdout and "img/b-red" in table.stdout
    picture = tmp_path / "red.png"
    picture.write_bytes(png_bytes((220, 20, 20)))
    refused = runner.invoke(app, ["search", "--image", str(picture), "--rerank"], env=env)  # no reranker for image queries here
    assert refused.exit_code == 1 and "rerank_unavailable" in refused.output
