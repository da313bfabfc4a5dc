"""Cross-encoders that score (query, candidate) pairs together, for the rerank stage of the query path.

`Reranker` is the protocol (base.py); `build_rerankers` maps each space to its reranker
(registry.py); `BlipReranker` (blip.py) is the clip space's, imported on first use.
"""

from xmodal.encoders.rerank.base import Reranker
from xmodal.encoders.rerank.registry import build_rerankers

__all__ = ["Reranker", "build_rerankers"]
