"""Index settings applied the same way by both backends: HNSW graph, quantization, payload indexes.

Two kinds of setting, because they take effect differently on an existing collection:

- build settings (`hnsw_m`, `hnsw_ef_construct`, `quantization`, the thresholds) shape the stored
  index. A collection keeps the ones it was built with until its segments are rebuilt: on the
  embedded index the next `optimize()` rebuilds every segment whose settings differ (from the stored
  vectors, no re-embedding); a Qdrant server rebuilds in the background after `update_collection`.
- search settings (`search_ef`, `quantization_rescore`, `quantization_oversampling`) are sent with
  every query and apply at once.

Payload indexes are added to an existing collection when it is opened (never dropped: an index
nobody filters on costs memory, not answers).

Thresholds are in kilobytes of vectors per segment, as Qdrant counts them: a segment smaller than
`indexing_threshold_kb` gets no HNSW graph, and a (filtered) search expected to touch fewer than
`full_scan_threshold_kb` of vectors scans instead of walking the graph. Qdrant's defaults suit real
galleries; tests lower them to build a graph over a few thousand vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, get_args

from xmodal.errors import ConfigError

if TYPE_CHECKING:
    from xmodal.config import Settings

__all__ = ["BUILD_FIELDS", "SEARCH_FIELDS", "IndexSettings", "Quantization", "describe_changes"]

Quantization = Literal["none", "int8", "binary"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)

# The fields a collection is built with (the rest go with each query).
BUILD_FIELDS = ("hnsw_m", "hnsw_ef_construct", "quantization", "full_scan_threshold_kb", "indexing_threshold_kb")
SEARCH_FIELDS = ("search_ef", "quantization_rescore", "quantization_oversampling")


@dataclass(frozen=True)
class IndexSettings:
    """Defaults as in xmodal.config.Settings, chosen by benchmarks/scale.py (docs/scale.md)."""

    hnsw_m: int = 16
    hnsw_ef_construct: int = 128
    search_ef: int = 256
    quantization: Quantization = "int8"
    quantization_rescore: bool = True
    quantization_oversampling: float = 2.0
    payload_indexes: tuple[str, ...] = ()  # metadata keys indexed as keywords
    full_scan_threshold_kb: int = 10_000  # Qdrant's default
    indexing_threshold_kb: int = 20_000  # Qdrant's default

    def __post_init__(self) -> None:
        _check_int("hnsw_m", self.hnsw_m, 2, 128)
        _check_int("hnsw_ef_construct", self.hnsw_ef_construct, 4, 4096)
        _check_int("search_ef", self.search_ef, 1, 4096)
        _check_int("full_scan_threshold_kb", self.full_scan_threshold_kb, 1, 2**31 - 1)
        _check_int("indexing_threshold_kb", self.indexing_threshold_kb, 1, 2**31 - 1)
        if self.hnsw_ef_construct < self.hnsw_m:
            # The build keeps ef_construct candidates to choose a node's m neighbours from.
            raise ConfigError(
                f"hnsw_ef_construct ({self.hnsw_ef_construct}) must be at least hnsw_m ({self.hnsw_m}): "
                f"the build picks each node's {self.hnsw_m} neighbours from its ef_construct candidates"
            )
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if not isinstance(self.quantization_rescore, bool):
            raise ConfigError(f"quantization_rescore must be true or false, got {self.quantization_rescore!r}")
        oversampling = self.quantization_oversampling
        if isinstance(oversampling, bool) or not isinstance(oversampling, int | float) or not 1.0 <= oversampling <= 16.0:
            raise ConfigError(f"quantization_oversampling must be a number from 1 to 16, got {oversampling!r}")
        keys = self.payload_indexes
        if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"payload_indexes must be a list of metadata keys, got {keys!r}")
        for key in keys:
            if not key or '"' in key:
                raise ConfigError(f"payload index key {key!r} is not usable: a non-empty metadata key without '\"'")
        if len(set(keys)) != len(keys):
            raise ConfigError(f"payload_indexes names a key twice: {', '.join(keys)}")
        object.__setattr__(self, "payload_indexes", tuple(keys))

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

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"

    def build(self) -> dict[str, Any]:
        """The build settings, as recorded beside a collection."""
        return {name: getattr(self, name) for name in BUILD_FIELDS}

    def search(self) -> dict[str, Any]:
        """The search settings, sent with every query."""
        return {name: getattr(self, name) for name in SEARCH_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["payload_indexes"] = list(self.payload_indexes)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> IndexSettings:
        """Inverse of `to_dict`/`build`; unknown keys (a newer xmodal's) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        if "payload_indexes" in values:
            values["payload_indexes"] = tuple(values["payload_indexes"])
        return cls(**values)

    def build_changes(self, built: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{field: (built with, wanted now)} for the build settings that differ from `built`."""
        return {
            name: (built.get(name), getattr(self, name))
            for name in BUILD_FIELDS
            if name in built and built[name] != getattr(self, name)
        }


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items())
