"""What only the qdrant-client backend has: retries against an unreachable server, and open_index."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from xmodal.config import load_settings
from xmodal.errors import DimensionMismatch, VectorIndexError
from xmodal.indexer import EdgeIndex, IndexPoint, QdrantIndex, RetryPolicy, open_index
from xmodal.indexer.remote import is_transient


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_retried_with_backoff_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    client = QdrantClient(url=url, check_compatibility=False, timeout=2)
    index = QdrantIndex(client, "t", retry=RetryPolicy(attempts=3, base_delay_s=0.05))
    point = IndexPoint("x", np.ones(4, np.float32), "text")
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="xmodal.indexer.remote"),
        pytest.raises(VectorIndexError, match="after 3 attempts") as err,
    ):
        index.upsert("s", [point])
    assert time.monotonic() - started >= 0.05 + 0.10
    assert url in str(err.value) and "'t_s'" in str(err.value)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2
    index.close()


def test_permanent_errors_are_not_retried() -> None:
    slow = RetryPolicy(attempts=5, base_delay_s=10.0)
    index = QdrantIndex(QdrantClient(":memory:"), "t", retry=slow)
    index.ensure_collection("s", 4)
    started = time.monotonic()
    with pytest.raises(DimensionMismatch):
        index.ensure_collection("s", 8)
    with pytest.raises(VectorIndexError):
        index.search("missing", np.ones(4, np.float32), k=1)
    assert time.monotonic() - started < 5.0
    index.close()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ResponseHandlingException(httpx.ConnectError("refused")), True),
        (httpx.ReadTimeout("slow"), True),
        (UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers()), True),
        (UnexpectedResponse(429, "Too Many Requests", b"", httpx.Headers()), True),
        (UnexpectedResponse(400, "Bad Request", b"", httpx.Headers()), False),
        (UnexpectedResponse(404, "Not Found", b"", httpx.Headers()), False),
        (ValueError("Collection t_s not found"), False),
    ],
)
def test_which_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_open_index_without_url_is_edge_under_the_data_dir(tmp_path: Path) -> None:
    index = open_index(load_settings({"XMODAL_DATA_DIR": str(tmp_path / "data")}))
    assert isinstance(index, EdgeIndex)
    index.ensure_collection("mini", 8)
    index.close()
    assert (tmp_path / "data" / "index" / "mini" / "xmodal-space.json").exists()


def test_open_index_with_url_uses_the_topic_prefix_for_collections() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    settings = load_settings({"XMODAL_QDRANT_URL": url, "XMODAL_TOPIC_PREFIX": "shop"})
    index = open_index(settings)  # no server needed: the constructor does no I/O
    assert isinstance(index, QdrantIndex)
    assert index.collection("mini") == "shop_mini"
    index.close()
