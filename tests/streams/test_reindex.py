"""`xmodal reindex` on the real broker and the embedded index: a live space is rebuilt while searches
and ingest go on, a kill leaves the serving generation serving, a second reindex is refused, and a
generation made by another model is refused by the processes that encode with the old one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from log_support import group_caught_up, producer, text_event, wait_until

from xmodal.config import Settings
from xmodal.errors import XmodalError
from xmodal.indexer.provenance import ModelMismatch
from xmodal.runtime import Node, Roles
from xmodal.streams.logread import committed_offsets, end_offsets
from xmodal.streams.reindex import Reindexer, reindex_group
from xmodal.streams.verify import verify_space

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def live(broker: str, make_settings: Any) -> Iterator[Node]:
    """`xmodal up`'s services in this process: ingest and the query service on the embedded index."""
    settings = make_settings(kafka_bootstrap=broker, session_timeout_ms="6000")
    with Node(settings, Roles(ingest=True, query=True)) as running:
        yield running


def seed(node: Node, broker: str, n: int) -> None:
    p = producer(broker)
    for i in range(n):
        p.produce(node.settings.media_topic, key=f"doc-{i}", value=text_event(f"doc-{i}", f"document number {i} about {i % 7} things"))
    assert p.flush(30) == 0
    wait_until(lambda: group_caught_up(node.settings, broker), 120, "the seed indexed")


def serving(node: Node) -> int:
    return int(node.index.serving_generation("mini").number)  # type: ignore[union-attr]


class Traffic:
    """Searches (about 20/s unless told) through the real query path, and ingest (upserts, updates, deletes)."""

    def __init__(self, node: Node, broker: str, start_id: int, searches_per_s: float = 20.0) -> None:
        from xmodal.query_api.client import SearchClient

        self.node, self.broker = node, broker
        self.client = SearchClient(node.settings, broker)
        self.searches = 0
        self.failures: list[str] = []
        self.sent = 0
        self._next_id = start_id
        self._search_interval_s = 1.0 / searches_per_s
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._search, daemon=True), threading.Thread(target=self._ingest, daemon=True)]

    def __enter__(self) -> Traffic:
        self.client.__enter__()
        for t in self._threads:
            t.start()
        return self

    def _search(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.client.search(text=f"document number {self.searches % 50}", k=5, timeout=10)
            except XmodalError as e:
                self.failures.append(f"{e.code}: {e.message}")
            self.searches += 1
            self._stop.wait(max(self._search_interval_s - (time.monotonic() - began), 0))

    def _ingest(self) -> None:
        p = producer(self.broker)
        topic = self.node.settings.media_topic
        while not self._stop.is_set():
            i = self._next_id
            self._next_id += 1
            # About 15 events/s: new items, updates of seeded ones, deletes.
            p.produce(topic, key=f"new-{i}", value=text_event(f"new-{i}", f"a document written during the reindex, {i}"))
            if i % 2 == 0:
                p.produce(topic, key=f"doc-{i % 40}", value=text_event(f"doc-{i % 40}", f"document {i % 40}, version {i}"))
            if i % 5 == 0:
                p.produce(topic, key=f"new-{i - 3}", value=None)
            self.sent += 1
            p.poll(0)
            self._stop.wait(0.1)
        assert p.flush(30) == 0

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        self.client.__exit__(None, None, None)

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()


def test_reindex_of_a_live_space_switches_with_no_failed_search_and_verifies_clean(live: Node, broker: str) -> None:
    seed(live, broker, 400)
    before = serving(live)
    # The new generation's index settings differ from the serving one's: what a reindex is for.
    settings = live.settings.model_copy(update={"hnsw_m": 8, "optimize_after_points": 0})
    burst = []

    def before_switch() -> None:  # events the reindex will not write: the live workers hand them over
        p = producer(broker)
        for i in range(30):
            p.produce(settings.media_topic, key=f"burst-{i}", value=text_event(f"burst-{i}", f"written at the switch {i}"))
            burst.append(f"burst-{i}")
        assert p.flush(30) == 0
        # Written by the live workers into the old generation only: the new one gets them by the handoff.
        ends = end_offsets(settings, broker, settings.media_topic)
        wait_until(lambda: group_caught_up(settings, broker, ends=ends), 60, "the live workers to index the burst")

    with Traffic(live, broker, 1000) as traffic:
        time.sleep(1.0)
        result = Reindexer(settings, broker, "mini", before_switch=before_switch).run()
        time.sleep(3.0)  # searches and ingest go on across the switch
        traffic.stop()
    assert result.generation == serving(live) != before
    assert result.events >= 400 and not result.resumed
    wait_until(lambda: group_caught_up(live.settings, broker), 120, "the live group to catch up")
    wait_until(lambda: _writes_to(live) == result.generation, 30, "the live index to follow the switch")
    assert traffic.searches >= 60, traffic.searches
    assert traffic.failures == []
    report = verify_space(live.settings, broker, "mini")
    assert report.clean, report.to_dict()
    assert report.pending == 0
    assert report.generation == result.generation
    assert report.ok == report.log_ids  # every id of the log judged and right, the burst included
    vector = live.spaces["mini"].encode_texts(["written at the switch 7"])[0]
    assert live.index.search("mini", vector, 1)[0].item_id == "burst-7"  # type: ignore[union-attr]
    # the old generation is kept for rollback, untouched by the reindex
    assert before in [g.number for g in live.index.generations("mini")]  # type: ignore[union-attr]


def test_a_reindex_slower_than_the_log_grows_per_pass_still_switches_and_loses_nothing(live: Node, broker: str) -> None:
    """Live ingest never lets the log stand still. On a busy machine each write of the reindex takes
    longer than the gap between two new events, so "the end of the log, unchanged" never comes: the
    reindex must switch once few events are left, and the handoff must replay those."""
    from xmodal.encoders.mini.space import MiniSpace

    seed(live, broker, 200)
    before = serving(live)
    slow = MiniSpace(live.settings)
    encode_texts = slow.encode_texts

    def slow_encode(texts: list[str]) -> Any:  # the same model on a machine busy elsewhere
        time.sleep(0.5)
        return encode_texts(texts)

    slow.encode_texts = slow_encode  # type: ignore[method-assign]
    outcome: dict[str, Any] = {}

    def reindex() -> None:
        try:
            outcome["result"] = Reindexer(live.settings, broker, "mini", encoder=slow).run()
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e

    stop = threading.Event()

    def produce() -> None:  # about 20 events/s: 10 or so arrive during every write of the reindex
        p, i = producer(broker), 0
        while not stop.is_set():
            p.produce(live.settings.media_topic, key=f"steady-{i}", value=text_event(f"steady-{i}", f"a steady event {i}"))
            p.poll(0)
            i += 1
            stop.wait(0.05)
        assert p.flush(30) == 0

    producing = threading.Thread(target=produce, daemon=True)
    producing.start()
    try:
        worker = threading.Thread(target=reindex, daemon=True)
        worker.start()
        worker.join(240)
        assert not worker.is_alive(), "the reindex chased the growing log for 240 s without switching"
    finally:
        stop.set()
        producing.join(60)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.generation == serving(live) != before
    assert result.events >= 200
    wait_until(lambda: group_caught_up(live.settings, broker), 120, "the live group to catch up")
    wait_until(lambda: _writes_to(live) == result.generation, 30, "the live index to follow the switch")
    # No batch comes after the switch: the live workers replay the handoff between batches.
    wait_until(lambda: verify_space(live.settings, broker, "mini").clean, 60, "the handoff to be replayed")
    report = verify_space(live.settings, broker, "mini")
    assert report.pending == 0 and report.generation == result.generation, report.to_dict()
    assert report.ok == report.log_ids  # the events past the handoff too: the live workers replayed them


def _writes_to(node: Node) -> int:
    return int(node.index.index_report("mini")["generation"])  # type: ignore[union-attr]


def _cli_env(settings: Settings, broker: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(
        XMODAL_KAFKA_BOOTSTRAP=broker,
        XMODAL_TOPIC_PREFIX=settings.topic_prefix,
        XMODAL_TOPIC_PARTITIONS=str(settings.topic_partitions),
        XMODAL_DATA_DIR=str(settings.data_dir),
        XMODAL_METRICS_PORT="0",
        XMODAL_SESSION_TIMEOUT_MS="6000",
        **extra,
    )
    return env


def test_a_killed_reindex_leaves_the_serving_generation_serving_and_a_rerun_resumes(live: Node, broker: str) -> None:
    seed(live, broker, 1200)
    settings = live.settings
    before = serving(live)
    env = _cli_env(settings, broker, XMODAL_BATCH_SIZE="8")  # small batches: many commits to be killed between
    first = subprocess.Popen(
        [sys.executable, "-m", "xmodal.cli", "reindex", "mini"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        group = None
        deadline = time.monotonic() + 120
        while group is None or sum(committed_offsets(settings, broker, settings.media_topic, group).values()) < 100:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the reindex wrote nothing in 120 s"
            building = [g for g in live.index.generations("mini") if g.state == "building"]  # type: ignore[union-attr]
            group = reindex_group(settings, "mini", building[0].number) if building else None
            time.sleep(0.1)
        # A second reindex of the same space while the first runs: refused, with the reason.
        second = subprocess.run([sys.executable, "-m", "xmodal.cli", "reindex", "mini"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "already running" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    written = sum(committed_offsets(settings, broker, settings.media_topic, group).values())
    assert 0 < written < 1200
    # The serving generation never moved and still answers.
    assert serving(live) == before
    vector = live.spaces["mini"].encode_texts(["document number 17 about 3 things"])[0]
    assert live.index.search("mini", vector, 1)[0].item_id == "doc-17"  # type: ignore[union-attr]
    again = subprocess.run(
        [sys.executable, "-m", "xmodal.cli", "reindex", "mini", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    result = orjson.loads(again.stdout)
    assert result["resumed"] is True
    assert result["events"] <= 1200 - written + 8  # only what the killed run had not committed
    assert serving(live) == result["generation"] != before
    wait_until(lambda: _writes_to(live) == result["generation"], 30, "the live index to follow the switch")
    report = verify_space(settings, broker, "mini")
    assert report.clean and report.indexed == 1200, report.to_dict()


def perturbed_weights(tmp_path: Path) -> Path:
    """The mini space's weights with the image tower changed: a real, different model."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from xmodal.encoders.mini.space import WEIGHTS_DIR

    target = tmp_path / "other-weights"
    target.mkdir()
    for name in ("image", "audio"):
        with safe_open(str(WEIGHTS_DIR / f"{name}.safetensors"), framework="numpy") as f:
            metadata = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no iteration
        if name == "image":
            key = next(k for k, v in tensors.items() if v.dtype.kind == "f")
            tensors[key] = tensors[key] + np.float32(0.01)
        save_file(tensors, str(target / f"{name}.safetensors"), metadata=metadata)
    return target


def test_a_generation_made_by_another_model_is_refused_by_the_old_models_processes(
    live: Node, broker: str, tmp_path: Path
) -> None:
    from xmodal.encoders.mini.space import MiniSpace
    from xmodal.query_api.client import SearchClient

    seed(live, broker, 50)
    other = MiniSpace(live.settings, weights_dir=perturbed_weights(tmp_path))
    assert other.fingerprint != live.spaces["mini"].fingerprint
    result = Reindexer(live.settings, broker, "mini", encoder=other).run()
    assert live.index.serving_generation("mini").model == other.fingerprint  # type: ignore[union-attr]
    with SearchClient(live.settings, broker) as client:
        def refused() -> bool:
            try:
                client.search(text="document number 3", k=3, timeout=10)
            except XmodalError as e:
                return e.code == "model_mismatch"
            return False

        wait_until(refused, 30, "searches to be refused with model_mismatch")
    # Ingest refuses to write old-model vectors into it: the worker stops (exit 3 in `xmodal up`).
    p = producer(broker)
    p.produce(live.settings.media_topic, key="late", value=text_event("late", "after the switch"))
    assert p.flush(30) == 0
    wait_until(lambda: live.failure is not None, 60, "ingest to stop")
    assert "model" in str(live.failure)
    live.stop()
    # A process started with the old model refuses to start, and says what to do.
    with pytest.raises(ModelMismatch, match=f"generation {result.generation}"):
        Node(live.settings, Roles(ingest=True, query=True)).start()


def test_reindex_on_a_qdrant_server_needs_a_job_id(make_settings: Any, broker: str) -> None:
    # The server's workers are tests/streams/test_reindex_server.py; without --job they cannot share one.
    settings = make_settings(kafka_bootstrap=broker, qdrant_url="http://127.0.0.1:1")
    with pytest.raises(XmodalError, match="--job") as refused:
        Reindexer(settings, broker, "mini").run()
    assert refused.value.code == "reindex_job_needed"
