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
  asked: `reply_to` and `request_id` are read from it leniently.
- Replies go only to topics under `<prefix>.` that are not the media, DLQ or request topic
  (routing.py): a requester must not make the service write anywhere else. A request whose
  `reply_to` breaks that rule, or is no topic name at all, cannot be answered: it is logged and
  counted (xmodal_search_unroutable_total).
- A new group starts at the earliest offset, so requests sent while the first instance joins are
  served; an old backlog costs little, since stale requests carry a passed `deadline_ms`.
- Offsets are auto-committed: requests are served at most once as far as a client can tell. A
  crash loses the requests in flight (their clients time out and may retry); a request whose offset
  was not yet committed may be served again after a restart, and clients drop the duplicate reply.
  Stale redeliveries cost little: SearchClient sets `deadline_ms`, so they get `deadline_exceeded`.
- Broker errors: a retriable one (broker down, a failed fetch) is logged and polling goes on after
  a pause (librdkafka reconnects by itself); a fatal one (authorization, a fenced producer, from
  the consumer, the producer or their error callbacks) ends the poll loop. Whenever the poll loop
  ends other than by `stop()`, `crashed` says why and the process host should stop the service.
- `start()`/`stop()` run everything in background threads; signals belong to the caller (the CLI).
"""

from __future__ import annotations

import logging
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
from xmodal.query_api.batching import NO_TICKET, Ticket
from xmodal.query_api.routing import reply_topic_refusal
from xmodal.query_api.searcher import Searcher
from xmodal.schema import ErrorInfo, SearchHit, SearchReply, dump_reply, parse_search_request
from xmodal.streams.kafka import consumer_config, ensure_topics, producer_config

__all__ = ["QueryService", "salvage_route"]

log = logging.getLogger(__name__)

# A reply nobody waits for any more is worth nothing: give up on delivering it after this.
REPLY_DELIVERY_TIMEOUT_MS = 30_000
# Echoed ids of unparseable requests are capped: the id may be why the request was refused.
MAX_ECHOED_ID = 1024
# Pause of the poll loop after a retriable broker error, so a broker that is down costs a warning
# every half second, not a busy loop; librdkafka reconnects meanwhile.
RETRY_PAUSE_S = 0.5
# Thumbnails (data URLs) one reply carries at most, in characters: a reply is one Kafka record,
# 1 MB by default. Hits past it come without theirs (their order and scores are unchanged).
REPLY_THUMBNAIL_BUDGET = 600_000


def thumbnails_within_budget(hits: list[SearchHit], wanted: bool, budget: int = REPLY_THUMBNAIL_BUDGET) -> list[SearchHit]:
    """The hits with their thumbnails when the request asked for them, best first within `budget`."""
    kept: list[SearchHit] = []
    for hit in hits:
        if hit.thumbnail is None:
            kept.append(hit)
            continue
        size = sum(len(v) for v in (hit.thumbnail.image, hit.thumbnail.audio, hit.thumbnail.text) if v)
        if wanted and size <= budget:
            budget -= size
            kept.append(hit)
        else:
            kept.append(hit.model_copy(update={"thumbnail": None}))
    return kept


def salvage_route(value: bytes | None, key: bytes | None, settings: Settings) -> tuple[str | None, str, str | None]:
    """(reply topic, request id, refusal) for a request that did not parse, read leniently from its bytes.

    The topic is `reply_to` when the raw JSON has one, `settings.replies_topic` when it has none or
    is not JSON, and None when it has one the service does not answer on (routing.py); the refusal
    then says why. The id is the raw JSON's `request_id`, else the record key, else "".
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
        return settings.replies_topic, request_id, None
    refusal = reply_topic_refusal(reply_to, settings)
    return (None if refusal else reply_to), request_id, refusal  # type: ignore[return-value]


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
        self._fatal: KafkaError | None = None  # a fatal error reported by a client's error callback

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Create the topics if missing, join the group and return once partitions are assigned,
        so that requests produced from now on are served (a new group starts at the earliest
        offset, so even requests produced during the join are). On failure nothing is left behind."""
        if self._thread is not None:
            raise RuntimeError("QueryService.start() was already called")
        settings = self._settings
        ensure_topics(settings, self._bootstrap, [settings.requests_topic, settings.replies_topic])
        try:
            self._producer = Producer(
                producer_config(
                    settings,
                    self._bootstrap,
                    **{
                        "linger.ms": 0,
                        "message.timeout.ms": REPLY_DELIVERY_TIMEOUT_MS,
                        "error_cb": self._on_client_error,
                    },
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
                        # tansu answers a fetch when this wait ends, not when a record arrives: a
                        # request waits half of it on average. 5 ms: 2 ms off p50 against 10, at no
                        # more idle broker load (docs/performance.md, "Ratios").
                        "fetch.wait.max.ms": 5,
                        "error_cb": self._on_client_error,
                    },
                )
            )
            self._consumer.subscribe([settings.requests_topic], on_assign=self._on_assign)
            self._pool = ThreadPoolExecutor(settings.query_concurrency, thread_name_prefix="xmodal-query")
            thread = threading.Thread(target=self._poll_loop, name="xmodal-query-poll", daemon=True)
            thread.start()
        except BaseException:
            self._discard()
            raise
        self._thread = thread  # from here on, the poll thread owns (and closes) the consumer
        deadline = time.monotonic() + timeout_s
        while not self._assigned.wait(min(0.1, max(deadline - time.monotonic(), 0))):
            crash = self._crash
            if crash is not None or time.monotonic() >= deadline:
                self.stop()
                why = f"its poll loop died: {crash}" if crash is not None else f"within {timeout_s:.0f} s"
                raise BrokerError(
                    f"the query service did not join group {self._group} on {self._bootstrap}: {why}"
                ) from crash
        log.info(
            "query service serving %s (group %s, %d at once)",
            settings.requests_topic,
            self._group,
            settings.query_concurrency,
        )

    def _discard(self) -> None:
        """Let go of what a failed start() made; the poll thread never ran."""
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        for client in (consumer, producer):
            if client is not None:
                try:
                    client.close()  # nothing was produced yet: returns at once
                except Exception as e:  # already failing: the first error is the one to raise
                    log.debug("closing a Kafka client of a failed start: %s", e)

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
    def searcher(self) -> Searcher:
        return self._searcher

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    @property
    def crashed(self) -> BaseException | None:
        """Why the poll loop ended other than by stop() (a fatal broker error, never a request),
        else None. Once set, the service serves nothing more: the host should stop() it."""
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

    def _on_client_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (consumer and producer), served from their poll calls."""
        if error.fatal():
            if self._fatal is None:
                self._fatal = error
            return  # raised by the poll loop
        log.warning("kafka client of the query service: %s", error)

    def _broker_trouble(self, error: object, what: str) -> None:
        """Raise on a fatal KafkaError; log anything else and pause before the next poll."""
        if isinstance(error, KafkaError) and error.fatal():
            raise KafkaException(error)
        log.warning("%s %s failed: %s; retrying in %.1f s", what, self._settings.requests_topic, error, RETRY_PAUSE_S)
        self._stopping.wait(RETRY_PAUSE_S)

    def _poll_loop(self) -> None:
        assert self._consumer is not None and self._producer is not None and self._pool is not None
        consumer, producer, pool = self._consumer, self._producer, self._pool
        try:
            while not self._stopping.is_set():
                producer.poll(0)  # serve delivery callbacks of replies
                try:
                    msgs = self._fetched(consumer)
                except KafkaException as e:
                    self._broker_trouble(e.args[0] if e.args else e, "polling")
                    continue
                if self._fatal is not None:
                    raise KafkaException(self._fatal)
                if not self._hand_out(msgs, pool):
                    break
        except BaseException as e:  # recorded for `crashed`; requests never get here (see _serve)
            self._crash = e
            log.exception("the query service poll loop died")
        finally:
            try:
                consumer.close()  # commits what was polled and leaves the group at once
            except BaseException as e:
                log.warning("closing the query service's consumer failed: %s", e)
                if self._crash is None and not self._stopping.is_set():
                    self._crash = e
            if self._crash is None and not self._stopping.is_set():
                self._crash = RuntimeError("the query service poll loop ended without being stopped")

    def _fetched(self, consumer: Consumer) -> list[Message]:
        """The next request (waiting up to 50 ms) and every one fetched with it. Taken at once,
        their tickets are out before the first reaches the tower, so the queries that came
        together are encoded together (batching.py). consume() with a timeout waits for all
        `num_messages` or the timeout (librdkafka 2.16), so only the first wait is a poll()."""
        first = consumer.poll(0.05)
        if first is None:
            return []
        more = self._settings.query_concurrency - 1
        return [first, *consumer.consume(more, 0)] if more > 0 else [first]

    def _hand_out(self, msgs: list[Message], pool: ThreadPoolExecutor) -> bool:
        """Give each request of `msgs` a slot and a worker; False if stopping meanwhile."""
        requests = []
        for msg in msgs:
            error = msg.error()
            if error is None:
                requests.append(msg)
            elif error.code() != KafkaError._PARTITION_EOF:
                self._broker_trouble(error, "consuming")
        for msg in requests:
            if not self._take_slot():
                return False
            # Counted from here to its encode: a batch of queries waits for those already taken
            # (not for those still waiting for a slot, which wait for this batch).
            pool.submit(self._serve, msg, self._searcher.arrivals.ticket())
        return True

    def _take_slot(self) -> bool:
        """Wait for a free slot (backpressure); False if stopping."""
        if self._slots.acquire(blocking=False):
            return True
        self._slots_full()
        while not self._slots.acquire(timeout=0.1):
            if self._stopping.is_set():
                return False
        return True

    def _slots_full(self) -> None:
        """The poll thread holds a request and waits for a slot: the rest wait in Kafka."""
        log.debug("all %d query slots are busy; requests wait in Kafka", self._settings.query_concurrency)

    # -- worker threads -------------------------------------------------------------------------

    def _serve(self, msg: Message, ticket: Ticket = NO_TICKET) -> None:
        start = time.perf_counter()
        try:
            topic, reply, refusal = self._answer(msg.key(), msg.value(), start, ticket)
            self._send(topic, reply, msg, refusal)
        except Exception:  # never let one request take a worker down with it
            log.exception("serving the request at %s[%s]@%s failed", msg.topic(), msg.partition(), msg.offset())
        finally:
            ticket.done()  # a request that never reached the search (refused, unparseable)
            STAGE_SECONDS.labels("request").observe(time.perf_counter() - start)
            self._slots.release()

    def _answer(
        self, key: bytes | None, value: bytes | None, start: float, ticket: Ticket = NO_TICKET
    ) -> tuple[str | None, SearchReply, str | None]:
        """(reply topic, reply, refusal): no topic, and the refusal, when the request cannot be answered."""
        try:
            request = parse_search_request(value)
        except SchemaError as e:
            topic, request_id, refusal = salvage_route(value, key, self._settings)
            return topic, self._error_reply(request_id, e.code, e.message, start), refusal
        reply_topic = request.reply_to or self._settings.replies_topic
        refused = reply_topic_refusal(reply_topic, self._settings) if request.reply_to is not None else None
        if refused is not None:  # nobody could read the hits: do not search
            return None, self._error_reply(request.request_id, "invalid_field", refused, start), refused
        try:
            if request.deadline_ms is not None and time.time() * 1000 > request.deadline_ms:
                late = time.time() * 1000 - request.deadline_ms
                message = f"picked up {late:.0f} ms after its deadline_ms"
                return reply_topic, self._error_reply(request.request_id, "deadline_exceeded", message, start), None
            hits = thumbnails_within_budget(self._searcher.search(request, ticket), request.with_thumbnails)
        except XmodalError as e:
            return reply_topic, self._error_reply(request.request_id, e.code, e.message, start), None
        except Exception as e:
            log.exception("search request %r failed unexpectedly", request.request_id)
            message = f"the service failed on this request ({type(e).__name__}); see its log"
            return reply_topic, self._error_reply(request.request_id, "internal_error", message, start), None
        took_ms = (time.perf_counter() - start) * 1000
        return reply_topic, SearchReply(request_id=request.request_id, ok=True, took_ms=took_ms, hits=hits), None

    @staticmethod
    def _error_reply(request_id: str, code: str, message: str, start: float) -> SearchReply:
        log.debug("search request %r refused: %s: %s", request_id, code, message)
        took_ms = (time.perf_counter() - start) * 1000
        return SearchReply(
            request_id=request_id, ok=False, took_ms=took_ms, error=ErrorInfo(code=code, message=message)
        )

    def _send(self, topic: str | None, reply: SearchReply, msg: Message, refusal: str | None = None) -> None:
        if topic is None:
            UNROUTABLE_REQUESTS.inc()
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            log.warning("search request %r at %s not answered: reply_to %s", reply.request_id, where, refusal)
            return
        SEARCH_REQUESTS.labels("true" if reply.ok else "false").inc()
        if reply.error is not None:
            SEARCH_ERRORS.labels(reply.error.code).inc()
        assert self._producer is not None
        value = dump_reply(reply)
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
