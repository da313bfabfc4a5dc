"""Which topics replies may go to, where error replies go for requests that did not parse, and how
replies become hits: no broker."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from xmodal.config import load_settings
from xmodal.errors import SchemaError, SearchError
from xmodal.query_api import SearchClient, hits_or_raise
from xmodal.query_api.client import parse_reply
from xmodal.query_api.routing import reply_topic_refusal
from xmodal.query_api.service import MAX_ECHOED_ID, salvage_route
from xmodal.schema import ErrorInfo, SearchHit, SearchReply, parse_search_request, usable_topic

SETTINGS = load_settings({"XMODAL_TOPIC_PREFIX": "p"})
DEFAULT = "p.search.replies"


def salvage(value: bytes | None, key: bytes | None) -> tuple[str | None, str]:
    topic, request_id, refusal = salvage_route(value, key, SETTINGS)
    assert (topic is None) == (refusal is not None)
    return topic, request_id


@pytest.mark.parametrize("name", ["a", "p.search.replies", "A-b_c.9", "x" * 249, "a..", "..a"])
def test_usable_topics(name: str) -> None:
    assert usable_topic(name)


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 250, "with space", "é", "a/b", "a\n", None, 7, ["a"]])
def test_unusable_topics(name: object) -> None:
    assert not usable_topic(name)


@pytest.mark.parametrize("name", [".", ".."])
def test_the_schema_refuses_reserved_topic_names_as_reply_to(name: str) -> None:
    with pytest.raises(SchemaError) as e:
        parse_search_request(orjson.dumps({"request_id": "r", "reply_to": name, "query": {"text": "x"}}))
    assert (e.value.code, e.value.field) == ("invalid_field", "reply_to")


@pytest.mark.parametrize(
    "name", ["p.search.replies", "p.replies.app-7", "p.x", "p.media.replies", "p.search.requests2"]
)
def test_replies_may_go_to_topics_under_the_prefix(name: str) -> None:
    assert reply_topic_refusal(name, SETTINGS) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("p.media", "input topic"),
        ("p.media.dlq", "input topic"),
        ("p.search.requests", "input topic"),
        ("mine.replies", "does not start with 'p.'"),
        ("p", "does not start with 'p.'"),
        ("pp.search.replies", "does not start with 'p.'"),
        ("p-ingest-__assignor-__leader", "does not start with 'p.'"),
        ("xmodal.media", "does not start with 'p.'"),
        ("..", "not a Kafka topic name"),
        ("p.with space", "not a Kafka topic name"),
        (12, "not a Kafka topic name"),
    ],
)
def test_replies_never_go_to_input_topics_or_outside_the_prefix(name: object, why: str) -> None:
    refusal = reply_topic_refusal(name, SETTINGS)
    assert refusal is not None and why in refusal


def test_a_refused_name_is_quoted_short() -> None:
    refusal = reply_topic_refusal("q" * 249, SETTINGS)
    assert refusal is not None and len(refusal) < 250


def test_raw_json_gives_reply_to_and_request_id() -> None:
    value = orjson.dumps({"request_id": "r9", "reply_to": "p.mine.replies", "k": "many"})
    assert salvage(value, b"key") == ("p.mine.replies", "r9")


def test_no_reply_to_means_the_default_topic() -> None:
    assert salvage(orjson.dumps({"request_id": "r9"}), None) == (DEFAULT, "r9")
    assert salvage(orjson.dumps({"request_id": "r9", "reply_to": None}), None) == (DEFAULT, "r9")


@pytest.mark.parametrize("value", [b"{not json", b"[1, 2]", b'"text"', b"", None, b"\xff\xfe"])
def test_not_an_object_falls_back_to_key_and_default(value: bytes | None) -> None:
    assert salvage(value, b"from-key") == (DEFAULT, "from-key")
    assert salvage(value, None) == (DEFAULT, "")


def test_a_bad_request_id_falls_back_to_the_key() -> None:
    assert salvage(orjson.dumps({"request_id": 42}), b"k1") == (DEFAULT, "k1")
    assert salvage(orjson.dumps({"request_id": ""}), b"k1") == (DEFAULT, "k1")


@pytest.mark.parametrize(
    "reply_to",
    ["bad topic", "..", 12, {"a": 1}, "x" * 300, "mine.replies", "p.media", "p.media.dlq", "p.search.requests"],
)
def test_an_unusable_reply_to_is_unroutable(reply_to: object) -> None:
    topic, request_id, refusal = salvage_route(orjson.dumps({"request_id": "r", "reply_to": reply_to}), None, SETTINGS)
    assert (topic, request_id) == (None, "r") and refusal


def test_echoed_ids_are_capped() -> None:
    _, request_id = salvage(orjson.dumps({"request_id": "x" * 10_000}), None)
    assert len(request_id) == MAX_ECHOED_ID
    _, from_key = salvage(b"?", "é".encode() * 5000)
    assert len(from_key) == MAX_ECHOED_ID
    assert salvage(b"?", b"\xff")[1] == "\ufffd"  # a non-UTF-8 key still identifies itself


def test_hits_or_raise() -> None:
    hit = SearchHit(id="a", score=0.5, modality="text")
    assert hits_or_raise(SearchReply(request_id="r", ok=True, hits=[hit])) == [hit]
    failed = SearchReply(request_id="r", ok=False, error=ErrorInfo(code="unknown_space", message="no 'x'"))
    with pytest.raises(SearchError, match="r failed: unknown_space: no 'x'") as e:
        hits_or_raise(failed)
    assert e.value.code == "unknown_space"
    with pytest.raises(SearchError) as e:
        hits_or_raise(SearchReply(request_id="r", ok=False))
    assert e.value.code == "search_error"


def test_replies_from_a_newer_service_still_parse() -> None:
    value = orjson.dumps(
        {
            "request_id": "r",
            "ok": True,
            "took_ms": 1.5,
            "hits": [{"id": "a", "score": 0.5, "modality": "text", "metadata": {"k": 1}, "rank": 1}],
            "error": None,
            "protocol": 2,
        }
    )
    reply = parse_reply(value)
    assert reply.hits == [SearchHit(id="a", score=0.5, modality="text", metadata={"k": 1})]
    failed = parse_reply(orjson.dumps({"request_id": "r", "ok": False, "error": {"code": "c", "message": "m", "x": 1}}))
    assert failed.error == ErrorInfo(code="c", message="m")


@pytest.mark.parametrize("value", [b"nope", b"[]", b'{"ok": true}', b'{"request_id": "r", "ok": "yes please"}'])
def test_what_is_not_a_reply_is_refused(value: bytes) -> None:
    with pytest.raises(SchemaError):
        parse_reply(value)


def test_a_client_reply_topic_must_be_a_topic_name() -> None:
    with pytest.raises(ValueError, match="not a Kafka topic name"):
        SearchClient(load_settings({}), "127.0.0.1:1", reply_topic="my replies")


@pytest.mark.parametrize("reply_topic", ["other.replies", "p.media", "p.media.dlq", "p.search.requests"])
def test_a_client_refuses_a_reply_topic_the_service_would_not_answer_on(reply_topic: str) -> None:
    with pytest.raises(ValueError, match="would not answer there"):
        SearchClient(SETTINGS, "127.0.0.1:1", reply_topic=reply_topic)
    assert SearchClient(SETTINGS, "127.0.0.1:1", reply_topic="p.replies.mine").reply_topic == "p.replies.mine"


def test_importing_the_client_does_not_load_the_service() -> None:
    heavy = ["xmodal.query_api.service", "xmodal.query_api.searcher", "PIL", "soundfile", "httpcore", "httpx"]
    code = (
        "import sys\n"
        "from xmodal.query_api import SearchClient, hits_or_raise\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_package_still_offers_every_name() -> None:
    import xmodal.query_api as query_api

    for name in query_api.__all__:
        assert getattr(query_api, name) is not None
    with pytest.raises(AttributeError):
        query_api.nothing_like_this  # noqa: B018
