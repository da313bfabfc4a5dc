"""PidLock: one holder at a time across processes, the holder's pid in the refusal, freed by a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xmodal.errors import ConfigError
from xmodal.pidlock import PidLock
from xmodal.runtime import IndexLock

_HOLD = (
    "import sys, time; from pathlib import Path; from xmodal.pidlock import PidLock; "
    "lock = PidLock(Path(sys.argv[1])); assert lock.try_acquire() is None; print('held', flush=True); time.sleep(60)"
)


def _holder(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_is_refused_with_the_holders_pid_until_the_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.lock"
    holder = _holder(path)
    try:
        assert PidLock(path).try_acquire() == str(holder.pid)
        with pytest.raises(ConfigError, match=f"in use by pid {holder.pid}"):
            IndexLock(path).acquire()
    finally:
        holder.kill()  # a crash: the kernel drops the flock, no stale lock file blocks the next one
        holder.wait()
    lock = PidLock(path)
    assert lock.try_acquire() is None
    assert path.read_text() == str(os.getpid())
    lock.release()
    again = PidLock(path)
    assert again.try_acquire() is None
    again.release()
