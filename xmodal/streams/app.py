"""The Faust app: the media topic, the DLQ topic and the ingest agent.

The agent is deliberately thin: take a micro-batch, hand it to `IngestPipeline.process` in an
executor thread (encoding is CPU/GPU-bound; a blocked loop would stop heartbeats), send dead
letters, then ack. Acks are manual (`noack_take`) and happen only after the index acknowledged
the writes and the DLQ acknowledged the dead letters, so a crash mid-batch replays the batch
instead of losing it; deterministic point ids make the replay harmless.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from xmodal.config import Settings
from xmodal.errors import ConfigError
from xmodal.streams.pipeline import IngestPipeline, SourceRecord

__all__ = ["create_app", "faust_credentials", "to_source_record"]

log = logging.getLogger(__name__)


def faust_credentials(settings: Settings) -> dict[str, Any]:
    """Map the librdkafka SASL/TLS pass-through (XMODAL_KAFKA_*) onto Faust's (aiokafka) settings,
    so the ingest agents and the confluent-kafka clients authenticate the same way."""
    extra = settings.kafka_extra
    protocol = extra.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return {}
    if protocol not in ("SSL", "SASL_SSL", "SASL_PLAINTEXT"):
        raise ConfigError(f"XMODAL_KAFKA_SECURITY_PROTOCOL={protocol} is not one of PLAINTEXT, SSL, SASL_SSL, SASL_PLAINTEXT")
    ssl_context = None
    if "SSL" in protocol:
        ssl_context = ssl.create_default_context(cafile=extra.get("ssl.ca.location"))
        if "ssl.certificate.location" in extra:
            ssl_context.load_cert_chain(
                extra["ssl.certificate.location"], extra.get("ssl.key.location"), extra.get("ssl.key.password")
            )
    if not protocol.startswith("SASL"):
        return {"broker_credentials": faust.SSLCredentials(ssl_context)}
    # librdkafka's name is sasl.mechanisms (plural); sasl.mechanism is its alias.
    mechanism = (extra.get("sasl.mechanisms") or extra.get("sasl.mechanism") or "PLAIN").upper()
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ConfigError(
            f"XMODAL_KAFKA_SASL_MECHANISMS={mechanism}: the ingest agents support PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512"
        )
    credentials = faust.SASLCredentials(
        username=extra.get("sasl.username"),
        password=extra.get("sasl.password"),
        mechanism=mechanism,
        ssl_context=ssl_context,
    )
    return {"broker_credentials": credentials}


def to_source_record(event: faust.types.EventT) -> SourceRecord:
    message = event.message
    headers = message.headers or ()
    if isinstance(headers, dict):
        headers = tuple(headers.items())
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        headers=tuple((str(k), bytes(v) if v is not None else b"") for k, v in headers),
    )


def create_app(
    settings: Settings, bootstrap: str, pipeline: IngestPipeline, executor: ThreadPoolExecutor
) -> faust.App:
    """A Faust app with the ingest agent bound to `pipeline` (already started by the caller).

    `executor` runs `pipeline.process`; give it one worker: the towers use every core themselves
    and two batches at once would thrash.
    """
    app = faust.App(
        f"{settings.topic_prefix}-ingest",
        broker=f"kafka://{bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        web_enabled=False,
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(settings.session_timeout_ms / 3000, 0.5),
        consumer_auto_offset_reset="earliest",
        broker_commit_every=settings.batch_size,
        broker_commit_interval=1.0,
        **faust_credentials(settings),
    )
    media = app.topic(settings.media_topic, key_type=bytes, value_type=bytes)
    dlq = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes)
    window_s = settings.batch_window_ms / 1000

    async def dead_letter(result_dead: Sequence[Any]) -> None:
        pending = [
            await dlq.send(key=d.record.key, value=d.record.value, headers=d.headers()) for d in result_dead
        ]
        await asyncio.gather(*pending)  # delivered before the source events are acked

    @app.agent(media, name="ingest")
    async def ingest(stream: faust.StreamT[Any]) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.noack_take(settings.batch_size, within=window_s):
            records = [to_source_record(e) for e in events]
            try:
                result = await loop.run_in_executor(executor, pipeline.process, records)
                if result.dead:
                    await dead_letter(result.dead)
                    for d in result.dead:
                        log.warning(
                            "dead-lettered %s[%d]@%d: %s: %s",
                            d.record.topic, d.record.partition, d.record.offset, d.code, d.message,
                        )
            except Exception as e:
                # Index or DLQ unavailable after retries: stop without acking; a restart replays.
                log.exception("ingest batch failed; stopping the worker so the batch is replayed")
                await app.crash(e)
                return
            for event in events:
                await stream.ack(event)

    return app
