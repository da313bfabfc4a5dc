"""Index settings applied the same way by both backends: HNSW graph, quantization, payload indexes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from xmodal.config import Settings

__all__ = ["IndexSettings"]

Quantization = Literal["none", "int8", "binary"]


@dataclass(frozen=True)
class IndexSettings:
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    search_ef: int = 128
    quantization: Quantization = "none"
    quantization_rescore: bool = True
    quantization_oversampling: float = 2.0
    payload_indexes: tuple[str, ...] = ()  # metadata keys indexed as keywords

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexSettings:
        return cls(
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construct=settings.hnsw_ef_construct,
            search_ef=settings.search_ef,
            quantization=settings.quantization,
            quantization_rescore=settings.quantization_rescore,
            quantization_oversampling=settings.quantization_oversampling,
            payload_indexes=settings.payload_indexes,
        )
