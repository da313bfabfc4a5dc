"""`xmodal reindex SPACE --job ID` on a Qdrant server: several workers of one job split the media
topic's partitions, one switch, live ingest and searches across it, verify clean after; a second
job refused (and a crashed one dropped by --restart); a generation of another model refused.

No Qdrant server runs here: qdrant-client's local mode (one `QdrantClient(":memory:")` shared in
this process) stands in for it. It runs the same QdrantIndex code (collections per generation, the
alias, collection metadata) against the real tansu broker; what it cannot show is a server's own
behaviour under load (its HNSW builds, network failures, several client processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from log_support import group_caught_up, producer, text_event, wait_until
from qdrant_client import QdrantClient
from test_reindex import Traffic, perturbed_weights, seed

from xmodal.errors import VectorIndexError, XmodalError
from xmodal.indexer.provenance import ModelMismatch
from xmodal.indexer.remote import QdrantIndex
from xmodal.indexer.settings import IndexSettings
from xmodal.runtime import Node, Roles
from xmodal.streams.logread import end_offsets
from xmodal.streams.reindex import Reindexer
from xmodal.streams.reindex_server import ServerReindexer, list_server_generations
from xmodal.streams.verify import verify_space

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PARTITIONS = 4


class ClientOfServer(QdrantIndex):
    """A QdrantIndex on the stand-in server's client: closing it leaves the server up, as closing a
    client of a real server would (every process here shares the one local-mode client), and its
    calls take the server's one lock (local mode's numpy arrays are not safe across threads; a
    QdrantIndex locks only its own calls)."""

    server_lock = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = ClientOfServer.server_lock

    def close(self) -> None:
        self._closed = True


class Server:
    """The stand-in Qdrant server: one local-mode client; every index of the test talks to it."""

    def __init__(self, settings: Any) -> None:
        self.client = QdrantClient(":memory:")
        self.settings = settings

    def index(self, pin: Any = None, kind: type[QdrantIndex] = ClientOfServer) -> QdrantIndex:
        return kind(
            self.client, collection_prefix=self.settings.topic_prefix,
            index_settings=IndexSettings.from_settings(self.settings), pin=pin,
        )


@pytest.fixture
def server_settings(broker: str, make_settings: Any) -> Any:
    # The URL is never dialled (every index here is the local-mode client); it puts xmodal in server mode.
    return make_settings(
        kafka_bootstrap=broker, session_timeout_ms="6000", qdrant_url="http://qdrant.invalid:6333",
        topic_partitions=str(PARTITIONS),
    )


@pytest.fixture
def server(server_settings: Any) -> Server:
    return Server(server_settings)


@pytest.fixture
def live(server: Server, server_settings: Any) -> Iterator[Node]:
    """The live workers and the query service of a server deployment, writing through the alias."""
    with Node(server_settings, Roles(ingest=True, query=True), index=server.index()) as running:
        yield running


def worker(server: Server, settings: Any, broker: str, job: str, **options: Any) -> ServerReindexer:
    return ServerReindexer(settings, broker, "mini", job=job, index_factory=server.index, **options)


def run_workers(workers: list[ServerReindexer]) -> list[Any]:
    results: list[Any] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = workers[i].run()
        except BaseException as e:  # noqa: BLE001 - reported below, with the worker
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    return results


def test_two_workers_of_one_job_split_the_partitions_and_switch_once_while_the_space_serves(
    live: Node, server: Server, broker: str
) -> None:
    settings = live.settings
    seed(live, broker, 800)
    before = server.index().serving_generation("mini").number
    workers = [worker(server, settings, broker, "job-1"), worker(server, settings, broker, "job-1")]
    # 5 searches/s: qdrant-client's local mode (the server's stand-in here) answers each search and
    # the recall monitor's exact checks in Python under one lock, which a real server does not. The
    # 600 s timeouts once seen here at 20/s were at least partly the reindex chasing a growing log
    # (fixed: XMODAL_REINDEX_SWITCH_LAG); the lower rate is kept as margin on 2 cores.
    with Traffic(live, broker, 1000, searches_per_s=5.0) as traffic:
        time.sleep(1.0)
        results = run_workers(workers)
        time.sleep(3.0)  # searches and ingest go on across the switch
        traffic.stop()
    generation = results[0].generation
    assert {r.generation for r in results} == {generation} and generation != before
    assert server.index().serving_generation("mini").number == generation
    # Kafka split the topic between them: each had some partitions, together all of them.
    assert all(w.partitions_seen for w in workers), [w.partitions_seen for w in workers]
    assert workers[0].partitions_seen | workers[1].partitions_seen == set(range(PARTITIONS))
    assert sum(r.events for r in results) >= 800
    assert [w.switched_here for w in workers].count(True) == 1  # one switch; the other saw it
    assert results[0].handoff == results[1].handoff and set(results[0].handoff) == set(range(PARTITIONS))
    assert traffic.searches >= 40 and traffic.failures == []
    wait_until(lambda: group_caught_up(settings, broker), 120, "the live group to catch up")
    # Events came after the handoff offsets: only the live workers (replay, then the alias) wrote them.
    ends = end_offsets(settings, broker, settings.media_topic)
    assert sum(results[0].handoff.values()) < sum(ends.values())
    report = verify_space(settings, broker, "mini", index=live.index)
    assert report.clean, report
    assert report.generation == generation and report.ok == report.log_ids
    # A worker of the job started after the switch (a Job's retried pod) joins it and does nothing.
    late = worker(server, settings, broker, "job-1").run()
    assert (late.generation, late.events, late.handoff) == (generation, 0, results[0].handoff)
    rows = list_server_generations(server.index(), "mini")
    assert [(r["generation"], r["serving"], r["state"]) for r in rows] == [(before, False, "ready"), (generation, True, "ready")]
    assert rows[1]["job"] == "job-1"


class FailingAfter(ClientOfServer):
    """A server that stops taking writes after `n` upserts (a crashed job's leftover, on purpose)."""

    upserts_left = 2

    def upsert(self, space: str, points: Any) -> None:
        if FailingAfter.upserts_left <= 0:
            raise VectorIndexError("the server went away (test)")
        FailingAfter.upserts_left -= 1
        super().upsert(space, points)


def test_a_second_job_is_refused_and_a_crashed_jobs_generation_is_dropped_by_restart(
    live: Node, server: Server, broker: str
) -> None:
    settings = live.settings
    seed(live, broker, 300)

    def failing(pin: Any) -> QdrantIndex:
        return server.index(pin, FailingAfter) if pin else server.index()

    crashed = ServerReindexer(settings, broker, "mini", job="first", index_factory=failing)
    with pytest.raises(VectorIndexError, match="went away"):
        crashed.run()
    leftover = [g for g in server.index().generations("mini") if g.state == "building"]
    assert len(leftover) == 1
    with pytest.raises(XmodalError, match="reindex job 'first' is in progress") as refused:
        worker(server, settings, broker, "second").run()
    assert refused.value.code == "reindex_running"
    result = worker(server, settings, broker, "second", restart=True).run()
    states = {g.number: g.state for g in server.index().generations("mini")}
    # The crashed job's generation is gone; the new one has a number of its own (its group is fresh).
    assert leftover[0].number not in states and result.generation > leftover[0].number
    assert states[result.generation] == "ready" and list(states.values()).count("building") == 0
    assert server.index().serving_generation("mini").number == result.generation
    report = verify_space(settings, broker, "mini", index=live.index)
    assert report.clean, report


def test_a_generation_of_another_model_is_refused_by_the_old_models_services(
    live: Node, server: Server, broker: str, tmp_path: Path
) -> None:
    from xmodal.encoders.mini.space import MiniSpace

    settings = live.settings
    seed(live, broker, 50)
    other = MiniSpace(settings, weights_dir=perturbed_weights(tmp_path))
    assert other.fingerprint != live.spaces["mini"].fingerprint
    # Through Reindexer, as `xmodal reindex mini --job J` calls it in server mode.
    result = Reindexer(settings, broker, "mini", encoder=other, job="new-model", index_factory=server.index).run()
    assert server.index().serving_generation("mini").model == other.fingerprint
    live.stop()
    with pytest.raises(ModelMismatch, match=f"generation {result.generation}"):
        Node(settings, Roles(ingest=True, query=True), index=server.index()).start()


def test_server_mode_reindex_needs_the_same_settings_in_every_worker_of_a_job(
    live: Node, server: Server, broker: str
) -> None:
    settings = live.settings
    seed(live, broker, 20)
    gate = threading.Event()

    class Held(ClientOfServer):
        def upsert(self, space: str, points: Any) -> None:
            gate.wait(60)  # the first worker stays in progress while the second one joins
            super().upsert(space, points)

    def held(pin: Any) -> QdrantIndex:
        return server.index(pin, Held) if pin else server.index()

    first = ServerReindexer(settings, broker, "mini", job="j", index_factory=held)
    thread = threading.Thread(target=first.run)
    thread.start()
    try:
        wait_until(lambda: any(g.state == "building" for g in server.index().generations("mini")), 60, "the job's generation")
        other = settings.model_copy(update={"hnsw_m": 8})
        with pytest.raises(XmodalError, match="same settings"):
            worker(server, other, broker, "j").run()
    finally:
        gate.set()
        thread.join(120)
