"""Search over Kafka: the query service, the Python client, and the plain search path they share.

- `Searcher`: SearchRequest -> fused hits, no Kafka (searcher.py).
- `QueryService`: consumes `<prefix>.search.requests`, answers on each request's `reply_to`.
- `SearchClient`: sends requests and matches replies by request_id; `hits_or_raise` for async use.
- `fuse`, `RRF_K`: reciprocal rank fusion of several spaces' ranked lists.

The wire protocol is docs/protocol.md.
"""

from xmodal.query_api.client import SearchClient, hits_or_raise
from xmodal.query_api.fusion import RRF_K, fuse
from xmodal.query_api.searcher import Searcher
from xmodal.query_api.service import QueryService

__all__ = ["RRF_K", "QueryService", "SearchClient", "Searcher", "fuse", "hits_or_raise"]
