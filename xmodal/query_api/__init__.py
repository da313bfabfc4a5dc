"""Search over Kafka: the query service, the Python client, and the plain search path they share.

- `Searcher`: SearchRequest -> fused hits, no Kafka (searcher.py).
- `QueryService`: consumes `<prefix>.search.requests`, answers on each request's `reply_to`.
- `SearchClient`: sends requests and matches replies by request_id; `hits_or_raise` for async use.
- `fuse`: one ranking across result modalities and spaces by calibrated scores (fusion.py).

The wire protocol is docs/protocol.md.

Every name loads its module on first use: a program that only searches (`SearchClient`) should not
pay for the searcher's media decoding (PIL, soundfile, httpx), nor the service for the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xmodal.query_api.client import SearchClient, hits_or_raise
    from xmodal.query_api.fusion import fuse
    from xmodal.query_api.searcher import Searcher
    from xmodal.query_api.service import QueryService

__all__ = ["QueryService", "SearchClient", "Searcher", "fuse", "hits_or_raise"]

_LAZY = {
    "SearchClient": "xmodal.query_api.client",
    "hits_or_raise": "xmodal.query_api.client",
    "fuse": "xmodal.query_api.fusion",
    "Searcher": "xmodal.query_api.searcher",
    "QueryService": "xmodal.query_api.service",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
