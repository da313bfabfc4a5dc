"""The quality gauges on /metrics of a running `xmodal up`, and `xmodal status` reading them.

`xmodal up` runs with fast monitors (recall sampling at 50/s, a freshness probe every 0.5 s, the
canaries every second) over the example media; the canary figures must equal what `xmodal eval`
measures with the same files through the same live path."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cli_support import Up, free_port, run, start_up, stop_up, user_env

from xmodal.config import load_settings
from xmodal.query_api import SearchClient
from xmodal.query_api.status import read_status
from xmodal.runtime import resolve_bootstrap

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MEDIA = Path(__file__).resolve().parents[2] / "examples" / "media"
# query id -> (text, relevant files of examples/media)
GOLDEN = {
    "red-circle": ("a red circle", ["red-circle.png", "circle-note.txt"]),
    "bell": ("three bell chimes", ["high-bell.wav", "bell-note.txt"]),
    "budget": ("budget meeting", ["budget.txt"]),
    "train": ("the train leaves at noon", ["train.txt"]),
    "star": ("a yellow star", ["yellow-star.png"]),
}


@pytest.fixture
def golden(tmp_path: Path) -> tuple[Path, Path]:
    queries, qrels = tmp_path / "canary.jsonl", tmp_path / "canary.qrels"
    queries.write_bytes(b"".join(orjson.dumps({"query_id": q, "query": {"text": t}}) + b"\n" for q, (t, _) in GOLDEN.items()))
    qrels.write_text("".join(f"{q} 0 {(MEDIA / f).as_posix()} 1\n" for q, (_, files) in GOLDEN.items() for f in files))
    return queries, qrels


@pytest.fixture
def env(tmp_path: Path, golden: tuple[Path, Path]) -> dict[str, str]:
    queries, qrels = golden
    return user_env(
        tmp_path,
        COLUMNS="250",
        XMODAL_METRICS_PORT=str(free_port()),
        XMODAL_RECALL_SAMPLE_RATE="50",
        XMODAL_FRESHNESS_INTERVAL_S="0.5",
        XMODAL_CANARY_QUERIES=str(queries),
        XMODAL_CANARY_QRELS=str(qrels),
        XMODAL_CANARY_INTERVAL_S="1",
    )


@pytest.fixture
def up(env: dict[str, str], tmp_path: Path) -> Iterator[Up]:
    running = start_up(env, tmp_path)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            stop_up(running)


def metrics_page(env: dict[str, str]) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{env['XMODAL_METRICS_PORT']}/metrics", timeout=5).read().decode()


def test_status_with_nothing_running(tmp_path: Path) -> None:
    env = user_env(tmp_path, XMODAL_METRICS_PORT=str(free_port()))
    for args in (["status"], ["status", "--json"]):
        result = run(args, env, tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "nothing answers on http://127.0.0.1:" in result.stderr and "xmodal up" in result.stderr
        assert result.stdout == ""
    off = run(["status"], {**env, "XMODAL_METRICS_PORT": "0"}, tmp_path)
    assert off.returncode == 2 and "--url" in off.stderr


def test_bad_canary_files_stop_up_with_the_line_at_fault(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.qrels"
    bad.write_text("red-circle 0 only-three-fields\n")
    result = run(["up"], {**env, "XMODAL_CANARY_QRELS": str(bad)}, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "XMODAL_CANARY_QUERIES / XMODAL_CANARY_QRELS" in result.stderr and f"{bad}:1: expected 4 fields" in result.stderr
    assert not (Path(env["XMODAL_DATA_DIR"]) / "broker.json").exists()  # nothing left running or recorded


def test_gauges_of_a_running_up_and_status(up: Up, env: dict[str, str], tmp_path: Path, golden: tuple[Path, Path]) -> None:
    ingest = run(["ingest", str(MEDIA)], env, tmp_path)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    items = sorted(p for p in MEDIA.iterdir() if p.suffix in {".png", ".wav", ".txt"})
    settings = load_settings({"XMODAL_DATA_DIR": env["XMODAL_DATA_DIR"]})
    bootstrap = resolve_bootstrap(settings)
    assert bootstrap is not None
    with SearchClient(settings, bootstrap) as client:
        deadline = time.monotonic() + 120
        while len(client.search("anything", k=50)) < len(items):  # probes never show up here
            assert time.monotonic() < deadline, "the example media were not indexed"
            time.sleep(0.3)
        # Live searches over the complete gallery, for the recall check to sample: its window
        # (the last 50 samples) then holds no search made while items were still arriving.
        for n in range(60):
            client.search(list(GOLDEN.values())[n % len(GOLDEN)][0], k=5)

    # What `xmodal eval` measures now, through the same path, with the same files.
    queries, qrels = golden
    evaluated = run(["eval", "--queries", str(queries), "--qrels", str(qrels), "--json"], env, tmp_path)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    expected = orjson.loads(evaluated.stdout)
    assert expected["metrics"]["Success@10"] > 0

    # The canary runs every second: wait for a run that started after the gallery was complete.
    indexed_at = time.time()
    deadline = time.monotonic() + 60
    while True:
        status = read_status(metrics_page(env))
        fresh = status.freshness is not None and status.freshness.count >= 3
        if fresh and (status.canary_last_run or 0) > indexed_at + 1 and status.recall.get("mini") is not None:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.5)

    assert status.recall == {"mini": 1.0}  # the embedded index below its HNSW threshold is exact
    assert status.recall_samples["mini"]["measured"] >= len(GOLDEN)
    for direction, figures in {"all": expected["metrics"], **expected["by_direction"]}.items():
        for k in (1, 5, 10):
            assert status.canary[("mini", direction, k)] == pytest.approx(figures[f"Success@{k}"], abs=1e-6), (direction, k)
    assert {d for (_, d, _) in status.canary} == {"all", *expected["by_direction"]}
    assert status.freshness is not None and status.freshness.p99 is not None
    assert 0 < status.freshness.p50 <= status.freshness.p99 < 30  # type: ignore[operator]
    assert status.freshness_probes.get("found", 0) >= 3 and "timeout" not in status.freshness_probes
    assert status.events["deleted"] >= 1  # probes are deleted by their tombstones
    assert status.events["indexed"] >= len(items) + 3  # the media, and a probe per reading
    assert status.search_requests["true"] >= len(GOLDEN)

    shown = run(["status"], env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    directions = [f"{d} k=1" for d in expected["by_direction"]]
    for text in ("index recall@k", "space=mini", "1.000", "canary Success@k", *directions, "freshness", "p99", "index lag", "events"):
        assert text in shown.stdout, (text, shown.stdout)
    as_json = run(["status", "--json"], env, tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    report = orjson.loads(as_json.stdout)
    assert report["recall_at_k"] == {"mini": 1.0}
    assert report["canary_success_at_k"]["mini"]["all"] == pytest.approx(
        {f"Success@{k}": expected["metrics"][f"Success@{k}"] for k in (1, 5, 10)}, abs=1e-6
    )
    assert report["freshness_seconds"]["count"] >= 3 and report["index_lag_seconds"]["p99"] is not None

    output = stop_up(up)
    assert up.proc.returncode == 0, output
    gone = run(["status"], env, tmp_path)
    assert gone.returncode == 1 and "nothing answers" in gone.stderr
