"""SearchClient: search over Kafka from Python, many requests in flight from one client.

    search()/search_async() --produce--> <prefix>.search.requests    (key = request_id)
    futures <-- poll thread <--assign()-- reply topic, matched by request_id

Replies are read with `assign()` on every partition of the reply topic, never by joining a consumer
group: a join costs seconds on tansu and would sit on the request path. Before the first request is
sent, each partition is positioned at its end offset as the broker reports it at that moment, so
every reply produced afterwards is read (a position fetched lazily could land after a fast reply).
Several clients may share a reply topic: each reads every reply and keeps those it waits for. A
client that sends a lot can use its own topic (`reply_topic=`) to skip other clients' replies; the
service answers only on topics under `<prefix>.` (routing.py), so the client refuses any other.

Once the reply reader stops, by close() or by itself (a fatal broker error, a bug), the client is
dead: every waiting future fails with SearchError(code="client_closed") naming the cause, and later
requests raise that error at once instead of waiting for replies nobody reads.
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
from xmodal.query_api.routing import reply_topic_refusal
from xmodal.schema import (
    ErrorInfo,
    SearchHit,
    SearchReply,
    SearchRequest,
    dump,
    parse_search_request,
    search_reply_from,
)
from xmodal.streams.kafka import consumer_config, ensure_topics, producer_config

__all__ = ["SearchClient", "hits_or_raise", "parse_reply"]

log = logging.getLogger(__name__)

_EXPIRY_CHECK_S = 0.02  # how often waiting requests are checked against their timeout
_RETRY_PAUSE_S = 0.1  # pause of the reply reader after a retriable broker error (timeouts still fire)


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
    return search_reply_from(known)


def _only(item: Any, fields: frozenset[str]) -> Any:
    return {k: v for k, v in item.items() if k in fields} if isinstance(item, dict) else item


@dataclass
class _Waiting:
    future: Future[SearchReply]
    expires: float  # time.monotonic()
    timeout: float


class SearchClient:
    """Sends SearchRequests and waits for their replies. Use as a context manager.

    `reply_topic`: where the service should answer (default `settings.replies_topic`), a topic
    under `<prefix>.` other than xmodal's input topics; it is created if missing. Thread-safe: any
    thread may search; one background thread reads replies.
    """

    def __init__(self, settings: Settings, bootstrap: str, *, reply_topic: str | None = None) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self.reply_topic = reply_topic or settings.replies_topic
        refusal = reply_topic_refusal(self.reply_topic, settings)
        if refusal is not None:
            raise ValueError(f"reply_topic {refusal}: the query service would not answer there")
        self._waiting: dict[str, _Waiting] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._dead: SearchError | None = None  # set (under _lock) once the reply reader has stopped
        self._fatal: KafkaError | None = None  # a fatal error reported by a client's error callback

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 15.0) -> SearchClient:
        """Create the topics if missing and position the reply reader; then requests may go.
        On failure nothing is left behind."""
        if self._thread is not None:
            raise RuntimeError("SearchClient.start() was already called")
        settings = self._settings
        ensure_topics(settings, self._bootstrap, [settings.requests_topic, self.reply_topic])
        try:
            self._producer = Producer(
                producer_config(settings, self._bootstrap, **{"linger.ms": 0, "error_cb": self._on_client_error})
            )
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
                        "error_cb": self._on_client_error,
                    },
                )
            )
            self._consumer.assign(self._end_offsets(timeout_s))
            thread = threading.Thread(target=self._read_replies, name="xmodal-search-client", daemon=True)
            thread.start()
        except BaseException:
            self._discard()
            raise
        self._thread = thread  # from here on, the reader owns (and closes) the consumer
        return self

    def _discard(self) -> None:
        """Let go of what a failed start() made; the reader never ran."""
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        for client in (consumer, producer):
            if client is not None:
                try:
                    client.close()  # nothing was produced yet: returns at once
                except Exception as e:  # already failing: the first error is the one to raise
                    log.debug("closing a Kafka client of a failed start: %s", e)

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
        self._die("the client was closed")  # a no-op when the reader did it already
        if self._producer is not None:
            self._producer.flush(1)
            self._producer = None  # let librdkafka go now, not at garbage collection

    @property
    def dead(self) -> SearchError | None:
        """Why this client can no longer search (closed, or its reply reader stopped), else None."""
        return self._dead

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
        with_thumbnails: bool = False,
        rerank: bool | None = None,
        rerank_k: int | None = None,
    ) -> list[SearchHit]:
        """The `k` nearest items to one query: `text`, `image` bytes, `audio` bytes, or a `uri`
        with the `modality` it points at. Raises SchemaError for a request the protocol refuses
        (before sending), SearchError with the reply's code when the service refuses it, and
        SearchTimeout when no reply comes within `timeout` seconds (default settings.search_timeout_s).
        `with_thumbnails`: hits carry the thumbnails stored at ingest (docs/http.md). `rerank`,
        `rerank_k`: rescore the first stage's best candidates with a cross-encoder (None: the
        service's default; docs/quality.md)."""
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
            with_thumbnails=with_thumbnails,
            rerank=rerank,
            rerank_k=rerank_k,
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
        with_thumbnails: bool = False,
        rerank: bool | None = None,
        rerank_k: int | None = None,
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
        if with_thumbnails:
            payload["with_thumbnails"] = True
        if rerank is not None:
            payload["rerank"] = rerank
        if rerank_k is not None:
            payload["rerank_k"] = rerank_k
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
        if self._dead is not None:
            raise self._dead_error()
        if producer is None or self._closing.is_set():
            raise RuntimeError("the SearchClient is not started (use it in a `with` block)")
        timeout = self._timeout(timeout)
        future: Future[SearchReply] = Future()
        expires = time.monotonic() + timeout
        with self._lock:
            if self._dead is not None:  # the reader died meanwhile: nobody would settle the future
                raise self._dead_error()
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

    def _on_client_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (consumer and producer), served from their poll calls."""
        if error.fatal():
            if self._fatal is None:
                self._fatal = error
            return  # raised by the reply reader
        log.warning("kafka client of the search client: %s", error)

    def _broker_trouble(self, error: object) -> None:
        """Raise on a fatal KafkaError; log anything else and pause (librdkafka reconnects meanwhile)."""
        if isinstance(error, KafkaError) and error.fatal():
            raise KafkaException(error)
        log.warning("reading %s failed: %s", self.reply_topic, error)
        self._closing.wait(_RETRY_PAUSE_S)

    def _read_replies(self) -> None:
        assert self._consumer is not None and self._producer is not None
        consumer, producer = self._consumer, self._producer
        next_check = time.monotonic()
        cause, error = "the client was closed", None
        try:
            while not self._closing.is_set():
                producer.poll(0)  # delivery reports of requests
                try:
                    msg = consumer.poll(_EXPIRY_CHECK_S)
                except KafkaException as e:
                    self._broker_trouble(e.args[0] if e.args else e)
                    msg = None
                if self._fatal is not None:
                    raise KafkaException(self._fatal)
                if msg is not None:
                    self._on_reply(msg)
                if time.monotonic() >= next_check:
                    self._expire()
                    next_check = time.monotonic() + _EXPIRY_CHECK_S
        except BaseException as e:
            cause, error = f"its reply reader stopped: {type(e).__name__}: {e}", e
            log.exception("the search client's reply reader died")
        finally:
            self._die(cause, error)
            try:
                consumer.close()
            except Exception as e:
                log.warning("closing the search client's reply reader failed: %s", e)

    def _die(self, cause: str, error: BaseException | None = None) -> None:
        """No reply can arrive any more: refuse new requests and fail the waiting ones, naming `cause`."""
        with self._lock:
            if self._dead is None:
                self._dead = SearchError(
                    f"the search client reading {self.reply_topic} cannot search: {cause}", code="client_closed"
                )
                self._dead.__cause__ = error
            waiting, self._waiting = self._waiting, {}
        for request_id, w in waiting.items():
            _settle(w.future, exception=self._dead_error(f"no reply to search request {request_id}: "))

    def _dead_error(self, before: str = "") -> SearchError:
        """A fresh SearchError(client_closed) saying why this client is dead (one per raise)."""
        dead = self._dead
        assert dead is not None
        failure = SearchError(before + dead.message, code="client_closed")
        failure.__cause__ = dead.__cause__
        return failure

    def _on_reply(self, msg: Message) -> None:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self._broker_trouble(error)
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
