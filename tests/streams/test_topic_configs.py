"""The topics xmodal creates carry the configs that make the media topic a source of truth."""

from __future__ import annotations

from typing import Any

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from xmodal.streams.kafka import ensure_topics, xmodal_topics


def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return {name: entry.value for name, entry in future.result(timeout=10).items()}


def test_created_topics_are_compacted_or_expire_as_documented(broker: str, make_settings: Any) -> None:
    settings = make_settings()
    ensure_topics(settings, broker)

    media = _configs(broker, settings.media_topic)
    assert media["cleanup.policy"] == "compact"  # latest event per id survives any age: reindex replays it
    assert int(media["delete.retention.ms"]) >= 7 * 24 * 3600 * 1000  # tombstones outlive a replay
    dlq = _configs(broker, settings.dlq_topic)
    assert dlq["cleanup.policy"] == "delete" and int(dlq["retention.ms"]) == 30 * 24 * 3600 * 1000
    for topic in (settings.requests_topic, settings.replies_topic):
        assert int(_configs(broker, topic)["retention.ms"]) == 3600 * 1000
    assert set(xmodal_topics(settings)) == {
        settings.media_topic, settings.dlq_topic, settings.requests_topic, settings.replies_topic
    }


def test_existing_topics_are_left_as_they_are(broker: str, make_settings: Any) -> None:
    settings = make_settings()
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(settings.media_topic, 1, -1, config={"retention.ms": "1000"})]).values():
        future.result(timeout=10)
    ensure_topics(settings, broker)
    assert _configs(broker, settings.media_topic)["retention.ms"] == "1000"  # an operator's choice is kept
