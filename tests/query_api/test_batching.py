"""TextBatcher and Arrivals (batching.py) on the real MiniLM tower: the text queries a service has
taken together are encoded in one call, each caller gets its own row, a lone query never waits,
and one text that breaks the tower fails only its own caller; and through the query service on the
real broker, searches sent together get the answers they get one at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from qa_support import MiniText, ToySpace, make_request, open_backend, populate, settings  # noqa: F401 - a fixture

from xmodal.config import Settings
from xmodal.encoders.base import Vectors
from xmodal.encoders.media import MediaLimits
from xmodal.query_api import QueryService, SearchClient, Searcher, hits_or_raise
from xmodal.query_api.batching import Arrivals, TextBatcher, Ticket

TEXTS = [
    "a red circle on white",
    "a dog barking in the park",
    "rain falling on a tin roof",
    "a slow piano melody",
    "green leaves in spring",
    "a clear blue sky",
]


class CountingTower:
    """A tower that records the size of every call it gets."""

    def __init__(self, encode_texts: Callable[[Sequence[str]], Vectors]) -> None:
        self._encode_texts = encode_texts
        self.calls: list[int] = []

    def __call__(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(len(texts))
        return self._encode_texts(texts)


def encode_in_threads(batcher: TextBatcher, texts: Sequence[str], tickets: Sequence[Ticket]) -> list[object]:
    """Each text encoded from a thread of its own; the vector or the exception, in order."""
    results: list[object] = [None] * len(texts)

    def one(i: int) -> None:
        try:
            results[i] = batcher.encode(texts[i], tickets[i])
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a caller of the batcher never returned"
    return results


def test_requests_taken_together_are_encoded_in_one_call_with_their_own_rows(mini: MiniText) -> None:
    tower = CountingTower(mini.encode_texts)
    arrivals = Arrivals()
    batcher = TextBatcher(tower, arrivals, gather_s=30.0)  # the leader waits for every ticket out
    tickets = [arrivals.ticket() for _ in TEXTS]
    results = encode_in_threads(batcher, TEXTS, tickets)
    assert tower.calls == [len(TEXTS)]
    assert arrivals.out == 0
    alone = mini.encode_texts(TEXTS)  # the same texts, one call: row i is text i's
    for i, vector in enumerate(results):
        assert isinstance(vector, np.ndarray) and vector.shape == (mini.dim,)
        assert float(vector @ alone[i]) > 0.9999, f"text {i} got another text's row"
        others = [float(vector @ alone[j]) for j in range(len(TEXTS)) if j != i]
        assert max(others) < 0.99


def test_a_lone_query_does_not_wait(mini: MiniText) -> None:
    tower = CountingTower(mini.encode_texts)
    arrivals = Arrivals()
    batcher = TextBatcher(tower, arrivals, gather_s=600.0)
    vector = batcher.encode(TEXTS[0], arrivals.ticket())  # nothing else was taken: encoded at once
    assert tower.calls == [1]
    assert batcher.stats.gathers == 0
    assert float(vector @ mini.encode_texts([TEXTS[0]])[0]) > 0.9999


def test_a_request_that_never_arrives_delays_the_batch_by_gather_s_at_most(mini: MiniText) -> None:
    tower = CountingTower(mini.encode_texts)
    arrivals = Arrivals()
    batcher = TextBatcher(tower, arrivals, gather_s=0.05)
    stray = arrivals.ticket()  # taken, never brought to the encode
    vector = batcher.encode(TEXTS[1], arrivals.ticket())
    assert tower.calls == [1] and batcher.stats.gathers == 1
    assert vector.shape == (mini.dim,)
    stray.done()
    stray.done()  # idempotent: counted once
    assert arrivals.out == 0


def test_one_text_that_breaks_the_tower_fails_only_its_caller() -> None:
    toy = ToySpace()
    tower = CountingTower(toy.encode_texts)
    arrivals = Arrivals()
    batcher = TextBatcher(tower, arrivals, gather_s=30.0)
    texts = ["red", f"blue {ToySpace.fail_on}", "green"]
    results = encode_in_threads(batcher, texts, [arrivals.ticket() for _ in texts])
    assert tower.calls[0] == 3  # merged, failed, then retried text by text
    assert sorted(tower.calls[1:]) == [1, 1, 1]
    assert isinstance(results[1], RuntimeError)
    assert np.argmax(results[0]) == 0 and np.argmax(results[2]) == 1  # type: ignore[arg-type]


def test_gather_s_must_not_be_negative(mini: MiniText) -> None:
    with pytest.raises(ValueError, match="gather_s"):
        TextBatcher(mini.encode_texts, Arrivals(), gather_s=-1)


def test_under_load_a_leader_lingers_for_the_texts_that_keep_coming(mini: MiniText) -> None:
    tower = CountingTower(mini.encode_texts)
    arrivals = Arrivals()
    batcher = TextBatcher(tower, arrivals, gather_s=30.0, linger_s=30.0, quiet_s=30.0, max_batch=3)
    encode_in_threads(batcher, TEXTS[:2], [arrivals.ticket() for _ in range(2)])  # a merged call: load
    assert tower.calls == [2]
    # Three searches that were never taken together: the leader waits on until the third has come
    # (max_batch), not merely the 30 s, because each came within quiet_s of the one before.
    results: list[object] = []
    threads = [threading.Thread(target=lambda t=t: results.append(batcher.encode(t))) for t in TEXTS[2:5]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 3 and tower.calls == [2, 3]
    assert batcher.stats.lingers == 1  # the first call did not: nothing was merged before it


def test_after_a_lone_call_a_query_does_not_linger(mini: MiniText) -> None:
    tower = CountingTower(mini.encode_texts)
    batcher = TextBatcher(tower, Arrivals(), linger_s=600.0, quiet_s=600.0)
    for text in TEXTS[:3]:  # one client, one search at a time: never a wait
        batcher.encode(text)
    assert tower.calls == [1, 1, 1] and batcher.stats.lingers == 0


@pytest.mark.broker
def test_searches_sent_together_get_the_answers_they_get_alone(
    broker: str, settings: Settings, mini: MiniText, tmp_path: Path
) -> None:
    index = open_backend("edge", tmp_path / "edge")
    populate(index, mini)
    wide = settings.model_copy(update={"query_concurrency": 16})
    searcher = Searcher({"mini": mini}, index, MediaLimits.from_settings(wide), query_cache_entries=0)
    searcher.start(load_encoders=False)
    queries = [f"{text}, take {i}" for i in range(3) for text in TEXTS]  # 18 different texts
    alone = {q: searcher.search(make_request(query={"text": q}, k=3)) for q in queries}
    calls_alone = searcher.batchers["mini"].stats.calls
    try:
        with QueryService(wide, broker, searcher), SearchClient(wide, broker) as client:
            futures = {q: client.search_async(q, k=3) for q in queries}
            together = {q: hits_or_raise(f.result(30)) for q, f in futures.items()}
    finally:
        index.close()
    stats = searcher.batchers["mini"].stats
    assert stats.texts == 2 * len(queries)  # every text went through the batcher, once each way
    assert stats.calls - calls_alone <= len(queries)
    for q in queries:
        assert [h.id for h in together[q]] == [h.id for h in alone[q]], q
        assert [h.score for h in together[q]] == pytest.approx([h.score for h in alone[q]], abs=1e-3)
