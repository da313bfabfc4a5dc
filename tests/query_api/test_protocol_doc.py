"""docs/protocol.md carries the JSON Schemas of the wire protocol: they must match the models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_doc_schemas_are_current() -> None:
    spec = importlib.util.spec_from_file_location("dump_schemas", ROOT / "scripts" / "dump_schemas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = ROOT / "docs" / "protocol.md"
    assert module.main(["--check", str(doc)]) == 0, "run: python scripts/dump_schemas.py --write docs/protocol.md"
