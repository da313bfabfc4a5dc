"""The text-query vector cache: bounded LRU, read-only vectors, and a Searcher whose answers do not
change with it (real MiniLM, both index backends)."""

from __future__ import annotations

import numpy as np
import pytest
from qa_support import MiniText, make_request

from xmodal.encoders.media import MediaLimits
from xmodal.errors import EncodeError
from xmodal.indexer import VectorIndex
from xmodal.query_api import Searcher
from xmodal.query_api.query_cache import QueryVectorCache


class Counting:
    """An encode callable that says how often it ran, returning a distinct vector each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return np.full(4, float(self.calls), dtype=np.float32)


def test_least_recently_used_entry_goes_first() -> None:
    cache, encode = QueryVectorCache(entries=2), Counting()
    a = cache.get_or_encode("mini", "a", encode)
    cache.get_or_encode("mini", "b", encode)
    assert cache.get_or_encode("mini", "a", encode) is a  # a hit: not encoded again, and now the newest
    cache.get_or_encode("mini", "c", encode)  # evicts b, the least recently used
    assert len(cache) == 2 and encode.calls == 3
    cache.get_or_encode("mini", "a", encode)
    assert encode.calls == 3
    cache.get_or_encode("mini", "b", encode)
    assert encode.calls == 4
    assert (cache.hits, cache.misses) == (2, 4)


def test_spaces_do_not_share_entries_and_vectors_are_read_only() -> None:
    cache, encode = QueryVectorCache(), Counting()
    mini = cache.get_or_encode("mini", "a red circle", encode)
    clip = cache.get_or_encode("clip", "a red circle", encode)
    assert encode.calls == 2 and not np.array_equal(mini, clip)
    with pytest.raises(ValueError):
        mini[0] = 0.0


def test_zero_entries_is_off_and_negative_is_refused() -> None:
    cache, encode = QueryVectorCache(entries=0), Counting()
    cache.get_or_encode("mini", "a", encode)
    cache.get_or_encode("mini", "a", encode)
    assert encode.calls == 2 and len(cache) == 0
    with pytest.raises(ValueError, match="0 or more entries"):
        QueryVectorCache(entries=-1)


def test_a_failed_encode_is_not_cached() -> None:
    cache = QueryVectorCache()

    def broken() -> np.ndarray:
        raise EncodeError("tower down")

    with pytest.raises(EncodeError):
        cache.get_or_encode("mini", "a", broken)
    assert len(cache) == 0 and cache.get_or_encode("mini", "a", Counting())[0] == 1.0


def test_cached_searches_answer_as_uncached_ones(index: VectorIndex, mini: MiniText) -> None:
    cached = Searcher({"mini": mini}, index, MediaLimits())
    uncached = Searcher({"mini": mini}, index, MediaLimits(), query_cache_entries=0)
    for text in ["a red circle", "a dog", "something red", "a red circle", "a dog"]:
        request = make_request(query={"text": text}, k=5)
        got, expected = cached.search(request), uncached.search(request)
        assert [(h.id, h.modality) for h in got] == [(h.id, h.modality) for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-6)
    assert (cached.query_cache.hits, cached.query_cache.misses) == (2, 3)
    assert len(uncached.query_cache) == 0
