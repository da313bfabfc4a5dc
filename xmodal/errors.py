"""The exception tree of xmodal. Every error the project raises derives from `XmodalError`.

    XmodalError                    code: a stable, machine-readable string (wire protocol, DLQ headers)
    ├── ConfigError                bad XMODAL_* setting, unknown space, missing weights  -> fail at start-up
    │   └── ModelLoadError         weights not found / not loadable (names the path or id tried)
    ├── SchemaError                message violates the wire protocol (field + reason)   -> DLQ / error reply
    ├── MediaError                 media cannot be fetched or decoded safely             -> DLQ / error reply
    ├── EncodeError                a tower failed on an input, or the space has no tower -> DLQ / error reply
    ├── VectorIndexError           the vector index refused an operation                 -> retried, then crash
    │   └── DimensionMismatch      collection dimension differs from the encoder        -> fail at start-up
    ├── BrokerError                embedded broker could not start / Kafka unreachable   -> fail at start-up
    └── SearchError                a search reply said ok=false, or none came in time    -> raised to the caller
        └── SearchTimeout

The error policy (which errors dead-letter, which crash, which retry) is written down once, in
docs/errors.md; per-event errors carry a `code` so a producer can act on them without parsing text.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "DimensionMismatch",
    "EncodeError",
    "VectorIndexError",
    "MediaError",
    "ModelLoadError",
    "SchemaError",
    "SearchError",
    "SearchTimeout",
    "XmodalError",
]


class XmodalError(Exception):
    """Root of every xmodal error. `code` is stable and part of the wire protocol."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(XmodalError):
    code = "config_error"


class ModelLoadError(ConfigError):
    code = "model_load_error"


class SchemaError(XmodalError):
    """A message that violates the wire protocol. `field` is the dotted path of the culprit."""

    code = "invalid_message"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class MediaError(XmodalError):
    code = "media_error"


class EncodeError(XmodalError):
    code = "encode_error"


class VectorIndexError(XmodalError):
    code = "index_error"


class DimensionMismatch(VectorIndexError):
    code = "dimension_mismatch"


class BrokerError(XmodalError):
    code = "broker_error"


class SearchError(XmodalError):
    code = "search_error"


class SearchTimeout(SearchError):
    code = "timeout"
