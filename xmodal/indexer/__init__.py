"""Vector indexes: the VectorIndex protocol and its two backends, chosen from the settings.

- EdgeIndex: embedded qdrant-edge shards under `<data_dir>/index` (no XMODAL_QDRANT_URL).
- QdrantIndex: a Qdrant server through qdrant-client (XMODAL_QDRANT_URL set), or its local mode.

The backends load on first use: qdrant-client alone takes most of a second to import, which neither
`xmodal.indexer.base` users nor embedded mode should pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from xmodal.indexer.base import ITEM_NAMESPACE, Hit, IndexPoint, VectorIndex, point_id

if TYPE_CHECKING:
    from xmodal.config import Settings
    from xmodal.indexer.edge import EdgeIndex
    from xmodal.indexer.remote import QdrantIndex, RetryPolicy

__all__ = [
    "ITEM_NAMESPACE",
    "EdgeIndex",
    "Hit",
    "IndexPoint",
    "QdrantIndex",
    "RetryPolicy",
    "VectorIndex",
    "open_index",
    "point_id",
]

_LAZY = {
    "EdgeIndex": "xmodal.indexer.edge",
    "QdrantIndex": "xmodal.indexer.remote",
    "RetryPolicy": "xmodal.indexer.remote",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_index(settings: Settings) -> VectorIndex:
    """The index the settings ask for. Does no I/O: collections are made by `ensure_collection`."""
    from xmodal.indexer.settings import IndexSettings

    index_settings = IndexSettings.from_settings(settings)
    if settings.embedded_index:
        from xmodal.indexer.edge import EdgeIndex

        return EdgeIndex(settings.data_dir / "index", index_settings=index_settings)

    from qdrant_client import QdrantClient

    from xmodal.indexer.remote import QdrantIndex

    api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key is not None else None
    # check_compatibility would call the server from this constructor; ensure_collection reaches it anyway.
    client = QdrantClient(url=settings.qdrant_url, api_key=api_key, check_compatibility=False)
    return QdrantIndex(client, collection_prefix=settings.topic_prefix, index_settings=index_settings)
