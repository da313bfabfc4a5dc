"""Congruence: the same data and queries on both backends give the same ranked hits.

Scores must agree within 1e-4 at every rank; item ids must agree wherever the score is not tied
within that tolerance with a neighbour (there the two engines' float rounding may legitimately swap
them). Exact ties are settled by item id in both; test_index_backends checks that on each backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from xmodal.indexer import EdgeIndex, Hit, IndexPoint, QdrantIndex, VectorIndex

DIM = 32
N = 300
TOL = 1e-4
MODALITIES = ("text", "image", "audio")
COLOURS = ("red", "green", "blue", "amber", "violet")


def dataset() -> tuple[list[IndexPoint], np.ndarray]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors[N - 5 :] = vectors[0]  # five copies of item000's vector: exact ties
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = [
        IndexPoint(
            item_id=f"item{i:03d}",
            vector=vectors[i],
            modality=MODALITIES[i % 3],
            metadata={"colour": COLOURS[i % 5], "n": i % 7, "big": i % 2 == 0, "tags": [COLOURS[i % 4], "any"]},
            ts=1764133200000 + i,
            source={"topic": "t.media", "partition": i % 4, "offset": i},
        )
        for i in range(N)
    ]
    return points, vectors


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VectorIndex, VectorIndex, np.ndarray]]:
    points, vectors = dataset()
    edge = EdgeIndex(Path(tmp_path_factory.mktemp("congruence")) / "index")
    local = QdrantIndex(QdrantClient(":memory:"), collection_prefix="c")
    for index in (edge, local):
        index.ensure_collection("s", DIM)
        index.upsert("s", points[:200])
        index.upsert("s", points[200:])
    yield edge, local, vectors
    edge.close()
    local.close()


def queries(vectors: np.ndarray) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    fresh = rng.normal(size=(8, DIM)).astype(np.float32)
    return [*fresh, vectors[0], vectors[17], vectors[123], (vectors[5] + vectors[6]) / 2]


FILTERS: list[dict[str, Any]] = [
    {},
    {"modalities": ["image"]},
    {"modalities": ["text", "audio"]},
    {"filter": {"colour": "red"}},
    {"filter": {"n": 3}},
    {"filter": {"big": True}},
    {"filter": {"big": False, "n": 0}},
    {"filter": {"tags": "green"}},
    {"modalities": ["audio"], "filter": {"colour": "blue", "big": True}},
]


def assert_congruent(a: list[Hit], b: list[Hit], k: int) -> tuple[int, int]:
    """Compare two rankings; return (positions whose ids were compared, positions)."""
    assert len(a) == len(b)
    sa, sb = np.array([h.score for h in a]), np.array([h.score for h in b])
    np.testing.assert_allclose(sa, sb, atol=TOL, rtol=0)
    compared = 0
    for i, (ha, hb) in enumerate(zip(a, b, strict=True)):
        above = sa[i - 1] - sa[i] if i > 0 else np.inf
        below = sa[i] - sa[i + 1] if i + 1 < len(sa) else (np.inf if len(sa) < k else 0.0)  # cut at k: unknown
        if min(above, below) > 2 * TOL:
            assert (ha.item_id, ha.modality, ha.metadata) == (hb.item_id, hb.modality, hb.metadata), f"rank {i}"
            compared += 1
    return compared, len(a)


def compare_all(edge: VectorIndex, local: VectorIndex, vectors: np.ndarray) -> None:
    compared = total = 0
    for query in queries(vectors):
        for kwargs in FILTERS:
            for k in (10, 60):
                c, t = assert_congruent(edge.search("s", query, k, **kwargs), local.search("s", query, k, **kwargs), k)
                compared, total = compared + c, total + t
    assert total > 3000 and compared > 0.8 * total  # the id comparison is not vacuous


def test_same_counts(indexes: Any) -> None:
    edge, local, _ = indexes
    assert edge.count("s") == local.count("s") == N


def test_rankings_agree_with_and_without_filters(indexes: Any) -> None:
    edge, local, vectors = indexes
    compare_all(edge, local, vectors)


def test_rankings_match_exact_cosine(indexes: Any) -> None:
    edge, local, vectors = indexes
    for query in queries(vectors):
        cosine = vectors @ (query / np.linalg.norm(query))
        expected = np.sort(cosine)[::-1][:20]
        for index in (edge, local):
            np.testing.assert_allclose([h.score for h in index.search("s", query, 20)], expected, atol=TOL, rtol=0)


def test_exact_ties_come_in_item_id_order_on_both(indexes: Any) -> None:
    edge, local, vectors = indexes
    tied = ["item000", "item295", "item296", "item297", "item298", "item299"]
    for index in (edge, local):
        assert [h.item_id for h in index.search("s", vectors[0], 4)] == tied[:4]


def test_rankings_still_agree_after_deletes_and_overwrites(indexes: Any) -> None:
    # Runs last in this module: it changes the shared data.
    edge, local, vectors = indexes
    points, _ = dataset()
    gone = [p.item_id for p in points[::9]]
    moved = [
        IndexPoint(p.item_id, vectors[(i * 31) % N], "text", {"colour": "red", "n": 3, "big": True})
        for i, p in enumerate(points[1::10])
    ]
    for index in (edge, local):
        index.delete("s", gone)
        index.upsert("s", moved)
    assert edge.count("s") == local.count("s") == N - len(gone) + sum(p.item_id in gone for p in moved)
    compare_all(edge, local, vectors)
