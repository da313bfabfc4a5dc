"""The query service: search requests from Kafka in, replies to Kafka out.

    <prefix>.search.requests --poll thread--> bounded pool (query_concurrency) --> Searcher
                                                                                   |
    request.reply_to or <prefix>.search.replies  <-- producer, key = request_id <--+

- Consumer group `<prefix>.query-service`: any number of instances share the request partitions.
- Bounded in flight: the poll thread takes a slot (a semaphore of `query_concurrency`) before it
  hands a request to the pool, so at most that many run at once and the rest wait in the consumer's
  fetch queue (backpressure, not an unbounded backlog in memory). A slow request holds one slot;
  fast requests go on in the others.
- Every request gets a reply, an error reply (`ok: false`, stable `error.code`) when it is bad:
  parse errors (`invalid_json`, `missing_field`, ...), the Searcher's codes (`unknown_space`,
  `unsupported_modality`, media codes, ...), `deadline_exceeded` when `deadline_ms` has passed when
  the request is picked up, and `internal_error` for anything unexpected (logged with traceback).
  A request that does not parse is still answered when its raw JSON (or the Kafka key) says who
  asked: `reply_to` and `request_id` are read from it leniently. One whose `reply_to` is not a
  usable topic name cannot be answered: it is logged and counted (xmodal_search_unroutable_total).
- A new group starts at the earliest offset, so requests sent while the first instance joins are
  served; an old backlog costs little, since stale requests carry a passed `deadline_ms`.
- Offsets are auto-committed: requests are served at most once as far as a client can tell. A
  crash loses the requests in flight (their clients time out and may retry); a request whose offset
  was not yet committed may be served again after a restart, and clients drop the duplicate reply.
  Stale redeliveries cost little: SearchClient sets `deadline_ms`, so they get `deadline_exceeded`.
- `start()`/`stop()` run everything in background threads; signals belong to the caller (the CLI).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from xmodal.config import Settings
from xmodal.errors import BrokerError, SchemaError, XmodalError
from xmodal.metrics import SEARCH_ERRORS, SEARCH_REQUESTS, STAGE_SECONDS, UNROUTABLE_REQUESTS
from xmodal.query_api.searcher import Searcher
from xmodal.schema import ErrorInfo, SearchReply, dump, parse_search_request
from xmodal.streams.kafka import consumer_config, ensure_topics, producer_config

__all__ = ["QueryService", "salvage_route", "usable_topic"]

log = logging.getLogger(__name__)

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's own rule
# A reply nobody waits for any more is worth nothing: give up on delivering it after this.
REPLY_DELIVERY_TIMEOUT_MS = 30_000
# Echoed ids of unparseable requests are capped: the id may be why the request was refused.
MAX_ECHOED_ID = 1024


def usable_topic(name: object) -> bool:
    """True if `name` is a legal Kafka topic name (`.` and `..` are reserved)."""
    return isinstance(name, str) and bool(_TOPIC_NAME.match(name)) and name not in (".", "..")


def salvage_route(value: bytes | None, key: bytes | None, default_topic: str) -> tuple[str | None, str]:
    """(reply topic, request id) for a request that did not parse, read leniently from its bytes.

    The topic is `reply_to` when the raw JSON has one, the default when it has none or is not JSON,
    and None when it has one that is not a usable topic name (the request cannot be answered).
    The id is the raw JSON's `request_id`, else the record key, else "".
    """
    raw: Any = None
    if value is not None:
        try:
            raw = orjson.loads(value)
        except orjson.JSONDecodeError:
            raw = None
    request_id = ""
    reply_to: object = None
    if isinstance(raw, dict):
        reply_to = raw.get("reply_to")
        if isinstance(raw.get("request_id"), str):
            request_id = raw["request_id"]
    if not request_id and key:
        request_id = key.decode("utf-8", errors="replace")
    request_id = request_id[:MAX_ECHOED_ID]
    if reply_to is None:
        return default_topic, request_id
    return (reply_to if usable_topic(reply_to) else None), request_id  # type: ignore[return-value]


class QueryService:
    """Serves search requests with `searcher` until stopped.

    The searcher's towers must be loaded and its collections exist: `searcher.start()`, or the
    start-up of an ingest pipeline that shares the same encoders and index (as `xmodal up` does).
    """

    def __init__(self, settings: Settings, bootstrap: str, searcher: Searcher) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._searcher = searcher
        self._group = f"{settings.topic_prefix}.query-service"
        self._slots = threading.BoundedSemaphore(settings.query_concurrency)
        self._stopping = threading.Event()
        self._assigned = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Create the topics if missing, join the group and return once partitions are assigned,
        so that requests produced from now on are served (a new group starts at the earliest
        offset, so even requests produced during the join are)."""
        if self._thread is not None:
            raise RuntimeError("QueryService.start() was already called")
        settings = self._settings
        ensure_topics(settings, self._bootstrap, [settings.requests_topic, settings.replies_topic])
        self._producer = Producer(
            producer_config(
                settings,
                self._bootstrap,
                **{"linger.ms": 0, "message.timeout.ms": REPLY_DELIVERY_TIMEOUT_MS},
            )
        )
        self._consumer = Consumer(
            consumer_config(
                settings,
                self._bootstrap,
                **{
                    "group.id": self._group,
                    "enable.auto.commit": True,
                    "auto.offset.reset": "earliest",
                },
            )
        )
        self._consumer.subscribe([settings.requests_topic], on_assign=self._on_assign)
        self._pool = ThreadPoolExecutor(settings.query_concurrency, thread_name_prefix="xmodal-query")
        self._thread = threading.Thread(target=self._poll_loop, name="xmodal-query-poll", daemon=True)
        self._thread.start()
        if not self._assigned.wait(timeout_s):
            self.stop()
            raise BrokerError(
                f"the query service did not join group {self._group} on {self._bootstrap} within {timeout_s:.0f} s"
            )
        log.info(
            "query service serving %s (group %s, %d at once)",
            settings.requests_topic,
            self._group,
            settings.query_concurrency,
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop polling, finish the requests in flight, deliver their replies, leave the group."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._producer is not None:
            left = self._producer.flush(timeout_s)
            if left:
                log.warning("%d search replies were not delivered before stop", left)
            self._producer = None  # let librdkafka go now, not at garbage collection

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    @property
    def crashed(self) -> BaseException | None:
        """Why the poll loop died (a broker failure, never a request), else None."""
        return self._crash

    def __enter__(self) -> QueryService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- poll thread ----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.debug("query service assigned %s", [p.partition for p in partitions])
        self._assigned.set()

    def _poll_loop(self) -> None:
        assert self._consumer is not None and self._producer is not None and self._pool is not None
        consumer, producer, pool = self._consumer, self._producer, self._pool
        try:
            while not self._stopping.is_set():
                producer.poll(0)  # serve delivery callbacks of replies
                try:
                    msg = consumer.poll(0.05)
                except KafkaException as e:
                    log.warning("polling %s failed: %s", self._settings.requests_topic, e)
                    continue
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error on %s: %s", self._settings.requests_topic, error)
                    continue
                if not self._take_slot():
                    break
                pool.submit(self._serve, msg)
        except BaseException as e:  # recorded for `crashed`; requests never get here (see _serve)
            self._crash = e
            log.exception("the query service poll loop died")
        finally:
            consumer.close()  # commits what was polled and leaves the group at once

    def _take_slot(self) -> bool:
        """Wait for a free slot (backpressure); False if stopping."""
        while not self._slots.acquire(timeout=0.1):
            if self._stopping.is_set():
                return False
        return True

    # -- worker threads -------------------------------------------------------------------------

    def _serve(self, msg: Message) -> None:
        start = time.perf_counter()
        try:
            topic, reply = self._answer(msg.key(), msg.value(), start)
            self._send(topic, reply, msg)
        except Exception:  # never let one request take a worker down with it
            log.exception("serving the request at %s[%s]@%s failed", msg.topic(), msg.partition(), msg.offset())
        finally:
            STAGE_SECONDS.labels("request").observe(time.perf_counter() - start)
            self._slots.release()

    def _answer(self, key: bytes | None, value: bytes | None, start: float) -> tuple[str | None, SearchReply]:
        default_topic = self._settings.replies_topic
        try:
            request = parse_search_request(value)
        except SchemaError as e:
            topic, request_id = salvage_route(value, key, default_topic)
            return topic, self._error_reply(request_id, e.code, e.message, start)
        # The schema's pattern lets "." and ".." through; Kafka reserves them.
        topic = request.reply_to if usable_topic(request.reply_to) else None if request.reply_to else default_topic
        try:
            if request.deadline_ms is not None and time.time() * 1000 > request.deadline_ms:
                late = time.time() * 1000 - request.deadline_ms
                return topic, self._error_reply(
                    request.request_id, "deadline_exceeded", f"picked up {late:.0f} ms after its deadline_ms", start
                )
            hits = self._searcher.search(request)
        except XmodalError as e:
            return topic, self._error_reply(request.request_id, e.code, e.message, start)
        except Exception as e:
            log.exception("search request %r failed unexpectedly", request.request_id)
            message = f"the service failed on this request ({type(e).__name__}); see its log"
            return topic, self._error_reply(request.request_id, "internal_error", message, start)
        took_ms = (time.perf_counter() - start) * 1000
        return topic, SearchReply(request_id=request.request_id, ok=True, took_ms=took_ms, hits=hits)

    @staticmethod
    def _error_reply(request_id: str, code: str, message: str, start: float) -> SearchReply:
        log.debug("search request %r refused: %s: %s", request_id, code, message)
        took_ms = (time.perf_counter() - start) * 1000
        return SearchReply(
            request_id=request_id, ok=False, took_ms=took_ms, error=ErrorInfo(code=code, message=message)
        )

    def _send(self, topic: str | None, reply: SearchReply, msg: Message) -> None:
        where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
        if topic is None:
            UNROUTABLE_REQUESTS.inc()
            log.warning("search request %r at %s has no usable reply_to; not answered", reply.request_id, where)
            return
        SEARCH_REQUESTS.labels("true" if reply.ok else "false").inc()
        if reply.error is not None:
            SEARCH_ERRORS.labels(reply.error.code).inc()
        assert self._producer is not None
        value = dump(reply)
        while True:
            try:
                self._producer.produce(
                    topic, value, key=reply.request_id.encode(), on_delivery=self._delivered(reply.request_id)
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
            except KafkaException as e:
                UNROUTABLE_REQUESTS.inc()
                log.warning("cannot reply to %r on %s: %s", reply.request_id, topic, e)
                return

    @staticmethod
    def _delivered(request_id: str) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                UNROUTABLE_REQUESTS.inc()
                log.warning("reply to %r on %s was not delivered: %s", request_id, msg.topic(), error)

        return report
