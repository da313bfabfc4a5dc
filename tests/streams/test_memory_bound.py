"""Memory is bounded in bytes: batches of maximum-size images stay within the decoded-bytes budget.

Each run is a fresh process whose resident memory is sampled every 2 ms while it processes, with
the real mini image tower and a real qdrant-edge index. The same batches without the budget exceed the bound, so the
bound is what the budget buys, not what the machine happens to have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MIB = 1024 * 1024
SIDE = 3000  # 9 M pixels: the configured XMODAL_MAX_IMAGE_PIXELS, so each image is a maximum-size one
IMAGE_BYTES = SIDE * SIDE * 3  # decoded RGB: about 26 MiB
BATCH = 16  # about 412 MiB decoded if held at once
BUDGET = 64 * MIB
# Stated bound on the growth of peak RSS while processing: the budget, the one image being decoded
# past it, the tower's working set for it (resize), and allocator slack.
BOUND = BUDGET + 3 * IMAGE_BYTES + 96 * MIB  # measured: 175 MiB bounded, 625 MiB unbounded

SCRIPT = r"""
import base64, io, json, os, sys, threading, time
import orjson
from PIL import Image
from xmodal.config import load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.encoders.mini.space import MiniSpace
from xmodal.indexer.edge import EdgeIndex
from xmodal.streams.pipeline import IngestPipeline, SourceRecord

side, batch, budget, root = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
settings = load_settings({"XMODAL_MAX_IMAGE_PIXELS": str(side * side)})
space = MiniSpace(settings)
index = EdgeIndex(root)
pipeline = IngestPipeline({"mini": space}, index, MediaLimits.from_settings(settings), max_decoded_bytes=budget)
pipeline.start()

def png(w, h, colour):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")  # flat colour: a small file, a big image
    return base64.b64encode(buf.getvalue()).decode()

def record(n, data):
    return SourceRecord("media", 0, n, f"i{n}".encode(), orjson.dumps({"id": f"i{n}", "modality": "image", "data": data}))

def rss():  # resident bytes now (ru_maxrss would be the high-water mark of loading the towers)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

peak, done = 0, threading.Event()
def sample():
    global peak
    while not done.is_set():
        peak = max(peak, rss())
        time.sleep(0.002)

pipeline.process([record(0, png(64, 64, (10, 200, 10)))])  # warm-up: every lazy import and buffer
big = png(side, side, (200, 20, 20))
before = rss()
sampler = threading.Thread(target=sample)
sampler.start()
for round_ in range(2):
    result = pipeline.process([record(1 + round_ * batch + i, big) for i in range(batch)])
    assert not result.dead, result.dead
done.set()
sampler.join()
index.close()
print(json.dumps({"growth": peak - before, "indexed": result.indexed}))
"""


def run(budget: int, tmp_path: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SIDE), str(BATCH), str(budget), str(tmp_path / f"index-{budget}")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_batches_of_maximum_size_images_stay_within_the_stated_rss_bound(tmp_path: Path) -> None:
    bounded = run(BUDGET, tmp_path)
    assert bounded["indexed"] == BATCH
    assert bounded["growth"] <= BOUND, f"peak RSS grew {bounded['growth'] / MIB:.0f} MiB > {BOUND / MIB:.0f} MiB"
    unbounded = run(BATCH * IMAGE_BYTES * 2, tmp_path)  # a budget that holds the whole batch
    assert unbounded["growth"] > BOUND, "the batch fits the bound even unbounded: the test would prove nothing"
