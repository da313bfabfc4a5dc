"""`xmodal verify SPACE`: compare what the media topic says with what the index holds.

The log is the source of truth (docs/operations.md): for every item id, the latest event that was
not dead-lettered decides whether the item should be in the space (an upsert of a modality the
space encodes) and which event its point must come from (the payload's `source` partition/offset).
Verify reads, in this order, so that a running system is judged fairly:

1. the offsets the live ingest group has committed, C (without joining the group);
2. the index (every point's item id, source and model fingerprint);
3. the dead-letter topic, then the media topic from its start to its end E.

Offsets move only after the index acknowledged the writes, so every event below C was in the index
before step 2 began; an id whose latest event is at or past C may be in flight, and is counted as
`pending`, not as a difference. Since the log is read after the index, an indexed event is always
in the read part of the log.

- missing: the log says present, the index has no point;
- extra: the index has a point, the log says absent (deleted, never written, or another modality);
- stale: the point comes from another event than the latest one (e.g. an older version);
- wrong_model: the point was made by another model than the generation's (or the encoder's);
- dead_lettered: ids whose latest event is in the DLQ: accounted for apart (the index keeps the
  previous valid state, which is what it is compared with).

Embedded index: its serving generation is open in a running `xmodal up`, which holds its files
locked. Verify then reads a copy of that generation's directory (taken file by file while it serves;
a write landing during the copy may be missed or torn, and is seen as pending or as a difference
that the next run no longer reports); with `xmodal up` stopped it reads the index itself.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmodal.config import Settings
from xmodal.errors import ConfigError, SchemaError, VectorIndexError, XmodalError
from xmodal.indexer.base import VectorIndex
from xmodal.schema import parse_media_event
from xmodal.streams.logread import committed_offsets, ingest_group, read_to_end

__all__ = ["Expected", "IndexedPoint", "LogView", "VerifyReport", "compare", "indexed_points", "read_log", "verify_space"]

ERROR_PREFIX = "xmodal.error."
SCROLL_PAGE = 1000
KINDS = ("missing", "extra", "stale", "wrong_model")


@dataclass(frozen=True)
class Expected:
    """What the log says about one id in one space."""

    partition: int
    offset: int  # of the latest event that was not dead-lettered (-1: none was valid)
    present: bool  # that event is an upsert of a modality the space encodes
    last_offset: int  # the id's latest event of all, dead-lettered or not


@dataclass
class LogView:
    topic: str
    expected: dict[str, Expected] = field(default_factory=dict)
    dead_lettered: dict[str, str] = field(default_factory=dict)  # id -> code of its latest event's dead letter
    events: int = 0
    unreadable: int = 0  # records no id could be read from, in the DLQ or not (no item to judge)


@dataclass(frozen=True)
class IndexedPoint:
    item_id: str
    topic: str | None
    partition: int | None
    offset: int | None
    model: str | None


@dataclass
class VerifyReport:
    space: str
    generation: int | None
    model: str
    log_events: int
    log_ids: int
    indexed: int
    ok: int = 0
    pending: int = 0
    dead_lettered: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    dead_samples: list[dict[str, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "generation": self.generation,
            "model": self.model,
            "clean": self.clean,
            "log_events": self.log_events,
            "log_ids": self.log_ids,
            "indexed": self.indexed,
            "ok": self.ok,
            "pending": self.pending,
            "dead_lettered": self.dead_lettered,
            **self.counts,
            "samples": {**self.samples, "dead_lettered": self.dead_samples},
        }


def dead_letter_sources(records: Iterable[Any], media_topic: str) -> dict[tuple[int, int], str]:
    """(partition, offset) of every dead-lettered media event -> its error code, from DLQ records."""
    found: dict[tuple[int, int], str] = {}
    for record in records:
        headers = {k: v for k, v in (record.headers() or []) if k.startswith(ERROR_PREFIX)}
        try:
            topic = headers[ERROR_PREFIX + "topic"].decode()
            where = (int(headers[ERROR_PREFIX + "partition"]), int(headers[ERROR_PREFIX + "offset"]))
        except (KeyError, ValueError, UnicodeDecodeError):
            continue  # not written by xmodal: nothing to account for
        if topic == media_topic:
            found[where] = headers.get(ERROR_PREFIX + "code", b"?").decode(errors="replace")
    return found


def read_log(records: Iterable[Any], topic: str, modalities: frozenset[str], dead: Mapping[tuple[int, int], str]) -> LogView:
    """The latest valid event per id, from media records in offset order per partition."""
    view = LogView(topic)
    for record in records:
        view.events += 1
        p, o = record.partition(), record.offset()
        try:
            event = parse_media_event(record.key(), record.value())
        except SchemaError:
            event = None
        item_id = event.id if event is not None else _key_id(record.key())
        if item_id is None:
            view.unreadable += 1
            continue
        before = view.expected.get(item_id)
        if (p, o) in dead or event is None:
            view.dead_lettered[item_id] = dead.get((p, o), "not_dead_lettered_yet")
            view.expected[item_id] = Expected(
                p, before.offset if before else -1, before.present if before else False, o
            )
            continue
        view.dead_lettered.pop(item_id, None)
        present = event.op == "upsert" and str(event.modality) in modalities
        view.expected[item_id] = Expected(p, o, present, o)
    return view


def _key_id(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def compare(
    view: LogView,
    points: Iterable[IndexedPoint],
    committed: Mapping[int, int],
    *,
    space: str,
    generation: int | None,
    model: str,
    sample: int = 10,
) -> VerifyReport:
    """Judge every id of the log and every point of the index (the module docstring's rules)."""
    report = VerifyReport(space, generation, model, view.events, len(view.expected), 0)

    def note(kind: str, item_id: str, **detail: Any) -> None:
        report.counts[kind] += 1
        if len(report.samples[kind]) < sample:
            report.samples[kind].append({"id": item_id, **detail})

    def pending(expected: Expected | None) -> bool:
        return expected is not None and expected.last_offset >= committed.get(expected.partition, 0)

    seen: set[str] = set()
    for point in points:
        report.indexed += 1
        seen.add(point.item_id)
        expected = view.expected.get(point.item_id)
        if pending(expected):
            report.pending += 1
            continue
        if expected is None or not expected.present:
            why = "not in the log" if expected is None else "deleted or not of this space"
            note("extra", point.item_id, indexed_offset=point.offset, why=why)
        elif point.topic != view.topic or point.partition != expected.partition or point.offset != expected.offset:
            note("stale", point.item_id, indexed=f"{point.partition}@{point.offset}", latest=f"{expected.partition}@{expected.offset}")
        elif point.model is not None and point.model != model:
            note("wrong_model", point.item_id, indexed_model=point.model)
        else:
            report.ok += 1
    for item_id, expected in view.expected.items():
        if item_id in seen:
            continue
        if pending(expected):
            report.pending += 1
        elif expected.present:
            note("missing", item_id, latest=f"{expected.partition}@{expected.offset}")
        else:
            report.ok += 1
    report.dead_lettered = len(view.dead_lettered)
    report.dead_samples = [{"id": i, "code": c} for i, c in list(view.dead_lettered.items())[:sample]]
    return report


def indexed_points(index: VectorIndex, space: str) -> Iterator[IndexedPoint]:
    """Every point of the space's (serving or pinned) generation, from its payload."""
    scroll = getattr(index, "scroll", None)
    if scroll is None:
        raise VectorIndexError(f"{type(index).__name__} cannot list its points (no scroll)")
    offset: Any = None
    while True:
        records, offset = scroll(space, offset, SCROLL_PAGE)
        for record in records:
            payload = record.payload or {}
            source = payload.get("source") or {}
            yield IndexedPoint(
                item_id=str(payload.get("item_id", "")),
                topic=source.get("topic"),
                partition=source.get("partition"),
                offset=source.get("offset"),
                model=payload.get("model"),
            )
        if offset is None:
            return


@contextlib.contextmanager
def open_for_reading(settings: Settings, space: str, generation: int | None = None) -> Iterator[tuple[VectorIndex, Any]]:
    """(index, generation info or None) to read `space` from; see the module docstring for the
    embedded index that a running process holds."""
    from xmodal.indexer import open_index

    if not settings.embedded_index:
        index = open_index(settings)
        try:
            yield index, _generation_of(index, space, generation)
        finally:
            index.close()
        return
    from xmodal.indexer.edge import EdgeIndex
    from xmodal.runtime import IndexLock

    root = settings.data_dir / "index"
    if not (root / space).is_dir():
        raise ConfigError(f"space {space!r} has no embedded index under {root} (nothing ingested into it yet?)")
    lock = IndexLock(settings.data_dir / "index.lock")
    try:
        lock.acquire()
    except ConfigError:
        with _snapshot(root, space, generation) as (copy_root, number):
            index = EdgeIndex(copy_root, pin={space: number})
            try:
                yield index, _generation_of(index, space, number)
            finally:
                index.close()
        return
    try:
        index = EdgeIndex(root, pin={space: generation} if generation is not None else None)
        try:
            yield index, _generation_of(index, space, generation)
        finally:
            index.close()
    finally:
        lock.release()


def _generation_of(index: VectorIndex, space: str, number: int | None) -> Any:
    generations = getattr(index, "generations", None)
    if generations is None:
        return None
    if number is None:
        return index.serving_generation(space)  # type: ignore[attr-defined]
    for g in generations(space):
        if g.number == number:
            return g
    raise ConfigError(f"space {space!r} has no generation {number}")


@contextlib.contextmanager
def _snapshot(root: Path, space: str, number: int | None) -> Iterator[tuple[Path, int]]:
    """A copy of one generation of an embedded space that another process has open."""
    from xmodal.indexer.generations import GENERATION_LOCK, SpaceLayout, generation_name

    layout = SpaceLayout(root, space)
    if number is None:
        number = layout.pointer().serving
    source = layout.generation_path(number)
    if not source.is_dir():
        raise ConfigError(f"space {space!r} has no generation {number} under {root}")
    with tempfile.TemporaryDirectory(prefix="xmodal-verify-") as tmp:
        target = Path(tmp) / space
        target.mkdir()
        shutil.copy2(layout.manifest_path, target / layout.manifest_path.name)
        shutil.copytree(source, target / generation_name(number), ignore=shutil.ignore_patterns(GENERATION_LOCK))
        yield Path(tmp), number


def verify_space(
    settings: Settings,
    bootstrap: str,
    space: str,
    *,
    generation: int | None = None,
    group: str | None = None,
    sample: int = 10,
    index: VectorIndex | None = None,
) -> VerifyReport:
    """Verify one space of the index against the media topic (raises XmodalError on failure).

    `index`: read this open index (e.g. the one a test's Node holds) instead of opening one."""
    from xmodal.encoders.fingerprint import fingerprint_of
    from xmodal.encoders.registry import build_space

    encoder = build_space(space, settings)
    committed = committed_offsets(settings, bootstrap, settings.media_topic, group or ingest_group(settings))
    if index is not None:
        points = list(indexed_points(index, space))
        info = _generation_of(index, space, generation)
    else:
        with open_for_reading(settings, space, generation) as (opened, info):
            points = list(indexed_points(opened, space))
    model = getattr(info, "model", None) or fingerprint_of(encoder)
    try:
        dead = dead_letter_sources(read_to_end(settings, bootstrap, settings.dlq_topic), settings.media_topic)
    except XmodalError:
        dead = {}  # no DLQ topic yet: nothing was dead-lettered
    view = read_log(read_to_end(settings, bootstrap, settings.media_topic), settings.media_topic, encoder.modalities, dead)
    return compare(
        view,
        points,
        committed,
        space=space,
        generation=getattr(info, "number", None),
        model=model,
        sample=sample,
    )


def report_lines(report: VerifyReport) -> list[str]:
    """The report as the lines `xmodal verify` prints."""
    where = f"generation {report.generation}" if report.generation is not None else "its collection"
    lines = [
        f"space {report.space} ({where}, model {report.model}): {report.log_events} events over "
        f"{report.log_ids} ids in the log, {report.indexed} points in the index",
        f"  ok {report.ok} · missing {report.counts['missing']} · extra {report.counts['extra']} · "
        f"stale {report.counts['stale']} · wrong model {report.counts['wrong_model']} · "
        f"pending {report.pending} (at or past the ingest group's committed offsets) · "
        f"dead-lettered {report.dead_lettered}",
    ]
    for kind in KINDS:
        for entry in report.samples[kind]:
            detail = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "id")
            lines.append(f"  {kind}: {entry['id']}" + (f" ({detail})" if detail else ""))
    lines.append("clean" if report.clean else "differences found")
    return lines
