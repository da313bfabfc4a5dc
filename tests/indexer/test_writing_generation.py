"""`writing_generation(space)`: the generation the live pipeline writes to, asked before every batch
(xmodal/streams/handoff.py), cheaply: no engine call on qdrant-edge, a cached alias on a server."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xmodal.indexer import EdgeIndex, IndexPoint
from xmodal.indexer.remote_generations import ServingCache
from xmodal.streams.handoff import generation_now

DIM = 8


def points(n: int, prefix: str) -> list[IndexPoint]:
    vectors = np.random.default_rng(len(prefix)).normal(size=(n, DIM)).astype(np.float32)
    return [IndexPoint(f"{prefix}{i}", vectors[i], "text", {}) for i in range(n)]


def test_edge_writing_generation_follows_a_switch_made_elsewhere_as_writes_do(tmp_path: Path) -> None:
    serving = EdgeIndex(tmp_path, watch_interval_s=0.05)
    serving.ensure_collection("s", DIM)
    assert serving.writing_generation("s") == generation_now(serving, "s") == 1
    other = EdgeIndex(tmp_path)  # e.g. a reindex process
    new = other.create_generation("s", DIM, model="m2")
    writer = EdgeIndex(tmp_path, pin={"s": new.number})
    writer.ensure_collection("s", DIM)
    assert writer.writing_generation("s") == new.number  # a pinned writer writes its generation
    writer.upsert("s", points(3, "new"))
    writer.mark_ready("s", new.number)
    writer.switch("s", new.number)
    writer.close()
    deadline = time.monotonic() + 5
    while serving.writing_generation("s") != new.number:
        assert time.monotonic() < deadline, "writing_generation never followed the switch"
        time.sleep(0.05)
    # The generation it names is the one a write lands in.
    serving.upsert("s", points(2, "live"))
    assert serving.count("s") == 5 and serving.index_report("s")["generation"] == new.number
    serving.close()
    other.close()


def test_qdrant_writing_generation_is_cached_and_forgotten_at_its_own_switch(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    from xmodal.indexer import QdrantIndex

    client = QdrantClient(":memory:")
    serving = QdrantIndex(client, collection_prefix="t")
    serving.ensure_collection("s", DIM)
    assert serving.writing_generation("s") == generation_now(serving, "s") == 1
    new = serving.create_generation("s", DIM, model="m2")
    writer = QdrantIndex(client, collection_prefix="t", pin={"s": new.number})
    writer.ensure_collection("s", DIM)
    assert writer.writing_generation("s") == new.number
    serving.mark_ready("s", new.number)

    # Another process's switch: a long-lived cache keeps the old answer until it expires or is
    # forgotten; a cache with no time to live asks the alias every time.
    elsewhere = QdrantIndex(client, collection_prefix="t")
    kept, fresh = ServingCache(ttl_s=3600), ServingCache(ttl_s=0)
    assert kept.number(elsewhere, "s") == fresh.number(elsewhere, "s") == 1
    serving.switch("s", new.number)
    assert serving.writing_generation("s") == new.number  # its own switch: at once
    assert kept.number(elsewhere, "s") == 1 and fresh.number(elsewhere, "s") == new.number
    kept.forget("s")
    assert kept.number(elsewhere, "s") == new.number
    serving.switch("s", 1)  # rollback
    assert serving.writing_generation("s") == 1 == serving.index_report("s")["generation"]
    serving.close()
