"""`xmodal ingest`: files -> MediaEvents -> the media topic, with delivery acknowledgements.

`.txt` is one text item per file; `.jsonl` (or `-` for stdin) is one MediaEvent per line; image
and audio files become events carrying their bytes as base64. Directories are walked. Lines and
files that are not valid events are reported with their location and not sent.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from xmodal.config import Settings
from xmodal.errors import BrokerError, XmodalError
from xmodal.schema import MediaEvent, parse_media_event
from xmodal.streams.kafka import producer_config

__all__ = ["IMAGE_SUFFIXES", "AUDIO_SUFFIXES", "DeliveryReport", "events_from_paths", "produce_events"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3"})
TEXT_SUFFIXES = frozenset({".txt"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})


@dataclass
class DeliveryReport:
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    rejected: list[str] = field(default_factory=list)  # "where: why" for inputs not sent


def _event_value(event: MediaEvent) -> bytes:
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


def _file_event(path: Path, max_bytes: int) -> MediaEvent:
    suffix = path.suffix.lower()
    size = path.stat().st_size
    if size > max_bytes:
        raise XmodalError(f"{size} bytes is over XMODAL_MAX_MEDIA_BYTES={max_bytes}", code="media_too_large")
    item_id = path.as_posix()
    if suffix in TEXT_SUFFIXES:
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise XmodalError("empty text file", code="media_empty")
        return MediaEvent(id=item_id, modality="text", text=text)
    modality = "image" if suffix in IMAGE_SUFFIXES else "audio"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return MediaEvent(id=item_id, modality=modality, data=data, metadata={"filename": path.name})


def _jsonl_events(lines: Iterable[bytes], where: str, report: DeliveryReport) -> Iterator[tuple[str, bytes]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = parse_media_event(None, line)
        except XmodalError as e:
            report.rejected.append(f"{where}:{number}: {e.code}: {e.message}")
            continue
        yield event.id, line.strip()


def events_from_paths(
    paths: Iterable[str], report: DeliveryReport, max_bytes: int
) -> Iterator[tuple[str, bytes]]:
    """(key, value) pairs for every event found under `paths`; problems go to `report.rejected`."""
    media_suffixes = IMAGE_SUFFIXES | AUDIO_SUFFIXES | TEXT_SUFFIXES
    for given in paths:
        if given == "-":
            yield from _jsonl_events(sys.stdin.buffer, "<stdin>", report)
            continue
        root = Path(given)
        if not root.exists():
            report.rejected.append(f"{given}: no such file or directory")
            continue
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            suffix = path.suffix.lower()
            if suffix in JSONL_SUFFIXES:
                with path.open("rb") as handle:
                    yield from _jsonl_events(handle, str(path), report)
            elif suffix in media_suffixes:
                try:
                    event = _file_event(path, max_bytes)
                except (XmodalError, OSError, UnicodeDecodeError) as e:
                    report.rejected.append(f"{path}: {getattr(e, 'message', e)}")
                    continue
                yield event.id, _event_value(event)
            elif not root.is_dir():  # a file named explicitly: say why it is not sent
                report.rejected.append(
                    f"{path}: unknown kind of file; expected .txt, .jsonl, an image "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))}) or audio ({', '.join(sorted(AUDIO_SUFFIXES))})"
                )


def _produce_one(
    producer: Producer, topic: str, key: str, value: bytes, delivered: Callable[..., None], report: DeliveryReport
) -> bool:
    """Queue one event; False (and a reason in the report) when Kafka can never take it."""
    while True:
        try:
            producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered)
            return True
        except BufferError:  # local queue full: let deliveries drain, then retry
            producer.poll(0.5)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            report.rejected.append(
                f"{key}: the event is {len(value)} bytes, over the Kafka message size limit "
                "(message.max.bytes, 1 MB by default): publish large media as a file:// or http(s):// uri"
            )
            return False


def produce_events(
    settings: Settings,
    bootstrap: str,
    events: Iterable[tuple[str, bytes]],
    report: DeliveryReport,
    on_sent: Callable[[], Any] = lambda: None,
) -> DeliveryReport:
    """Produce keyed events to the media topic and wait until every one is acknowledged or failed."""
    producer = Producer(producer_config(settings, bootstrap, **{"compression.type": "lz4"}))

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            report.acknowledged += 1
        else:
            report.failed += 1
            report.rejected.append(f"delivery failed: {err.str()}")

    try:
        for key, value in events:
            if _produce_one(producer, settings.media_topic, key, value, delivered, report):
                report.sent += 1
                on_sent()
            producer.poll(0)
    except KafkaException as e:
        raise BrokerError(f"producing to {settings.media_topic} failed: {e}") from e
    finally:
        # Whatever happened, what was queued is delivered (or counted as failed) before returning.
        remaining = producer.flush(60)
    if remaining:
        report.failed += remaining
        report.rejected.append(f"{remaining} events not acknowledged within 60 s")
    return report
