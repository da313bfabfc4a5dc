"""The tower schedule of SerializedEncoder (xmodal/encoders/scheduling.py): searches before waiting
ingest, riding along in the next ingest slice of their tower, ingest in bounded slices, a guaranteed
ingest slice after a bounded run of query batches, and errors attributed per caller. Deterministic: the tower records its calls and runs one only
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

    def __init__(self, log: list[list[str]] | None = None) -> None:
        """`log`: a list shared with other towers, for the order of calls across them."""
        self.log = log
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
            if self.log is not None:
                self.log.append(list(texts))
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


def test_queries_that_arrive_while_ingest_slices_wait_ride_along_in_the_next_slice(pool: ThreadPoolExecutor) -> None:
    tower = GatedTower()
    shared = SerializedEncoder(tower, ingest_slice=16)
    ingest, search = shared.for_ingest(), shared.for_queries()
    bulk = items("item", 48)
    ingested = pool.submit(ingest.encode_texts, bulk)
    assert tower.entered(1) == [bulk[:16]]  # the first slice holds the tower, two more wait
    answers = [queue(pool, search, [f"query {i}"]) for i in range(3)]
    tower.step()
    # The three queries go next, in one forward with the next ingest slice: three more rows of a
    # batch instead of a forward of their own.
    queries = ["query 0", "query 1", "query 2"]
    assert tower.entered(2)[1] == queries + bulk[16:32]
    tower.open()
    np.testing.assert_array_equal(ingested.result(20), rows_of(bulk))
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer.result(20), rows_of([f"query {i}"]))
    assert tower.calls == [bulk[:16], queries + bulk[16:32], bulk[32:]]
    assert tower.max_active == 1
    assert shared.scheduler.turns == {"query": 0, "ingest": 3}
    assert shared.scheduler.riders == 3


def test_a_query_of_another_tower_gets_a_turn_of_its_own_and_a_large_query_rides_uncut(pool: ThreadPoolExecutor) -> None:
    tower = GatedTower()
    scheduler = SerializedEncoder(tower, ingest_slice=8).scheduler
    bulk = items("item", 24)
    ingested = pool.submit(scheduler.encode, "ingest", "text", tower.encode_texts, bulk)
    tower.entered(1)
    # Another tower's text query (another encoder's bound method) cannot share the forward.
    other = GatedTower()
    other.open()
    elsewhere = pool.submit(scheduler.encode, "query", "text", other.encode_texts, ["elsewhere"])
    wait_for(lambda: scheduler.waiting("query") == 1, "the other tower's query queued")
    tower.step()
    np.testing.assert_array_equal(elsewhere.result(20), rows_of(["elsewhere"]))
    assert other.calls == [["elsewhere"]] and tower.entered(2)[1] == bulk[8:16]
    # A query as large as a slice rides along whole: the slice is not cut short for it.
    large = items("query", 8)
    answer = pool.submit(scheduler.encode, "query", "text", tower.encode_texts, large)
    wait_for(lambda: scheduler.waiting("query") == 1, "the large query queued")
    tower.open()
    np.testing.assert_array_equal(answer.result(20), rows_of(large))
    np.testing.assert_array_equal(ingested.result(20), rows_of(bulk))
    assert tower.calls == [bulk[:8], bulk[8:16], large + bulk[16:]]
    assert scheduler.riders == 1 and scheduler.turns == {"query": 1, "ingest": 3}


def test_a_query_goes_alone_at_once_when_no_ingest_of_its_tower_waits(pool: ThreadPoolExecutor) -> None:
    # Between two parts the pipeline writes and no ingest waits: the query does not wait for the
    # next part (the tower never idles while work waits).
    tower = GatedTower()
    scheduler = TowerScheduler(ingest_slice=8)
    first = items("part one", 8)
    one = pool.submit(scheduler.encode, "ingest", "text", tower.encode_texts, first)
    tower.entered(1)
    query = pool.submit(scheduler.encode, "query", "text", tower.encode_texts, ["query"])
    wait_for(lambda: scheduler.waiting("query") == 1, "the query queued")
    tower.step()
    np.testing.assert_array_equal(one.result(20), rows_of(first))
    assert tower.entered(2)[1] == ["query"]  # alone, before any next part came
    two = pool.submit(scheduler.encode, "ingest", "text", tower.encode_texts, items("part two", 8))
    tower.open()
    np.testing.assert_array_equal(query.result(20), rows_of(["query"]))
    two.result(20)
    assert scheduler.riders == 0 and scheduler.turns == {"query": 1, "ingest": 2}
    assert len(scheduler.ingest_gaps_s) == 1  # part one's end -> part two's arrival, measured
    # ride_along=False: queries only in turns of their own, as before they rode along.
    gated = GatedTower()
    scheduler = TowerScheduler(ingest_slice=8, ride_along=False)
    bulk = items("item", 16)
    ingested = pool.submit(scheduler.encode, "ingest", "text", gated.encode_texts, bulk)
    gated.entered(1)
    query = pool.submit(scheduler.encode, "query", "text", gated.encode_texts, ["query"])
    wait_for(lambda: scheduler.waiting("query") == 1, "the query queued")
    gated.open()
    np.testing.assert_array_equal(query.result(20), rows_of(["query"]))
    np.testing.assert_array_equal(ingested.result(20), rows_of(bulk))
    assert gated.calls == [bulk[:8], ["query"], bulk[8:]] and scheduler.riders == 0


def test_ingest_gets_a_slice_after_the_bounded_run_of_query_batches(pool: ThreadPoolExecutor) -> None:
    # Queries of another tower (say image queries during a text ingest) cannot ride along: they
    # take turns of their own, and ingest still gets its slice after a bounded run of them.
    order: list[list[str]] = []
    tower, other = GatedTower(order), GatedTower(order)
    scheduler = TowerScheduler(ingest_slice=4, queries_per_slice=2)
    bulk = items("item", 12)
    ingested = pool.submit(scheduler.encode, "ingest", "text", tower.encode_texts, bulk)
    tower.entered(1)
    answers = {}

    def ask(name: str) -> None:
        before = scheduler.waiting("query")
        answers[name] = pool.submit(scheduler.encode, "query", "text", other.encode_texts, [name])
        wait_for(lambda: scheduler.waiting("query") > before, f"{name} queued")

    # Each query arrives while the one before it holds the tower: query batches back to back,
    # the load under which first-come-first-served starved ingest.
    ask("a")
    tower.step()
    other.entered(1)
    ask("b")
    other.step()
    other.entered(2)
    ask("c")
    other.step()
    tower.entered(2)  # two query batches, then ingest's guaranteed slice
    ask("d")
    tower.step()
    other.entered(3)
    tower.open()
    other.open()
    np.testing.assert_array_equal(ingested.result(20), rows_of(bulk))
    for name, answer in answers.items():
        np.testing.assert_array_equal(answer.result(20), rows_of([name]))
    # The query that waited behind the slice goes next, merged with the one that came during it.
    assert order == [bulk[:4], ["a"], ["b"], bulk[4:8], ["c", "d"], bulk[8:]]
    assert scheduler.riders == 0


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
        # The queries ride along in the next slice: merged, failed, retried per caller.
        ["good", "poison"] + poisoned[:8], ["good"], ["poison"], poisoned[:8],
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
        # Searches went through the query class (alone or riding along in ingest slices), ingest
        # through sliced ingest turns (300 texts in slices of at most 8: at least 38 of them).
        assert turns["query"] + shared.scheduler.riders >= 1 and turns["ingest"] >= len(texts) // 8


# -- the real MiniLM tower: a query's row is the same inside a slice of longer ingest texts ---------


def test_real_minilm_rows_ridden_along_in_a_padded_slice_match_each_text_alone(pool: ThreadPoolExecutor) -> None:
    from xmodal.config import load_settings
    from xmodal.encoders.registry import build_space

    space = build_space("mini", load_settings({}))
    space.load()
    shared = SerializedEncoder(space, ingest_slice=8)
    queries = ["red circle", "a small blue square on a white background"]
    # Ingest captions much longer than the queries, so the merged batch pads the queries' tokens.
    captions = [f"a large {c} triangle beside a small {d} disc and a tiny {c} star, drawn on grey paper, item {i}"
                for i, (c, d) in enumerate(zip(["green", "yellow", "purple"] * 4, ["orange", "black", "white"] * 4))]
    held, released = threading.Event(), threading.Event()
    holding = pool.submit(shared.scheduler.exclusive, lambda: (held.set(), released.wait(20)))  # hold the tower
    assert held.wait(20)
    ingested = queue(pool, shared.for_ingest(), captions)
    answers = [queue(pool, shared.for_queries(), [q]) for q in queries]
    released.set()
    holding.result(20)
    merged = np.concatenate([a.result(60) for a in answers])
    ingest_rows = ingested.result(60)  # the second slice may still be running when the queries return
    # Both queries rode along with the first 8 captions in one forward.
    assert shared.scheduler.riders == 2 and shared.scheduler.turns == {"query": 0, "ingest": 2}
    alone = np.concatenate([space.encode_texts([q]) for q in queries])
    cosines = np.sum(merged * alone, axis=1) / (np.linalg.norm(merged, axis=1) * np.linalg.norm(alone, axis=1))
    assert cosines.min() >= 0.9999, cosines
    captions_alone = np.concatenate([space.encode_texts([c]) for c in captions])
    ingest_cosines = np.sum(ingest_rows * captions_alone, axis=1)
    assert ingest_cosines.min() >= 0.9999, ingest_cosines
