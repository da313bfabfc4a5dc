"""Index generations of the embedded index: create, write beside the serving one, switch, drop, follow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from xmodal.errors import DimensionMismatch, VectorIndexError
from xmodal.indexer import EdgeIndex, IndexPoint
from xmodal.indexer.generations import GenerationBusy, SpaceLayout

DIM = 8


def points(n: int, *, prefix: str = "item", seed: int = 0) -> list[IndexPoint]:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return [IndexPoint(f"{prefix}{i}", vectors[i], "text", {"i": i}) for i in range(n)]


def ids(index: EdgeIndex, vector: np.ndarray, k: int = 50) -> list[str]:
    return [h.item_id for h in index.search("s", vector, k=k)]


def test_a_new_space_is_generation_1_behind_the_pointer(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path)
    index.ensure_collection("s", DIM)
    index.upsert("s", points(3))
    index.close()
    pointer = json.loads((tmp_path / "s" / "xmodal-space.json").read_text())
    assert (pointer["serving"], pointer["dim"]) == (1, DIM)
    assert (tmp_path / "s" / "g000001" / "edge_config.json").exists()
    [generation] = EdgeIndex(tmp_path).generations("s")
    assert (generation.number, generation.state, generation.origin, generation.dim) == (1, "ready", "space", DIM)


def test_switch_moves_searches_and_writes_and_survives_reopen(tmp_path: Path) -> None:
    serving = EdgeIndex(tmp_path)
    serving.ensure_collection("s", DIM)
    old = points(20, prefix="old")
    serving.upsert("s", old)

    new = serving.create_generation("s", DIM, model="mini:test-1", settings={"hnsw_m": 8})
    assert new.state == "building" and new.number == 2
    with pytest.raises(VectorIndexError, match="still building"):
        serving.switch("s", new.number)
    writer = EdgeIndex(tmp_path, pin={"s": new.number})
    writer.ensure_collection("s", DIM)
    fresh = points(20, prefix="new", seed=1)
    writer.upsert("s", fresh)
    writer.close()
    assert ids(serving, old[0].vector, k=1) == ["old0"]  # still the old generation

    serving.mark_ready("s", new.number)
    serving.switch("s", new.number)
    assert serving.serving_generation("s").number == new.number
    assert serving.count("s") == 20 and ids(serving, fresh[3].vector, k=1) == ["new3"]
    serving.upsert("s", points(1, prefix="late", seed=2))
    serving.close()

    reopened = EdgeIndex(tmp_path)
    assert reopened.count("s") == 21
    assert {g.number: g.model for g in reopened.generations("s")} == {1: None, 2: "mini:test-1"}
    reopened.switch("s", 1)  # rollback: the old generation is still there
    assert ids(reopened, old[5].vector, k=1) == ["old5"]
    reopened.close()


def test_drop_refuses_the_serving_and_an_open_generation(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path)
    index.ensure_collection("s", DIM)
    spare = index.create_generation("s", DIM)
    with pytest.raises(VectorIndexError, match="serves space"):
        index.drop_generation("s", 1)
    writer = EdgeIndex(tmp_path, pin={"s": spare.number})
    writer.ensure_collection("s", DIM)
    with pytest.raises(GenerationBusy, match="in use"):
        index.drop_generation("s", spare.number)
    writer.close()
    index.drop_generation("s", spare.number)
    assert [g.number for g in index.generations("s")] == [1]
    assert not spare.path.exists()
    index.close()


def test_a_generation_is_open_in_one_index_at_a_time(tmp_path: Path) -> None:
    first = EdgeIndex(tmp_path)
    first.ensure_collection("s", DIM)
    with pytest.raises(VectorIndexError, match="another process"):
        EdgeIndex(tmp_path, pin={"s": 1}).count("s")
    first.close()


def test_a_serving_index_follows_a_switch_made_elsewhere(tmp_path: Path) -> None:
    serving = EdgeIndex(tmp_path, watch_interval_s=0.05)
    serving.ensure_collection("s", DIM)
    serving.upsert("s", points(10, prefix="old"))
    failures: list[BaseException] = []
    stop = threading.Event()

    def search_loop() -> None:  # searches all through the switch: none may fail
        while not stop.is_set():
            try:
                assert len(serving.search("s", np.ones(DIM, np.float32), k=3)) == 3
            except BaseException as e:  # noqa: BLE001 - asserted on below
                failures.append(e)
                return

    searcher = threading.Thread(target=search_loop, daemon=True)
    searcher.start()
    other = EdgeIndex(tmp_path)  # e.g. a reindex process: it never opens the serving generation
    new = other.create_generation("s", DIM, model="m2")
    writer = EdgeIndex(tmp_path, pin={"s": new.number})
    writer.ensure_collection("s", DIM)
    fresh = points(10, prefix="new", seed=3)
    writer.upsert("s", fresh)
    writer.mark_ready("s", new.number)
    writer.switch("s", new.number)
    # Until the writer closes the generation, the serving index cannot open it and keeps answering.
    time.sleep(0.1)
    assert ids(serving, fresh[0].vector, k=1) != ["new0"]
    writer.close()
    deadline = time.monotonic() + 5
    while ids(serving, fresh[0].vector, k=1) != ["new0"]:
        assert time.monotonic() < deadline, "the serving index never followed the switch"
        time.sleep(0.05)
    assert serving.count("s") == 10
    stop.set()
    searcher.join()
    assert not failures, failures[0]
    serving.close()
    other.close()


def test_a_killed_switcher_leaves_one_pointer_or_the_other(tmp_path: Path) -> None:
    """The pointer is replaced by a rename: a process killed around the switch leaves the old or the new."""
    index = EdgeIndex(tmp_path)
    index.ensure_collection("s", DIM)
    index.upsert("s", points(5, prefix="old"))
    index.close()
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        import numpy as np
        from xmodal.indexer.edge import EdgeIndex
        from xmodal.indexer.base import IndexPoint

        root = Path({str(tmp_path)!r})
        new = EdgeIndex(root).create_generation("s", {DIM})
        writer = EdgeIndex(root, pin={{"s": new.number}})
        writer.ensure_collection("s", {DIM})
        writer.upsert("s", [IndexPoint("new", np.ones({DIM}, np.float32), "text")])
        writer.mark_ready("s", new.number)
        if sys.argv[1] == "before":
            (root / "s" / "xmodal-space.json.tmp").write_text('{{"serving": 2, "di')  # cut mid-write
            os._exit(0)
        writer.switch("s", new.number)
        os._exit(0)  # no close, no flush
        """
    )
    subprocess.run([sys.executable, "-c", script, "before"], check=True, timeout=120)
    index = EdgeIndex(tmp_path)
    assert index.serving_generation("s").number == 1 and index.count("s") == 5
    index.close()
    subprocess.run([sys.executable, "-c", script, "after"], check=True, timeout=120)
    index = EdgeIndex(tmp_path)
    assert index.serving_generation("s").number == 3
    assert [h.item_id for h in index.search("s", np.ones(DIM, np.float32), k=5)] == ["new"]
    index.close()


def test_a_legacy_space_is_migrated_into_generation_0(tmp_path: Path) -> None:
    """A data dir written before generations: the shard directly in <root>/<space>/."""
    space = tmp_path / "s"
    engine = qe.EdgeShard.create(str(space), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)))
    data = points(30)
    engine.update(
        qe.UpdateOperation.upsert_points([qe.Point(_pid(p.item_id), p.vector.tolist(), p.payload()) for p in data])
    )
    engine.close()
    (space / "xmodal-space.json").write_text(json.dumps({"space": "s", "dim": DIM, "distance": "cosine"}))

    before = EdgeIndex(tmp_path)
    assert [g.number for g in before.generations("s")] == [0]  # reading does not migrate
    assert before.count("s") == 30  # opening does
    assert ids(before, data[7].vector, k=1) == ["item7"]
    before.close()
    assert sorted(p.name for p in space.iterdir()) == ["g000000", "xmodal-space.json"]
    again = EdgeIndex(tmp_path)
    assert again.serving_generation("s").number == 0 and again.count("s") == 30
    with pytest.raises(DimensionMismatch):
        again.ensure_collection("s", DIM + 1)
    again.close()


def test_a_migration_cut_short_is_finished_by_the_next_open(tmp_path: Path) -> None:
    space = tmp_path / "s"
    engine = qe.EdgeShard.create(str(space), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)))
    engine.update(qe.UpdateOperation.upsert_points([qe.Point(_pid("a"), [1.0] * DIM, {"item_id": "a", "modality": "text"})]))
    engine.close()
    (space / "xmodal-space.json").write_text(json.dumps({"space": "s", "dim": DIM, "distance": "cosine"}))
    (space / "g000000").mkdir()
    (space / "wal").rename(space / "g000000" / "wal")  # crashed after moving one entry
    index = EdgeIndex(tmp_path)
    assert index.count("s") == 1
    index.close()


def test_a_crashed_build_is_removed_but_other_building_generations_stay(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path)
    index.ensure_collection("s", DIM)
    crashed = index.create_generation("s", DIM, origin="build")
    resumable = index.create_generation("s", DIM, origin="reindex")
    (tmp_path / "s" / "g000009").mkdir()  # a creation cut before its manifest
    index.close()
    index = EdgeIndex(tmp_path)
    index.count("s")
    assert [g.number for g in index.generations("s")] == [1, resumable.number]
    assert not crashed.path.exists() and not (tmp_path / "s" / "g000009").exists()
    index.close()


def test_generation_files_are_checked(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path)
    index.ensure_collection("s", DIM)
    index.close()
    layout = SpaceLayout(tmp_path, "s")
    with pytest.raises(VectorIndexError, match="no generation 7"):
        layout.generation(7)
    (tmp_path / "s" / "g000001" / "xmodal-generation.json").write_text("{not json")
    with pytest.raises(VectorIndexError, match="cannot read"):
        EdgeIndex(tmp_path).count("s")


def _pid(item_id: str) -> str:
    from xmodal.indexer.base import point_id

    return point_id(item_id)


# -- the same on qdrant-client: one collection per generation behind an alias ------------------


def test_qdrant_generations_switch_by_alias(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    from xmodal.indexer import QdrantIndex

    client = QdrantClient(":memory:")
    serving = QdrantIndex(client, collection_prefix="t")
    serving.ensure_collection("s", DIM)
    old = points(10, prefix="old")
    serving.upsert("s", old)
    assert client.get_aliases().aliases[0].model_dump() == {"alias_name": "t_s", "collection_name": "t_s__g000001"}
    assert serving.serving_generation("s").number == 1

    new = serving.create_generation("s", DIM, model="mini:v2")
    writer = QdrantIndex(client, collection_prefix="t", pin={"s": new.number})
    writer.ensure_collection("s", DIM)
    writer.upsert("s", points(10, prefix="new", seed=1))
    with pytest.raises(VectorIndexError, match="still building"):
        serving.switch("s", new.number)
    serving.mark_ready("s", new.number)
    assert ids(serving, old[0].vector, k=1) == ["old0"]
    serving.switch("s", new.number)
    assert serving.count("s") == 10 and ids(serving, old[0].vector, k=1)[0].startswith("new")
    assert {g.number: (g.model, g.state) for g in serving.generations("s")} == {1: (None, "ready"), 2: ("mini:v2", "ready")}
    with pytest.raises(VectorIndexError, match="serves space"):
        serving.drop_generation("s", new.number)
    serving.switch("s", 1)  # rollback
    assert ids(serving, old[0].vector, k=1) == ["old0"]
    serving.switch("s", new.number)
    serving.drop_generation("s", 1)
    assert [g.number for g in serving.generations("s")] == [2]
    serving.close()


def test_a_qdrant_collection_from_before_generations_keeps_working(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    from xmodal.indexer import QdrantIndex

    client = QdrantClient(":memory:")
    client.create_collection("t_s", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    index = QdrantIndex(client, collection_prefix="t")
    index.ensure_collection("s", DIM)
    index.upsert("s", points(5))
    assert index.serving_generation("s").number == 0 and index.count("s") == 5
    new = index.create_generation("s", DIM)
    index.mark_ready("s", new.number)
    with pytest.raises(VectorIndexError, match="drop_legacy"):
        index.switch("s", new.number)
    assert index.count("s") == 5
    index.switch("s", new.number, drop_legacy=True)
    assert index.serving_generation("s").number == new.number and index.count("s") == 0
    index.close()
