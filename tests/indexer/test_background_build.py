"""Background HNSW builds: a builder process makes a new generation while the server keeps serving."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xmodal.errors import VectorIndexError
from xmodal.indexer import EdgeIndex, IndexPoint
from xmodal.indexer.builder import AutoBuild, Build, build_due
from xmodal.indexer.settings import IndexSettings

DIM = 16
N = 3000
# Low thresholds so that a few thousand 16-d vectors get a real HNSW graph (Qdrant's defaults
# leave a segment under 20 MB of vectors unindexed).
SMALL = IndexSettings(indexing_threshold_kb=10, full_scan_threshold_kb=1)


def points(n: int, *, prefix: str = "item", seed: int = 0) -> list[IndexPoint]:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return [IndexPoint(f"{prefix}{i}", vectors[i], "text", {"i": i}) for i in range(n)]


def serving_index(tmp_path: Path, n: int = N) -> tuple[EdgeIndex, list[IndexPoint]]:
    index = EdgeIndex(tmp_path / "index", index_settings=SMALL)
    index.ensure_collection("s", DIM)
    data = points(n)
    index.upsert("s", data)
    return index, data


def exact_ids(index: EdgeIndex, vector: np.ndarray, k: int = 10) -> list[str]:
    return [h.item_id for h in index.search("s", vector, k=k, exact=True)]


def test_searches_keep_answering_during_a_build_and_writes_made_meanwhile_land_in_the_new_generation(
    tmp_path: Path,
) -> None:
    index, data = serving_index(tmp_path)
    assert index.index_report("s")["indexed_vectors"] == 0
    queries = np.random.default_rng(9).normal(size=(50, DIM)).astype(np.float32)
    failures: list[BaseException] = []
    answered = 0
    stop = threading.Event()

    def search_loop() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                assert len(index.search("s", queries[answered % 50], k=10)) == 10
                answered += 1
            except BaseException as e:  # noqa: BLE001 - collected and asserted on below
                failures.append(e)
                return

    searcher = threading.Thread(target=search_loop, daemon=True)
    searcher.start()
    try:
        build = Build(index, "s").start()
        # Writes while the builder works: they must reach the new generation through the journal.
        late = points(40, prefix="late", seed=5)
        index.upsert("s", late[:20])
        index.delete("s", [p.item_id for p in data[:10]])
        index.upsert("s", [IndexPoint("item20", -data[20].vector, "text", {"moved": True})])
        index.upsert("s", late[20:])
        result = build.wait(timeout=300)
        index.upsert("s", points(1, prefix="after", seed=6))
    finally:
        stop.set()
        searcher.join()

    assert not failures, failures[0]
    assert answered > 0
    assert result.generation == 2 and result.points >= N - 10
    assert index.serving_generation("s").number == 2
    assert [g.number for g in index.generations("s")] == [2]  # the old generation was dropped
    report = index.index_report("s")
    assert report["generation"] == 2 and report["indexed_vectors"] >= N - 10
    assert index.count("s") == N - 10 + 40 + 1
    assert index.serving_generation("s").indexed_points == result.indexed
    # The approximate answer on the new generation equals the exact one, and the journal's writes are there.
    for q in queries[:20]:
        assert [h.item_id for h in index.search("s", q, k=10)] == exact_ids(index, q)
    assert exact_ids(index, late[33].vector, k=1) == ["late33"]
    assert "item3" not in exact_ids(index, data[3].vector, k=5)
    [moved] = index.search("s", -data[20].vector, k=1)
    assert (moved.item_id, moved.metadata) == ("item20", {"moved": True})
    index.close()
    reopened = EdgeIndex(tmp_path / "index", index_settings=SMALL)
    assert reopened.count("s") == N - 10 + 40 + 1
    reopened.close()


def test_a_killed_builder_leaves_the_serving_generation_serving(tmp_path: Path) -> None:
    index, data = serving_index(tmp_path)
    build = Build(index, "s", page=16).start()
    assert build.pid is not None and build.generation is not None
    os.kill(build.pid, signal.SIGKILL)
    index.upsert("s", points(1, prefix="meanwhile", seed=3))
    with pytest.raises(VectorIndexError, match="failed"):
        build.wait(timeout=120)
    assert index.serving_generation("s").number == 1
    assert [g.number for g in index.generations("s")] == [1]
    assert not build.generation.path.exists()
    assert index.count("s") == N + 1
    assert exact_ids(index, data[42].vector, k=1) == ["item42"]
    index.upsert("s", points(1, prefix="after", seed=4))  # writes still work (the journal is gone)
    index.close()


def test_a_builder_killed_with_its_server_is_cleaned_on_the_next_open(tmp_path: Path) -> None:
    index, data = serving_index(tmp_path, n=500)
    build = Build(index, "s").start()
    assert build.pid is not None and build.generation is not None
    os.kill(build.pid, signal.SIGKILL)
    leftover = build.generation.path
    # A server that dies too cannot clean up: the next one that opens the space does.
    index.close()
    assert leftover.exists()
    reopened = EdgeIndex(tmp_path / "index", index_settings=SMALL)
    assert reopened.count("s") == 500
    assert not leftover.exists()
    reopened.close()


def test_auto_build_builds_once_enough_points_are_unindexed(tmp_path: Path) -> None:
    index, data = serving_index(tmp_path, n=1200)
    auto = AutoBuild(index, ["s", "absent"], threshold=1000)
    auto.check()
    assert [r.generation for r in auto.results] == [2]
    assert index.serving_generation("s").indexed_points == 1200
    index.upsert("s", points(500, prefix="more", seed=1))
    auto.check()  # 500 new points: below the threshold
    assert len(auto.results) == 1
    index.close()


def test_build_due() -> None:
    assert build_due(20_000, 0, 20_000) and not build_due(19_999, 0, 20_000)
    assert not build_due(10**6, 0, 0)  # 0 disables
    # Past the threshold, a build waits for a quarter more than the last one covered.
    assert not build_due(1_200_000, 1_000_000, 20_000) and build_due(1_250_000, 1_000_000, 20_000)


def test_auto_build_stops_a_running_build(tmp_path: Path) -> None:
    index, _data = serving_index(tmp_path, n=1200)
    auto = AutoBuild(index, ["s"], threshold=100, check_interval_s=0.01).start()
    deadline = time.monotonic() + 60
    while not auto.results and time.monotonic() < deadline:
        time.sleep(0.05)
    auto.stop()
    assert auto.results, "no background build finished within a minute"
    assert index.serving_generation("s").number >= 2
    index.close()


def test_a_build_overtaken_by_a_switch_is_discarded(tmp_path: Path) -> None:
    """A reindex that switches the space while a build runs wins: the build is not adopted."""
    index, data = serving_index(tmp_path, n=500)
    build = Build(index, "s").start()
    other = index.create_generation("s", DIM, model="another")
    writer = EdgeIndex(tmp_path / "index", index_settings=SMALL, pin={"s": other.number})
    writer.ensure_collection("s", DIM)
    writer.upsert("s", data[:5])
    writer.close()
    index.mark_ready("s", other.number)
    index.switch("s", other.number)
    with pytest.raises(VectorIndexError, match="switched to generation"):
        build.wait(timeout=120)
    assert index.serving_generation("s").number == other.number and index.count("s") == 5
    assert build.generation is not None and not build.generation.path.exists()
    index.close()


def test_auto_build_only_for_an_embedded_index_and_a_threshold(tmp_path: Path) -> None:
    from xmodal.config import load_settings
    from xmodal.indexer.builder import auto_build

    index = EdgeIndex(tmp_path / "index")
    assert auto_build(load_settings({"XMODAL_OPTIMIZE_AFTER_POINTS": "0"}), index) is None
    assert auto_build(load_settings({}), object()) is None
    started = auto_build(load_settings({"XMODAL_SPACES": "mini"}), index)
    assert isinstance(started, AutoBuild)
    started.stop()
    index.close()


def test_the_build_stall_benchmark_runs_and_reports_ratios() -> None:
    """benchmarks/build_stall.py --quick: every phase measured, ratios against the idle phase."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "build_stall.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout)
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == [
        "idle (exact scan)",
        "during background build",
        "after the switch (HNSW)",
        "during in-process optimize()",
    ]
    assert all(p["searches"] > 0 for p in phases.values())
    assert phases["idle (exact scan)"]["p99_vs_idle"] == 1.0
    idle = phases["idle (exact scan)"]["p99_ms"]
    background = phases["during background build"]
    assert background["p99_vs_idle"] == pytest.approx(background["p99_ms"] / idle)
    assert report["indexed_vectors"] == report["points"]


def test_a_build_drops_only_the_generation_it_replaced(tmp_path: Path) -> None:
    index, data = serving_index(tmp_path, n=300)
    rollback = index.serving_generation("s").number
    newer = index.create_generation("s", DIM, model="m2")
    writer = EdgeIndex(tmp_path / "index", index_settings=SMALL, pin={"s": newer.number})
    writer.ensure_collection("s", DIM)
    writer.upsert("s", data)
    writer.close()
    index.mark_ready("s", newer.number)
    index.switch("s", newer.number)
    in_progress = index.create_generation("s", DIM, model="m3")  # e.g. another reindex's
    result = Build(index, "s").start().wait(timeout=120)
    assert [g.number for g in index.generations("s")] == [rollback, in_progress.number, result.generation]
    assert index.serving_generation("s").model == "m2"  # a build keeps the model fingerprint
    index.close()
