"""Reading a topic from its start to the end it has now, without joining a consumer group.

`xmodal verify` and `xmodal reindex` both need "what the log says": every record of the media topic
up to a fixed end, and the offsets a consumer group has committed. `assign()` avoids the group join
(tansu makes a joining member wait half of `session.timeout.ms`) and leaves no group behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition

from xmodal.config import Settings
from xmodal.errors import BrokerError
from xmodal.streams.kafka import consumer_config

__all__ = ["Ends", "committed_offsets", "end_offsets", "ingest_group", "partitions_of", "read_to_end"]

Ends = Mapping[int, int]  # partition -> the offset after its last record (the high watermark)
METADATA_TIMEOUT_S = 10.0


def ingest_group(settings: Settings) -> str:
    """The consumer group of the live ingest agents (the Faust app id)."""
    return f"{settings.topic_prefix}-ingest"


def _reader(settings: Settings, bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer(
        consumer_config(
            settings,
            bootstrap,
            **{
                # assign() needs a group id, but nothing is committed or joined with it
                "group.id": group or f"{settings.topic_prefix}.reader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 * 1024 * 1024,
            },
        )
    )


def partitions_of(consumer: Consumer, topic: str) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S)
    except KafkaException as e:
        raise BrokerError(f"cannot read the metadata of topic {topic}: {e}") from e
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise BrokerError(f"topic {topic} does not exist (nothing was ever ingested with this XMODAL_TOPIC_PREFIX?)")
    return sorted(described.partitions)


def end_offsets(settings: Settings, bootstrap: str, topic: str) -> dict[int, int]:
    consumer = _reader(settings, bootstrap)
    try:
        return _ends(consumer, topic, partitions_of(consumer, topic))
    finally:
        consumer.close()


def _ends(consumer: Consumer, topic: str, partitions: list[int], timeout_s: float = METADATA_TIMEOUT_S) -> dict[int, int]:
    """The high watermark of each partition, as a fetch at the end reports it.

    Not ListOffsets (`get_watermark_offsets`): tansu answers it with the base offset of the last
    record batch + 1, short of the end whenever a producer batched. A fetch from the end returns
    at once with a partition-EOF event that carries the true high watermark."""
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
    ends: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(ends) < len(partitions):
            if time.monotonic() > deadline:
                missing = sorted(set(partitions) - set(ends))
                raise BrokerError(f"cannot read the end offsets of {topic} (partitions {missing} did not answer)")
            for message in consumer.consume(num_messages=100, timeout=0.2):
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    ends.setdefault(message.partition(), int(message.offset()))
                elif error is not None:
                    raise BrokerError(f"reading the end of {topic}[{message.partition()}] failed: {error.str()}")
    finally:
        consumer.unassign()
    return ends


def committed_offsets(settings: Settings, bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset per partition (0 where it committed none); joins nothing."""
    consumer = _reader(settings, bootstrap, group)
    try:
        partitions = partitions_of(consumer, topic)
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=METADATA_TIMEOUT_S)
        except KafkaException as e:
            raise BrokerError(f"cannot read the offsets group {group} committed on {topic}: {e}") from e
        return {tp.partition: max(int(tp.offset), 0) for tp in committed}
    finally:
        consumer.close()


def read_to_end(
    settings: Settings,
    bootstrap: str,
    topic: str,
    *,
    starts: Mapping[int, int] | None = None,
    ends: Mapping[int, int] | None = None,
    timeout_s: float = 300.0,
) -> Iterator[Message]:
    """Every record of `topic` from `starts` (default: the beginning) up to `ends` (default: the end
    each partition has when the read begins), partition by partition in offset order within each.

    Raises BrokerError when the broker fails or the read makes no progress for `timeout_s`."""
    consumer = _reader(settings, bootstrap)
    try:
        partitions = partitions_of(consumer, topic)
        stop = dict(ends) if ends is not None else _ends(consumer, topic, partitions)
        first = {p: (starts or {}).get(p, OFFSET_BEGINNING) for p in partitions}
        todo = {p for p in partitions if stop.get(p, 0) > max(first[p], 0)}
        if not todo:
            return
        consumer.assign([TopicPartition(topic, p, first[p]) for p in sorted(todo)])
        last_progress = time.monotonic()
        while todo:
            messages = consumer.consume(num_messages=500, timeout=0.5)
            if not messages and time.monotonic() - last_progress > timeout_s:
                raise BrokerError(f"reading {topic} made no progress for {timeout_s:.0f} s (partitions {sorted(todo)} unfinished)")
            for message in messages:
                error = message.error()
                p = message.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if p in todo and message.offset() >= stop[p]:
                            todo.discard(p)
                        continue
                    raise BrokerError(f"reading {topic}[{p}] failed: {error.str()}")
                last_progress = time.monotonic()
                if p not in todo or message.offset() >= stop[p]:
                    todo.discard(p)
                    continue
                yield message
                if message.offset() + 1 >= stop[p]:
                    todo.discard(p)
    finally:
        consumer.close()
