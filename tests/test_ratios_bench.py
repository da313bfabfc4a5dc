"""benchmarks/ratios.py --quick runs end to end (real tansu, Node, MiniLM, qdrant-edge) and reports
every figure of issue 12 with its baseline and ratio.

The figures are the benchmark's to print (docs/performance.md); this checks the run, the shape of
its JSON and that each figure is a figure (positive, ordered quantiles, ratio = value / baseline),
never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ratios.py"

FIGURES = [
    "search p50, 1 client",
    "search p99, 1 client",
    "searches/s, 16 in flight",
    "text ingest end to end",
    "image ingest end to end",
    "clip image ingest end to end",
    "freshness p99 at half max rate",
    "text ingest with 20 searches/s",
    "search p99 at 20/s during ingest",
]
LATENCIES = ["kafka_floor", "bare_query_encode", "search_1_client", "search_1_client_repeated_queries", "search_16_in_flight", "freshness", "paced_20_idle", "paced_20_during_ingest"]
RATES = [
    "ingest_text_per_s", "bare_text_per_s", "ingest_image_per_s", "bare_image_per_s", "ingest_clip_image_per_s",
    "bare_clip_image_per_s", "ingest_during_searches_per_s",
]


def test_quick_run_reports_every_ratio_as_json(tmp_path: Path) -> None:
    plot = tmp_path / "latency.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["sizes"]["items"] == 300
    assert report["phases"] == "abcdef"  # every phase by default
    assert report["machine"]["cpus"] >= 1 and report["machine"]["load_average_start"] >= 0

    measured = report["measured"]
    for name in LATENCIES:
        q = measured[name]
        assert 0 < q["p50_ms"] <= q["p90_ms"] <= q["p99_ms"], name
        assert q["n"] >= 1, name
    assert measured["search_1_client"]["n"] == 30 and measured["search_16_in_flight"]["n"] == 60  # none lost
    for name in RATES:
        assert measured[name] > 0, name
    # A search includes a query encode and a Kafka round trip: it cannot beat their medians' sum by much.
    assert measured["search_1_client"]["p50_ms"] > 0.5 * measured["bare_query_encode"]["p50_ms"]

    rows = report["ratios"]
    assert [r["figure"] for r in rows] == FIGURES
    for r in rows:
        assert r["verdict"] in ("PASS", "MISS")
        assert r["baseline"] > 0 and r["value"] > 0
        assert abs(r["ratio"] - r["value"] / r["baseline"]) <= 0.01 * r["ratio"] + 0.01
        bound = float(r["target"].split()[1])
        met = r["ratio"] >= bound if r["target"].startswith(">=") else r["ratio"] <= bound
        assert r["verdict"] == ("PASS" if met else "MISS")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--items", "0"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert "--items, --queries, --clip-images and --images must be at least 1" in done.stderr


def test_unknown_phases_are_refused() -> None:
    for phases in ("c,z", "", "ab"):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--phases", phases], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 2, phases
        assert "phases are comma-separated letters of a,b,c,d,e,f" in done.stderr, phases
