"""XMODAL_TEXT_RUNTIME=onnx: the mini space's MiniLM text tower on ONNX Runtime.

Its vectors must agree with the torch path's on real texts (cosine >= 0.999, issue 12's bar for
switching), the setting must select it (and refuse other values), its file must be built once from
the local weights and reused, and a Node with it must ingest and answer over the real broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from pydantic import ValidationError

from xmodal.config import Settings, load_settings
from xmodal.encoders.mini.corpus import heldout_gallery
from xmodal.encoders.mini.space import MiniSpace
from xmodal.encoders.mini.text import MiniLMText
from xmodal.encoders.mini.text_runtime import OnnxMiniLMText
from xmodal.errors import ConfigError, ModelLoadError

AGREEMENT = 0.999
QUERIES = ["a red circle on white", "a low beep", "two large blue stars on black", "x", "ünïcödé – emoji 🎈"]


def real_texts() -> list[str]:
    """Ingest captions of both media (their variety of lengths and words) plus short queries."""
    texts = QUERIES + [" ".join(["a long caption about a purple heart"] * 40)]  # past MAX_TOKENS: truncated
    for modality in ("image", "audio"):
        held, seen = heldout_gallery(modality, 60, seed=2)
        texts += [it.caption for it in held + seen]
    return texts


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def onnx_text(onnx_cache: Path) -> OnnxMiniLMText:
    encoder = OnnxMiniLMText(onnx_cache)
    encoder.load()
    return encoder


@pytest.fixture(scope="module")
def torch_text() -> MiniLMText:
    encoder = MiniLMText()
    encoder.load()
    return encoder


def test_onnx_vectors_agree_with_torch_on_real_texts(onnx_text: OnnxMiniLMText, torch_text: MiniLMText) -> None:
    texts = real_texts()
    reference, vectors = torch_text.encode(texts), onnx_text.encode(texts)
    assert vectors.shape == reference.shape == (len(texts), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(1)
    assert cosine.min() >= AGREEMENT, f"worst text: {texts[int(cosine.argmin())]!r} at {cosine.min():.6f}"
    # Batching and padding must not change a text's vector: one at a time equals the batch.
    alone = np.concatenate([onnx_text.encode([t]) for t in QUERIES])
    np.testing.assert_allclose(alone, vectors[: len(QUERIES)], atol=1e-4)
    assert onnx_text.encode([]).shape == (0, 384)


def test_the_onnx_file_is_built_once_per_weights_and_reused(onnx_cache: Path, onnx_text: OnnxMiniLMText) -> None:
    assert onnx_text.onnx_path is not None and onnx_text.onnx_path.parent == onnx_cache
    built = onnx_text.onnx_path.stat().st_mtime_ns
    again = OnnxMiniLMText(onnx_cache)
    again.load()
    assert again.onnx_path == onnx_text.onnx_path and again.onnx_path.stat().st_mtime_ns == built
    assert [p.name for p in onnx_cache.iterdir()] == [onnx_text.onnx_path.name]  # no temp file left


def test_a_corrupt_onnx_file_is_a_clear_error(tmp_path: Path, onnx_text: OnnxMiniLMText) -> None:
    assert onnx_text.onnx_path is not None
    (tmp_path / onnx_text.onnx_path.name).write_bytes(b"not an onnx model")
    with pytest.raises(ModelLoadError, match="delete it to rebuild"):
        OnnxMiniLMText(tmp_path).load()


def test_the_setting_selects_the_runtime_and_refuses_others(tmp_path: Path) -> None:
    assert Settings().text_runtime == "torch"
    assert load_settings({"XMODAL_TEXT_RUNTIME": "onnx"}).text_runtime == "onnx"
    for bad in ("tensorrt", "ONNX ", ""):
        with pytest.raises(ConfigError, match="XMODAL_TEXT_RUNTIME=.*Input should be 'torch' or 'onnx'"):
            load_settings({"XMODAL_TEXT_RUNTIME": bad})
    with pytest.raises(ValidationError):
        Settings(text_runtime="int8")

    settings = load_settings({"XMODAL_TEXT_RUNTIME": "onnx", "XMODAL_DATA_DIR": str(tmp_path), "XMODAL_DEVICE": "cpu"})
    onnx_space, torch_space = MiniSpace(settings), MiniSpace(load_settings({"XMODAL_DEVICE": "cpu"}))
    onnx_space.load()
    torch_space.load()
    assert list((tmp_path / "models").glob("minilm-l6-*.onnx")), "the file is built under <data dir>/models"
    cosine = (onnx_space.encode_texts(QUERIES) * torch_space.encode_texts(QUERIES)).sum(1)
    assert cosine.min() >= AGREEMENT
    # Agreement >= 0.999: vectors of either runtime may share a generation, so the fingerprint is the weights'.
    assert onnx_space.fingerprint == torch_space.fingerprint


def test_without_onnxruntime_the_error_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import raises ImportError
    with pytest.raises(ModelLoadError, match=r"pip install 'xmodal\[onnx\]'.*XMODAL_TEXT_RUNTIME=torch"):
        OnnxMiniLMText(tmp_path).load()


# --- a Node with the onnx runtime, on the real broker -------------------------------------------------


@pytest.fixture
def onnx_node(broker: str, make_settings: Any) -> Iterator[Any]:
    from xmodal.runtime import Node, Roles

    settings = make_settings(KAFKA_BOOTSTRAP=broker, TEXT_RUNTIME="onnx", RECALL_SAMPLE_RATE="0", DEVICE="cpu")
    with Node(settings, Roles(ingest=True, query=True)) as node:
        yield node


@pytest.mark.broker
def test_a_node_with_onnx_ingests_and_answers(onnx_node: Any, broker: str) -> None:
    from xmodal.query_api import SearchClient

    settings, index = onnx_node.settings, onnx_node.index
    assert list((settings.data_dir / "models").glob("minilm-l6-*.onnx")), "the node's mini space runs on onnx"
    texts = {
        "doc/circle": "a red circle on a white background",
        "doc/beep": "a short high-pitched beep repeated twice",
        "doc/dog": "a dog runs across a green field",
    }
    producer = Producer({"bootstrap.servers": broker, "partitioner": "murmur2_random"})
    for item_id, text in texts.items():
        event = {"id": item_id, "modality": "text", "text": text}
        producer.produce(settings.media_topic, key=item_id, value=orjson.dumps(event))
    producer.flush(10)
    deadline = time.monotonic() + 60
    while index.count("mini") < len(texts) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert index.count("mini") == len(texts)
    with SearchClient(settings, onnx_node.bootstrap) as client:
        asked = {"doc/circle": "red circle", "doc/beep": "a beeping sound", "doc/dog": "puppy on grass"}
        for item_id, query in asked.items():
            hits = client.search(query, k=3, modalities=["text"])
            assert hits and hits[0].id == item_id, (query, [(h.id, h.score) for h in hits])


# --- benchmarks/text_runtime.py at tiny size: it keeps working (its figures are the benchmark's) ----


def test_the_benchmark_reports_every_variant_as_json(tmp_path: Path, onnx_text: OnnxMiniLMText) -> None:
    import json
    import shutil
    import subprocess
    import sys

    assert onnx_text.onnx_path is not None
    shutil.copy(onnx_text.onnx_path, tmp_path / onnx_text.onnx_path.name)  # found there: no second export

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "text_runtime.py"
    done = subprocess.run(
        [sys.executable, str(script), "--json", "--rounds", "1", "--singles", "3", "--batches", "1",
         "--eval-n", "40", "--cache-dir", str(tmp_path), "--variants", "torch,onnx,onnx-int8"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert list(report["variants"]) == ["torch", "onnx", "onnx-int8"] and report["agreement_texts"] == 80 + 197
    for name, figures in report["variants"].items():
        assert 0 < figures["batch1_p50_ms"] <= figures["batch1_p99_ms"] and figures["batch64_texts_per_s"] > 0
        assert figures["batch1_p50_speedup"] > 0 and 0 <= figures["recall_at_10_text_to_image"] <= 1
        assert -1 <= figures["cosine_min"] <= figures["cosine_mean"] <= 1 + 1e-6, name
    torch_figures = report["variants"]["torch"]
    assert torch_figures["cosine_min"] > 0.99999 and torch_figures["batch1_p50_speedup"] == 1
    assert report["variants"]["onnx"]["cosine_min"] >= AGREEMENT  # the same export the runtime uses
