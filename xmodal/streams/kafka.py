"""confluent-kafka plumbing shared by the CLI producer, the query service and the search client."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from xmodal.config import Settings
from xmodal.errors import BrokerError

__all__ = ["client_config", "consumer_config", "ensure_topics", "producer_config", "xmodal_topics"]


def client_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Base librdkafka config: bootstrap plus the XMODAL_KAFKA_* pass-through (SASL, TLS, ...)."""
    return {"bootstrap.servers": bootstrap, **settings.kafka_extra}


def producer_config(settings: Settings, bootstrap: str, **overrides: Any) -> dict[str, Any]:
    return {
        **client_config(settings, bootstrap),
        # Same key -> same partition as the Java client and kafkajs, whoever produced it.
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "linger.ms": 5,
        **overrides,
    }


def consumer_config(settings: Settings, bootstrap: str, **overrides: Any) -> dict[str, Any]:
    return {
        **client_config(settings, bootstrap),
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(settings.session_timeout_ms // 3, 500),
        "fetch.wait.max.ms": 10,
        **overrides,
    }


def xmodal_topics(settings: Settings) -> list[str]:
    return [settings.media_topic, settings.dlq_topic, settings.requests_topic, settings.replies_topic]


# Configs of the topics xmodal creates (docs/operations.md; deploy/create-topics.sh sets the same).
# The media topic is the source of truth a reindex replays, so it is compacted (latest event per id,
# tombstones kept 7 days), never deleted by age as a broker's default policy would after 7 days.
MEDIA_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "3600000",
    "delete.retention.ms": "604800000",
}
DLQ_TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": "2592000000"}  # every failure, 30 days
RPC_TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": "3600000"}  # requests and replies: 1 hour


def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    if topic == settings.media_topic:
        return dict(MEDIA_TOPIC_CONFIG)
    if topic == settings.dlq_topic:
        return dict(DLQ_TOPIC_CONFIG)
    return dict(RPC_TOPIC_CONFIG)  # the request topic and reply topics


def ensure_topics(settings: Settings, bootstrap: str, topics: Iterable[str] | None = None) -> None:
    """Create the topics xmodal uses if they do not exist, with `topic_config`'s settings
    (existing ones are left as they are: docs/operations.md says how to fix an existing one)."""
    admin = AdminClient(client_config(settings, bootstrap))
    wanted = list(topics) if topics is not None else xmodal_topics(settings)
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException as e:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {e}") from e
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                t, num_partitions=settings.topic_partitions, replication_factor=-1, config=topic_config(settings, t)
            )
            for t in missing
        ]
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=15)
        except KafkaException as e:
            if e.args and getattr(e.args[0], "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                continue  # another process won the race: fine
            raise BrokerError(f"cannot create topic {topic} on {bootstrap}: {e}") from e
