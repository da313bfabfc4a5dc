"""QueryService + SearchClient on the real tansu broker, the real MiniLM tower and qdrant-edge.

One service and one client serve the whole module (a group join costs about half the session
timeout on tansu); every test uses its own request ids, so tests cannot answer each other.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from numpy.typing import NDArray
from prometheus_client import REGISTRY
from qa_support import CORPUS, MiniText, ToySpace, open_backend, png_bytes, populate, settings  # noqa: F401 - a fixture

from xmodal.config import Settings, load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.errors import SchemaError, SearchError, SearchTimeout
from xmodal.indexer import Hit, VectorIndex
from xmodal.query_api import QueryService, SearchClient, Searcher, hits_or_raise
from xmodal.schema import SearchReply, parse_search_reply
from xmodal.streams.kafka import ensure_topics

pytestmark = pytest.mark.broker

# A request with filter {"trap": "slow"} holds its worker until the test sets this (or 20 s pass).
RELEASE_SLOW = threading.Event()


class TrapIndex:
    """A real index with two traps for the tests: filter {"trap": "boom"} raises an unexpected
    error (-> internal_error), {"trap": "slow"} waits for RELEASE_SLOW (-> must not block others)."""

    def __init__(self, inner: VectorIndex) -> None:
        self._inner = inner
        self.held = 0  # searches waiting in the slow trap now
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

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
        trap = (filter or {}).get("trap")
        if trap == "boom":
            raise RuntimeError("the trap index blew up")
        if trap == "slow":
            with self._lock:
                self.held += 1
            try:
                RELEASE_SLOW.wait(20)
            finally:
                with self._lock:
                    self.held -= 1
            filter = None
        return self._inner.search(space, vector, k, modalities=modalities, filter=filter, with_thumbnails=with_thumbnails, exact=exact)


@pytest.fixture(scope="module")
def trap(mini: MiniText, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrapIndex]:
    index = open_backend("edge", tmp_path_factory.mktemp("edge"))
    populate(index, mini)
    yield TrapIndex(index)
    index.close()


@pytest.fixture(scope="module")
def service(broker: str, settings: Settings, mini: MiniText, trap: TrapIndex) -> Iterator[QueryService]:
    searcher = Searcher({"mini": mini, "toy": ToySpace()}, trap, MediaLimits.from_settings(settings))
    searcher.start(load_encoders=False)
    svc = QueryService(settings, broker, searcher)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(service: QueryService, broker: str, settings: Settings) -> Iterator[SearchClient]:
    with SearchClient(settings, broker) as c:
        yield c


def rid() -> str:
    return uuid.uuid4().hex


def ask(client: SearchClient, request: dict[str, Any] | bytes, request_id: str) -> SearchReply:
    value = request if isinstance(request, bytes) else orjson.dumps(request)
    return client.send_raw(value, request_id, timeout=10).result(15)


# -- answers ---------------------------------------------------------------------------------


def test_text_search_returns_the_semantically_nearest_first(client: SearchClient) -> None:
    hits = client.search("a red circle", k=3, modalities=["text"], spaces=["mini"])
    assert hits[0].id == "cap/crimson-disc"
    assert hits[0].metadata == {"album": "shapes", "n": 1}
    assert hits[0].modality == "text"
    fused = client.search("a red circle", k=3, modalities=["text"])  # both spaces, fused
    assert fused[0].id == "cap/crimson-disc"


def test_a_hand_written_kafka_client_gets_the_same_hits(client: SearchClient, broker: str, settings: Settings) -> None:
    reply_topic = f"{settings.topic_prefix}.raw.replies"
    ensure_topics(settings, broker, [reply_topic])
    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": "raw-reader", "enable.auto.commit": False, "fetch.wait.max.ms": 5}
    )
    consumer.assign([TopicPartition(reply_topic, p, 0) for p in range(settings.topic_partitions)])
    producer = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random"})
    request = {"request_id": "raw-1", "reply_to": reply_topic, "query": {"text": "a dog"}, "k": 4, "filter": {}}
    producer.produce(settings.requests_topic, orjson.dumps(request), key=b"raw-1")
    producer.flush(10)
    try:
        deadline = time.monotonic() + 10
        msg = None
        while time.monotonic() < deadline and msg is None:
            got = consumer.poll(0.1)
            msg = got if got is not None and got.error() is None else None
        assert msg is not None, "no reply on the hand-made reply topic"
    finally:
        consumer.close()
    value = msg.value()
    assert msg.key() == b"raw-1" and value is not None
    raw = orjson.loads(value)
    assert set(raw) == {"request_id", "ok", "took_ms", "hits", "error"}
    assert raw["ok"] is True and raw["error"] is None and raw["request_id"] == "raw-1"
    assert all(set(h) == {"id", "score", "modality", "metadata", "cosine", "space"} for h in raw["hits"])
    assert parse_search_reply(value).hits == client.search("a dog", k=4)


def test_many_concurrent_requests_from_one_client_are_all_matched(client: SearchClient) -> None:
    captions = {item: caption for item, (_, caption, _, _) in CORPUS.items()}
    modality = {item: m for item, (m, _, _, _) in CORPUS.items()}
    asked = [
        (item, client.search_async(captions[item], k=2, spaces=["mini"], modalities=[modality[item]]))
        for item in list(captions) * 8
    ]
    for item, future in asked:
        hits = hits_or_raise(future.result(20))
        assert hits[0].id == item and hits[0].cosine == pytest.approx(1.0, abs=1e-4)


def test_filter_and_modalities_are_honoured(client: SearchClient) -> None:
    animals = client.search("a red circle", filter={"album": "animals"})
    assert {h.id for h in animals} == {"cap/dog", "snd/bark"}
    assert [h.id for h in client.search("a dog", modalities=["audio"])] == ["snd/bark"]
    assert client.search("a dog", modalities=["image", "audio"], k=10)[0].id == "snd/bark"
    assert {h.modality for h in client.search("a dog", modalities=["image"], k=10)} == {"image"}
    assert client.search("a dog", modalities=["audio"], filter={"album": "music"}) == []


def test_image_query_through_the_service(client: SearchClient) -> None:
    assert client.search(image=png_bytes((0, 0, 250)), k=1)[0].id == "img/blue-sky"


def test_a_slow_request_does_not_block_fast_ones(client: SearchClient) -> None:
    RELEASE_SLOW.clear()
    slow = client.search_async("a dog", spaces=["mini"], filter={"trap": "slow"})
    try:
        fast = [client.search_async("a dog", spaces=["mini"]) for _ in range(10)]
        assert all(f.result(15).ok for f in fast)
        assert not slow.done()  # still holding its worker while ten others were served
    finally:
        RELEASE_SLOW.set()
    assert slow.result(15).ok


def test_in_flight_requests_are_bounded_by_query_concurrency(
    client: SearchClient, service: QueryService, trap: TrapIndex, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The poll thread tells when it holds a request it cannot hand on for want of a slot: from then
    # on, and until a slot frees, nothing more can start, so no sleep is needed to see that it does not.
    slots_full = threading.Event()
    monkeypatch.setattr(service, "_slots_full", slots_full.set)
    RELEASE_SLOW.clear()
    try:
        held = [client.search_async("a dog", spaces=["mini"], filter={"trap": "slow"}) for _ in range(7)]
        deadline = time.monotonic() + 10
        while trap.held < settings.query_concurrency:
            assert time.monotonic() < deadline, f"only {trap.held} requests started"
            time.sleep(0.02)
        assert slots_full.wait(10), "the poll thread never waited for a slot"
        # The other three wait in Kafka and in the poll thread's hand, not in a worker or the pool's queue.
        assert trap.held == settings.query_concurrency == 4
        assert not any(f.done() for f in held)
    finally:
        RELEASE_SLOW.set()
    assert all(f.result(15).ok for f in held)


def test_an_own_reply_topic_per_client(service: QueryService, broker: str, settings: Settings) -> None:
    with SearchClient(settings, broker, reply_topic=f"{settings.topic_prefix}.replies.mine") as mine:
        assert mine.search("a dog", k=1, spaces=["mini"])[0].id in {"cap/dog", "snd/bark"}


# -- refusals --------------------------------------------------------------------------------

GOOD = {"query": {"text": "a dog"}, "k": 1, "spaces": ["mini"]}
PDF = "JVBERi0xLjQgaGVsbG8="  # base64 of "%PDF-1.4 hello"


def _bad(fields: dict[str, Any]) -> dict[str, Any]:
    return {**GOOD, **fields}


BAD_REQUESTS: list[tuple[str, Any]] = [
    ("invalid_json", b"{this is not json"),
    ("invalid_json", b"[1, 2, 3]"),
    ("missing_field", {"k": 3}),  # no query, no request_id: the id comes from the Kafka key
    ("missing_field", _bad({"query": {"uri": "file:///x.png"}})),
    ("extra_field", _bad({"colour": "red"})),
    ("invalid_modality", _bad({"modalities": ["smell"]})),
    ("k_out_of_range", _bad({"k": 0})),
    ("k_out_of_range", _bad({"k": 1001})),
    ("invalid_query", _bad({"query": {"text": "a", "image": "AAAA"}})),
    ("invalid_query", _bad({"query": {}})),
    ("invalid_filter", _bad({"filter": {"album": ["a", "b"]}})),
    ("invalid_base64", _bad({"query": {"image": "@@not base64@@"}, "spaces": None})),
    ("unsupported_format", _bad({"query": {"image": PDF}, "spaces": None})),
    ("uri_scheme_forbidden", _bad({"query": {"uri": "file:///x.png", "modality": "image"}, "spaces": None})),
    ("unknown_space", _bad({"spaces": ["mini", "nope"]})),
    ("unsupported_modality", _bad({"query": {"image": PDF}})),  # only mini asked, and mini has no image tower
    ("deadline_exceeded", _bad({"deadline_ms": int(time.time() * 1000) - 1000})),
    ("encode_error", _bad({"query": {"text": "explode"}, "spaces": ["toy"]})),
    ("internal_error", _bad({"filter": {"trap": "boom"}})),
]


@pytest.mark.parametrize(
    ("code", "request_body"), BAD_REQUESTS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD_REQUESTS)]
)
def test_every_bad_request_gets_its_error_code_and_the_service_goes_on(
    client: SearchClient, code: str, request_body: dict[str, Any] | bytes
) -> None:
    bad_id = rid()
    if isinstance(request_body, dict) and "k" in request_body and "query" in request_body:
        request_body = {"request_id": bad_id, **request_body}
    errors_before = REGISTRY.get_sample_value("xmodal_search_errors_total", {"code": code}) or 0
    reply = ask(client, request_body, bad_id)
    assert (reply.request_id, reply.ok) == (bad_id, False)
    assert reply.error is not None and reply.error.code == code, reply.error
    assert reply.error.message and reply.hits == []
    assert REGISTRY.get_sample_value("xmodal_search_errors_total", {"code": code}) == errors_before + 1
    good_id = rid()
    assert ask(client, {"request_id": good_id, **GOOD}, good_id).ok


def test_an_unparseable_request_is_answered_on_its_raw_reply_to(
    service: QueryService, broker: str, settings: Settings
) -> None:
    with SearchClient(settings, broker, reply_topic=f"{settings.topic_prefix}.replies.salvage") as own:
        request_id = rid()
        body = {"request_id": request_id, "reply_to": own.reply_topic, "query": {"text": "x"}, "k": "many"}
        reply = own.send_raw(orjson.dumps(body), request_id).result(15)
        assert reply.error is not None and reply.error.code == "invalid_field"


def test_client_raises_search_error_with_the_reply_code(client: SearchClient) -> None:
    with pytest.raises(SearchError) as e:
        client.search("a dog", spaces=["nope"])
    assert e.value.code == "unknown_space"
    assert "mini, toy" in e.value.message


def test_client_refuses_a_bad_request_before_sending(client: SearchClient) -> None:
    with pytest.raises(SchemaError) as e:
        client.search("a dog", k=0)
    assert e.value.code == "k_out_of_range"
    with pytest.raises(SchemaError) as e:
        client.search("a dog", image=b"x")
    assert e.value.code == "invalid_query"


def test_an_unroutable_request_is_counted_and_the_service_lives_on(
    client: SearchClient, service: QueryService, settings: Settings
) -> None:
    before = REGISTRY.get_sample_value("xmodal_search_unroutable_total") or 0
    refused = [
        "no spaces allowed",
        "..",
        "x" * 300,
        # Legal names the service must not write to: its own input topics, and anything outside the prefix.
        settings.media_topic,
        settings.dlq_topic,
        settings.requests_topic,
        f"not{settings.topic_prefix}.search.replies",
    ]
    for reply_to in refused:
        body = {"request_id": rid(), "reply_to": reply_to, **GOOD}
        client.send_raw(orjson.dumps(body), rid(), timeout=1)  # nobody will answer these
    body = {"request_id": rid(), "reply_to": settings.media_topic, "k": "many"}  # unparseable, same rule
    client.send_raw(orjson.dumps(body), rid(), timeout=1)
    deadline = time.monotonic() + 10
    while (REGISTRY.get_sample_value("xmodal_search_unroutable_total") or 0) < before + len(refused) + 1:
        assert time.monotonic() < deadline, "the unroutable requests were not counted"
        time.sleep(0.05)
    assert service.running and service.crashed is None
    assert client.search("a dog", k=1, spaces=["mini"])


def test_search_timeout_when_no_service_runs(broker: str, tmp_path: Path) -> None:
    lonely = load_settings({"XMODAL_TOPIC_PREFIX": f"none{uuid.uuid4().hex[:8]}", "XMODAL_TOPIC_PARTITIONS": "1"})
    with SearchClient(lonely, broker) as c:
        start = time.monotonic()
        with pytest.raises(SearchTimeout) as e:
            c.search("a dog", timeout=1.0)
        assert 0.9 < time.monotonic() - start < 5
        assert lonely.replies_topic in e.value.message and lonely.requests_topic in e.value.message
        future = c.search_async("a dog", timeout=0.5)
        with pytest.raises(SearchTimeout, match=r"search request [0-9a-f]{32} "):
            future.result(5)
