"""parse_reply validates the parsed object once (no dump and second parse): its answers and its
refusals are those of parse_search_reply, the strict parser, on what both accept."""

from __future__ import annotations

import orjson
import pytest

from xmodal.errors import SchemaError
from xmodal.query_api.client import parse_reply
from xmodal.schema import ErrorInfo, SearchHit, SearchReply, dump_reply, parse_search_reply


def test_a_full_reply_round_trips_as_the_strict_parser_reads_it() -> None:
    reply = SearchReply(
        request_id="r1",
        ok=True,
        took_ms=3.25,
        hits=[
            SearchHit(id="a", score=0.9, modality="image", metadata={"album": "x", "n": 2}, cosine=0.4, space="mini", first_stage_score=0.7),
            SearchHit(id="b", score=0.5, modality="text"),
        ],
    )
    value = dump_reply(reply)
    assert parse_reply(value) == parse_search_reply(value) == reply
    failed = SearchReply(request_id="r2", ok=False, error=ErrorInfo(code="encode_error", message="tower down"))
    assert parse_reply(dump_reply(failed)) == failed


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "r", "ok": True, "hits": [{"id": "a", "modality": "text"}]},  # a hit without score
        {"request_id": "r", "ok": True, "hits": "none"},
        {"request_id": 5, "ok": True},
    ],
)
def test_invalid_replies_are_refused_with_the_strict_parsers_code(body: dict[str, object]) -> None:
    value = orjson.dumps(body)
    with pytest.raises(SchemaError) as strict:
        parse_search_reply(value)
    with pytest.raises(SchemaError) as lenient:
        parse_reply(value)
    assert lenient.value.code == strict.value.code
