"""No event can stop ingestion: hostile keys, values and headers against the real pipeline.

Real MiniLM tower, real qdrant-edge index. Every record ends indexed, deleted or dead-lettered
with a code; `process()` raises only when the index fails as a whole.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from xmodal.config import load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.encoders.mini.space import MiniSpace
from xmodal.errors import SchemaError, VectorIndexError
from xmodal.indexer.base import IndexPoint
from xmodal.indexer.edge import EdgeIndex
from xmodal.schema import parse_media_event
from xmodal.streams.pipeline import DeadLetter, IngestPipeline, SourceRecord

LIMITS = MediaLimits.from_settings(load_settings({}))


@pytest.fixture(scope="module")
def mini() -> MiniSpace:
    space = MiniSpace(load_settings({}))
    space.load()
    return space


@pytest.fixture
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    idx = EdgeIndex(tmp_path / "index")
    yield idx
    idx.close()


def rec(offset: int, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()) -> SourceRecord:
    return SourceRecord("media", 0, offset, key, value, 1_764_133_200_000, tuple(headers))


def good(offset: int, item_id: str, body: str) -> SourceRecord:
    value = orjson.dumps({"id": item_id, "modality": "text", "text": body, "metadata": {"n": offset}})
    return rec(offset, item_id.encode(), value)


def test_a_tombstone_with_a_key_too_long_for_an_id_is_dead_lettered(mini: MiniSpace, index: EdgeIndex) -> None:
    # This one record used to crash the agent, and a restart replayed it and crashed again.
    pipeline = IngestPipeline({"mini": mini}, index, LIMITS)
    pipeline.start()
    result = pipeline.process([good(0, "a", "a red circle"), rec(1, b"k" * 600, None), good(2, "b", "a low hum")])
    assert index.count("mini") == 2 and result.indexed == 2
    [dead] = result.dead
    assert (dead.record.offset, dead.code, dead.stage) == (1, "too_long", "decode")
    assert "512" in dead.message


def test_an_unexpected_exception_is_an_internal_error_dead_letter(mini: MiniSpace, index: EdgeIndex) -> None:
    pipeline = IngestPipeline({"mini": mini}, index, LIMITS)
    pipeline.start()
    # A key that is not bytes (an adapter bug, not a protocol violation) raises AttributeError inside parsing.
    odd = SourceRecord("media", 0, 1, "not-bytes", b"{}")  # type: ignore[arg-type]
    result = pipeline.process([good(0, "a", "fine"), odd])
    assert result.indexed == 1
    [dead] = result.dead
    assert dead.code == "internal_error" and dead.message.startswith("AttributeError")


class RefusesItem:
    """A real index that refuses one item's point, as an engine refuses a payload it cannot store."""

    def __init__(self, inner: EdgeIndex, item_id: str) -> None:
        self.inner, self.item_id = inner, item_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def upsert(self, space: str, points: Sequence[IndexPoint]) -> None:
        if any(p.item_id == self.item_id for p in points):
            raise VectorIndexError("payload refused")
        self.inner.upsert(space, points)


class ReadOnly(RefusesItem):
    """An index that answers reads but refuses every write (read-only on a full disk)."""

    def upsert(self, space: str, points: Sequence[IndexPoint]) -> None:
        raise VectorIndexError("read-only: disk full")

    def delete(self, space: str, item_ids: Sequence[str]) -> None:
        raise VectorIndexError("read-only: disk full")


def test_a_point_the_index_refuses_is_dead_lettered_and_the_rest_is_written(mini: MiniSpace, index: EdgeIndex) -> None:
    pipeline = IngestPipeline({"mini": mini}, RefusesItem(index, "bad"), LIMITS)  # type: ignore[arg-type]
    pipeline.start()
    result = pipeline.process([good(0, "a", "one"), good(1, "bad", "two"), good(2, "c", "three")])
    assert index.count("mini") == 2 and result.indexed == 2
    assert [(d.record.offset, d.code, d.stage) for d in result.dead] == [(1, "index_rejected", "upsert")]
    # alone in its batch too: the index still answers, so this is the point's fault, not an outage
    result = pipeline.process([good(3, "bad", "again")])
    assert [d.code for d in result.dead] == ["index_rejected"]


def test_an_index_that_refuses_writes_stops_the_batch_even_of_one_event(mini: MiniSpace, index: EdgeIndex) -> None:
    pipeline = IngestPipeline({"mini": mini}, index, LIMITS)
    pipeline.start()
    read_only = IngestPipeline({"mini": mini}, ReadOnly(index, ""), LIMITS)  # type: ignore[arg-type]
    assert read_only._index.count("mini") == 0  # it answers reads
    for batch in ([good(0, "a", "one")], [good(1, "b", "two"), good(2, "c", "three")]):
        with pytest.raises(VectorIndexError, match="read-only"):
            read_only.process(batch)  # nothing dead-lettered: the batch is replayed after a restart


def png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class CountsImageCalls:
    """The real mini space, counting how many images each tower call holds."""

    def __init__(self, inner: MiniSpace) -> None:
        self.inner, self.calls = inner, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_images(self, images: Sequence[Any]) -> Any:
        self.calls.append(len(images))
        return self.inner.encode_images(images)


def test_a_batch_past_the_decoded_byte_budget_is_written_in_parts_with_the_same_result(
    mini: MiniSpace, index: EdgeIndex
) -> None:
    space = CountsImageCalls(mini)
    # each 512x512 RGB image decodes to 768 KiB: a 2 MiB budget holds two at once
    pipeline = IngestPipeline({"mini": space}, index, LIMITS, max_decoded_bytes=2 * 1024 * 1024)  # type: ignore[dict-item]
    pipeline.start()
    picture = png(512, 512)

    def image(offset: int, item_id: str) -> SourceRecord:
        return rec(offset, item_id.encode(), orjson.dumps({"id": item_id, "modality": "image", "data": picture}))

    records = [image(0, "a"), image(1, "b"), image(2, "c"), rec(3, b"a", None), image(4, "d"), image(5, "e")]
    result = pipeline.process(records)
    assert max(space.calls) <= 2 and sum(space.calls) == 5
    assert (result.deleted, result.dead) == (1, [])  # "a" is written by the first part, deleted by the second
    ids = {h.item_id for h in index.search("mini", mini.encode_texts(["a red square"])[0], 10)}
    assert ids == {"b", "c", "d", "e"}  # "a" was deleted by a later part, in order


def test_a_dead_letter_too_large_for_the_broker_is_stored_truncated() -> None:
    hostile_headers = [("h", b"x" * 300_000), ("trace", b"abc")]
    record = rec(7, b"k" * 5000, b"v" * 990_000, hostile_headers)
    dead = DeadLetter(record, "invalid_json", "MediaEvent is not valid JSON", "decode")
    key, value, headers = dead.kafka_record(1_000_000)
    size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)
    assert size <= 1_000_000
    named = dict(headers)
    assert named["xmodal.error.truncated"] == b"true"
    assert int(named["xmodal.error.original_size"]) > 1_000_000
    assert named["xmodal.error.code"] == b"invalid_json" and named["xmodal.error.offset"] == b"7"
    assert value is not None and record.value is not None and record.value.startswith(value) and len(value) > 500_000
    # a record that fits is passed through untouched
    small = DeadLetter(rec(8, b"k", b"{", [("trace", b"abc")]), "invalid_json", "bad", "decode")
    assert small.kafka_record(1_000_000) == (b"k", b"{", small.headers())


# -- property: arbitrary records never escape the per-event path --------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=600) | st.integers() | st.none(),
        "op": st.sampled_from(["upsert", "delete", "replace", ""]),
        "modality": st.sampled_from(["text", "image", "audio", "video"]) | st.integers(),
        "text": st.text(max_size=50) | json_values,
        "data": st.text(max_size=40) | st.sampled_from(["iVBORw0KGgo=", "UklGRg=="]),
        "uri": st.sampled_from(["file:///etc/passwd", "http://127.0.0.1/x", "ftp://x", "", "file://"]),
        "metadata": json_values,
        "ts": json_values,
    },
)
def raw_json(value: Any) -> bytes:
    # the stdlib writes what orjson refuses to: integers past 64 bits, NaN and Infinity tokens
    return json.dumps(value).encode()


hostile_value = st.none() | st.binary(max_size=200) | event_like.map(raw_json) | json_values.map(raw_json)
hostile_key = st.none() | st.binary(max_size=40) | st.text(max_size=600).map(lambda t: t.encode("utf-8"))
hostile_headers = st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=30)), max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(hostile_key, hostile_value, hostile_headers), min_size=1, max_size=8), st.randoms())
def test_arbitrary_records_never_stop_the_batch(
    mini: MiniSpace, tmp_path_factory: pytest.TempPathFactory, hostile: list[Any], rnd: Any
) -> None:
    index = EdgeIndex(tmp_path_factory.mktemp("index"))
    try:
        pipeline = IngestPipeline({"mini": mini}, index, LIMITS)
        pipeline.start()
        # good events with ids no hostile record can name (hostile keys and ids are random text)
        goods = [good(0, f"good-{n}-{rnd.random()}", f"a red circle number {n}") for n in range(3)]
        records = [*goods, *(rec(0, k, v, h) for k, v, h in hostile)]
        rnd.shuffle(records)
        records = [SourceRecord(r.topic, r.partition, n, r.key, r.value, r.timestamp_ms, r.headers) for n, r in enumerate(records)]

        result = pipeline.process(records)  # must not raise

        dead = {d.record.offset for d in result.dead}
        for d in result.dead:
            assert d.code and d.message and d.stage in ("decode", "encode", "upsert")
            key, value, headers = d.kafka_record(1_000_000)  # every dead letter can be produced
            assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
        for r in records:
            if r.offset in dead:
                continue
            try:  # not dead-lettered: then it is a valid event of the wire protocol
                parse_media_event(r.key, r.value)
            except SchemaError as e:
                pytest.fail(f"record {r} was neither indexed nor dead-lettered: {e}")
        stored = {h.item_id for h in index.search("mini", mini.encode_texts(["a red circle"])[0], 100)}
        assert {g.key.decode() for g in goods if g.key} <= stored
    finally:
        index.close()
