"""`xmodal verify` against the real broker and both index backends: clean on an index the live
pipeline made, and every kind of damage found, counted and named."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from log_support import BACKENDS, group_caught_up, producer, remote_index, text_event, wait_until
from xmodal.indexer.base import IndexPoint
from xmodal.indexer.edge import EdgeIndex
from xmodal.runtime import Node, Roles
from xmodal.streams.verify import verify_space

pytestmark = [pytest.mark.broker, pytest.mark.slow]

LIVE = 30


@pytest.fixture(params=BACKENDS)
def node(request: pytest.FixtureRequest, broker: str, make_settings: Any, topic_prefix: str) -> Iterator[Node]:
    settings = make_settings(kafka_bootstrap=broker)
    index = remote_index(topic_prefix) if request.param == "qdrant-local" else None
    with Node(settings, Roles(ingest=True, query=False), index=index) as running:
        yield running


def ingest_history(node: Node, broker: str) -> None:
    """Upserts, updates, both kinds of delete and dead letters, then wait until all is committed."""
    topic = node.settings.media_topic
    p = producer(broker)
    for i in range(LIVE + 6):
        p.produce(topic, key=f"doc-{i}", value=text_event(f"doc-{i}", f"the first words of document {i}"))
    for i in range(5):  # updated: the index must hold the second version
        p.produce(topic, key=f"doc-{i}", value=text_event(f"doc-{i}", f"a newer version of document {i}"))
    for i in range(LIVE, LIVE + 3):  # deleted by tombstone
        p.produce(topic, key=f"doc-{i}", value=None)
    for i in range(LIVE + 3, LIVE + 6):  # deleted by op
        p.produce(topic, key=f"doc-{i}", value=orjson.dumps({"id": f"doc-{i}", "op": "delete"}))
    p.produce(topic, key="broken", value=b'{"id": "broken", "modality": ')  # only ever dead-lettered
    p.produce(topic, key="doc-7", value=orjson.dumps({"id": "doc-7", "modality": "video", "text": "x"}))  # after a valid one
    assert p.flush(30) == 0
    wait_until(lambda: group_caught_up(node.settings, broker), what="the ingest group to commit the whole topic")


def report_of(node: Node, broker: str) -> Any:
    embedded = isinstance(node.index, EdgeIndex)
    # The embedded index is open (locked) in this process's node: verify reads a copy of it, as it
    # does beside a running `xmodal up`; the in-process qdrant-client index is passed as it is.
    return verify_space(node.settings, broker, "mini", index=None if embedded else node.index)


def test_an_index_made_by_the_live_pipeline_verifies_clean(node: Node, broker: str) -> None:
    ingest_history(node, broker)
    report = report_of(node, broker)
    assert report.clean, report.to_dict()
    assert report.indexed == LIVE
    assert report.log_ids == LIVE + 6 + 1  # every id, "broken" included
    assert report.ok == LIVE + 6 + 1  # live ids with their latest point, deleted ids and "broken" absent
    assert report.dead_lettered == 2  # "broken", and doc-7 whose latest event was dead-lettered
    assert {s["id"] for s in report.dead_samples} == {"broken", "doc-7"}
    assert report.pending == 0


def test_missing_extra_stale_and_wrong_model_points_are_each_found(node: Node, broker: str) -> None:
    ingest_history(node, broker)
    index, mini = node.index, node.spaces["mini"]
    assert index is not None
    vector = mini.encode_texts(["a point nobody asked for"])[0]
    topic = node.settings.media_topic
    index.delete("mini", ["doc-10", "doc-11"])  # missing
    index.upsert(
        "mini",
        [
            IndexPoint("ghost", vector, "text", source={"topic": topic, "partition": 0, "offset": 0}),  # extra: not in the log
            IndexPoint(f"doc-{LIVE}", vector, "text", source={"topic": topic, "partition": 0, "offset": 0}),  # extra: deleted
            IndexPoint("doc-3", vector, "text", source={"topic": topic, "partition": 0, "offset": -5}),  # stale
        ],
    )
    # The point of doc-12 again, as if another model had made it.
    stored = {p.item_id: p for p in _points(node)}
    doc12 = stored["doc-12"]
    index.upsert(
        "mini",
        [IndexPoint("doc-12", vector, "text", source={"topic": doc12.topic, "partition": doc12.partition, "offset": doc12.offset}, model="mini:other:0")],
    )
    report = report_of(node, broker)
    assert not report.clean
    counts = {k: v for k, v in report.to_dict().items() if k in ("missing", "extra", "stale", "wrong_model")}
    assert counts == {"missing": 2, "extra": 2, "stale": 1, "wrong_model": 1}
    samples = report.samples
    assert {s["id"] for s in samples["missing"]} == {"doc-10", "doc-11"}
    assert {s["id"] for s in samples["extra"]} == {"ghost", f"doc-{LIVE}"}
    assert [s["id"] for s in samples["stale"]] == ["doc-3"]
    assert samples["wrong_model"] == [{"id": "doc-12", "indexed_model": "mini:other:0"}]

    if isinstance(node.index, EdgeIndex):  # the command, beside the running node: exit 1 and the same counts
        done = _cli(node, broker, "verify", "mini", "--json")
        assert done.returncode == 1, done.stderr
        printed = orjson.loads(done.stdout)
        assert {k: printed[k] for k in counts} == counts
        unknown = _cli(node, broker, "verify", "nosuchspace")
        assert unknown.returncode == 2 and "unknown space" in unknown.stderr


def _points(node: Node) -> list[Any]:
    from xmodal.streams.verify import indexed_points

    assert node.index is not None
    return list(indexed_points(node.index, "mini"))


def _cli(node: Node, broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(
        XMODAL_KAFKA_BOOTSTRAP=broker,
        XMODAL_TOPIC_PREFIX=node.settings.topic_prefix,
        XMODAL_DATA_DIR=str(node.settings.data_dir),
        XMODAL_METRICS_PORT="0",
    )
    return subprocess.run(
        [sys.executable, "-m", "xmodal.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
