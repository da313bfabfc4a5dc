"""The Faust app: the media topic, the DLQ topic and the ingest agent.

The agent is deliberately thin: take a micro-batch, hand it to `IngestPipeline.process` in an
executor thread (encoding is CPU/GPU-bound; a blocked loop would stop heartbeats), send dead
letters, then ack. Acks are manual (`noack_take`) and happen only after the index acknowledged
the writes and the DLQ acknowledged the dead letters, so a crash mid-batch replays the batch
instead of losing it; deterministic point ids make the replay harmless.

Two faust behaviours would break that promise, and are closed here:
- `noack_take` restores the stream's `enable_acks` when the agent leaves it, after which faust acks
  every event it reads itself, processed or not. The agent turns acks off before it starts, so
  only its own `stream.ack` calls ever ack an event.
- faust commits the end of the first run of consecutive acked offsets, and looks for an unacked
  head only when the partition already had a committed offset (`_new_offset`: `if
  committed_offset:`). In a fresh group, anything acked past a failed batch (faust also acks
  skipped events while it stops) would commit past the batch and lose it. So once a batch failed,
  the consumer is fenced: it commits nothing more, and the next owner replays from the last
  batch that was written.

Memory is bounded in bytes: the consumer prefetches at most `XMODAL_FETCH_MAX_BYTES` per assigned
partition, and the stream buffer holds at most two batches of events between the fetcher and the
agent (see `buffer_limits`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from xmodal.config import Settings
from xmodal.errors import ConfigError, XmodalError
from xmodal.streams.pipeline import IngestPipeline, SourceRecord

__all__ = ["IngestApp", "buffer_limits", "create_app", "faust_credentials", "to_source_record"]

log = logging.getLogger(__name__)

IDLE_CHECK_S = 1.0  # how often the app looks for a reindex handoff no batch came to


def faust_credentials(settings: Settings) -> dict[str, Any]:
    """Map the librdkafka SASL/TLS pass-through (XMODAL_KAFKA_*) onto Faust's (aiokafka) settings,
    so the ingest agents and the confluent-kafka clients authenticate the same way."""
    extra = settings.kafka_extra
    protocol = extra.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return {}
    if protocol not in ("SSL", "SASL_SSL", "SASL_PLAINTEXT"):
        raise ConfigError(f"XMODAL_KAFKA_SECURITY_PROTOCOL={protocol} is not one of PLAINTEXT, SSL, SASL_SSL, SASL_PLAINTEXT")
    ssl_context = None
    if "SSL" in protocol:
        ssl_context = ssl.create_default_context(cafile=extra.get("ssl.ca.location"))
        if "ssl.certificate.location" in extra:
            ssl_context.load_cert_chain(
                extra["ssl.certificate.location"], extra.get("ssl.key.location"), extra.get("ssl.key.password")
            )
    if not protocol.startswith("SASL"):
        return {"broker_credentials": faust.SSLCredentials(ssl_context)}
    # librdkafka's name is sasl.mechanisms (plural); sasl.mechanism is its alias.
    mechanism = (extra.get("sasl.mechanisms") or extra.get("sasl.mechanism") or "PLAIN").upper()
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ConfigError(
            f"XMODAL_KAFKA_SASL_MECHANISMS={mechanism}: the ingest agents support PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512"
        )
    credentials = faust.SASLCredentials(
        username=extra.get("sasl.username"),
        password=extra.get("sasl.password"),
        mechanism=mechanism,
        ssl_context=ssl_context,
    )
    return {"broker_credentials": credentials}


def to_source_record(event: faust.types.EventT) -> SourceRecord:
    message = event.message
    headers = message.headers or ()
    if isinstance(headers, dict):
        headers = tuple(headers.items())
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        headers=tuple((str(k), _header_bytes(v)) for k, v in headers),
    )


def _header_bytes(value: Any) -> bytes:
    # Header values are bytes from aiokafka; anything else (None, str) is mapped, never raised on.
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogatepass")
    return bytes(value)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread with the fetch wait taken from the settings.

    faust builds its aiokafka consumer with `fetch_max_wait_ms=1500`, not configurable. tansu answers
    a fetch of an empty partition only when that wait ends, not when a record arrives, so an idle
    agent saw a new event up to 1.5 s late (freshness p50 0.9 s): the wait is set before the
    consumer starts, where aiokafka hands it to its fetcher.
    """

    # mode names a Service subclass's logger after its module unless the class names one: this
    # thread's start/stop lines belong with faust's (quiet at WARNING), not xmodal's INFO lines.
    logger = logging.getLogger(f"{faust_aiokafka.__name__}.thread")

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = cast(IngestApp, self.app).fetch_wait_ms
        return consumer


class _FencedConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer that commits nothing once `fenced` (see the module docstring),
    and does not wait for unacked events once the agent drained or failed."""

    # mode names a service's logger after its class's module: keep faust's chatter under "faust"
    # (the CLI quiets it), not under this module's name.
    logger = logging.getLogger("faust.xmodal.consumer")
    fenced = False  # a batch failed: commit nothing more
    drained = False  # stopping, the batch in hand is done: what is left unacked is replayed

    _buffer_dropped: asyncio.Event | None = None  # made on the consumer's loop, on first use

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # faust asks its fetcher for records of the partitions whose stream buffer has room, waiting
    # up to 1 s. Under a backlog those are often partitions with nothing fetched, while the ones
    # with records wait for the buffer to drop: the call then slept out its second although the
    # agent drained the buffer in a fraction of it, and the agent sat idle 0.3-0.7 s every few
    # batches (a batch of 64x64 images takes about 70 ms). So the fetcher is asked again every
    # RECHECK_S with the partitions that have room then; a record that arrives meanwhile still
    # ends the wait at once.
    RECHECK_S = 0.05

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        return await super()._getmany(active_partitions, min(timeout, self.RECHECK_S))

    async def _wait_next_records(self, timeout: float) -> Any:
        # With every partition's buffer full, faust sleeps a whole second before it looks again;
        # wait instead until the buffer drops (faust's `on_buffer_drop` puts a partition back).
        if self.flow_active and not self.app.client_only and not self._get_active_partitions():
            dropped = self._buffer_dropped = self._buffer_dropped or asyncio.Event()
            dropped.clear()
            if not self._get_active_partitions():
                try:
                    await asyncio.wait_for(dropped.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
        return await super()._wait_next_records(timeout)

    def on_buffer_drop(self, tp: Any) -> None:
        super().on_buffer_drop(tp)
        if self._buffer_dropped is not None:
            self._buffer_dropped.set()

    def _should_commit(self, tp: Any, offset: int) -> bool:
        return not self.fenced and super()._should_commit(tp, offset)

    async def wait_empty(self) -> None:
        # faust waits (at stop and before giving up partitions) until every event it handed to
        # the agent is acked. After a failure or a drain, the events left will never be acked:
        # waiting would hold the partitions until a timeout, so commit what was acked and go.
        replay = cast(IngestApp, self.app).idle_replay
        if replay is not None and not replay.done():
            await asyncio.wait([replay])  # a handoff replay writes the partitions being given up
        if self.fenced or self.drained:
            await self.commit_and_end_transactions()
            return
        await super().wait_empty()


class _Transport(faust_aiokafka.Transport):
    Consumer = _FencedConsumer


def _leave_group_at_generation_zero() -> None:
    """Make aiokafka send LeaveGroup for a member of generation 0 too.

    aiokafka leaves only when `generation > 0` (Apache Kafka's first generation is 1), but tansu
    numbers a new group's first generation 0: the first worker of a group would never leave, and
    its partitions would move only when its session timed out (XMODAL_SESSION_TIMEOUT_MS). A
    LeaveGroup request carries the member id, not the generation, so passing the check is enough.
    A no-op on Kafka, where a member that joined never has generation 0.
    """
    from aiokafka.consumer import group_coordinator

    coordinator = group_coordinator.GroupCoordinator
    original = coordinator._maybe_leave_group
    if getattr(original, "xmodal_patched", False):
        return

    async def maybe_leave_group(self: Any) -> None:
        if self.generation == 0 and self.member_id and self._group_instance_id is None:
            self.generation = 1
        await original(self)

    maybe_leave_group.xmodal_patched = True  # type: ignore[attr-defined]
    coordinator._maybe_leave_group = maybe_leave_group  # type: ignore[method-assign]


class IngestApp(faust.App):
    """The ingest app: a faust App whose consumer can be fenced, and that drains before it stops."""

    logger = logging.getLogger("faust.xmodal.app")  # under "faust", as for the consumer above

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failure: BaseException | None = None  # why ingest stopped on its own, else None
        self.draining = False
        self.fetch_wait_ms = 1500  # faust's own; create_app sets XMODAL_INGEST_FETCH_WAIT_MS
        self._batch_lock: asyncio.Lock | None = None  # made on the app's loop, on first use
        # A reindex handoff replayed between batches (create_app); a revoke waits for it, as for a
        # batch in hand, so the partition's next owner never writes beside it.
        self.idle_replay: asyncio.Future[None] | None = None

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    @property
    def batch_lock(self) -> asyncio.Lock:
        """Held by the agent while a batch is in hand (processing, dead letters, acks)."""
        if self._batch_lock is None:
            self._batch_lock = asyncio.Lock()
        return self._batch_lock

    def fail(self, reason: BaseException) -> None:
        """Stop ingesting for good: nothing more is committed; the host process sees `failure`."""
        cast(_FencedConsumer, self.consumer).fenced = True
        self.failure = reason

    async def drain(self, timeout_s: float) -> bool:
        """Let the batch in hand finish (written and acked, so its offsets commit at stop) and
        take no further batch. False when the batch did not finish in time (it is replayed)."""
        self.draining = True  # first: a batch taken from now on is left unacked for the next owner
        consumer = cast(_FencedConsumer, self.consumer)
        try:
            await asyncio.wait_for(self.batch_lock.acquire(), timeout_s)
        except asyncio.TimeoutError:
            consumer.fenced = True  # the batch may still be acked half-way: commit none of it
            return False
        finally:
            consumer.drained = True
        self.batch_lock.release()
        return True


def buffer_limits(settings: Settings) -> dict[str, Any]:
    """Faust/aiokafka settings that bound what the agent holds in memory, in bytes and events.

    - `consumer_max_fetch_size` (aiokafka `max_partition_fetch_bytes`): what one fetch returns per
      partition; aiokafka keeps at most one fetched response per partition, so prefetched bytes are
      at most assigned partitions x XMODAL_FETCH_MAX_BYTES. A record larger than the limit is still
      returned whole (Kafka's KIP-74), so it never stalls a partition.
    - `stream_buffer_maxsize` (events between the fetcher and the agent; faust's default is 4096,
      i.e. up to 4 GiB of 1 MB events) is two batches: the next batch is ready while one is encoded.
    - `broker_max_poll_records`: one poll hands at most one batch to the buffer.
    """
    return {
        "consumer_max_fetch_size": settings.fetch_max_bytes,
        "stream_buffer_maxsize": 2 * settings.batch_size,
        "broker_max_poll_records": settings.batch_size,
    }


def create_app(
    settings: Settings, bootstrap: str, pipeline: IngestPipeline, executor: ThreadPoolExecutor
) -> IngestApp:
    """A Faust app with the ingest agent bound to `pipeline` (already started by the caller).

    `executor` runs `pipeline.process`; give it one worker: the towers use every core themselves
    and two batches at once would thrash.
    """
    _leave_group_at_generation_zero()
    app = IngestApp(
        f"{settings.topic_prefix}-ingest",
        broker=f"kafka://{bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        web_enabled=False,
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(settings.session_timeout_ms / 3000, 0.5),
        consumer_auto_offset_reset="earliest",
        broker_commit_every=settings.batch_size,
        broker_commit_interval=1.0,
        **buffer_limits(settings),
        **faust_credentials(settings),
    )
    app.fetch_wait_ms = settings.ingest_fetch_wait_ms
    media = app.topic(settings.media_topic, key_type=bytes, value_type=bytes)
    dlq = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes)
    window_s = settings.batch_window_ms / 1000

    async def dead_letter(result_dead: Sequence[Any]) -> None:
        pending = [
            await dlq.send(key=key, value=value, headers=headers)
            for key, value, headers in (d.kafka_record(settings.dlq_max_record_bytes) for d in result_dead)
        ]
        await asyncio.gather(*pending)  # delivered before the source events are acked

    complete_idle = getattr(pipeline, "complete_idle", None)  # a HandoffPipeline's (xmodal/streams/handoff.py)

    async def replay_idle(owned: list[int]) -> None:
        async with app.batch_lock:  # one writer per partition: never beside a batch
            if app.draining or app.failure is not None or app.rebalancing:
                return
            try:
                await asyncio.get_running_loop().run_in_executor(executor, complete_idle, owned)
            except Exception as e:  # noqa: BLE001 - the handoff stays open: the next batch or tick retries
                log.warning("could not complete a reindex handoff yet (%s: %s); retrying", type(e).__name__, e)

    @app.timer(IDLE_CHECK_S)
    async def complete_idle_handoffs() -> None:
        """A reindex's switch on a log that then stands still: no batch comes to replay the events
        the reindex left for the live workers, so the owner replays them between batches."""
        busy = app.idle_replay is not None and not app.idle_replay.done()
        if complete_idle is None or busy or app.draining or app.failure is not None or app.rebalancing:
            return
        owned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == settings.media_topic)
        if owned:  # a task, not awaited here: a replay may outlast the timer's interval
            app.idle_replay = asyncio.ensure_future(replay_idle(owned))

    @app.agent(media, name="ingest")
    async def ingest(stream: faust.StreamT[Any]) -> None:
        loop = asyncio.get_running_loop()
        # noack_take restores this value when the agent leaves it: False, so faust never acks
        # events on its own (the module docstring says why).
        stream.enable_acks = False
        async for events in stream.noack_take(settings.batch_size, within=window_s):
            async with app.batch_lock:
                if app.draining or app.failure is not None:
                    continue  # stopping: left unacked, replayed by the next owner of the partition
                try:
                    records = [to_source_record(e) for e in events]
                    result = await loop.run_in_executor(executor, pipeline.process, records)
                    if result.dead:
                        await dead_letter(result.dead)
                        for d in result.dead:
                            log.warning(
                                "dead-lettered %s[%d]@%d: %s: %s",
                                d.record.topic, d.record.partition, d.record.offset, d.code, d.message,
                            )
                except Exception as e:  # noqa: BLE001 - any failure here stops ingest unacked
                    # Index or DLQ unavailable after retries: fence the consumer so nothing more
                    # commits, and let the host stop this process (it leaves the group) so a
                    # restart, or another worker, replays the batch.
                    app.fail(e)
                    log.error(
                        "ingest stopped: a batch of %d events could not be written (%s: %s); "
                        "its offsets are not committed and it will be replayed",
                        len(events), type(e).__name__, e,
                        exc_info=not isinstance(e, XmodalError),  # a traceback only for a bug
                    )
                    return
                for event in events:
                    await stream.ack(event)

    return app
