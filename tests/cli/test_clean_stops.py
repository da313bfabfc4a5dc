"""Stops of the real `xmodal up` process: Ctrl-C and SIGTERM are clean and quick, SIGKILL leaves no
orphan broker. Each test runs the real CLI in a subprocess and signals it from outside."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

XMODAL = [sys.executable, "-m", "xmodal.cli"]
# Generous: a clean stop takes about a second on 2 busy cores; what fails is 30 s of error lines.
STOP_DEADLINE_S = 20.0


@dataclass
class Up:
    proc: subprocess.Popen[str]
    broker_pid: int
    lines: queue.Queue[str | None]  # stdout+stderr, line by line; None at the end
    seen: list[str] = field(default_factory=list)

    def rest(self) -> str:
        """Everything printed after it was ready, once it has exited."""
        out = []
        while (line := self.lines.get(timeout=10)) is not None:
            out.append(line)
        return "".join(out)


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


def start_up(tmp_path: Path, timeout_s: float = 180) -> Up:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_DATA_DIR=str(tmp_path / "data"), XMODAL_METRICS_PORT="0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*XMODAL, "up"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
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
            record = orjson.loads((tmp_path / "data" / "broker.json").read_bytes())
            assert record["embedded"] is True
            assert any("memory only" in s for s in seen), seen  # the banner says what it keeps
            return Up(proc, int(record["broker_pid"]), lines, seen)
    proc.kill()
    pytest.fail("xmodal up did not come up:\n" + "".join(seen))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_up_quickly_with_one_line_and_the_broker_last(tmp_path: Path, sig: signal.Signals) -> None:
    up = start_up(tmp_path)
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
    up = start_up(tmp_path)
    try:
        assert pid_alive(up.broker_pid)
        up.proc.kill()
        up.proc.wait(10)
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
    # The parent-death signal: the kernel kills tansu when xmodal up dies, however it dies.
    assert wait_gone(up.broker_pid, 10), "tansu is left running as an orphan"
