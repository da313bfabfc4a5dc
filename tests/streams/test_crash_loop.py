"""A worker SIGKILLed at random while keyed upserts, updates and deletes flow loses nothing: after a
last worker drained the topic, every live id has its latest payload and every deleted id is gone.

CI-sized run of benchmarks/crash_loop.py (the full-size command is in docs/guarantees.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "crash_loop.py"


def load_crash_loop():  # noqa: ANN201 - the module, loaded from its path (benchmarks/ is no package)
    spec = importlib.util.spec_from_file_location("crash_loop", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["crash_loop"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_random_sigkills_of_the_worker_lose_no_update_and_no_delete(tmp_path: Path) -> None:
    crash_loop = load_crash_loop()
    result = crash_loop.run_crash_loop(
        seconds=25, events=300, ids=80, kill_after_s=(3.0, 6.0), seed=9, work_dir=tmp_path
    )
    print(result.summary())
    assert result.kills >= 2  # the workers were killed while events flowed, not only at the end
    assert result.deleted > 0 and result.live > 0
    assert result.wrong == []
