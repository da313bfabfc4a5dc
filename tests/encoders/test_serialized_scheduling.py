"""The tower schedule of SerializedEncoder (xmodal/encoders/scheduling.py): searches before waiting
ingest, ingest in bounded slices, a guaranteed ingest slice after a bounded run of query batches,
and errors attributed per caller. Deterministic: the tower records its calls and runs one only
when the test lets it, so each assertion is about the order the schedule chose, never about time."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from xmodal.encoders.base import SerializedEncoder, Vectors, l2_normalize
from xmodal.encoders.scheduling import TowerScheduler
from xmodal.errors import EncodeError
from xmodal.runtime import Node, Roles


def rows_of(texts: Sequence[str]) -> Vectors:
    """Each text's own vector (from its hash): a caller handed another's rows is seen at once."""
    digests = [hashlib.sha256(t.encode()).digest()[:4] for t in texts]
    return l2_normalize(np.array([[b + 1 for b in d] for d in digests], dtype=np.float32).reshape(len(texts), 4))


class GatedTower:
    """A text tower that records each call and lets one finish per `step()` (or all once `open()`)."""

    name, dim, modalities = "gated", 4, frozenset({"text"})

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._cond = threading.Condition()
        self._permits = 0
        self._open = False
        self.active = 0
        self.max_active = 0

    def load(self) -> None:
        pass

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        with self._cond:
            self.calls.append(list(texts))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: self._open or self._permits > 0, 20), "the test never let this call run"
            if not self._open:
                self._permits -= 1
            self.active -= 1
        if any("poison" in t for t in texts):
            raise EncodeError("poison", code="encode_error")
        return rows_of(texts)

    def encode_images(self, images: Sequence[Any]) -> Vectors:
        raise EncodeError("no image tower", code="unsupported_modality")

    def encode_audio(self, clips: Sequence[Any]) -> Vectors:
        raise EncodeError("no audio tower", code="unsupported_modality")

    def entered(self, n: int) -> list[list[str]]:
        """Wait until `n` calls have entered the tower; the calls so far."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, 20), f"{n} tower calls expected, {self.calls}"
            return list(self.calls)

    def step(self) -> None:
        with self._cond:
            self._permits += 1
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Until a thread has queued its call (a state, not a duration: the bound only stops a hang)."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.005)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as running:
        yield running


def queue(pool: ThreadPoolExecutor, encoder: SerializedEncoder, texts: list[str]) -> Future[Vectors]:
    """Submit a call and wait until it is queued (so arrivals have a known order)."""
    before = encoder.scheduler.waiting(encoder.priority)
    future = pool.submit(encoder.encode_texts, texts)
    wait_for(lambda: encoder.scheduler.waiting(encoder.priority) > before, f"{texts[:1]} queued")
    return future


def items(prefix: str, n: int) -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]


def test_a_query_that_arrives_while_ingest_slices_wait_goes_next(pool: ThreadPoolExecutor) -> None:
    tower = GatedTower()
    shared = SerializedEncoder(tower, ingest_slice=16)
    ingest, search = shared.for_ingest(), shared.for_queries()
    bulk = items("item", 48)
    ingested = pool.submit(ingest.encode_texts, bulk)
    assert tower.entered(1) == [bulk[:16]]  # the first slice holds the tower, two more wait
    answers = [queue(pool, search, [f"query {i}"]) for i in range(3)]
    tower.step()
    # The three queries, merged, before the rest of the ingest batch.
    assert tower.entered(2)[1] == ["query 0", "query 1", "query 2"]
    tower.open()
    np.testing.assert_array_equal(ingested.result(20), rows_of(bulk))
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer.result(20), rows_of([f"query {i}"]))
    assert tower.calls == [bulk[:16], ["query 0", "query 1", "query 2"], bulk[16:32], bulk[32:]]
    assert tower.max_active == 1
    assert shared.scheduler.turns == {"query": 1, "ingest": 3}


def test_ingest_gets_a_slice_after_the_bounded_run_of_query_batches(pool: ThreadPoolExecutor) -> None:
    tower = GatedTower()
    shared = SerializedEncoder(tower, ingest_slice=4, queries_per_slice=2)
    ingest, search = shared.for_ingest(), shared.for_queries()
    bulk = items("item", 12)
    ingested = pool.submit(ingest.encode_texts, bulk)
    tower.entered(1)
    answers = {}
    # Each query arrives while the one before it holds the tower: query batches back to back,
    # the load under which first-come-first-served starved ingest.
    for n, name in enumerate("abcd", start=1):
        answers[name] = queue(pool, search, [name])
        tower.step()
        tower.entered(n + 1)
    tower.open()
    np.testing.assert_array_equal(ingested.result(20), rows_of(bulk))
    assert [a.result(20).shape for a in answers.values()] == [(1, 4)] * 4
    # Two query batches, then ingest's guaranteed slice; the query that waited behind it goes
    # next, merged with the one that came during the slice.
    assert tower.calls == [bulk[:4], ["a"], ["b"], bulk[4:8], ["c", "d"], bulk[8:]]


def test_ingest_is_encoded_in_bounded_slices_and_queued_ingest_calls_share_one(pool: ThreadPoolExecutor) -> None:
    tower = GatedTower()
    tower.open()
    shared = SerializedEncoder(tower, ingest_slice=16)
    bulk = items("item", 40)
    np.testing.assert_array_equal(shared.encode_texts(bulk), rows_of(bulk))  # the encoder itself is an ingest view
    assert [len(c) for c in tower.calls] == [16, 16, 8]
    big_query = items("query", 40)
    np.testing.assert_array_equal(shared.for_queries().encode_texts(big_query), rows_of(big_query))
    assert tower.calls[-1] == big_query  # a query call is not cut: it waits for nothing

    gated = GatedTower()
    shared = SerializedEncoder(gated, ingest_slice=16)
    hold = pool.submit(shared.for_queries().encode_texts, ["hold"])
    gated.entered(1)
    small, large = items("small", 3), items("large", 20)
    got_small, got_large = queue(pool, shared, small), queue(pool, shared, large)
    gated.open()
    hold.result(20)
    np.testing.assert_array_equal(got_small.result(20), rows_of(small))
    np.testing.assert_array_equal(got_large.result(20), rows_of(large))
    assert gated.calls == [["hold"], small + large[:13], large[13:]]


def test_a_failing_input_fails_only_its_caller_in_a_merged_query_batch_and_in_a_shared_slice(
    pool: ThreadPoolExecutor,
) -> None:
    tower = GatedTower()
    shared = SerializedEncoder(tower, ingest_slice=8)
    search = shared.for_queries()
    hold = pool.submit(shared.encode_texts, items("hold", 8))
    tower.entered(1)
    good, bad = queue(pool, search, ["good"]), queue(pool, search, ["poison"])
    poisoned = items("x", 12)
    poisoned[10] = "x poison"  # in the second slice of its call, which it shares with `clean`
    clean = items("clean", 4)
    failing, passing = queue(pool, shared, poisoned), queue(pool, shared, clean)
    tower.open()
    hold.result(20)
    np.testing.assert_array_equal(good.result(20), rows_of(["good"]))
    with pytest.raises(EncodeError, match="poison"):
        bad.result(20)
    with pytest.raises(EncodeError, match="poison"):
        failing.result(20)
    np.testing.assert_array_equal(passing.result(20), rows_of(clean))
    assert tower.calls == [
        items("hold", 8),
        ["good", "poison"], ["good"], ["poison"],  # merged, failed, retried per caller
        poisoned[:8],
        poisoned[8:] + clean, poisoned[8:], clean,
    ]
    assert shared.scheduler.waiting("query") == shared.scheduler.waiting("ingest") == 0


def test_load_has_the_tower_to_itself_and_bad_parameters_are_refused(pool: ThreadPoolExecutor) -> None:
    tower = GatedTower()
    shared = SerializedEncoder(tower)
    hold = pool.submit(shared.for_queries().encode_texts, ["hold"])
    tower.entered(1)
    loaded = threading.Event()
    loading = pool.submit(shared.scheduler.exclusive, loaded.set)
    assert not loaded.wait(0.2)  # not while a call runs (a wrong schedule would set it at once)
    tower.open()
    hold.result(20)
    loading.result(20)
    assert loaded.is_set()
    with pytest.raises(ValueError, match="ingest_slice"):
        TowerScheduler(ingest_slice=0)
    with pytest.raises(ValueError, match="queries_per_slice"):
        TowerScheduler(queries_per_slice=0)
    with pytest.raises(ValueError, match="priority"):
        shared.scheduler.encode("bulk", "text", tower.encode_texts, ["x"])  # type: ignore[arg-type]


# -- the real Node: ingest and search share the towers through the schedule --------------------------


@pytest.mark.broker
@pytest.mark.slow
def test_a_node_ingests_and_answers_searches_at_once_through_both_classes(broker: str, make_settings: Any) -> None:
    from xmodal.query_api import SearchClient, hits_or_raise

    settings = make_settings(kafka_bootstrap=broker, ingest_encode_slice="8")
    with Node(settings, Roles(ingest=True, query=True)) as node, SearchClient(settings, node.bootstrap) as client:
        assert node.index is not None
        shared = node.spaces["mini"]
        assert isinstance(shared, SerializedEncoder) and shared.scheduler.ingest_slice == 8
        texts = [f"a photo of thing number {i} on a table" for i in range(300)]
        producer = Producer({"bootstrap.servers": node.bootstrap})
        for i, text in enumerate(texts):
            producer.produce(settings.media_topic, key=f"doc-{i}", value=f'{{"id": "doc-{i}", "modality": "text", "text": "{text}"}}')
        assert producer.flush(30) == 0
        searches = [client.search_async(f"thing number {i}", k=5, timeout=60) for i in range(40)]
        for future in searches:
            hits_or_raise(future.result(90))
        wait_for_count = time.monotonic() + 120
        while node.index.count("mini") < len(texts):
            assert node.failure is None and time.monotonic() < wait_for_count, f"{node.index.count('mini')} indexed"
            time.sleep(0.2)
        assert client.search(texts[123], k=3)[0].id == "doc-123"
        turns = shared.scheduler.turns
        # Searches went through the query class, ingest through sliced ingest turns (300 texts in
        # slices of at most 8: at least 38 of them).
        assert turns["query"] >= 1 and turns["ingest"] >= len(texts) // 8
