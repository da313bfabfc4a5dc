"""The README flow, as a user runs it: `xmodal up` in one shell, `xmodal ingest` / `xmodal search` in another."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cli_support import Up, free_port, run, start_up, stop_up, user_env

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    return user_env(tmp_path, XMODAL_METRICS_PORT=str(free_port()))


@pytest.fixture
def system(shell_env: dict[str, str], tmp_path: Path) -> Iterator[Up]:
    up = start_up(shell_env, tmp_path)
    yield up
    if up.proc.poll() is None:
        up.proc.kill()


def test_up_ingest_search_and_stop_keeps_the_index(
    system: Up, shell_env: dict[str, str], tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "circle.txt").write_text("a red circle on a white background")
    (docs / "hum.txt").write_text("a quiet low hum of an engine")
    (docs / "rain.txt").write_text("heavy rain falling on a tin roof")
    (docs / "notes.jsonl").write_text(
        '{"id": "memo", "modality": "text", "text": "quarterly budget meeting notes", "metadata": {"team": "finance"}}\n'
        '{"id": "broken", "modality": "text"}\n'
    )

    ingest = run(["ingest", str(docs)], shell_env, tmp_path)
    assert ingest.returncode == 0, ingest.stderr
    assert "sent 4 events" in ingest.stdout and "acknowledged 4" in ingest.stdout
    assert "notes.jsonl:2: missing_field" in ingest.stderr  # reported with its location, not sent

    def search(*args: str) -> list[dict[str, object]]:
        result = run(["search", *args, "--json"], shell_env, tmp_path)
        assert result.returncode == 0, result.stderr
        return orjson.loads(result.stdout)

    deadline = time.monotonic() + 60
    while len(hits := search("a crimson disc")) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hits[0]["id"] == f"{docs.as_posix()}/circle.txt"
    assert search("drizzle on metal", "-k", "1")[0]["id"] == f"{docs.as_posix()}/rain.txt"
    assert [h["id"] for h in search("money", "--filter", "team=finance")] == ["memo"]

    table = run(["search", "a crimson disc", "-k", "2"], {**shell_env, "COLUMNS": "250"}, tmp_path)
    assert table.returncode == 0 and "circle.txt" in table.stdout and "rank" in table.stdout

    bad = run(["search", "x", "-k", "0"], shell_env, tmp_path)
    assert bad.returncode != 0 and "k_out_of_range" in bad.stderr

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{shell_env['XMODAL_METRICS_PORT']}/metrics").read().decode()
    assert 'xmodal_events_total{outcome="indexed"} 4.0' in metrics

    output = stop_up(system)
    assert system.proc.returncode == 0, output
    assert "index is kept" in output
    assert not (Path(shell_env["XMODAL_DATA_DIR"]) / "broker.json").exists()

    # No system running: commands say what to do instead of hanging.
    orphan = run(["search", "anything"], shell_env, tmp_path)
    assert orphan.returncode == 2 and "xmodal up" in orphan.stderr


def test_up_again_finds_the_kept_index(shell_env: dict[str, str], tmp_path: Path) -> None:
    from xmodal.config import load_settings
    from xmodal.indexer.edge import EdgeIndex

    def up_once() -> None:
        up = start_up(shell_env, tmp_path)
        note = tmp_path / "n.txt"
        note.write_text("a note that must survive a restart")
        assert run(["ingest", str(note)], shell_env, tmp_path).returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # indexed once search finds it
            found = run(["search", "a note", "--json"], shell_env, tmp_path)
            if found.returncode == 0 and orjson.loads(found.stdout):
                break
            time.sleep(0.5)
        output = stop_up(up)
        assert up.proc.returncode == 0, output

    up_once()
    settings = load_settings({"XMODAL_DATA_DIR": shell_env["XMODAL_DATA_DIR"]})
    index = EdgeIndex(settings.data_dir / "index")
    try:
        assert index.count("mini") == 1
    finally:
        index.close()


def test_misconfiguration_is_a_clear_message(shell_env: dict[str, str], tmp_path: Path) -> None:
    result = run(["up"], {**shell_env, "XMODAL_SPACES": "mini,nope"}, tmp_path)
    assert result.returncode == 2
    assert "unknown space 'nope'" in result.stderr and "valid spaces" in result.stderr
    result = run(["up"], {**shell_env, "XMODAL_BATCH_SIZ": "3"}, tmp_path)
    assert result.returncode == 2 and "XMODAL_BATCH_SIZ" in result.stderr
