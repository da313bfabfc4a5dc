"""The ingest pipeline as plain functions: records in, index writes and dead letters out.

No Kafka here: the Faust agent hands a micro-batch of `SourceRecord`s to `IngestPipeline.process`
(in an executor thread) and acts on the `BatchResult`. Error policy (docs/errors.md):

- a record that cannot be parsed, whose media cannot be fetched/decoded, whose modality no
  configured space supports, or that a tower fails on -> a `DeadLetter` with its code; the rest
  of the batch goes on;
- an index write that fails -> raised (after the index's own retries); the agent does not ack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from xmodal.encoders.base import Encoder, Modality, Vectors
from xmodal.encoders.media import MediaLimits, load_media
from xmodal.errors import EncodeError, MediaError, SchemaError, XmodalError
from xmodal.indexer.base import IndexPoint, VectorIndex
from xmodal.metrics import DEAD_LETTERS, EVENTS, INDEX_LAG, timed
from xmodal.schema import MediaEvent, parse_media_event

__all__ = ["BatchResult", "DeadLetter", "IngestPipeline", "SourceRecord", "encode_items"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ERROR_HEADER_PREFIX = "xmodal.error."


@dataclass(frozen=True)
class SourceRecord:
    """One Kafka record as it arrived (the bytes are kept: a dead letter carries them unchanged)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class DeadLetter:
    record: SourceRecord
    code: str
    message: str
    stage: str  # decode | encode

    def headers(self) -> list[tuple[str, bytes]]:
        """Original headers plus the reason and the source coordinates, for the DLQ record."""
        reason = {
            "code": self.code,
            "message": self.message[:2000],
            "stage": self.stage,
            "topic": self.record.topic,
            "partition": str(self.record.partition),
            "offset": str(self.record.offset),
        }
        return [*self.record.headers, *((ERROR_HEADER_PREFIX + k, v.encode()) for k, v in reason.items())]


@dataclass
class BatchResult:
    indexed: int = 0
    deleted: int = 0
    dead: list[DeadLetter] = field(default_factory=list)


@dataclass
class _Item:
    position: int  # in the batch's valid events: identifies this event (an item id may repeat)
    record: SourceRecord
    event: MediaEvent
    content: Any = None  # str | PIL image | Waveform, once decoded


def encode_items(
    encode: Callable[[Sequence[T]], Vectors], items: Sequence[T]
) -> tuple[dict[int, np.ndarray], dict[int, XmodalError]]:
    """Encode `items` in one call; if that fails, one by one so a bad item cannot sink the batch.

    Returns vectors and errors keyed by position in `items`.
    """
    try:
        vectors = encode(items)
        if vectors.shape[0] != len(items):
            raise EncodeError(f"encoder returned {vectors.shape[0]} vectors for {len(items)} inputs")
        return _checked(vectors)
    except Exception as batch_error:  # noqa: BLE001 - any tower failure falls back to isolation
        if len(items) == 1:
            return {}, {0: _as_encode_error(batch_error)}
        log.info("batch encode failed (%s); isolating the bad items", batch_error)
    good: dict[int, np.ndarray] = {}
    bad: dict[int, XmodalError] = {}
    for i, item in enumerate(items):
        try:
            row = encode([item])[0]
        except Exception as e:  # noqa: BLE001 - recorded per item and dead-lettered
            bad[i] = _as_encode_error(e)
            continue
        ok, failed = _checked(row[None, :])
        if ok:
            good[i] = row
        else:
            bad[i] = failed[0]
    return good, bad


def _checked(vectors: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, XmodalError]]:
    """Rows that cosine can use; a zero or non-finite row (a silent tower failure) is an item error,
    so the index never sees it (it would refuse the whole batch)."""
    finite = np.isfinite(vectors).all(axis=1)
    usable = finite & (np.linalg.norm(np.where(finite[:, None], vectors, 0), axis=1) > 1e-6)
    good = {i: row for i, row in enumerate(vectors) if usable[i]}
    bad: dict[int, XmodalError] = {
        i: EncodeError("the tower returned a zero or non-finite vector for this input", code="encode_error")
        for i in np.flatnonzero(~usable).tolist()
    }
    return good, bad


def _as_encode_error(e: BaseException) -> XmodalError:
    if isinstance(e, XmodalError):
        return e
    return EncodeError(f"{type(e).__name__}: {e}")


class IngestPipeline:
    """Parse -> decode media -> encode per space and modality -> upsert (wait) / delete."""

    def __init__(self, spaces: Mapping[str, Encoder], index: VectorIndex, limits: MediaLimits) -> None:
        self._spaces = dict(spaces)
        self._index = index
        self._limits = limits

    def start(self) -> None:
        """Start-up hook: load every tower and check each collection's dimension."""
        for name, encoder in self._spaces.items():
            encoder.load()
            self._index.ensure_collection(name, encoder.dim)

    @property
    def supported(self) -> frozenset[Modality]:
        return frozenset().union(*(e.modalities for e in self._spaces.values()))

    def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        result = BatchResult()
        items = self._decode(records, result)
        candidates = self._candidates(items)
        vectors, failed = self._encode([it for it in candidates if it.event.op == "upsert"], result)
        upserts, deletes = self._outcome(candidates, failed)
        points = {
            space: [self._point(item, by_item[item.position]) for item in upserts if item.position in by_item]
            for space, by_item in vectors.items()
        }
        with timed("upsert"):
            for space, space_points in points.items():
                if space_points:
                    self._index.upsert(space, space_points)
                # An item that changed modality must not keep its old point in a space that
                # cannot encode the new one.
                stale = [it.event.id for it in upserts if it.position not in vectors[space]]
                if deletes or stale:
                    self._index.delete(space, deletes + stale)
        now_ms = time.time() * 1000
        for item in upserts:
            if item.record.timestamp_ms:
                INDEX_LAG.observe(max(now_ms - item.record.timestamp_ms, 0) / 1000)
        result.indexed, result.deleted = len(upserts), len(deletes)
        EVENTS.labels("indexed").inc(result.indexed)
        EVENTS.labels("deleted").inc(result.deleted)
        EVENTS.labels("dead_lettered").inc(len(result.dead))
        for dead in result.dead:
            DEAD_LETTERS.labels(dead.code).inc()
        return result

    def _decode(self, records: Sequence[SourceRecord], result: BatchResult) -> list[_Item]:
        items = []
        with timed("decode"):
            for record in records:
                try:
                    event = parse_media_event(record.key, record.value)
                    item = _Item(len(items), record, event)
                    if event.op == "upsert":
                        self._check_supported(event)
                        if event.modality == "text":
                            item.content = event.text
                        else:
                            item.content = load_media(
                                event.modality, data_b64=event.data, uri=event.uri, limits=self._limits
                            )
                    items.append(item)
                except (SchemaError, MediaError, EncodeError) as e:
                    result.dead.append(DeadLetter(record, e.code, e.message, "decode"))
        return items

    def _check_supported(self, event: MediaEvent) -> None:
        if event.modality not in self.supported:
            raise EncodeError(
                f"no configured space encodes {event.modality} (XMODAL_SPACES={','.join(self._spaces)}; "
                f"spaces with {event.modality}: see docs/spaces.md)",
                code="unsupported_modality",
            )

    @staticmethod
    def _candidates(items: list[_Item]) -> list[_Item]:
        """The events that can decide each item's final state: its last delete and what follows.

        Events of one item share a partition (keyed by id), so batch order is event order.
        """
        last_delete = {it.event.id: n for n, it in enumerate(items) if it.event.op == "delete"}
        return [it for n, it in enumerate(items) if n >= last_delete.get(it.event.id, -1)]

    @staticmethod
    def _outcome(candidates: list[_Item], failed: set[int]) -> tuple[list[_Item], list[str]]:
        """Each item's final state: its last event that succeeded (upsert-then-delete deletes; a
        failed upsert after a good one or after a delete leaves that one standing)."""
        final: dict[str, _Item] = {}
        for item in candidates:
            if item.position not in failed:
                final.pop(item.event.id, None)
                final[item.event.id] = item
        upserts = [it for it in final.values() if it.event.op == "upsert"]
        deletes = [it.event.id for it in final.values() if it.event.op == "delete"]
        return upserts, deletes

    def _encode(
        self, upserts: list[_Item], result: BatchResult
    ) -> tuple[dict[str, dict[int, np.ndarray]], set[int]]:
        """Vectors per space keyed by item position, and the items that failed (dead-lettered here).

        An item that fails in any space is indexed in none: its spaces must not disagree.
        """
        vectors: dict[str, dict[int, np.ndarray]] = {space: {} for space in self._spaces}
        errors: dict[int, tuple[_Item, XmodalError]] = {}
        with timed("encode"):
            for space, encoder in self._spaces.items():
                for modality in encoder.modalities:
                    group = [it for it in upserts if it.event.modality == modality and it.position not in errors]
                    if not group:
                        continue
                    good, bad = encode_items(_tower(encoder, modality), [it.content for it in group])
                    for i, vector in good.items():
                        vectors[space][group[i].position] = vector
                    for i, error in bad.items():
                        errors[group[i].position] = (group[i], error)
        for key, (item, error) in errors.items():
            result.dead.append(DeadLetter(item.record, error.code, error.message, "encode"))
            for by_item in vectors.values():
                by_item.pop(key, None)
        return vectors, set(errors)

    @staticmethod
    def _point(item: _Item, vector: np.ndarray) -> IndexPoint:
        return IndexPoint(
            item_id=item.event.id,
            vector=vector,
            modality=str(item.event.modality),
            metadata=item.event.metadata,
            ts=item.event.ts if item.event.ts is not None else item.record.timestamp_ms,
            source={"topic": item.record.topic, "partition": item.record.partition, "offset": item.record.offset},
        )


def _tower(encoder: Encoder, modality: str) -> Callable[[Sequence[Any]], Vectors]:
    if modality == "text":
        return encoder.encode_texts
    if modality == "image":
        return encoder.encode_images
    return encoder.encode_audio
