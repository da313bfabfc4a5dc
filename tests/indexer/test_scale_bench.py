"""benchmarks/scale.py --quick runs end to end on the real embedded index and reports what it says.

The figures themselves are the benchmark's to print (docs/scale.md); this checks the run, the
shape of its JSON and that each figure is a figure (recall in [0, 1], positive timings), not its speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"

ROW_KEYS = {
    "m", "ef_construct", "quantization", "search_ef", "recall_at_10", "p50_ms", "p99_ms", "build_s",
    "upsert_s", "serve_rss_mb", "build_peak_rss_mb", "disk_mb", "wal_mb", "indexed_vectors", "segments",
}


def test_quick_run_reports_every_setting_as_json(tmp_path: Path) -> None:
    plot = tmp_path / "scale.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--plot", str(plot), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["n"], report["dim"], report["k"]) == (3000, 384, 10)
    assert 0 < report["data"]["pair_cos"] < report["data"]["nn10_cos"] < 1  # clustered: neighbours are nearer

    rows = report["results"]
    # --quick: builds (m=16, ef_c=64) without and with int8, each searched at ef 16 and 64.
    assert sorted((r["quantization"], r["search_ef"]) for r in rows) == [("int8", 16), ("int8", 64), ("none", 16), ("none", 64)]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert 0.0 <= row["recall_at_10"] <= 1.0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["build_s"] > 0 and row["disk_mb"] > 0 and row["serve_rss_mb"] > 0
        assert row["indexed_vectors"] == 3000  # the graph was really built, not left as a scan
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("scale-*")), "the benchmark left its index behind"


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quantization", "int4"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert "--quantization takes none, int8, binary" in done.stderr
