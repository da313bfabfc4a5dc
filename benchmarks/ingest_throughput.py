"""Ingest throughput through the real pipeline: producer -> tansu -> Faust agent -> mini towers -> qdrant-edge.

Prints events/s from the first produce to the last point acknowledged by the index, per modality
and micro-batch size, plus the index lag (Kafka timestamp -> upsert ack) percentiles.

    python benchmarks/ingest_throughput.py                     # 2000 texts, 1000 images, 300 sounds
    python benchmarks/ingest_throughput.py --batch-sizes 16,64,256 --texts 5000
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path

import orjson

from xmodal.config import load_settings
from xmodal.encoders.mini.corpus import image_items, image_png, sound_items, waveform_wav
from xmodal.metrics import INDEX_LAG
from xmodal.runtime import Node, Roles
from xmodal.streams.broker import EmbeddedBroker
from xmodal.streams.producer import DeliveryReport, produce_events


def lag_quantiles() -> tuple[float, float]:
    """p50/p99 of xmodal_index_lag_seconds from its cumulative buckets (upper bounds)."""
    [metric] = [m for m in INDEX_LAG.collect() if m.name == "xmodal_index_lag_seconds"]
    buckets = [(float(s.labels["le"]), s.value) for s in metric.samples if s.name.endswith("_bucket")]
    total = buckets[-1][1] or 1
    p50 = next(le for le, count in buckets if count >= 0.5 * total)
    p99 = next(le for le, count in buckets if count >= 0.99 * total)
    return p50, p99


def run(kind: str, events: list[tuple[str, bytes]], batch_size: int, broker: str, root: Path) -> None:
    settings = load_settings(
        {},
        kafka_bootstrap=broker,
        topic_prefix=f"bench-{kind}-{batch_size}-{time.time_ns()}",
        data_dir=root / f"{kind}-{batch_size}",
        batch_size=batch_size,
        metrics_port=0,
    )
    with Node(settings, Roles(ingest=True, query=False)) as node:
        assert node.index is not None
        start = time.perf_counter()
        produce_events(settings, node.bootstrap, events, DeliveryReport())
        produced = time.perf_counter() - start
        while node.index.count("mini") < len(events):
            if node.failure is not None:
                raise SystemExit(f"ingest failed: {node.failure}")
            time.sleep(0.05)
        took = time.perf_counter() - start
    p50, p99 = lag_quantiles()
    print(
        f"{kind:6s} batch {batch_size:4d}: {len(events):5d} events in {took:6.1f} s = {len(events) / took:7.1f} events/s "
        f"(produce {produced:.1f} s; index lag p50 <= {p50} s, p99 <= {p99} s, cumulative)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--sounds", type=int, default=300)
    parser.add_argument("--batch-sizes", default="64")
    args = parser.parse_args()

    texts = [
        (f"t{i}", orjson.dumps({"id": f"t{i}", "modality": "text", "text": f"caption number {i}: a small red thing"}))
        for i in range(args.texts)
    ]
    images = [
        (it.id, orjson.dumps({"id": it.id, "modality": "image", "data": base64.b64encode(image_png(it.media)).decode()}))
        for it in image_items(args.images, "seen")
    ]
    sounds = [
        (it.id, orjson.dumps({"id": it.id, "modality": "audio", "data": base64.b64encode(waveform_wav(it.media)).decode()}))
        for it in sound_items(args.sounds, "seen")
    ]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "broker") as broker:
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            for kind, events in (("text", texts), ("image", images), ("audio", sounds)):
                if events:
                    run(kind, events, batch_size, broker.bootstrap, Path(tmp))


if __name__ == "__main__":
    main()
