"""Cross-encoders that score (query, candidate) pairs together, for the rerank stage of the query path."""

from xmodal.encoders.rerank.base import Reranker

__all__ = ["Reranker"]
