"""Running the real `xmodal` command as a user does: in a subprocess, with its own data dir.

Shared by the CLI tests: `start_up` starts `xmodal up` in the background and returns once it
printed that it is ready, `stop_up` sends Ctrl-C and returns what it printed afterwards.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

XMODAL = [sys.executable, "-m", "xmodal.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without XMODAL_* (a developer's settings must not leak in), with a
    data dir of its own and no metrics port unless asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    # no metrics port and no search page unless a test asks: ports are shared by every test; no
    # freshness probes unless asked: a probe is an indexed item for a moment (counts, index sizes)
    env.update(
        XMODAL_DATA_DIR=str(tmp_path / "data"),
        XMODAL_METRICS_PORT="0",
        XMODAL_HTTP_PORT="0",
        XMODAL_FRESHNESS_INTERVAL_S="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XMODAL, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@dataclass
class Up:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None]  # stdout+stderr, line by line; None at the end
    seen: list[str] = field(default_factory=list)  # what it printed until it was ready

    def rest(self) -> str:
        """Everything printed after it was ready, once it has exited."""
        out = []
        while (line := self.lines.get(timeout=10)) is not None:
            out.append(line)
        return "".join(out)


def start_up(env: dict[str, str], cwd: Path, timeout_s: float = 180) -> Up:
    """`xmodal up` in the background, returned once it printed that it is ready (or fail, with its output)."""
    proc = subprocess.Popen(
        [*XMODAL, "up"], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # readline() blocks: read in a thread so the wait has a deadline
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if "Ctrl-C to stop" in line:
            return Up(proc, lines, seen)
    proc.kill()
    pytest.fail("xmodal up did not come up:\n" + "".join(seen))


def stop_up(up: Up, timeout_s: float = 60) -> str:
    """SIGINT, as Ctrl-C; returns what it printed after it was ready."""
    up.proc.send_signal(signal.SIGINT)
    try:
        up.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        up.proc.kill()
        up.proc.wait(10)
    return up.rest()
