"""The ingest pipeline as plain functions: records in, index writes and dead letters out.

No Kafka here: the Faust agent hands a micro-batch of `SourceRecord`s to `IngestPipeline.process`
(in an executor thread) and acts on the `BatchResult`. Error policy (docs/errors.md):

- a record that cannot be parsed, whose media cannot be fetched/decoded, whose modality no
  configured space supports, or that a tower fails on -> a `DeadLetter` with its code; the rest
  of the batch goes on. Anything else a record's content makes the code raise is a dead letter
  too (`internal_error`, with the exception type): no event can stop ingestion;
- a point the index refuses while the index answers otherwise -> `index_rejected`, and the item
  is written in no space;
- an index that fails as a whole (after its own retries) -> raised; the agent does not ack.

Parts: a batch is encoded and written in parts of at most `part_size` records, in order, which
gives the same final state as one pass; the next part is decoded (media and thumbnails, in a
thread of its own) while the tower encodes this one, so decoding costs no time of its own when the
tower is the bound (about 0.5-1 ms a 64x64 image, against about 1-2 ms to encode it on 2 cores).

Memory: decoded media (pixels, samples) held at once stays within `max_decoded_bytes` (plus one
item per part): a part closes once its media reach half of it, since two parts are held at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from xmodal.encoders.base import Encoder, Modality, Vectors
from xmodal.encoders.fingerprint import fingerprint_of
from xmodal.encoders.media import MediaLimits, load_media
from xmodal.errors import DimensionMismatch, EncodeError, VectorIndexError, XmodalError
from xmodal.indexer.base import IndexPoint, VectorIndex
from xmodal.metrics import DEAD_LETTERS, EVENTS, INDEX_LAG, timed
from xmodal.schema import MediaEvent, parse_media_event
from xmodal.thumbnails import ThumbnailSpec, make_thumbnail

__all__ = ["BatchResult", "DeadLetter", "IngestPipeline", "SourceRecord", "encode_items"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ERROR_HEADER_PREFIX = "xmodal.error."
DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024
DEFAULT_PART_SIZE = 32  # half a default batch: the second half decodes while the first encodes
# Per-header and per-record framing in Kafka's record format, rounded up: a size estimate that
# errs on the safe side of the broker's limit.
_HEADER_OVERHEAD = 16
_RECORD_OVERHEAD = 128
_KEPT_KEY_BYTES = 1024  # a dead letter's key is cut to this when the record must shrink
# Deleted to probe whether the index takes writes; no event can name it (ids are at most 512 characters).
WRITE_PROBE_ID = "xmodal:write-probe:" + "-" * 500


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
        return [*self.record.headers, *self._reason()]

    def _reason(self) -> list[tuple[str, bytes]]:
        reason = {
            "code": self.code,
            "message": self.message[:2000],
            "stage": self.stage,
            "topic": self.record.topic,
            "partition": str(self.record.partition),
            "offset": str(self.record.offset),
        }
        # surrogatepass: a message may quote hostile text; the header must still be bytes.
        return [(ERROR_HEADER_PREFIX + k, v.encode("utf-8", "surrogatepass")) for k, v in reason.items()]

    def kafka_record(self, max_bytes: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """(key, value, headers) of the DLQ record, at most about `max_bytes` in all.

        A record that would be larger (its value, or hostile headers, near the broker's limit) is
        stored truncated: the reason headers stay whole, the value is cut, and the original
        headers are dropped only if they alone do not fit; `xmodal.error.truncated` and
        `xmodal.error.original_size` (bytes of key + value + headers as it arrived) say so.
        """
        key, value, headers = self.record.key, self.record.value, self.headers()
        size = _record_size(key, value, headers)
        if size <= max_bytes:
            return key, value, headers
        original = _record_size(self.record.key, self.record.value, list(self.record.headers))
        marks = [
            (ERROR_HEADER_PREFIX + "truncated", b"true"),
            (ERROR_HEADER_PREFIX + "original_size", str(original).encode()),
        ]
        key = key[:_KEPT_KEY_BYTES] if key is not None else None
        kept = list(self.record.headers)
        fixed = _record_size(key, None, [*self._reason(), *marks])
        if fixed + _record_size(None, None, kept) - _RECORD_OVERHEAD > max_bytes // 2:
            marks.append((ERROR_HEADER_PREFIX + "dropped_headers", str(len(kept)).encode()))
            kept = []
        room = max_bytes - fixed - (_record_size(None, None, kept) - _RECORD_OVERHEAD) - _HEADER_OVERHEAD * 2
        if value is not None:
            value = value[: max(room, 0)]
        return key, value, [*kept, *self._reason(), *marks]


def _record_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    return (
        _RECORD_OVERHEAD
        + len(key or b"")
        + len(value or b"")
        + sum(len(k.encode("utf-8", "surrogatepass")) + len(v) + _HEADER_OVERHEAD for k, v in headers)
    )


@dataclass
class BatchResult:
    indexed: int = 0
    deleted: int = 0
    dead: list[DeadLetter] = field(default_factory=list)


@dataclass
class _Item:
    record: SourceRecord
    event: MediaEvent
    content: Any = None  # str | PIL image | Waveform, once decoded
    position: int = -1  # in the part being written: identifies this event (an item id may repeat)
    thumbnail: dict[str, str] | None = None  # stored in the payload (xmodal/thumbnails.py)

    @property
    def decoded_bytes(self) -> int:
        return _decoded_bytes(self.content)


@dataclass
class _Part:
    """One part of a batch as decoded: its items, its decoding's dead letters, the index of the
    next record to decode and an item decoded already that opens the next part."""

    part: list[_Item]
    dead: list[DeadLetter]
    end: int
    carry: _Item | None = None


def _decoded_bytes(content: Any) -> int:
    """Memory the decoded content holds: pixels of an image, samples of a clip, bytes of a text."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    samples = getattr(content, "samples", None)  # Waveform
    if isinstance(samples, np.ndarray):
        return int(samples.nbytes)
    size, bands = getattr(content, "size", None), getattr(content, "getbands", None)  # PIL image
    if isinstance(size, tuple) and callable(bands):
        return int(size[0] * size[1] * len(bands()))
    return 0


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

    def __init__(
        self,
        spaces: Mapping[str, Encoder],
        index: VectorIndex,
        limits: MediaLimits,
        *,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        thumbnails: ThumbnailSpec | None = None,
        index_settings: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        """`thumbnails`: store a thumbnail with each point (None: none, as before).
        `index_settings`: the settings tag each point records beside its model's fingerprint.
        `part_size`: records per part (module docstring); a batch of at most this many is one part."""
        if part_size < 1:
            raise ValueError(f"part_size must be at least 1, not {part_size}")
        self._part_size = part_size
        self._decoder: ThreadPoolExecutor | None = None  # made on first use: decodes the next part
        self._decoder_lock = threading.Lock()
        self._spaces = dict(spaces)
        self._models: dict[str, str] = {}  # space -> fingerprint, read at start() (it may hash weight files)
        self._index_settings = index_settings
        self._thumbnails = thumbnails
        self._index = index
        # Audio is decoded only as far as the configured towers read it.
        self._limits = limits.for_encoders(self._spaces.values())
        self._max_decoded_bytes = max_decoded_bytes

    def start(self) -> None:
        """Start-up hook: load every tower and check each collection's dimension."""
        for name, encoder in self._spaces.items():
            encoder.load()
            self._index.ensure_collection(name, encoder.dim)
            self._models[name] = fingerprint_of(encoder)

    @property
    def supported(self) -> frozenset[Modality]:
        return frozenset().union(*(e.modalities for e in self._spaces.values()))

    def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        """Index `records` in order; every record is indexed, deleted or dead-lettered.

        Raises only when the index fails as a whole (VectorIndexError): then nothing may be acked.
        """
        result = BatchResult()
        for part, dead in self._parts(records):
            result.dead.extend(dead)
            if part:
                self._write(part, result)
                part.clear()  # its media go now, not when the next part is decoded
        EVENTS.labels("indexed").inc(result.indexed)
        EVENTS.labels("deleted").inc(result.deleted)
        EVENTS.labels("dead_lettered").inc(len(result.dead))
        for dead in result.dead:
            DEAD_LETTERS.labels(dead.code).inc()
        return result

    def _parts(self, records: Sequence[SourceRecord]) -> Iterator[tuple[list[_Item], list[DeadLetter]]]:
        """The batch's parts in order, each with the dead letters of its decoding; the next part is
        decoded in the decoder thread while the caller writes this one."""
        overlap = len(records) > self._part_size
        budget = self._max_decoded_bytes // 2 if overlap else self._max_decoded_bytes  # two held at once
        decode = self._decode_part
        if not overlap:  # one part, unless its media pass the budget: nothing to overlap
            step = decode(records, 0, budget, None)
            while True:
                yield step.part, step.dead
                if step.end >= len(records) and step.carry is None:
                    return
                step = decode(records, step.end, budget, step.carry)
        decoder = self._decoder_thread()
        ahead: Future[_Part] = decoder.submit(decode, records, 0, budget, None)
        while True:
            step = ahead.result()
            more = step.end < len(records) or step.carry is not None
            if more:
                ahead = decoder.submit(decode, records, step.end, budget, step.carry)
            yield step.part, step.dead
            if not more:
                return

    def _decode_part(self, records: Sequence[SourceRecord], start: int, budget: int, carry: _Item | None) -> _Part:
        """Decode records from `start` (after `carry`, an item decoded for this part already) until
        a part is full: `part_size` records, or an item that would take its media past `budget`
        bytes (that item is carried to the next part; a part always takes its first item)."""
        step = _Part([], [], start)
        held = 0
        if carry is not None:
            carry.position = 0
            step.part.append(carry)
            held = carry.decoded_bytes
        while step.end < len(records) and len(step.part) + len(step.dead) < self._part_size:
            with timed("decode"):
                item = self._decode(records[step.end], step.dead)
            step.end += 1
            if item is None:
                continue
            if step.part and held + item.decoded_bytes > budget:
                step.carry = item
                break
            item.position = len(step.part)
            step.part.append(item)
            held += item.decoded_bytes
        return step

    def _decoder_thread(self) -> ThreadPoolExecutor:
        with self._decoder_lock:
            if self._decoder is None:
                self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmodal-decode")
            return self._decoder

    def _decode(self, record: SourceRecord, dead: list[DeadLetter]) -> _Item | None:
        """The record as an event with its decoded content, or None once it is dead-lettered."""
        try:
            event = parse_media_event(record.key, record.value)
            item = _Item(record, event)
            if event.op == "upsert":
                self._check_supported(event)
                if event.modality == "text":
                    item.content = event.text
                else:
                    item.content = load_media(event.modality, data_b64=event.data, uri=event.uri, limits=self._limits)
                if self._thumbnails is not None:
                    item.thumbnail = make_thumbnail(
                        str(event.modality), item.content, self._thumbnails, original_b64=event.data
                    )
            return item
        except XmodalError as e:
            dead.append(DeadLetter(record, e.code, e.message, "decode"))
        except Exception as e:  # noqa: BLE001 - no content of an event may stop ingestion
            log.warning("unexpected error decoding %s[%d]@%d", record.topic, record.partition, record.offset, exc_info=True)
            dead.append(DeadLetter(record, "internal_error", f"{type(e).__name__}: {e}", "decode"))
        return None

    def _write(self, items: list[_Item], result: BatchResult) -> None:
        """Encode and write one part of a batch: each item's final state, in every space."""
        candidates = self._candidates(items)
        vectors, failed = self._encode([it for it in candidates if it.event.op == "upsert"], result)
        upserts, deletes = self._outcome(candidates, failed)
        points = {
            space: [(item, self._point(space, item, by_item[item.position])) for item in upserts if item.position in by_item]
            for space, by_item in vectors.items()
        }
        rejected: dict[int, _Item] = {}
        with timed("upsert"):
            for space, pairs in points.items():
                for item, error in self._upsert(space, [(it, p) for it, p in pairs if it.position not in rejected]):
                    rejected[item.position] = item
                    result.dead.append(DeadLetter(item.record, "index_rejected", error.message, "upsert"))
                # An item that changed modality must not keep its old point in a space that
                # cannot encode the new one.
                stale = [it.event.id for it in upserts if it.position not in vectors[space]]
                if deletes or stale:
                    self._index.delete(space, deletes + stale)
            if rejected:  # written in no space: spaces must not disagree about an item
                for space in self._spaces:
                    self._index.delete(space, [it.event.id for it in rejected.values()])
        upserts = [it for it in upserts if it.position not in rejected]
        now_ms = time.time() * 1000
        for item in upserts:
            if item.record.timestamp_ms:
                INDEX_LAG.observe(max(now_ms - item.record.timestamp_ms, 0) / 1000)
        result.indexed += len(upserts)
        result.deleted += len(deletes)

    def _upsert(
        self, space: str, pairs: list[tuple[_Item, IndexPoint]]
    ) -> list[tuple[_Item, VectorIndexError]]:
        """Upsert the points; return those the index refused while it took writes otherwise.

        An index that fails as a whole (the write probe fails too, or every point of several
        fails) is raised. The probe is a write, not a read: an index that answers reads but
        refuses writes (read-only on a full disk) is an outage, not a batch of bad points.
        """
        if not pairs:
            return []
        try:
            self._index.upsert(space, [p for _, p in pairs])
            return []
        except DimensionMismatch:
            raise
        except VectorIndexError as batch_error:
            try:
                self._index.delete(space, [WRITE_PROBE_ID])  # a write that changes nothing
            except XmodalError:
                raise batch_error from None
            refused: list[tuple[_Item, VectorIndexError]] = []
            for item, point in pairs:
                try:
                    self._index.upsert(space, [point])
                except VectorIndexError as e:
                    refused.append((item, e))
            if len(refused) == len(pairs) > 1:
                raise batch_error from None
            log.warning("space %r refused %d of %d points", space, len(refused), len(pairs))
            return refused

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

    def _point(self, space: str, item: _Item, vector: np.ndarray) -> IndexPoint:
        return IndexPoint(
            item_id=item.event.id,
            vector=vector,
            modality=str(item.event.modality),
            metadata=item.event.metadata,
            ts=item.event.ts if item.event.ts is not None else item.record.timestamp_ms,
            source={"topic": item.record.topic, "partition": item.record.partition, "offset": item.record.offset},
            thumbnail=item.thumbnail,
            model=self._models.get(space) or self._models.setdefault(space, fingerprint_of(self._spaces[space])),
            index_settings=self._index_settings,
        )


def _tower(encoder: Encoder, modality: str) -> Callable[[Sequence[Any]], Vectors]:
    if modality == "text":
        return encoder.encode_texts
    if modality == "image":
        return encoder.encode_images
    return encoder.encode_audio
