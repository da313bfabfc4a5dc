"""SearchClient: search over Kafka from Python, many requests in flight from one client.

    search()/search_async() --produce--> <prefix>.search.requests    (key = request_id)
    futures <-- poll thread <--assign()-- reply topic, matched by request_id

Replies are read with `assign()` on every partition of the reply topic, never by joining a consumer
group: a join costs seconds on tansu and would sit on the request path. Before the first request is
sent, each partition is positioned at its end offset as the broker reports it at that moment, so
every reply produced afterwards is read (a position fetched lazily could land after a fast reply).
Several clients may share a reply topic: each reads every reply and keeps those it waits for. A
client that sends a lot can use its own topic (`reply_topic=`) to skip other clients' replies.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from xmodal.config import Settings
from xmodal.errors import BrokerError, SchemaError, SearchError, SearchTimeout
from xmodal.query_api.service import usable_topic
from xmodal.schema import (
    ErrorInfo,
    SearchHit,
    SearchReply,
    SearchRequest,
    dump,
    parse_search_reply,
    parse_search_request,
)
from xmodal.streams.kafka import consumer_config, ensure_topics, producer_config

__all__ = ["SearchClient", "hits_or_raise", "parse_reply"]

log = logging.getLogger(__name__)

_EXPIRY_CHECK_S = 0.02  # how often waiting requests are checked against their timeout


def hits_or_raise(reply: SearchReply) -> list[SearchHit]:
    """The hits of an ok reply; SearchError with the reply's code and message otherwise."""
    if reply.ok:
        return list(reply.hits)
    error = reply.error
    code = error.code if error is not None else "search_error"
    message = error.message if error is not None else "the service said ok=false without an error"
    raise SearchError(f"search request {reply.request_id} failed: {code}: {message}", code=code)


_REPLY_FIELDS = frozenset(SearchReply.model_fields)
_HIT_FIELDS = frozenset(SearchHit.model_fields)
_ERROR_FIELDS = frozenset(ErrorInfo.model_fields)


def parse_reply(value: bytes) -> SearchReply:
    """A SearchReply, ignoring fields this version does not know.

    Requests are parsed strictly (a misspelt field is the sender's bug), but a reader must keep
    working when a newer service adds a field to its replies, so unknown keys are dropped here.
    """
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise SchemaError(f"SearchReply is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(raw, dict):
        raise SchemaError("SearchReply must be a JSON object", code="invalid_json")
    known: dict[str, Any] = {k: v for k, v in raw.items() if k in _REPLY_FIELDS}
    if isinstance(known.get("hits"), list):
        known["hits"] = [_only(h, _HIT_FIELDS) for h in known["hits"]]
    if isinstance(known.get("error"), dict):
        known["error"] = _only(known["error"], _ERROR_FIELDS)
    return parse_search_reply(orjson.dumps(known))


def _only(item: Any, fields: frozenset[str]) -> Any:
    return {k: v for k, v in item.items() if k in fields} if isinstance(item, dict) else item


@dataclass
class _Waiting:
    future: Future[SearchReply]
    expires: float  # time.monotonic()
    timeout: float


class SearchClient:
    """Sends SearchRequests and waits for their replies. Use as a context manager.

    `reply_topic`: where the service should answer (default `settings.replies_topic`); it is
    created if missing. Thread-safe: any thread may search; one background thread reads replies.
    """

    def __init__(self, settings: Settings, bootstrap: str, *, reply_topic: str | None = None) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self.reply_topic = reply_topic or settings.replies_topic
        if not usable_topic(self.reply_topic):
            raise ValueError(f"reply_topic {self.reply_topic!r} is not a Kafka topic name ([A-Za-z0-9._-], 1-249)")
        self._waiting: dict[str, _Waiting] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 15.0) -> SearchClient:
        """Create the topics if missing and position the reply reader; then requests may go."""
        if self._thread is not None:
            raise RuntimeError("SearchClient.start() was already called")
        settings = self._settings
        ensure_topics(settings, self._bootstrap, [settings.requests_topic, self.reply_topic])
        self._producer = Producer(producer_config(settings, self._bootstrap, **{"linger.ms": 0}))
        self._consumer = Consumer(
            consumer_config(
                settings,
                self._bootstrap,
                **{
                    # librdkafka insists on a group id; with assign() and no commits it never joins.
                    "group.id": f"{settings.topic_prefix}.search-client.{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "fetch.wait.max.ms": 5,
                },
            )
        )
        try:
            self._consumer.assign(self._end_offsets(timeout_s))
        except Exception:
            self._consumer.close()
            raise
        self._thread = threading.Thread(target=self._read_replies, name="xmodal-search-client", daemon=True)
        self._thread.start()
        return self

    def _end_offsets(self, timeout_s: float) -> list[TopicPartition]:
        assert self._consumer is not None
        topic = self.reply_topic
        try:
            metadata = self._consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            if metadata.error is not None:
                raise KafkaException(metadata.error)
            positions = []
            for partition in sorted(metadata.partitions):
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                # tansu may report a high watermark a few records short: we re-read those, harmlessly.
                positions.append(TopicPartition(topic, partition, high))
        except KafkaException as e:
            raise BrokerError(f"cannot position on reply topic {topic} at {self._bootstrap}: {e}") from e
        return positions

    def close(self) -> None:
        """Stop reading replies; requests still waiting fail with SearchError(code='client_closed')."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for request_id, w in waiting.items():
            _settle(
                w.future, exception=SearchError(f"client closed before reply to {request_id}", code="client_closed")
            )
        if self._producer is not None:
            self._producer.flush(1)
            self._producer = None  # let librdkafka go now, not at garbage collection

    def __enter__(self) -> SearchClient:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- searching ------------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        *,
        image: bytes | None = None,
        audio: bytes | None = None,
        uri: str | None = None,
        modality: Literal["image", "audio"] | None = None,
        k: int = 10,
        modalities: Sequence[str] | None = None,
        filter: dict[str, str | int | bool] | None = None,
        spaces: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> list[SearchHit]:
        """The `k` nearest items to one query: `text`, `image` bytes, `audio` bytes, or a `uri`
        with the `modality` it points at. Raises SchemaError for a request the protocol refuses
        (before sending), SearchError with the reply's code when the service refuses it, and
        SearchTimeout when no reply comes within `timeout` seconds (default settings.search_timeout_s)."""
        future = self.search_async(
            text,
            image=image,
            audio=audio,
            uri=uri,
            modality=modality,
            k=k,
            modalities=modalities,
            filter=filter,
            spaces=spaces,
            timeout=timeout,
        )
        return hits_or_raise(self._result(future, timeout))

    def search_async(
        self,
        text: str | None = None,
        *,
        image: bytes | None = None,
        audio: bytes | None = None,
        uri: str | None = None,
        modality: Literal["image", "audio"] | None = None,
        k: int = 10,
        modalities: Sequence[str] | None = None,
        filter: dict[str, str | int | bool] | None = None,
        spaces: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Future[SearchReply]:
        """Send one search and return at once. The future holds the reply as it came (check
        `.ok`, or pass it to `hits_or_raise`), or fails with SearchTimeout / SearchError."""
        timeout = self._timeout(timeout)
        query: dict[str, object] = {}
        if text is not None:
            query["text"] = text
        if image is not None:
            query["image"] = base64.b64encode(image).decode("ascii")
        if audio is not None:
            query["audio"] = base64.b64encode(audio).decode("ascii")
        if uri is not None:
            query["uri"] = uri
        if modality is not None:
            query["modality"] = modality
        payload: dict[str, object] = {
            "request_id": uuid.uuid4().hex,
            "reply_to": self.reply_topic,
            "query": query,
            "k": k,
            "deadline_ms": int((time.time() + timeout) * 1000),
        }
        if modalities is not None:
            payload["modalities"] = list(modalities)
        if filter:
            payload["filter"] = filter
        if spaces is not None:
            payload["spaces"] = list(spaces)
        # Validated here with the service's own parser: a bad argument fails now, with the same code.
        return self.send(parse_search_request(orjson.dumps(payload)), timeout=timeout)

    def send(self, request: SearchRequest, *, timeout: float | None = None) -> Future[SearchReply]:
        """Send a prepared request as it is (its reply_to should be this client's reply topic)."""
        answered_on = request.reply_to or self._settings.replies_topic
        if answered_on != self.reply_topic:
            raise SchemaError(
                f"request {request.request_id} would be answered on {answered_on}, "
                f"but this client reads {self.reply_topic}",
                code="invalid_field",
                field="reply_to",
            )
        return self.send_raw(dump(request), request.request_id, timeout=timeout)

    def send_raw(self, value: bytes, request_id: str, *, timeout: float | None = None) -> Future[SearchReply]:
        """Send `value` unchecked, keyed by `request_id`, and wait for a reply carrying that id on
        this client's reply topic. For tools and protocol tests: anything may be sent."""
        producer = self._producer
        if producer is None or self._closing.is_set():
            raise RuntimeError("the SearchClient is not started (use it in a `with` block)")
        timeout = self._timeout(timeout)
        future: Future[SearchReply] = Future()
        expires = time.monotonic() + timeout
        with self._lock:
            if request_id in self._waiting:
                raise ValueError(f"request id {request_id!r} is already waiting for its reply")
            self._waiting[request_id] = _Waiting(future, expires, timeout)
        while True:
            try:
                producer.produce(
                    self._settings.requests_topic,
                    value,
                    key=request_id.encode(),
                    on_delivery=self._delivered(request_id),
                )
                break
            except BufferError:  # librdkafka's local queue is full: wait for deliveries, within the timeout
                if time.monotonic() >= expires:
                    self._forget(request_id)
                    raise SearchTimeout(
                        f"search request {request_id} could not be queued within {timeout:g} s"
                    ) from None
                producer.poll(0.05)
            except KafkaException as e:
                self._forget(request_id)
                raise SearchError(f"cannot send search request {request_id}: {e}", code="not_sent") from e
        producer.poll(0)
        return future

    # -- internals ------------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        timeout = self._settings.search_timeout_s if timeout is None else timeout
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return timeout

    def _result(self, future: Future[SearchReply], timeout: float | None) -> SearchReply:
        # The reader thread fails the future at its deadline; the margin only guards against a
        # reader that died, so that search() can never hang.
        try:
            return future.result(self._timeout(timeout) + 5.0)
        except FutureTimeout:
            raise SearchTimeout("the search client's reply reader stopped; no reply can arrive") from None

    def _forget(self, request_id: str) -> _Waiting | None:
        with self._lock:
            return self._waiting.pop(request_id, None)

    def _delivered(self, request_id: str) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                waiting = self._forget(request_id)
                if waiting is not None:
                    failure = SearchError(
                        f"search request {request_id} was not delivered to {msg.topic()}: {error}", code="not_sent"
                    )
                    _settle(waiting.future, exception=failure)

        return report

    def _read_replies(self) -> None:
        assert self._consumer is not None and self._producer is not None
        consumer, producer = self._consumer, self._producer
        next_check = time.monotonic()
        try:
            while not self._closing.is_set():
                producer.poll(0)  # delivery reports of requests
                try:
                    msg = consumer.poll(_EXPIRY_CHECK_S)
                except KafkaException as e:
                    log.warning("reading %s failed: %s", self.reply_topic, e)
                    msg = None
                if msg is not None:
                    self._on_reply(msg)
                if time.monotonic() >= next_check:
                    self._expire()
                    next_check = time.monotonic() + _EXPIRY_CHECK_S
        except Exception:
            log.exception("the search client's reply reader died")
        finally:
            consumer.close()

    def _on_reply(self, msg: Message) -> None:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("error on reply topic %s: %s", self.reply_topic, error)
            return
        value = msg.value()
        if value is None:
            return
        try:
            reply = parse_reply(value)
        except SchemaError as e:
            # Someone else's record on a shared topic is not ours to fail on.
            log.debug("skipping a record on %s that is not a SearchReply: %s", self.reply_topic, e)
            return
        waiting = self._forget(reply.request_id)
        if waiting is not None:  # else: another client's reply, or a duplicate
            _settle(waiting.future, result=reply)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [(rid, w) for rid, w in self._waiting.items() if w.expires <= now]
            for rid, _ in late:
                del self._waiting[rid]
        for rid, w in late:
            _settle(
                w.future,
                exception=SearchTimeout(
                    f"no reply to search request {rid} on {self.reply_topic} within {w.timeout:g} s "
                    f"(is a query service consuming {self._settings.requests_topic}?)"
                ),
            )


def _settle(
    future: Future[SearchReply], *, result: SearchReply | None = None, exception: BaseException | None = None
) -> None:
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass  # the caller cancelled it: nobody is waiting any more
