"""`xmodal up` hosts the web page and prints its URL; `xmodal serve` is a separate gateway process
that only talks to Kafka (server mode), and searches what `xmodal up` indexed."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_cli_e2e import free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]

XMODAL = [sys.executable, "-m", "xmodal.cli"]


class Running:
    """A command in the background, returned once it printed its banner's last line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 180) -> None:
        self.proc = subprocess.Popen(
            [*XMODAL, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.banner: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.banner.append(line)
            if "Ctrl-C to stop" in line:
                return
        self.proc.kill()
        pytest.fail(f"xmodal {' '.join(args)} did not come up:\n" + "".join(self.banner))

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stop(self, timeout_s: float = 60) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout_s)
        rest: list[str] = []
        while (line := self.lines.get(timeout=5)) is not None:
            rest.append(line)
        return "".join(rest)


def test_up_prints_the_page_url_and_serve_searches_over_kafka_alone(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    up_port, serve_port = free_port(), free_port()
    env.update(
        XMODAL_DATA_DIR=str(tmp_path / "data"), XMODAL_METRICS_PORT="0", XMODAL_HTTP_PORT=str(up_port), PYTHONUNBUFFERED="1"
    )
    up = Running(["up"], env, tmp_path)
    serve: Running | None = None
    try:
        assert any(f"web      http://127.0.0.1:{up_port}/" in line for line in up.banner), up.banner
        note = tmp_path / "note.txt"
        note.write_text("a lighthouse on a rocky coast at dawn")
        ingest = subprocess.run([*XMODAL, "ingest", str(note)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert ingest.returncode == 0, ingest.stderr

        busy = subprocess.run(
            [*XMODAL, "serve", "--http-port", str(up_port)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert busy.returncode == 2 and "XMODAL_HTTP_PORT" in busy.stderr, busy.stderr

        # A second process: only the broker address (recorded by `xmodal up`), no index, no towers.
        serve = Running(["serve", "--http-port", str(serve_port)], env, tmp_path)
        assert any(f"web      http://127.0.0.1:{serve_port}/" in line for line in serve.banner), serve.banner
        for port in (up_port, serve_port):
            deadline = time.monotonic() + 60
            while True:
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/search", json={"query": {"text": "lighthouse"}, "with_thumbnails": True}, timeout=30
                ).json()
                if reply["ok"] and reply["hits"] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert [(h["id"], h["thumbnail"]) for h in reply["hits"]] == [
                (note.as_posix(), {"text": "a lighthouse on a rocky coast at dawn"})
            ]
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30)
            assert ready.status_code == 200, ready.text
        said = serve.stop()
        assert serve.proc.returncode == 0 and "stopped" in said, said
        output = up.stop()
        assert up.proc.returncode == 0, output
    finally:
        for running in (serve, up):
            if running is not None and running.proc.poll() is None:
                running.proc.kill()


def test_serve_without_a_broker_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_DATA_DIR=str(tmp_path / "data"), XMODAL_METRICS_PORT="0")
    alone = subprocess.run([*XMODAL, "serve"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2 and "xmodal up" in alone.stderr, alone.stderr
