from __future__ import annotations

import orjson
import pytest

from xmodal.errors import SchemaError
from xmodal.schema import SearchReply, dump, parse_media_event, parse_search_reply, parse_search_request


def event(**fields: object) -> bytes:
    return orjson.dumps(fields)


def test_documented_media_event_parses() -> None:
    e = parse_media_event(
        b"photos/dog.jpg",
        event(id="photos/dog.jpg", op="upsert", modality="image", data="aGk=", uri=None, text=None,
              metadata={"album": "summer"}, ts=1764133200000),
    )
    assert (e.id, e.op, e.modality, e.data, e.metadata, e.ts) == (
        "photos/dog.jpg", "upsert", "image", "aGk=", {"album": "summer"}, 1764133200000)


def test_tombstone_is_a_delete_of_the_key() -> None:
    e = parse_media_event(b"photos/dog.jpg", None)
    assert (e.id, e.op) == ("photos/dog.jpg", "delete")


def test_delete_op_needs_only_the_id() -> None:
    assert parse_media_event(None, event(id="x", op="delete")).op == "delete"


@pytest.mark.parametrize(
    ("key", "value", "code", "field"),
    [
        (None, b"{not json", "invalid_json", None),
        (None, b'"a string"', "invalid_json", None),
        (None, None, "invalid_key", "key"),
        (b"\xff\xfe", event(id="x", modality="text", text="t"), "invalid_key", "key"),
        (None, event(modality="text", text="t"), "missing_field", "id"),
        (None, event(id="", modality="text", text="t"), "invalid_value", "id"),
        (None, event(id="x" * 513, modality="text", text="t"), "too_long", "id"),
        (None, event(id="x", modality="video", text="t"), "invalid_modality", "modality"),
        (None, event(id="x", text="t"), "missing_field", "modality"),
        (None, event(id="x", modality="text"), "missing_field", "text"),
        (None, event(id="x", modality="text", text="   "), "missing_field", "text"),
        (None, event(id="x", modality="image"), "invalid_field", "data"),
        (None, event(id="x", modality="image", data="aGk=", uri="file:///a"), "invalid_field", "data"),
        (None, event(id="x", modality="audio", data="aGk=", text="caption"), "invalid_field", "text"),
        (None, event(id="x", modality="text", text="t", metadata=[1]), "invalid_field", "metadata"),
        (None, event(id="x", modality="text", text="t", colour="red"), "extra_field", "colour"),
        (None, event(id="x", op="replace"), "invalid_value", "op"),
        (b"y", event(id="x", modality="text", text="t"), "key_mismatch", "id"),
    ],
)
def test_media_event_errors_name_code_and_field(key: bytes | None, value: bytes | None, code: str, field: str | None) -> None:
    with pytest.raises(SchemaError) as caught:
        parse_media_event(key, value)
    assert caught.value.code == code
    if field is not None:
        assert caught.value.field == field
        assert field.split(".")[0] in str(caught.value) or caught.value.code in ("key_mismatch", "invalid_key")


def test_documented_search_request_parses_with_defaults() -> None:
    r = parse_search_request(
        event(request_id="a1b2", reply_to="xmodal.search.replies", query={"text": "a red circle"}, k=10,
              modalities=["image", "audio"], filter={"album": "summer"})
    )
    assert r.query.kind == "text" and r.k == 10 and r.modalities == ["image", "audio"]
    minimal = parse_search_request(event(request_id="r", query={"image": "aGk="}))
    assert minimal.k == 10 and minimal.modalities is None and minimal.reply_to is None and minimal.query.kind == "image"
    uri = parse_search_request(event(request_id="r", query={"uri": "file:///x.wav", "modality": "audio"}))
    assert uri.query.kind == "audio"


@pytest.mark.parametrize(
    ("value", "code", "field"),
    [
        (b"nope", "invalid_json", None),
        (event(query={"text": "x"}), "missing_field", "request_id"),
        (event(request_id="r"), "missing_field", "query"),
        (event(request_id="r", query={"text": "x"}, k=0), "k_out_of_range", "k"),
        (event(request_id="r", query={"text": "x"}, k=1001), "k_out_of_range", "k"),
        (event(request_id="r", query={"text": "x"}, modalities=["video"]), "invalid_modality", "modalities.0"),
        (event(request_id="r", query={"text": "x", "image": "aGk="}), "invalid_query", "query"),
        (event(request_id="r", query={}), "invalid_query", "query"),
        (event(request_id="r", query={"video": "x"}), "extra_field", "query.video"),
        (event(request_id="r", query={"uri": "file:///x"}), "missing_field", "query.modality"),
        (event(request_id="r", query={"text": "x"}, filter={"a": [1]}), "invalid_filter", "filter.a"),
        (event(request_id="r", query={"text": "x"}, filter={"a": 0.5}), "invalid_filter", "filter.a"),
        (event(request_id="r", query={"text": "x"}, filter={"a": None}), "invalid_filter", "filter.a"),
        (event(request_id="r", query={"text": "x"}, modalities=[]), "invalid_modality", "modalities"),
        (event(request_id="r", query={"text": "x"}, reply_to="bad topic!"), "invalid_field", "reply_to"),
        (event(request_id="r", query={"text": "x"}, colour=1), "extra_field", "colour"),
    ],
)
def test_search_request_errors_name_code_and_field(value: bytes, code: str, field: str | None) -> None:
    with pytest.raises(SchemaError) as caught:
        parse_search_request(value)
    assert caught.value.code == code
    assert caught.value.field == field


def test_reply_round_trips_through_json() -> None:
    reply = SearchReply(request_id="a1b2", ok=True, took_ms=7.3,
                        hits=[{"id": "photos/dog.jpg", "score": 0.83, "modality": "image", "metadata": {"album": "summer"}}])
    raw = dump(reply)
    assert orjson.loads(raw)["hits"][0]["id"] == "photos/dog.jpg"
    assert orjson.loads(raw)["error"] is None
    assert parse_search_reply(raw) == reply
