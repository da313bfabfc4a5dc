"""Index settings on both backends, on the real engines: they reach the engine, payload indexes
serve filters, quantized search with rescoring keeps recall, and bad settings fail clearly.

qdrant-client's local mode scans every point and keeps no HNSW or quantization (nor reports them),
so on it these tests check that the settings are accepted and change no answer; what reaches a
Qdrant server is checked through `collection_config`/`search_params`, the arguments sent to it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from qdrant_client import QdrantClient, models

from xmodal.config import Settings
from xmodal.errors import ConfigError
from xmodal.indexer import EdgeIndex, IndexPoint, QdrantIndex, VectorIndex
from xmodal.indexer import remote
from xmodal.indexer.generations import generation_name
from xmodal.indexer.settings import IndexSettings

DIM = 128
N = 4000
# Small thresholds so that a few thousand vectors get an HNSW graph and searches walk it.
SMALL = {"indexing_threshold_kb": 16, "full_scan_threshold_kb": 16}


def clustered(n: int, dim: int = DIM, *, seed: int = 0, clusters: int = 40) -> NDArray[np.float32]:
    """Unit vectors like embeddings, unlike noise: a shared offset, a few dozen topics, and spread
    along a decaying spectrum in rotated axes. The layout (offset, topics, axes) is fixed; `seed`
    draws the points, so queries with another seed come from the same distribution."""
    layout = np.random.default_rng(12345)
    offset, centres = layout.normal(size=dim), layout.normal(size=(clusters, dim))
    scales = 1 / np.sqrt(1 + np.arange(dim) / 8)
    scales *= np.sqrt(dim / (scales**2).sum())
    axes = np.linalg.qr(layout.normal(size=(dim, dim)))[0]
    rng = np.random.default_rng(seed)
    x = 0.5 * offset + centres[rng.integers(0, clusters, size=n)] + (rng.normal(size=(n, dim)) * scales) @ axes
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def points(vectors: NDArray[np.float32]) -> list[IndexPoint]:
    return [
        IndexPoint(item_id=f"i{i}", vector=v, modality="image", metadata={"album": f"a{i % 7}", "n": i % 3})
        for i, v in enumerate(vectors)
    ]


def recall_at_10(index: VectorIndex, queries: NDArray[np.float32]) -> float:
    found = 0
    for q in queries:
        exact = {h.item_id for h in index.search("s", q, 10, exact=True)}
        found += len(exact & {h.item_id for h in index.search("s", q, 10)})
    return found / (10 * len(queries))


def edge(tmp_path: Path, **settings: Any) -> EdgeIndex:
    return EdgeIndex(tmp_path / "index", index_settings=IndexSettings(**settings))


def segment_configs(root: Path, index: EdgeIndex, space: str) -> list[dict[str, Any]]:
    """The vector config of each segment the engine wrote (what it built, not what it was asked)."""
    shard = root / space / generation_name(index.index_report(space)["generation"])
    configs = []
    for f in sorted((shard / "segments").glob("*/segment.json")):
        configs.append(json.loads(f.read_text())["config"]["vector_data"][""])
    return configs


# -- the settings themselves ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"hnsw_m": 32, "hnsw_ef_construct": 16}, "hnsw_ef_construct (16) must be at least hnsw_m (32)"),
        ({"hnsw_m": 1}, "hnsw_m must be an integer from 2 to 128"),
        ({"search_ef": 0}, "search_ef must be an integer from 1 to 4096"),
        ({"quantization": "int4"}, "quantization must be one of none, int8, binary"),
        ({"quantization_oversampling": 0.5}, "quantization_oversampling must be a number from 1 to 16"),
        ({"payload_indexes": ("album", "album")}, "names a key twice"),
        ({"payload_indexes": ('a"b',)}, "is not usable"),
        ({"payload_indexes": "album"}, "must be a list of metadata keys"),
    ],
)
def test_invalid_settings_raise_a_clear_config_error(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        IndexSettings(**values)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"HNSW_M": "24", "HNSW_EF_CONSTRUCT": "200", "SEARCH_EF": "96", "QUANTIZATION": "int8",
                        "QUANTIZATION_OVERSAMPLING": "3", "PAYLOAD_INDEXES": "album, camera"}.items():
        monkeypatch.setenv(f"XMODAL_{name}", value)
    s = IndexSettings.from_settings(Settings())
    assert (s.hnsw_m, s.hnsw_ef_construct, s.search_ef, s.quantization) == (24, 200, 96, "int8")
    assert s.quantization_oversampling == 3.0 and s.payload_indexes == ("album", "camera")


def test_an_invalid_combination_from_the_environment_fails_when_the_index_is_opened(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from xmodal.indexer import open_index

    monkeypatch.setenv("XMODAL_HNSW_M", "64")
    monkeypatch.setenv("XMODAL_HNSW_EF_CONSTRUCT", "32")
    monkeypatch.setenv("XMODAL_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="must be at least hnsw_m"):
        open_index(Settings())


# -- embedded (qdrant-edge) ----------------------------------------------------------------------


def test_edge_builds_with_the_settings(tmp_path: Path) -> None:
    index = edge(tmp_path, hnsw_m=8, hnsw_ef_construct=40, quantization="int8", **SMALL)
    index.ensure_collection("s", DIM)
    index.upsert("s", points(clustered(N)))
    assert index.optimize("s")
    built = [c for c in segment_configs(tmp_path / "index", index, "s") if c["index"]["type"] == "hnsw"]
    assert built, "no segment got an HNSW graph"
    for config in built:
        assert (config["index"]["options"]["m"], config["index"]["options"]["ef_construct"]) == (8, 40)
        assert config["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
    report = index.index_report("s")
    assert report["indexed_vectors"] == N and report["rebuild_pending"] is False
    assert report["built_with"]["hnsw_m"] == 8 and report["built_with"]["quantization"] == "int8"
    index.close()


def test_edge_reopened_with_other_settings_rebuilds_on_optimize(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    index = edge(tmp_path, hnsw_m=8, hnsw_ef_construct=40, quantization="none", **SMALL)
    index.ensure_collection("s", DIM)
    index.upsert("s", points(clustered(N)))
    index.optimize("s")
    index.close()

    with caplog.at_level(logging.WARNING, logger="xmodal.indexer.edge"):
        index = edge(tmp_path, hnsw_m=24, hnsw_ef_construct=40, quantization="binary", **SMALL)
        report = index.index_report("s")
    assert "hnsw_m 8 -> 24" in caplog.text and "quantization 'none' -> 'binary'" in caplog.text
    assert "next optimize" in caplog.text
    assert report["rebuild_pending"] is True
    assert report["built_with"]["hnsw_m"] == 8 and report["settings"]["hnsw_m"] == 24

    assert index.optimize("s")
    live = [c for c in segment_configs(tmp_path / "index", index, "s") if c["index"]["type"] == "hnsw"]
    assert any(c["index"]["options"]["m"] == 24 and "binary" in (c["quantization_config"] or {}) for c in live)
    assert index.index_report("s")["rebuild_pending"] is False
    assert index.count("s") == N
    index.close()


def test_edge_payload_indexes_are_created_and_added_on_open(tmp_path: Path) -> None:
    index = edge(tmp_path, payload_indexes=("album",))
    index.ensure_collection("s", DIM)
    index.upsert("s", points(clustered(500)))
    assert "metadata.album" in index.index_report("s")["payload_indexes"]
    index.close()

    index = edge(tmp_path, payload_indexes=("album", "n", "a.b"))
    schema = index.index_report("s")["payload_indexes"]
    assert {"metadata.album", "metadata.n", 'metadata."a.b"', "modality", "item_id"} <= set(schema)
    index.close()


# -- both backends -------------------------------------------------------------------------------


def make(kind: str, tmp_path: Path, settings: IndexSettings) -> VectorIndex:
    if kind == "edge":
        return EdgeIndex(tmp_path / "index", index_settings=settings)
    return QdrantIndex(QdrantClient(":memory:"), collection_prefix="t", index_settings=settings)


@pytest.fixture(params=["edge", "qdrant-local"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_filtered_search_on_an_indexed_key_is_correct(kind: str, tmp_path: Path) -> None:
    vectors = clustered(N)
    index = make(kind, tmp_path, IndexSettings(payload_indexes=("album", "n"), **SMALL))
    index.ensure_collection("s", DIM)
    index.upsert("s", points(vectors))
    if isinstance(index, EdgeIndex):
        index.optimize("s")
    query = vectors[3]
    hits = index.search("s", query, 10, filter={"album": "a3", "n": 0})
    # The right answer, computed here: items with i % 7 == 3 and i % 3 == 0, by cosine.
    wanted = [i for i in range(N) if i % 7 == 3 and i % 3 == 0]
    scores = vectors[wanted] @ query
    expected = [f"i{wanted[j]}" for j in np.argsort(-scores, kind="stable")[:10]]
    assert [h.item_id for h in hits] == expected
    index.close()


def test_int8_search_with_rescoring_keeps_recall(kind: str, tmp_path: Path) -> None:
    vectors = clustered(N)
    settings = IndexSettings(quantization="int8", quantization_oversampling=3.0, search_ef=256, **SMALL)
    index = make(kind, tmp_path, settings)
    index.ensure_collection("s", DIM)
    index.upsert("s", points(vectors))
    if isinstance(index, EdgeIndex):
        index.optimize("s")
        assert index.index_report("s")["indexed_vectors"] == N
    queries = clustered(50, seed=1)
    assert recall_at_10(index, queries) >= 0.95
    index.close()


def test_binary_without_rescoring_is_worse_on_edge(tmp_path: Path) -> None:
    """Binary codes alone rank coarsely: rescoring with the full vectors is what recovers recall.
    (1-bit codes of 128-d vectors stay far from 0.95 even rescored: docs/scale.md.)"""
    vectors, queries = clustered(N), clustered(50, seed=1)
    recalls = {}
    for rescore in (True, False):
        root = tmp_path / f"rescore-{rescore}"
        index = edge(root, quantization="binary", quantization_rescore=rescore, quantization_oversampling=3.0, **SMALL)
        index.ensure_collection("s", DIM)
        index.upsert("s", points(vectors))
        index.optimize("s")
        recalls[rescore] = recall_at_10(index, queries)
        index.close()
    assert recalls[False] < recalls[True] - 0.1, recalls


# -- what a Qdrant server is sent ----------------------------------------------------------------


def test_server_collection_config_carries_the_build_settings() -> None:
    config = remote.collection_config(IndexSettings(hnsw_m=24, hnsw_ef_construct=200, quantization="binary"))
    assert config["hnsw_config"] == models.HnswConfigDiff(m=24, ef_construct=200, full_scan_threshold=10_000)
    binary = config["quantization_config"].binary
    assert binary.query_encoding == models.BinaryQuantizationQueryEncoding.SCALAR8BITS and binary.always_ram
    assert config["optimizers_config"].indexing_threshold == 20_000
    assert remote.collection_config(IndexSettings(quantization="none"))["quantization_config"] is None


def test_server_search_params_carry_ef_and_rescoring() -> None:
    params = remote.search_params(IndexSettings(search_ef=64, quantization="int8", quantization_oversampling=3.0))
    assert params.hnsw_ef == 64
    assert params.quantization == models.QuantizationSearchParams(rescore=True, oversampling=3.0)
    no_rescore = remote.search_params(IndexSettings(quantization="binary", quantization_rescore=False))
    assert no_rescore.quantization == models.QuantizationSearchParams(rescore=False, oversampling=None)
    assert remote.search_params(IndexSettings(quantization="none")).quantization is None


def test_a_server_collection_built_otherwise_is_seen_as_changed() -> None:
    """What `ensure_collection` compares on a server, read from a real CollectionInfo (local mode
    reports Qdrant's defaults: m 16, ef_construct 100, no quantization)."""
    client = QdrantClient(":memory:")
    client.create_collection("c", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    built = remote._built_settings(client.get_collection("c"))
    assert built["hnsw_m"] == 16 and built["hnsw_ef_construct"] == 100 and built["quantization"] == "none"
    changes = IndexSettings(hnsw_m=32, quantization="int8").build_changes(built)
    assert changes["hnsw_m"] == (16, 32) and changes["quantization"] == ("none", "int8")
    assert changes["hnsw_ef_construct"] == (100, 128)
    assert not IndexSettings(hnsw_ef_construct=100, quantization="none").build_changes(built)
    client.close()


def test_settings_round_trip_through_their_record() -> None:
    settings = IndexSettings(hnsw_m=24, quantization="binary", quantization_rescore=False, payload_indexes=("a", "b"))
    assert IndexSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert IndexSettings.from_dict({**settings.to_dict(), "from_a_newer_xmodal": 1}) == settings


def test_a_shard_made_before_settings_were_recorded_reports_what_it_was_built_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The layout of earlier xmodal: <root>/<space>/ holding a shard made with the engine's defaults
    and a manifest with only the dimension."""
    import qdrant_edge as qe

    space_dir = tmp_path / "index" / "s"
    space_dir.mkdir(parents=True)
    shard = qe.EdgeShard.create(str(space_dir), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)))
    shard.update(qe.UpdateOperation.upsert_points([qe.Point(i, v.tolist(), {"item_id": f"i{i}", "modality": "image"})
                                                    for i, v in enumerate(clustered(50))]))
    shard.close()
    (space_dir / "xmodal-space.json").write_text(json.dumps({"space": "s", "dim": DIM, "distance": "cosine"}))

    with caplog.at_level(logging.WARNING, logger="xmodal.indexer.edge"):
        index = edge(tmp_path, hnsw_m=32, quantization="int8")
        report = index.index_report("s")
    assert report["points"] == 50
    assert report["built_with"]["hnsw_m"] == 16 and report["built_with"]["quantization"] == "none"
    assert report["rebuild_pending"] is True
    assert "hnsw_m 16 -> 32" in caplog.text and "quantization 'none' -> 'int8'" in caplog.text
    index.optimize("s")
    assert index.index_report("s")["rebuild_pending"] is False
    index.close()
