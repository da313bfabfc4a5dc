"""The recall monitor's exact checks yield to live searches (recall.py): on a real qdrant-edge index
with the real MiniLM tower, a sampled search is checked once searches pause, and under steady
search load still once every `max_defer_s`, never at the sampling rate."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from qa_support import MiniText, populate

from xmodal.indexer import EdgeIndex
from xmodal.query_api.quality.recall import RecallMonitor
from xmodal.query_api.quality.searched import SearchedIndex

QUIET_S = 0.5  # far above the gap between the searches below (about 20 ms)


def measured() -> float:
    return REGISTRY.get_sample_value("xmodal_index_recall_samples_total", {"space": "mini", "outcome": "measured"}) or 0.0


def search_for(searched: SearchedIndex, vector: object, seconds: float) -> int:
    """Search without pause for `seconds` (every answer right); the number of searches."""
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert searched.search("mini", vector, 2)[0].item_id == "cap/rain"  # type: ignore[arg-type]
        done += 1
        time.sleep(0.02)
    return done


def wait_until(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.02)
    return bool(condition())


def test_checks_wait_for_a_pause_in_the_searches(tmp_path: Path, mini: MiniText) -> None:
    index = EdgeIndex(tmp_path / "index")
    try:
        populate(index, mini)
        vector = mini.encode_texts(["rain on a roof"])[0]
        monitor = RecallMonitor(SearchedIndex(index), rate=1000, alert_below=0.9, quiet_s=QUIET_S, max_defer_s=3600)
        searched = SearchedIndex(index, monitor)
        before = measured()
        monitor.start()
        try:
            searches = search_for(searched, vector, 2.0)  # every one sampled (rate 1000/s), none checked yet
            assert searches > 10 and measured() == before
            assert wait_until(lambda: measured() - before >= 1, 10)  # the pause came: checks run
            assert wait_until(lambda: monitor.samples("mini") == min(searches, 50), 30)  # queued ones all run
            assert monitor.recall("mini") == 1.0  # an unoptimized shard is an exact scan: both agree
        finally:
            monitor.stop()
    finally:
        index.close()


def test_steady_searches_still_get_one_check_every_max_defer(tmp_path: Path, mini: MiniText) -> None:
    index = EdgeIndex(tmp_path / "index")
    try:
        populate(index, mini)
        vector = mini.encode_texts(["rain on a roof"])[0]
        monitor = RecallMonitor(SearchedIndex(index), rate=1000, alert_below=0.9, quiet_s=QUIET_S, max_defer_s=1.0)
        searched = SearchedIndex(index, monitor)
        before = measured()
        monitor.start()
        try:
            searches = search_for(searched, vector, 4.5)
            checked = measured() - before
            # Never a pause of QUIET_S: about one check a second (4), not one per search.
            assert searches > 20 and 2 <= checked <= 6, (searches, checked)
        finally:
            monitor.stop()
    finally:
        index.close()


def test_bad_timings_are_refused(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index")
    try:
        with pytest.raises(ValueError, match="quiet_s and max_defer_s must be >= 0"):
            RecallMonitor(index, rate=1, alert_below=0.9, quiet_s=-1)
    finally:
        index.close()
