"""Crash loop: SIGKILL the ingest worker at random while keyed upserts, updates and deletes flow in.

A tansu broker runs in this process and outlives every worker (as a real Kafka does); the worker
is the real `xmodal worker` CLI with the embedded index in its own data dir. Each worker is killed
a random time after it printed that it is running, then started again. When the producer is done, a
last worker drains the topic, is stopped with SIGINT, and the index is checked item by item:
every live id has the payload of its latest event, every deleted id is gone.

    python benchmarks/crash_loop.py --seconds 60 --events 1300      # full size (docs/guarantees.md)

tests/streams/test_crash_loop.py runs a CI-sized loop through `run_crash_loop`.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from xmodal.indexer.edge import EdgeIndex
from xmodal.streams.broker import EmbeddedBroker

PARTITIONS = 2


@dataclass
class CrashLoopResult:
    events: int
    ids: int
    kills: int
    seconds: float
    drain_seconds: float
    live: int
    deleted: int
    wrong: list[str] = field(default_factory=list)  # "id: why", empty when the index is right

    def summary(self) -> str:
        verdict = "OK" if not self.wrong else f"{len(self.wrong)} WRONG"
        return (
            f"{self.events} events over {self.ids} ids in {self.seconds:.1f} s, {self.kills} SIGKILLs of the worker; "
            f"drained in {self.drain_seconds:.1f} s after the last event; index: {self.live} live ids with their "
            f"latest payload, {self.deleted} deleted ids absent: {verdict}"
        )


class Worker:
    """One `xmodal worker` process; ready once it printed that it is running."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xmodal.cli", "worker"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._pump, args=(log,), daemon=True).start()

    def _pump(self, log: Path) -> None:
        assert self.proc.stdout is not None
        with log.open("a") as out:
            for line in self.proc.stdout:
                out.write(line)
                if "worker is running" in line:
                    self.ready.set()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def _lag(broker: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        lag = 0
        for tp in consumer.committed(tps, timeout=10):
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def run_crash_loop(
    *,
    seconds: float,
    events: int,
    ids: int,
    kill_after_s: tuple[float, float] = (1.0, 5.0),
    seed: int = 0,
    work_dir: Path | None = None,
    drain_timeout_s: float = 180.0,
) -> CrashLoopResult:
    rng = random.Random(seed)
    work = Path(work_dir or tempfile.mkdtemp(prefix="xmodal-crash-loop-"))
    prefix = f"crash{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker(work / "broker") as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
        env.update(
            XMODAL_KAFKA_BOOTSTRAP=broker.bootstrap, XMODAL_TOPIC_PREFIX=prefix, XMODAL_DATA_DIR=str(work / "data"),
            XMODAL_METRICS_PORT="0", XMODAL_TOPIC_PARTITIONS=str(PARTITIONS), XMODAL_BATCH_SIZE="16",
            XMODAL_BATCH_WINDOW_MS="20", PYTHONUNBUFFERED="1",
        )
        from xmodal.config import load_settings
        from xmodal.streams.kafka import ensure_topics

        settings = load_settings({k: v for k, v in env.items() if k.startswith("XMODAL_")})
        ensure_topics(settings, broker.bootstrap)
        latest: dict[str, int | None] = {}  # id -> version of its latest event, None: deleted
        failures: list[str] = []
        done = threading.Event()

        def produce() -> None:
            producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random",
                                 "enable.idempotence": True, "linger.ms": 5})

            def delivered(err: object, _msg: object) -> None:
                if err is not None:
                    failures.append(str(err))

            start = time.monotonic()
            for n in range(events):
                item = f"item-{rng.randrange(ids)}"
                if item in latest and rng.random() < 0.2:
                    latest[item] = None
                    value = None if rng.random() < 0.5 else orjson.dumps({"id": item, "op": "delete"})
                else:
                    latest[item] = n
                    value = orjson.dumps({"id": item, "modality": "text", "text": f"{item} at version {n}",
                                          "metadata": {"cid": item, "v": n}})
                producer.produce(settings.media_topic, key=item.encode(), value=value, on_delivery=delivered)
                producer.poll(0)
                # Spread the events over the run, so kills land while they flow.
                time.sleep(max(0.0, start + seconds * (n + 1) / events - time.monotonic()))
            if producer.flush(60):
                failures.append("events not acknowledged by the broker")
            done.set()

        started = time.monotonic()
        feeder = threading.Thread(target=produce, name="crash-loop-producer")
        feeder.start()
        kills = 0
        log = work / "workers.log"
        while not done.is_set():
            worker = Worker(env, log)
            if worker.ready.wait(120):
                done.wait(rng.uniform(*kill_after_s))  # a random moment of its working life
            worker.kill()
            kills += 1
        feeder.join()
        produced_s = time.monotonic() - started
        if failures:
            raise RuntimeError(f"producing failed: {failures[:3]}")

        final = Worker(env, log)
        drain_start = time.monotonic()
        deadline = drain_start + drain_timeout_s
        group = f"{prefix}-ingest"
        while _lag(broker.bootstrap, group, settings.media_topic) > 0:
            if time.monotonic() > deadline or final.proc.poll() is not None:
                final.kill()
                raise RuntimeError(f"the last worker did not drain the topic within {drain_timeout_s:.0f} s; see {log}")
            time.sleep(0.5)
        drain_s = time.monotonic() - drain_start
        final.proc.send_signal(signal.SIGINT)
        if final.proc.wait(60) != 0:
            raise RuntimeError(f"the last worker exited with {final.proc.returncode}; see {log}")

    index = EdgeIndex(work / "data" / "index")
    wrong: list[str] = []
    probe = np.zeros(384, dtype=np.float32)
    probe[0] = 1.0  # any vector: the filter picks the item
    try:
        for item, version in sorted(latest.items()):
            hits = index.search("mini", probe, 5, filter={"cid": item})
            if version is None and hits:
                wrong.append(f"{item}: deleted, but still indexed")
            elif version is not None and [h.metadata.get("v") for h in hits] != [version]:
                wrong.append(f"{item}: expected version {version}, index has {[h.metadata.get('v') for h in hits]}")
        live = sum(v is not None for v in latest.values())
        if index.count("mini") != live:
            wrong.append(f"index holds {index.count('mini')} points, {live} ids are live")
    finally:
        index.close()
    return CrashLoopResult(
        events=events, ids=len(latest), kills=kills, seconds=produced_s, drain_seconds=drain_s,
        live=live, deleted=len(latest) - live, wrong=wrong,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the events flow")
    parser.add_argument("--events", type=int, default=1300)
    parser.add_argument("--ids", type=int, default=300, help="distinct item ids the events update")
    parser.add_argument("--kill-min", type=float, default=3.0, help="seconds a worker runs at least")
    parser.add_argument("--kill-max", type=float, default=8.0, help="seconds a worker runs at most")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run_crash_loop(
        seconds=args.seconds, events=args.events, ids=args.ids,
        kill_after_s=(args.kill_min, args.kill_max), seed=args.seed,
    )
    print(result.summary())
    for problem in result.wrong[:20]:
        print("  ", problem)
    sys.exit(1 if result.wrong else 0)


if __name__ == "__main__":
    main()
