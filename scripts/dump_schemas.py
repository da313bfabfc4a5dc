"""JSON Schemas of the wire protocol messages, generated from the pydantic models in xmodal.schema.

    python scripts/dump_schemas.py                      # print them as Markdown
    python scripts/dump_schemas.py --write docs/protocol.md   # refresh the generated block in place
    python scripts/dump_schemas.py --check docs/protocol.md   # exit 1 if that block is stale

The block sits between the BEGIN/END markers below, so the prose around it stays hand-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from xmodal.schema import MediaEvent, SearchReply, SearchRequest

BEGIN = "<!-- BEGIN generated schemas (scripts/dump_schemas.py --write docs/protocol.md); do not edit by hand -->"
END = "<!-- END generated schemas -->"
MODELS: dict[str, type[BaseModel]] = {
    "MediaEvent": MediaEvent,
    "SearchRequest": SearchRequest,
    "SearchReply": SearchReply,
}


def render() -> str:
    parts = []
    for name, model in MODELS.items():
        schema = json.dumps(model.model_json_schema(), indent=2, sort_keys=False)
        # Collapsed: the field tables above them are what people read first.
        parts.append(f"<details><summary>{name} JSON Schema</summary>\n\n```json\n{schema}\n```\n\n</details>\n")
    return "\n".join(parts)


def replace_block(text: str, block: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"the markers are missing; put these two lines where the schemas go:\n{BEGIN}\n{END}")
    return text[: start + len(BEGIN)] + "\n\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="DOC", help="replace the generated block of DOC")
    group.add_argument("--check", type=Path, metavar="DOC", help="fail if the generated block of DOC is stale")
    args = parser.parse_args(argv)
    block = render()
    if args.write is not None:
        args.write.write_text(replace_block(args.write.read_text(), block))
        return 0
    if args.check is not None:
        text = args.check.read_text()
        if replace_block(text, block) != text:
            print(f"{args.check}: schemas are stale; run scripts/dump_schemas.py --write {args.check}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
