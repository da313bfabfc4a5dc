"""Which topics the query service answers on: one rule, shared by the service and the client.

A request names its reply topic in `reply_to`, and whoever may write a request could otherwise make
the service produce to any topic the service may write to (the media topic, the DLQ, another
application's topics). So a reply topic must be a legal topic name under the deployment's prefix,
`<prefix>.`, and not one of xmodal's input topics: `<prefix>.media`, `<prefix>.media.dlq`,
`<prefix>.search.requests`. docs/protocol.md states the same rule.

Deliberately light: the client imports this module, so it must not load the searcher.
"""

from __future__ import annotations

from xmodal.config import Settings
from xmodal.schema import usable_topic

__all__ = ["reply_topic_refusal"]

_SHOWN = 100  # a refused name is quoted in logs and errors up to this many characters


def reply_topic_refusal(name: object, settings: Settings) -> str | None:
    """Why the query service will not reply on topic `name`, or None when it will."""
    shown = repr(name)
    if len(shown) > _SHOWN:
        shown = shown[:_SHOWN] + "..."
    if not usable_topic(name):
        return f"{shown} is not a Kafka topic name ([A-Za-z0-9._-], 1-249 chars, not '.' or '..')"
    assert isinstance(name, str)  # usable_topic says so
    prefix = f"{settings.topic_prefix}."
    if not name.startswith(prefix):
        return f"{shown} does not start with {prefix!r}: replies go only to topics under the topic prefix"
    if name in (settings.media_topic, settings.dlq_topic, settings.requests_topic):
        return f"{shown} is one of xmodal's input topics (media, dead letters, search requests)"
    return None
