"""Where error replies go for requests that did not parse, and how replies become hits: no broker."""

from __future__ import annotations

import orjson
import pytest

from xmodal.config import load_settings
from xmodal.errors import SchemaError, SearchError
from xmodal.query_api import SearchClient, hits_or_raise
from xmodal.query_api.client import parse_reply
from xmodal.query_api.service import MAX_ECHOED_ID, salvage_route, usable_topic
from xmodal.schema import ErrorInfo, SearchHit, SearchReply

DEFAULT = "p.search.replies"


@pytest.mark.parametrize("name", ["a", "p.search.replies", "A-b_c.9", "x" * 249])
def test_usable_topics(name: str) -> None:
    assert usable_topic(name)


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 250, "with space", "é", "a/b", None, 7, ["a"]])
def test_unusable_topics(name: object) -> None:
    assert not usable_topic(name)


def test_raw_json_gives_reply_to_and_request_id() -> None:
    value = orjson.dumps({"request_id": "r9", "reply_to": "mine.replies", "k": "many"})
    assert salvage_route(value, b"key", DEFAULT) == ("mine.replies", "r9")


def test_no_reply_to_means_the_default_topic() -> None:
    assert salvage_route(orjson.dumps({"request_id": "r9"}), None, DEFAULT) == (DEFAULT, "r9")
    assert salvage_route(orjson.dumps({"request_id": "r9", "reply_to": None}), None, DEFAULT) == (DEFAULT, "r9")


@pytest.mark.parametrize("value", [b"{not json", b"[1, 2]", b'"text"', b"", None, b"\xff\xfe"])
def test_not_an_object_falls_back_to_key_and_default(value: bytes | None) -> None:
    assert salvage_route(value, b"from-key", DEFAULT) == (DEFAULT, "from-key")
    assert salvage_route(value, None, DEFAULT) == (DEFAULT, "")


def test_a_bad_request_id_falls_back_to_the_key() -> None:
    assert salvage_route(orjson.dumps({"request_id": 42}), b"k1", DEFAULT) == (DEFAULT, "k1")
    assert salvage_route(orjson.dumps({"request_id": ""}), b"k1", DEFAULT) == (DEFAULT, "k1")


@pytest.mark.parametrize("reply_to", ["bad topic", "..", 12, {"a": 1}, "x" * 300])
def test_an_unusable_reply_to_is_unroutable(reply_to: object) -> None:
    assert salvage_route(orjson.dumps({"request_id": "r", "reply_to": reply_to}), None, DEFAULT) == (None, "r")


def test_echoed_ids_are_capped() -> None:
    _, request_id = salvage_route(orjson.dumps({"request_id": "x" * 10_000}), None, DEFAULT)
    assert len(request_id) == MAX_ECHOED_ID
    _, from_key = salvage_route(b"?", "é".encode() * 5000, DEFAULT)
    assert len(from_key) == MAX_ECHOED_ID
    assert salvage_route(b"?", b"\xff", DEFAULT)[1] == "\ufffd"  # a non-UTF-8 key still identifies itself


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
