"""One frozen settings object, built once at start-up from `XMODAL_*` variables and passed down.

Nothing else in the project reads the environment. A typo in a variable name or an invalid value
fails at start-up with a message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from xmodal.errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "load_settings"]

ENV_PREFIX = "XMODAL_"
KAFKA_PASSTHROUGH_PREFIX = "XMODAL_KAFKA_"


def _split(value: Any, sep: str) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(sep) if part.strip())
    return value


class Settings(BaseSettings):
    """Every knob of xmodal. Field `foo_bar` is set by `XMODAL_FOO_BAR`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # Kafka
    kafka_bootstrap: str = Field("", description="Kafka bootstrap servers; empty: embedded tansu broker")
    topic_prefix: str = Field("xmodal", pattern=r"^[A-Za-z0-9._-]{1,200}$", description="prefix of every topic")
    topic_partitions: int = Field(4, ge=1, le=1024, description="partitions of topics xmodal creates")
    session_timeout_ms: int = Field(6000, ge=1000, le=300_000, description="consumer session.timeout.ms")
    kafka_extra: Mapping[str, str] = Field(
        default_factory=dict,
        repr=False,  # holds sasl.password / ssl.key.password: never in logs
        description="librdkafka settings passed through from XMODAL_KAFKA_<NAME> (SASL, TLS, ...)",
    )

    # Qdrant
    qdrant_url: str = Field("", description="Qdrant server URL; empty: embedded qdrant-edge under the data dir")
    qdrant_api_key: SecretStr | None = Field(None, description="Qdrant API key (server mode)")
    data_dir: Path = Field(Path(".xmodal"), description="embedded index, broker logs and address file")

    # Spaces and models
    spaces: Annotated[tuple[str, ...], NoDecode] = Field(("mini",), description="comma-separated spaces")
    clip_model: str = Field("ViT-B-32", description="open_clip architecture")
    clip_pretrained: str = Field(
        "laion2b_s34b_b79k", description="open_clip weights: tag, hf-hub:..., local-dir:... or a file path"
    )
    clap_model: str = Field("laion/clap-htsat-unfused", description="CLAP hub id or local directory")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device for the towers")
    torch_threads: int = Field(0, ge=0, le=256, description="torch intra-op threads; 0: number of cores")
    text_runtime: Literal["torch", "onnx"] = Field(
        "torch",
        description="CPU runtime of the mini space's MiniLM text tower: torch, or onnx (ONNX Runtime on a file "
        "exported once from the local weights into <data dir>/models; pip install 'xmodal[onnx]'); "
        "docs/performance.md",
    )

    # Media
    media_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        (), description="':'-separated directories that file:// URIs may point into"
    )
    allow_http: bool = Field(False, description="allow http(s):// media URIs (SSRF-guarded)")
    max_media_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest media payload accepted")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="largest image (width*height) decoded")
    max_audio_seconds: float = Field(600.0, gt=0, description="longest audio decoded (read from the header)")
    http_timeout_s: float = Field(10.0, gt=0, le=300, description="total time to fetch one http(s) URI")

    # Ingest
    batch_size: int = Field(64, ge=1, le=4096, description="ingest micro-batch size")
    batch_window_ms: int = Field(50, ge=1, le=60_000, description="longest wait to fill a micro-batch")
    ingest_fetch_wait_ms: int = Field(
        50,
        ge=1,
        le=30_000,
        description="longest wait of the ingest consumer's fetch on an empty topic (tansu answers only when it "
        "ends): bounds how late an idle agent sees a new event; lower costs idle broker CPU",
    )
    ingest_encode_slice: int = Field(
        32,
        ge=1,
        le=4096,
        description="items of an ingest batch a shared tower encodes per turn: a search waits at most one slice (docs/performance.md)",
    )
    fetch_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        le=1024 * 1024 * 1024,
        description="bytes the ingest consumer prefetches per assigned partition (a larger record still comes whole)",
    )
    batch_max_decoded_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="decoded media (pixels, samples) held at once per micro-batch; a batch past it is encoded in parts",
    )
    dlq_max_record_bytes: int = Field(
        1_000_000,
        ge=16 * 1024,
        description="largest dead-letter record (key + value + headers); a larger one is stored truncated",
    )

    # Index (both backends): HNSW graph, quantization, payload indexes. docs/scale.md
    hnsw_m: int = Field(16, ge=2, le=128, description="HNSW edges per node (more: better recall, more memory)")
    hnsw_ef_construct: int = Field(128, ge=4, le=4096, description="HNSW build-time candidate list")
    search_ef: int = Field(256, ge=1, le=4096, description="HNSW search-time candidate list (hnsw_ef)")
    quantization: Literal["none", "int8", "binary"] = Field(
        "int8", description="vector quantization: int8 (scalar) builds ~2.5x faster at equal recall (docs/scale.md)"
    )
    quantization_rescore: bool = Field(True, description="rescore quantized candidates with full vectors")
    quantization_oversampling: float = Field(
        2.0, ge=1.0, le=16.0, description="candidates fetched per result before rescoring (quantized search)"
    )
    payload_indexes: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated metadata keys to index as keywords for filtered search"
    )
    optimize_after_points: int = Field(
        20_000, ge=0, description="xmodal up builds HNSW in the background once a space has this many unindexed points; 0: never"
    )
    reindex_switch_lag: int = Field(
        256,
        ge=0,
        le=1_000_000,
        description="a reindex stops chasing a growing log and switches once at most this many events are left "
        "(the live workers' handoff replays them); 0: only when the log stands still (docs/operations.md)",
    )

    # Query service
    query_concurrency: int = Field(
        16, ge=1, le=256, description="search requests served at once (their query encodes share tower batches)"
    )
    search_timeout_s: float = Field(10.0, gt=0, description="SearchClient default timeout")

    # Reranking (docs/quality.md)
    rerank: bool = Field(False, description="rerank by default (a request's `rerank` field overrides)")
    rerank_k: int = Field(50, ge=1, le=1000, description="first-stage candidates per list the cross-encoder scores")
    blip_model: str = Field("", description="BLIP image-text matching model (local dir or hub id) for the clip space")

    # Live quality monitoring (docs/quality.md)
    recall_sample_rate: float = Field(
        1.0, ge=0, le=100, description="live queries per second also answered exactly to measure index recall; 0: off"
    )
    canary_queries: Path | None = Field(None, description="golden queries (xmodal eval format) run on a timer")
    canary_qrels: Path | None = Field(None, description="relevance judgements of the canary queries")
    canary_interval_s: float = Field(60.0, gt=0, description="seconds between canary runs")
    freshness_interval_s: float = Field(
        30.0, ge=0, description="seconds between freshness probes (produce an item, time until found); 0: off"
    )
    quality_alert_recall: float = Field(
        0.9, ge=0, le=1, description="index recall@k below this is logged as a warning"
    )

    # HTTP gateway and web page (xmodal serve; hosted by xmodal up)
    http_host: str = Field("127.0.0.1", min_length=1, description="address the HTTP gateway listens on")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP gateway port (0: a free port for serve, off for up)")
    http_max_upload_bytes: int = Field(
        700_000,
        ge=1024,
        le=64 * 1024 * 1024,
        description="largest file POST /search/upload takes (also capped by XMODAL_MAX_MEDIA_BYTES); "
        "it travels base64 in one Kafka message, 1 MB by default",
    )
    thumbnail_size: int = Field(
        128, ge=0, le=1024, description="longest side of the thumbnail stored with each image/audio item; 0: none"
    )
    audio_preview_seconds: float = Field(
        2.0, ge=0, le=10, description="seconds of 16 kHz 8-bit audio stored with each sound as its preview; 0: none"
    )

    # Observability
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port; 0: off")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("spaces", mode="before")
    @classmethod
    def _split_spaces(cls, value: Any) -> Any:
        return _split(value, ",")

    @field_validator("payload_indexes", mode="before")
    @classmethod
    def _split_payload_indexes(cls, value: Any) -> Any:
        return _split(value, ",")

    @field_validator("media_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        return _split(value, ":")

    @field_validator("spaces")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one space is required, e.g. 'mini'")
        return value

    # Derived names: computed, never configured separately, so they cannot disagree.
    @property
    def media_topic(self) -> str:
        return f"{self.topic_prefix}.media"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.media.dlq"

    @property
    def requests_topic(self) -> str:
        return f"{self.topic_prefix}.search.requests"

    @property
    def replies_topic(self) -> str:
        return f"{self.topic_prefix}.search.replies"

    @property
    def embedded_broker(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def embedded_index(self) -> bool:
        return not self.qdrant_url


_FIELD_ENV = {f"{ENV_PREFIX}{name.upper()}": name for name in Settings.model_fields if name != "kafka_extra"}


def _kafka_passthrough(environ: Mapping[str, str]) -> dict[str, str]:
    """XMODAL_KAFKA_SASL_USERNAME=u -> {"sasl.username": "u"} (librdkafka property names)."""
    extra = {}
    for key, value in environ.items():
        if key.startswith(KAFKA_PASSTHROUGH_PREFIX) and key not in _FIELD_ENV and key != "XMODAL_KAFKA_EXTRA":
            extra[key[len(KAFKA_PASSTHROUGH_PREFIX) :].lower().replace("_", ".")] = value
    return extra


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from `environ` (default: the process environment) plus explicit overrides.

    Raises ConfigError naming the variable for unknown `XMODAL_*` names and invalid values.
    """
    env = dict(os.environ if environ is None else environ)
    unknown = sorted(
        key
        for key in env
        if key.startswith(ENV_PREFIX)
        and key not in _FIELD_ENV
        and (not key.startswith(KAFKA_PASSTHROUGH_PREFIX) or key == "XMODAL_KAFKA_EXTRA")
    )
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(unknown)}; valid variables: {', '.join(sorted(_FIELD_ENV))}, "
            f"and {KAFKA_PASSTHROUGH_PREFIX}<librdkafka property>"
        )
    values: dict[str, Any] = {name: env[var] for var, name in _FIELD_ENV.items() if var in env}
    values["kafka_extra"] = _kafka_passthrough(env)
    values.update(overrides)
    try:
        # init kwargs only: the environment was read above, exactly once.
        return Settings(_env_prefix="XMODAL_UNUSED_", **values)  # type: ignore[call-arg]
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            var = f"{ENV_PREFIX}{field.upper()}"
            shown = values.get(field, "<missing>")
            problems.append(f"{var}={shown!s}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from e
