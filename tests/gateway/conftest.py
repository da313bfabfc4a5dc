"""The gateway tests' system: see gateway_support.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_support import UPLOAD_LIMIT, System, gallery_events

from xmodal.config import load_settings
from xmodal.gateway.server import GatewayServer
from xmodal.runtime import Node, Roles
from xmodal.streams.producer import DeliveryReport, produce_events


@pytest.fixture(scope="package")
def system(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data: Path = tmp_path_factory.mktemp("gateway")
    settings = load_settings(
        {
            "XMODAL_KAFKA_BOOTSTRAP": broker,
            "XMODAL_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}",
            "XMODAL_DATA_DIR": str(data),
            "XMODAL_METRICS_PORT": "0",
            "XMODAL_TOPIC_PARTITIONS": "2",
            "XMODAL_BATCH_WINDOW_MS": "20",
            "XMODAL_HTTP_PORT": "0",
            "XMODAL_HTTP_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        }
    )
    with Node(settings, Roles(ingest=True, query=True)) as node:
        events = gallery_events()
        report = produce_events(settings, node.bootstrap, events, DeliveryReport())
        assert report.acknowledged == len(events), report
        assert node.index is not None
        deadline = time.monotonic() + 90
        while node.index.count("mini") < len(events):
            assert time.monotonic() < deadline, f"indexed {node.index.count('mini')} of {len(events)}"
            time.sleep(0.2)
        server = GatewayServer(settings, node.bootstrap).start()
        try:
            yield System(settings, node, server)
        finally:
            server.stop()
