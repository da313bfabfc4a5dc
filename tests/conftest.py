"""Shared fixtures. Integration tests start the real embedded broker (tansu) once per session and
give every test its own topic prefix, so tests never see each other's messages or groups."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xmodal.config import Settings, load_settings
from xmodal.streams.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real tansu broker, shared by the session."""
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as running:
        yield running.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(tmp_path: Path, topic_prefix: str) -> Any:
    """Settings for one test: its own topics, data dir, no metrics port, no freshness probes (a probe
    is an indexed item for a moment); overrides as XMODAL_* names."""

    def make(**env: str) -> Settings:
        base = {
            "XMODAL_TOPIC_PREFIX": topic_prefix,
            "XMODAL_DATA_DIR": str(tmp_path / "data"),
            "XMODAL_METRICS_PORT": "0",
            "XMODAL_TOPIC_PARTITIONS": "2",
            "XMODAL_BATCH_WINDOW_MS": "20",
            "XMODAL_FRESHNESS_INTERVAL_S": "0",
        }
        return load_settings({**base, **{f"XMODAL_{k.upper()}": v for k, v in env.items()}})

    return make
