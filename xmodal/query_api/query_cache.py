"""A small, bounded cache of text-query embeddings, keyed by (space, text).

The same text queries come back: the web page's examples, canaries, a user paging or refining,
popular queries. A text query's MiniLM pass is most of a search's own time (docs/performance.md),
and the towers of a running process never change (a new model is a new process: `xmodal reindex`),
so a text's vector in a space can be reused as long as the process lives. Media queries are not
cached: their bytes are large and seldom repeat.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from xmodal.encoders.base import Vectors

__all__ = ["DEFAULT_ENTRIES", "QueryVectorCache"]

DEFAULT_ENTRIES = 1024  # at 512-d float32: 2 MiB a space at most


class QueryVectorCache:
    """Least-recently-used (space, text) -> vector, at most `entries` of them; 0 turns it off.

    Thread-safe. Two threads missing the same key both encode (no lock is held while encoding:
    the tower is serialised anyway) and the second result replaces the first, which is harmless.
    Cached vectors are read-only, so a caller cannot alter what the next query gets.
    """

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        if entries < 0:
            raise ValueError(f"a query cache holds 0 or more entries, not {entries}")
        self._entries = entries
        self._vectors: OrderedDict[tuple[str, str], Vectors] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._vectors)

    def get_or_encode(self, space: str, text: str, encode: Callable[[], Vectors]) -> Vectors:
        if self._entries == 0:
            return encode()
        key = (space, text)
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
                self.hits += 1
                return vector
            self.misses += 1
        vector = np.array(encode(), copy=True)  # our own copy: the tower's buffer may be reused
        vector.setflags(write=False)
        with self._lock:
            self._vectors[key] = vector
            self._vectors.move_to_end(key)
            while len(self._vectors) > self._entries:
                self._vectors.popitem(last=False)
        return vector
