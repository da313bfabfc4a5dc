"""What only the embedded backend has: files on disk, crash durability, one process per directory, optimize."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from xmodal.errors import VectorIndexError
from xmodal.indexer import EdgeIndex, IndexPoint


def points(n: int, dim: int = 8) -> list[IndexPoint]:
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    return [IndexPoint(f"item{i}", vectors[i], "text", {"i": i}) for i in range(n)]


def test_one_directory_per_space_with_its_dimension_on_record(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index")
    assert not (tmp_path / "index").exists()  # the constructor does no I/O
    index.ensure_collection("mini", 384)
    index.ensure_collection("clip", 512)
    index.close()
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["clip", "mini"]
    manifest = json.loads((tmp_path / "index" / "mini" / "xmodal-space.json").read_text())
    assert manifest["dim"] == 384


def test_upsert_survives_a_process_crash_without_flush(tmp_path: Path) -> None:
    """upsert returned = in the WAL: a process that dies without close() loses nothing."""
    root = tmp_path / "index"
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        import numpy as np
        from xmodal.indexer.edge import EdgeIndex
        from xmodal.indexer.base import IndexPoint

        index = EdgeIndex(Path({str(root)!r}))
        index.ensure_collection("s", 8)
        eye = np.eye(8, dtype=np.float32)
        index.upsert("s", [IndexPoint(f"item{{i}}", eye[i % 8], "text") for i in range(20)])
        index.delete("s", ["item0"])
        os._exit(0)  # no flush, no close
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    index = EdgeIndex(root)
    assert index.count("s") == 19
    assert index.search("s", np.eye(8, dtype=np.float32)[3], k=1)[0].item_id == "item11"
    index.close()


def test_a_directory_is_open_in_one_index_at_a_time(tmp_path: Path) -> None:
    first = EdgeIndex(tmp_path / "index")
    first.ensure_collection("s", 8)
    second = EdgeIndex(tmp_path / "index")
    with pytest.raises(VectorIndexError, match="another process") as err:
        second.ensure_collection("s", 8)
    assert str(tmp_path / "index" / "s") in str(err.value)
    first.close()
    second.ensure_collection("s", 8)  # free once the first one closed
    second.close()


def test_a_shard_without_manifest_is_not_guessed_at(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index")
    index.ensure_collection("s", 8)
    index.close()
    (tmp_path / "index" / "s" / "xmodal-space.json").unlink()
    with pytest.raises(VectorIndexError, match=r"xmodal-space\.json"):
        EdgeIndex(tmp_path / "index").ensure_collection("s", 8)


def test_optimize_vacuums_deleted_points_and_keeps_results(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index")
    index.ensure_collection("s", 8)
    data = points(1200)
    index.upsert("s", data)
    assert index.optimize("s") is False  # one small clean segment: nothing to do
    index.delete("s", [p.item_id for p in data[:300]])  # 25 % deleted: above the vacuum threshold
    before = index.search("s", data[700].vector, k=5)
    assert index.optimize("s") is True
    assert index.optimize("s") is False
    assert index.count("s") == 900
    assert index.search("s", data[700].vector, k=5) == before
    index.close()
