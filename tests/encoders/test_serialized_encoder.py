"""SerializedEncoder: one tower call at a time; calls that queue meanwhile are encoded as one batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from xmodal.encoders.base import SerializedEncoder, Vectors, l2_normalize
from xmodal.errors import EncodeError


class CountingTower:
    """A deterministic text tower (vector from the text's characters) that records its calls and
    can be held inside a call, so that others queue behind it."""

    name, dim, modalities = "count", 8, frozenset({"text"})

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.active = 0
        self.max_active = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def load(self) -> None:
        pass

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.calls.append(list(texts))
        self.entered.set()
        self.release.wait(10)
        self.active -= 1
        if any("poison" in t for t in texts):
            raise EncodeError("poison", code="encode_error")
        rows = [[(ord(c) * (i + 1)) % 17 + 1 for i, c in enumerate((t * 8)[:8])] for t in texts]
        return l2_normalize(np.array(rows, dtype=np.float32))

    def encode_images(self, images: Sequence[Any]) -> Vectors:
        raise EncodeError("no image tower", code="unsupported_modality")

    def encode_audio(self, clips: Sequence[Any]) -> Vectors:
        raise EncodeError("no audio tower", code="unsupported_modality")


def test_calls_that_queue_are_encoded_together_and_each_gets_its_own_rows() -> None:
    tower = CountingTower()
    shared = SerializedEncoder(tower)
    tower.release.clear()
    texts = [f"query {i}" for i in range(12)]
    with ThreadPoolExecutor(13) as pool:
        first = pool.submit(shared.encode_texts, ["first"])
        assert tower.entered.wait(5)  # the first call holds the tower; the others queue
        rest = [pool.submit(shared.encode_texts, [t]) for t in texts]
        while shared.scheduler.waiting("ingest") < len(texts):
            threading.Event().wait(0.01)
        tower.release.set()
        results = [f.result(10) for f in rest]
        first.result(10)
    assert tower.max_active == 1
    assert tower.calls == [["first"], texts]  # one merged call for the twelve queued ones
    alone = SerializedEncoder(CountingTower())
    for text, rows in zip(texts, results):
        assert rows.shape == (1, 8)
        np.testing.assert_allclose(rows, alone.encode_texts([text]))


def test_a_failing_input_fails_only_its_own_caller() -> None:
    tower = CountingTower()
    shared = SerializedEncoder(tower)
    tower.release.clear()
    with ThreadPoolExecutor(4) as pool:
        hold = pool.submit(shared.encode_texts, ["hold"])
        assert tower.entered.wait(5)
        good = pool.submit(shared.encode_texts, ["good"])
        bad = pool.submit(shared.encode_texts, ["poison"])
        while shared.scheduler.waiting("ingest") < 2:
            threading.Event().wait(0.01)
        tower.release.set()
        hold.result(10)
        assert good.result(10).shape == (1, 8)
        with pytest.raises(EncodeError):
            bad.result(10)


def test_a_lone_call_is_encoded_at_once() -> None:
    tower = CountingTower()
    shared = SerializedEncoder(tower)
    assert shared.encode_texts(["a", "b"]).shape == (2, 8)
    assert tower.calls == [["a", "b"]]
    assert (shared.name, shared.dim, shared.modalities) == ("count", 8, frozenset({"text"}))
