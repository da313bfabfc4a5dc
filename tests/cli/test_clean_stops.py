"""Stops of the real `xmodal up` process: Ctrl-C and SIGTERM are clean and quick, SIGKILL leaves no
orphan broker. Each test runs the real CLI in a subprocess and signals it from outside."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from cli_support import Up, start_up, user_env

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# Generous: a clean stop takes about a second on 2 busy cores; what fails is 30 s of error lines.
STOP_DEADLINE_S = 20.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent (init reaps orphans).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class Started:
    up: Up
    broker_pid: int

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.up.proc

    def rest(self) -> str:
        return self.up.rest()


def start_embedded(tmp_path: Path) -> Started:
    up = start_up(user_env(tmp_path), tmp_path)
    record = orjson.loads((tmp_path / "data" / "broker.json").read_bytes())
    assert record["embedded"] is True
    assert any("memory only" in s for s in up.seen), up.seen  # the banner says what it keeps
    return Started(up, int(record["broker_pid"]))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_up_quickly_with_one_line_and_the_broker_last(tmp_path: Path, sig: signal.Signals) -> None:
    up = start_embedded(tmp_path)
    try:
        assert pid_alive(up.broker_pid)
        # The broker is in its own session: the terminal's Ctrl-C (sent to the foreground
        # process group) cannot reach it before xmodal has stopped what uses it.
        assert os.getsid(up.broker_pid) != os.getsid(up.proc.pid)
        assert os.getpgid(up.broker_pid) != os.getpgid(up.proc.pid)
        start = time.monotonic()
        up.proc.send_signal(sig)
        code = up.proc.wait(STOP_DEADLINE_S)
        took = time.monotonic() - start
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
    output = up.rest()
    assert code == 0, output
    assert took < STOP_DEADLINE_S
    assert "Traceback" not in output and "Task was destroyed" not in output and "ERROR" not in output, output
    assert [line for line in output.splitlines() if line.strip()] == ["stopped; the index is kept for the next start."]
    assert wait_gone(up.broker_pid, 5), "tansu outlived xmodal up"
    assert not (tmp_path / "data" / "broker.json").exists()


def test_sigkill_of_up_leaves_no_orphan_broker(tmp_path: Path) -> None:
    up = start_embedded(tmp_path)
    try:
        assert pid_alive(up.broker_pid)
        up.proc.kill()
        up.proc.wait(10)
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
    # The parent-death signal: the kernel kills tansu when xmodal up dies, however it dies.
    assert wait_gone(up.broker_pid, 10), "tansu is left running as an orphan"
