"""`xmodal eval` as a user runs it: `xmodal up`, ingest a small mixed gallery, then eval through Kafka.

The figures are checked against the run file the same command wrote (`--run-out`), recomputed here
by hand, and the exit status against thresholds on each side of the measured values."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from cli_support import Up, run, start_up, stop_up, user_env

from xmodal.encoders.mini.corpus import Item, image_items, image_png, render_image, render_sound, sound_items, waveform_wav

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return user_env(tmp_path, COLUMNS="250")


@pytest.fixture
def up(env: dict[str, str], tmp_path: Path) -> Iterator[Up]:
    """`xmodal up` in the background until it prints that it is ready; Ctrl-C at the end."""
    running = start_up(env, tmp_path)
    try:
        yield running
    finally:
        stop_up(running)


def gallery() -> tuple[list[dict[str, object]], list[Item], list[Item]]:
    images, sounds = image_items(3, "seen"), sound_items(2, "seen")
    events: list[dict[str, object]] = []
    for item in images:
        events.append({"id": item.id, "modality": "image", "data": base64.b64encode(image_png(item.media)).decode()})
    for item in sounds:
        events.append({"id": item.id, "modality": "audio", "data": base64.b64encode(waveform_wav(item.media)).decode()})
    for item in images + sounds:
        events.append({"id": f"caption/{item.id}", "modality": "text", "text": item.caption})
    events.append({"id": "note/budget", "modality": "text", "text": "quarterly budget meeting notes"})
    events.append({"id": "note/rain", "modality": "text", "text": "heavy rain falling on a tin roof"})
    return events, images, sounds


def by_hand(ranked: list[str], relevant: set[str], k: int) -> dict[str, float]:
    hits = [d in relevant for d in ranked]
    return {
        f"Success@{k}": float(any(hits[:k])),
        f"P@{k}": sum(hits[:k]) / k,
        f"R@{k}": sum(hits[:k]) / len(relevant),
        "RR": next((1 / r for r, h in enumerate(hits, 1) if h), 0.0),
    }


def test_eval_through_the_broker(up: Up, env: dict[str, str], tmp_path: Path) -> None:
    events, images, sounds = gallery()
    modality_of = {str(e["id"]): str(e["modality"]) for e in events}
    media = tmp_path / "gallery.jsonl"
    media.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    ingest = run(["ingest", str(media)], env, tmp_path)
    assert ingest.returncode == 0 and f"acknowledged {len(events)}" in ingest.stdout, ingest.stdout + ingest.stderr

    deadline = time.monotonic() + 120  # indexed once a search returns every item
    while True:
        found = run(["search", "anything", "-k", "50", "--json"], env, tmp_path)
        if found.returncode == 0 and len(orjson.loads(found.stdout)) == len(events):
            break
        assert time.monotonic() < deadline, found.stdout + found.stderr
        time.sleep(0.5)

    rng = np.random.default_rng(99)
    img, snd = images[0], sounds[0]
    fresh_image = image_png(render_image(img.attributes, rng))
    fresh_sound = waveform_wav(render_sound(snd.attributes, rng))
    queries = [
        {"query_id": "budget", "query": {"text": "quarterly budget meeting notes"}, "modalities": ["text"]},
        {"query_id": "rain", "query": {"text": "heavy rain falling on a tin roof"}},
        {"query_id": "img-caption", "query": {"text": img.caption}},
        {"query_id": "img-photo", "query": {"image": base64.b64encode(fresh_image).decode()}},
        {"query_id": "snd-clip", "query": {"audio": base64.b64encode(fresh_sound).decode()}},
    ]
    qrels = {
        "budget": {"note/budget": 1},
        "rain": {"note/rain": 1},
        "img-caption": {img.id: 1, f"caption/{img.id}": 1},
        "img-photo": {img.id: 1, f"caption/{img.id}": 1},
        "snd-clip": {snd.id: 1, f"caption/{snd.id}": 1},
    }
    qfile, qrels_file = tmp_path / "queries.jsonl", tmp_path / "qrels.txt"
    qfile.write_bytes(b"\n".join(orjson.dumps(q) for q in queries) + b"\n")
    qrels_file.write_text("".join(f"{q} 0 {d} {r}\n" for q, judged in qrels.items() for d, r in judged.items()))
    run_file = tmp_path / "run.txt"

    result = run(["eval", "--queries", str(qfile), "--qrels", str(qrels_file), "--json", "--run-out", str(run_file)], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(result.stdout)
    assert report["counts"]["queries"] == 5 and report["counts"]["failed"] == 0 and report["depth"] == 10
    assert set(report["metrics"]) == {
        *(f"{m}@{k}" for m in ("Success", "P", "R") for k in (1, 5, 10)), "nDCG@10", "RR"
    }
    assert set(report["by_direction"]) == {
        "text->text", "text->image", "image->image", "image->text", "audio->audio", "audio->text"
    }
    assert report["counts"]["by_direction"]["text->text"] == 3  # budget, rain, img-caption

    ranked: dict[str, list[str]] = {}
    for line in run_file.read_text().splitlines():
        qid, q0, item, rank, _score, tag = line.split()
        assert q0 == "Q0" and tag == "xmodal" and int(rank) == len(ranked.setdefault(qid, [])) + 1
        ranked[qid].append(item)
    texts = sum(m == "text" for m in modality_of.values())
    assert {q: len(r) for q, r in ranked.items()} == {q: texts if q == "budget" else 10 for q in qrels}
    # Exact texts, asked among texts, come first: the measures can see a right answer.
    assert ranked["budget"][0] == "note/budget"

    def expected(direction: str | None) -> dict[str, float]:
        rows = []
        for q in queries:
            kind = next(iter(q["query"]))  # type: ignore[call-overload]
            for result_modality in ("text", "image", "audio"):
                relevant = {d for d in qrels[str(q["query_id"])] if direction is None or modality_of[d] == result_modality}
                if not relevant or (direction is not None and direction != f"{kind}->{result_modality}"):
                    continue
                row: dict[str, float] = {}
                for k in (1, 5, 10):
                    row |= by_hand(ranked[str(q["query_id"])], relevant, k)
                rows.append(row)
                if direction is None:
                    break
        return {name: sum(r[name] for r in rows) / len(rows) for name in rows[0]}

    for name, value in expected(None).items():
        assert report["metrics"][name] == pytest.approx(value, abs=1e-6), name
    for direction, figures in report["by_direction"].items():
        for name, value in expected(direction).items():
            assert figures[name] == pytest.approx(value, abs=1e-6), (direction, name)

    # --fail-under on each side of a measured value (the same index gives the same ranking).
    rr = report["by_direction"]["image->image"]["RR"]
    base = ["eval", "--queries", str(qfile), "--qrels", str(qrels_file)]
    met = run([*base, "--fail-under", f"image->image:RR={rr}", "--fail-under", f"Success@10={report['metrics']['Success@10']}"], env, tmp_path)
    assert met.returncode == 0, met.stderr
    assert "papers' R@1" in met.stdout and "text->image" in met.stdout  # the table
    missed = run([*base, "--json", "--fail-under", f"image->image:RR={rr + 0.01}"], env, tmp_path)
    assert missed.returncode == 1, missed.stderr
    assert "image->image RR" in missed.stderr and "is below" in missed.stderr
    assert orjson.loads(missed.stdout)["by_direction"]["image->image"]["RR"] == rr

    # A search the service refuses (file:// outside the media roots) is reported and exits 3.
    failing = tmp_path / "failing.jsonl"
    failing.write_text(qfile.read_text() + '{"query_id": "nofile", "query": {"uri": "file:///nope.png", "modality": "image"}}\n')
    (tmp_path / "qrels-failing.txt").write_text(qrels_file.read_text() + "nofile 0 note/rain 1\n")
    failed = run(["eval", "--queries", str(failing), "--qrels", str(tmp_path / "qrels-failing.txt"), "--json"], env, tmp_path)
    assert failed.returncode == 3, failed.stderr
    assert "failed nofile:" in failed.stderr and orjson.loads(failed.stdout)["counts"]["failed"] == 1


def test_bad_input_names_the_file_and_line(env: dict[str, str], tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query_id": "a", "query": {"text": "x"}}\n')
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("a 0 doc 1\na 0 doc2\n")
    bad = run(["eval", "--queries", str(queries), "--qrels", str(qrels)], env, tmp_path)
    assert bad.returncode == 2 and f"{qrels}:2: expected 4 fields" in bad.stderr, bad.stderr
    qrels.write_text("a 0 doc 1\n")
    bad = run(["eval", "--queries", str(queries), "--qrels", str(qrels), "--fail-under", "MAP=0.3"], env, tmp_path)
    assert bad.returncode == 2 and "'MAP' is not a computed measure" in bad.stderr
    # Good input but nothing running: says what to start.
    orphan = run(["eval", "--queries", str(queries), "--qrels", str(qrels)], env, tmp_path)
    assert orphan.returncode == 2 and "xmodal up" in orphan.stderr
