"""How QueryService and SearchClient fail: fatal and retriable broker errors, a reply reader that
dies, a start() that fails half-way. No broker: fake Kafka clients stand in for confluent-kafka's,
so each failure can be injected exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from xmodal.config import Settings, load_settings
from xmodal.errors import BrokerError, SearchError
from xmodal.query_api import client as client_module
from xmodal.query_api import service as service_module
from xmodal.query_api.client import SearchClient
from xmodal.query_api.service import QueryService


def fatal(reason: str = "producer fenced") -> KafkaError:
    return KafkaError(KafkaError._FATAL, reason, fatal=True)


def retriable(reason: str = "all brokers down") -> KafkaError:
    return KafkaError(KafkaError._ALL_BROKERS_DOWN, reason)


class ErrorMessage:
    """What Consumer.poll returns for a consumer error."""

    def __init__(self, error: KafkaError) -> None:
        self._error = error

    def error(self) -> KafkaError:
        return self._error


class FakeConsumer:
    """Consumer's surface as the service and the client use it. `script(n)` answers the n-th poll
    (from 1): it returns a message or None, or raises; by default nothing arrives."""

    def __init__(self, config: dict[str, Any], script: Callable[[int], Any] | None = None) -> None:
        self.config = config
        self.script = script
        self.polls: list[float] = []  # time.monotonic() of each poll
        self.closed = threading.Event()
        self.fail_subscribe: BaseException | None = None
        self.fail_list_topics: BaseException | None = None

    def subscribe(self, topics: list[str], on_assign: Callable[..., None] | None = None) -> None:
        if self.fail_subscribe is not None:
            raise self.fail_subscribe
        if on_assign is not None:
            on_assign(self, [])

    def assign(self, partitions: list[Any]) -> None:
        pass

    def list_topics(self, topic: str, timeout: float) -> Any:
        if self.fail_list_topics is not None:
            raise self.fail_list_topics
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def get_watermark_offsets(self, partition: Any, timeout: float) -> tuple[int, int]:
        return 0, 0

    def poll(self, timeout: float) -> Any:
        self.polls.append(time.monotonic())
        if self.script is not None:
            return self.script(len(self.polls))
        time.sleep(min(timeout, 0.01))
        return None

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        """What was fetched with the last poll's message: nothing more here."""
        return []

    def close(self) -> None:
        self.closed.set()


class FakeProducer:
    """Producer's surface; `errors` are handed to the config's error_cb by the next poll, as
    librdkafka serves its callbacks."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.errors: list[KafkaError] = []
        self.produced: list[tuple[str, bytes]] = []
        self.closed = False

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None) -> None:
        self.produced.append((topic, value))

    def poll(self, timeout: float = 0) -> int:
        while self.errors:
            self.config["error_cb"](self.errors.pop(0))
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def close(self) -> bool:
        self.closed = True
        return True


class FakeKafka:
    """Patches a module's Producer, Consumer and ensure_topics; keeps what it made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
        self.consumers: list[FakeConsumer] = []
        self.producers: list[FakeProducer] = []
        self.script: Callable[[int], Any] | None = None
        self.fail_consumer: BaseException | None = None
        self.fail_subscribe: BaseException | None = None
        self.fail_list_topics: BaseException | None = None
        monkeypatch.setattr(module, "Consumer", self._consumer)
        monkeypatch.setattr(module, "Producer", self._producer)
        monkeypatch.setattr(module, "ensure_topics", lambda *a, **k: None)

    def _consumer(self, config: dict[str, Any]) -> FakeConsumer:
        if self.fail_consumer is not None:
            raise self.fail_consumer
        consumer = FakeConsumer(config, self.script)
        consumer.fail_subscribe, consumer.fail_list_topics = self.fail_subscribe, self.fail_list_topics
        self.consumers.append(consumer)
        return consumer

    def _producer(self, config: dict[str, Any]) -> FakeProducer:
        producer = FakeProducer(config)
        self.producers.append(producer)
        return producer

    @property
    def consumer(self) -> FakeConsumer:
        (consumer,) = self.consumers
        return consumer

    @property
    def producer(self) -> FakeProducer:
        (producer,) = self.producers
        return producer


@pytest.fixture
def settings() -> Settings:
    return load_settings({"XMODAL_TOPIC_PREFIX": "t", "XMODAL_QUERY_CONCURRENCY": "2", "XMODAL_SEARCH_TIMEOUT_S": "30"})


@pytest.fixture
def service_kafka(monkeypatch: pytest.MonkeyPatch) -> FakeKafka:
    return FakeKafka(monkeypatch, service_module)


@pytest.fixture
def client_kafka(monkeypatch: pytest.MonkeyPatch) -> FakeKafka:
    return FakeKafka(monkeypatch, client_module)


@pytest.fixture
def make_service(settings: Settings) -> Iterator[Callable[[], QueryService]]:
    made: list[QueryService] = []

    def make() -> QueryService:
        svc = QueryService(settings, "fake:9092", searcher=None)  # type: ignore[arg-type]  # never searches
        made.append(svc)
        svc.start(timeout_s=5)
        return svc

    yield make
    for svc in made:
        svc.stop(timeout_s=5)


def raising(error: BaseException, after: int = 1) -> Callable[[int], Any]:
    """A poll script: nothing for `after - 1` polls, then `error` on every poll."""

    def script(n: int) -> Any:
        if n < after:
            time.sleep(0.005)
            return None
        raise error

    return script


# -- the query service's poll loop -----------------------------------------------------------


def test_a_fatal_poll_error_stops_the_service(
    service_kafka: FakeKafka, make_service: Callable[[], QueryService]
) -> None:
    service_kafka.script = raising(KafkaException(fatal("fenced by a newer instance")), after=3)
    svc = make_service()
    assert service_kafka.consumer.closed.wait(5), "the poll loop goes on after a fatal error"
    assert isinstance(svc.crashed, KafkaException) and "fenced by a newer instance" in str(svc.crashed)
    assert not svc.running
    assert len(service_kafka.consumer.polls) == 3  # no poll after the fatal one


def test_a_fatal_consumer_error_message_stops_the_service(
    service_kafka: FakeKafka, make_service: Callable[[], QueryService]
) -> None:
    def script(n: int) -> Any:
        return ErrorMessage(fatal("group authorization failed")) if n >= 2 else None

    service_kafka.script = script
    svc = make_service()
    assert service_kafka.consumer.closed.wait(5), "the poll loop goes on after a fatal consumer error"
    assert svc.crashed is not None and "group authorization failed" in str(svc.crashed)


def test_a_fatal_error_reported_to_the_error_callback_stops_the_service(
    service_kafka: FakeKafka, make_service: Callable[[], QueryService]
) -> None:
    svc = make_service()
    assert svc.running
    service_kafka.producer.config["error_cb"](retriable())  # logged, nothing more
    service_kafka.producer.errors.append(fatal("idempotent producer fenced"))
    assert service_kafka.consumer.closed.wait(5), "a fatal producer error left the poll loop running"
    assert svc.crashed is not None and "idempotent producer fenced" in str(svc.crashed)


@pytest.mark.parametrize("as_message", [False, True], ids=["raised", "message"])
def test_retriable_errors_pause_the_poll_loop(
    service_kafka: FakeKafka,
    make_service: Callable[[], QueryService],
    monkeypatch: pytest.MonkeyPatch,
    as_message: bool,
) -> None:
    monkeypatch.setattr(service_module, "RETRY_PAUSE_S", 0.1)
    third = threading.Event()

    def script(n: int) -> Any:
        if n >= 3:
            third.set()
        if as_message:
            return ErrorMessage(retriable())
        raise KafkaException(retriable())

    service_kafka.script = script
    svc = make_service()
    assert third.wait(5)
    polls = list(service_kafka.consumer.polls[:3])
    assert all(b - a >= 0.09 for a, b in zip(polls, polls[1:], strict=False)), polls
    assert svc.running and svc.crashed is None  # retriable: the service lives on
    started = time.monotonic()
    svc.stop(timeout_s=5)
    assert time.monotonic() - started < 1.0  # stop() does not wait out a pause


def test_any_death_of_the_poll_thread_is_reported(
    service_kafka: FakeKafka, make_service: Callable[[], QueryService]
) -> None:
    service_kafka.script = raising(RuntimeError("a bug in the poll loop"))
    svc = make_service()
    assert service_kafka.consumer.closed.wait(5)
    assert isinstance(svc.crashed, RuntimeError) and not svc.running


def test_a_service_stopped_normally_has_not_crashed(
    service_kafka: FakeKafka, make_service: Callable[[], QueryService]
) -> None:
    svc = make_service()
    svc.stop(timeout_s=5)
    assert service_kafka.consumer.closed.is_set() and svc.crashed is None


def test_start_fails_at_once_with_the_reason_when_the_poll_loop_dies_during_the_join(
    service_kafka: FakeKafka, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeConsumer, "subscribe", lambda self, topics, on_assign=None: None)  # never assigned
    service_kafka.script = raising(KafkaException(fatal("SASL authentication failed")))
    svc = QueryService(settings, "fake:9092", searcher=None)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(BrokerError, match="SASL authentication failed"):
        svc.start(timeout_s=20)
    assert time.monotonic() - started < 5
    assert service_kafka.consumer.closed.is_set() and not svc.running


def test_a_failed_service_start_leaves_no_client_behind(service_kafka: FakeKafka, settings: Settings) -> None:
    service_kafka.fail_subscribe = KafkaException(KafkaError(KafkaError._INVALID_ARG, "bad subscription"))
    svc = QueryService(settings, "fake:9092", searcher=None)  # type: ignore[arg-type]
    with pytest.raises(KafkaException, match="bad subscription"):
        svc.start(timeout_s=5)
    assert service_kafka.consumer.closed.is_set() and service_kafka.producer.closed
    assert svc.crashed is None and not svc.running

    service_kafka.producers.clear()
    service_kafka.fail_consumer = KafkaException(KafkaError(KafkaError._INVALID_ARG, "bad consumer config"))
    with pytest.raises(KafkaException, match="bad consumer config"):
        QueryService(settings, "fake:9092", searcher=None).start(timeout_s=5)  # type: ignore[arg-type]
    assert service_kafka.producer.closed


# -- the search client's reply reader ---------------------------------------------------------


def test_a_dead_reply_reader_fails_waiting_requests_and_refuses_new_ones(
    client_kafka: FakeKafka, settings: Settings
) -> None:
    die = threading.Event()

    def script(n: int) -> Any:
        if die.is_set():
            raise RuntimeError("reader boom")
        time.sleep(0.005)
        return None

    client_kafka.script = script
    client = SearchClient(settings, "fake:9092").start()
    try:
        waiting = [client.send_raw(b"{}", f"r{i}", timeout=30) for i in range(3)]
        die.set()
        for future in waiting:
            with pytest.raises(SearchError) as failed:
                future.result(5)
            assert failed.value.code == "client_closed" and "reader boom" in failed.value.message
            assert isinstance(failed.value.__cause__, RuntimeError)
        with pytest.raises(SearchError) as refused:
            client.send_raw(b"{}", "late", timeout=30)
        assert refused.value.code == "client_closed" and "reader boom" in refused.value.message
        with pytest.raises(SearchError, match="reader boom"):
            client.search("a dog")
        assert client.dead is not None
        assert client_kafka.consumer.closed.is_set()
    finally:
        client.close()


def test_a_fatal_broker_error_kills_the_reply_reader(client_kafka: FakeKafka, settings: Settings) -> None:
    client_kafka.script = raising(KafkaException(fatal("authorization failed")), after=5)
    with SearchClient(settings, "fake:9092") as client:
        future = client.send_raw(b"{}", "r1", timeout=30)
        with pytest.raises(SearchError, match="authorization failed") as failed:
            future.result(5)
        assert failed.value.code == "client_closed"


def test_a_fatal_error_callback_kills_the_reply_reader(client_kafka: FakeKafka, settings: Settings) -> None:
    with SearchClient(settings, "fake:9092") as client:
        future = client.send_raw(b"{}", "r1", timeout=30)
        client_kafka.producer.errors.append(fatal("idempotent producer fenced"))
        with pytest.raises(SearchError, match="idempotent producer fenced"):
            future.result(5)


def test_retriable_errors_do_not_kill_the_reply_reader(client_kafka: FakeKafka, settings: Settings) -> None:
    client_kafka.script = raising(KafkaException(retriable()))
    with SearchClient(settings, "fake:9092") as client:
        future = client.send_raw(b"{}", "r1", timeout=0.3)
        with pytest.raises(SearchError) as failed:
            future.result(5)
        assert failed.value.code == "timeout"  # expired as usual, not killed
        assert client.dead is None
        assert 1 <= len(client_kafka.consumer.polls) <= 10  # paused between retries, not spinning


def test_closing_fails_waiting_requests_and_refuses_new_ones(client_kafka: FakeKafka, settings: Settings) -> None:
    client = SearchClient(settings, "fake:9092").start()
    future = client.send_raw(b"{}", "r1", timeout=30)
    client.close()
    with pytest.raises(SearchError, match="closed") as failed:
        future.result(1)
    assert failed.value.code == "client_closed"
    with pytest.raises(SearchError) as refused:
        client.send_raw(b"{}", "r2")
    assert refused.value.code == "client_closed"


def test_a_failed_client_start_leaves_no_client_behind(client_kafka: FakeKafka, settings: Settings) -> None:
    client_kafka.fail_list_topics = KafkaException(KafkaError(KafkaError._TRANSPORT, "no route to broker"))
    client = SearchClient(settings, "fake:9092")
    with pytest.raises(BrokerError, match="no route to broker"):
        client.start(timeout_s=1)
    assert client_kafka.consumer.closed.is_set() and client_kafka.producer.closed

    client_kafka.producers.clear()
    client_kafka.fail_consumer = KafkaException(KafkaError(KafkaError._INVALID_ARG, "bad consumer config"))
    with pytest.raises(KafkaException, match="bad consumer config"):
        SearchClient(settings, "fake:9092").start(timeout_s=1)
    assert client_kafka.producer.closed
