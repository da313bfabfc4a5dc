"""What reranking gains where the first stage is weakest, measured by `xmodal eval` on the live path.

    python benchmarks/rerank_gain.py                      # n = 100 held-out binding scenes (400 images)
    python benchmarks/rerank_gain.py --n 30 --json
    python benchmarks/rerank_gain.py --files-only DIR     # just write media.jsonl, queries.jsonl, qrels.txt

The gallery and queries are the mini cross-encoder's evaluation set (xmodal/encoders/mini/
evaluate_cross.py, `rerank_gallery`): held-out two-object scenes, their colour-swapped twins,
single objects, ordinary corpus images, and every image's caption as a text item. Query groups:
binding text->image ("a red circle and a blue square": the twin is not relevant), counts and sizes
text->image, binding image->text. They are written in `xmodal eval`'s formats, then:

1. a Node (ingest agents + query service, as `xmodal up` runs them) starts on the embedded broker
   and an embedded index in a scratch directory; the media events go through Kafka, so ingest makes
   the thumbnails the reranker reads;
2. `xmodal eval --no-rerank` and `xmodal eval --rerank` run as subprocesses against it, one query
   file per group, and their Success@1, Success@5 and nDCG@10 are printed side by side.

Needs the shipped mini cross-encoder (xmodal/encoders/mini/weights/cross.safetensors).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from xmodal.config import load_settings
from xmodal.encoders.mini.evaluate_cross import rerank_gallery
from xmodal.runtime import Node, Roles
from xmodal.streams.broker import EmbeddedBroker

MEASURES = ("Success@1", "Success@5", "nDCG@10")


def png_b64(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_files(out: Path, n: int, seed: int) -> tuple[int, list[str]]:
    """media.jsonl (MediaEvents), and per query group <group>.queries.jsonl + <group>.qrels.txt."""
    gallery = rerank_gallery(n, seed)
    out.mkdir(parents=True, exist_ok=True)
    image_ids = [item.id for item in gallery.images]
    text_ids = [f"caption/{j}" for j in range(len(gallery.texts))]
    events = [{"id": item.id, "modality": "image", "data": png_b64(item.media)} for item in gallery.images]
    events += [{"id": text_ids[j], "modality": "text", "text": text} for j, text in enumerate(gallery.texts)]
    (out / "media.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    groups = []
    for name, group in gallery.groups.items():
        slug = name.replace(" ", "_").replace("->", "-to-")
        targets, modalities = (image_ids, ["image"]) if group.query_modality == "text" else (text_ids, ["text"])
        lines, qrels = [], []
        for q, (query, relevant) in enumerate(zip(group.queries, group.relevant)):
            payload = {"text": query} if group.query_modality == "text" else {"image": png_b64(query)}
            lines.append(orjson.dumps({"query_id": f"{slug}-{q}", "query": payload, "modalities": modalities}))
            qrels += [f"{slug}-{q} 0 {targets[i]} 1\n" for i in sorted(relevant)]
        (out / f"{slug}.queries.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        (out / f"{slug}.qrels.txt").write_text("".join(qrels))
        groups.append(slug)
    return len(events), groups


def ingest(node: Node, media: Path, count: int) -> float:
    producer = Producer({"bootstrap.servers": node.bootstrap, "partitioner": "murmur2_random", "linger.ms": 20})
    start = time.perf_counter()
    for line in media.read_bytes().splitlines():
        event = orjson.loads(line)
        producer.produce(node.settings.media_topic, key=event["id"].encode(), value=line)
        producer.poll(0)
    producer.flush(60)
    assert node.index is not None
    while node.index.count("mini") < count:
        if time.perf_counter() - start > 1800:
            sys.exit(f"only {node.index.count('mini')} of {count} items indexed after 30 minutes")
        time.sleep(0.5)
    return time.perf_counter() - start


def xmodal_eval(env: dict[str, str], files: Path, group: str, flag: str, rerank_k: int) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "xmodal.cli", "eval", "--queries", str(files / f"{group}.queries.jsonl"),
        "--qrels", str(files / f"{group}.qrels.txt"), "--k", "1,5,10", "--json", flag,
    ]
    if flag == "--rerank":
        command += ["--rerank-k", str(rerank_k)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode not in (0, 1):
        sys.exit(f"xmodal eval {flag} on {group} failed ({done.returncode}): {done.stderr[-2000:]}")
    return orjson.loads(done.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="held-out binding scenes (the gallery holds 4n images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerank-k", type=int, default=50)
    parser.add_argument("--files-only", type=Path, default=None, help="write the files here and stop")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.files_only is not None:
        count, groups = write_files(args.files_only, args.n, args.seed)
        print(f"wrote {count} media events and {len(groups)} query groups ({', '.join(groups)}) to {args.files_only}")
        return

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        count, groups = write_files(scratch / "files", args.n, args.seed)
        env = {
            "XMODAL_DATA_DIR": str(scratch / "data"),
            "XMODAL_METRICS_PORT": "0",
            "XMODAL_HTTP_PORT": "0",
            "XMODAL_RERANK_K": str(args.rerank_k),
        }
        with EmbeddedBroker(scratch / "broker") as broker:
            settings = load_settings({**env, "XMODAL_KAFKA_BOOTSTRAP": broker.bootstrap})
            with Node(settings, Roles(ingest=True, query=True)) as node:
                took = ingest(node, scratch / "files" / "media.jsonl", count)
                child_env = {**os.environ, **env, "XMODAL_KAFKA_BOOTSTRAP": broker.bootstrap}
                results = {
                    group: {flag: xmodal_eval(child_env, scratch / "files", group, flag, args.rerank_k) for flag in ("--no-rerank", "--rerank")}
                    for group in groups
                }
    rows = []
    for group, runs in results.items():
        first, reranked = runs["--no-rerank"], runs["--rerank"]
        rows.append(
            {
                "group": group,
                "queries": first["counts"]["queries"],
                "reranked_replies": reranked["counts"]["reranked"],
                "first_stage": {m: first["metrics"][m] for m in MEASURES},
                "reranked": {m: reranked["metrics"][m] for m in MEASURES},
            }
        )
    if args.json:
        print(orjson.dumps({"n": args.n, "seed": args.seed, "rerank_k": args.rerank_k, "items": count, "rows": rows}, option=orjson.OPT_INDENT_2).decode())
        return
    print(f"xmodal eval, first stage vs reranked (rerank_k {args.rerank_k}); {count} items ingested through Kafka in {took:.0f} s")
    print(f"{'group':<28} {'queries':>7}  " + "  ".join(f"{m + ' 1st':>13} {m + ' rr':>13}" for m in MEASURES))
    for r in rows:
        cells = "  ".join(f"{r['first_stage'][m]:>13.3f} {r['reranked'][m]:>13.3f}" for m in MEASURES)
        print(f"{r['group']:<28} {r['queries']:>7}  {cells}")


if __name__ == "__main__":
    main()
