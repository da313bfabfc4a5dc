"""`xmodal demo`: the whole system on generated "shapes and sounds", measured through the live pipeline.

1. Brings up the embedded system (tansu, ingest agents, query service, qdrant-edge) in its own
   data dir (`<data dir>/demo`, emptied first), so it never touches the index of `xmodal up`.
2. Generates images and sounds of held-out attribute combinations plus as many of seen ones
   (`corpus.heldout_gallery`), and a caption text item per media item.
3. Publishes them as MediaEvents through Kafka and waits until the index holds them.
4. Searches over Kafka (SearchClient) with fresh wordings as text queries and fresh renderings as
   media queries (never the indexed caption or bytes), each query twice:
   - unfiltered: the mixed gallery with the default `modalities` (all) and no filter, which is how
     users search. Every direction is measured from the same mixed ranking: text->image,
     text->audio, text->text, image->image, image->text, audio->audio, audio->text, and
     "<modality>->any" (every relevant item of any modality);
   - filtered: restricted to one result modality (and, for sound->caption, to captions of sounds
     by a metadata filter): text->image, text->audio, image->image, audio->text. These show what
     the towers can do when the modality gap is kept out of the ranking.
   A result is relevant when it has the same attributes as the query (an item, or the caption of
   one). The figures are xmodal.evaluation's (ir-measures), as `xmodal eval` computes them.
5. Writes an HTML page of example queries with thumbnails and audio players.
"""

from __future__ import annotations

import base64
import html
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from xmodal.config import Settings
from xmodal.encoders.mini.corpus import (
    ATTRIBUTES,
    Item,
    describe,
    heldout_gallery,
    image_png,
    render_image,
    render_sound,
    waveform_wav,
)
from xmodal.errors import XmodalError
from xmodal.evaluation import EvalQuery, Evaluation, evaluate, make_query, run_queries, search_depth
from xmodal.query_api.client import SearchClient
from xmodal.runtime import Node, Roles
from xmodal.schema import SearchReply
from xmodal.streams.producer import DeliveryReport, produce_events

__all__ = ["DemoResult", "figure_rows", "run_demo", "search_count"]

KS = (1, 5, 10)
QUERY_SEED = 7_777  # queries are re-worded / re-rendered with other randomness than the indexed items
# Rows of the figures, in this order: the filtered directions, then every unfiltered one.
DIRECTIONS = (
    "text->image", "text->audio", "text->text", "text->any", "image->image", "image->text", "image->any",
    "audio->audio", "audio->text", "audio->any",
)  # fmt: skip
SHOWN = tuple(f"Success@{k}" for k in KS)


@dataclass
class DemoResult:
    items: dict[str, int]
    ingest_seconds: float
    search_ms_p50: float
    filtered: Evaluation  # one result modality per query (and captions of sounds for audio->text)
    unfiltered: Evaluation  # the mixed gallery, default modalities, no filter
    examples: list[dict[str, Any]] = field(default_factory=list)
    html: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "ingest_seconds": round(self.ingest_seconds, 2),
            "search_ms_p50": round(self.search_ms_p50, 2),
            "unfiltered": _figures(self.unfiltered, with_any=True),
            "filtered": _figures(self.filtered, with_any=False),
            "html": self.html,
        }


def _figures(evaluation: Evaluation, *, with_any: bool) -> dict[str, Any]:
    """by_direction; `with_any`: and "<modality>->any" where one query of that modality spans directions."""
    data = evaluation.to_dict()
    by_direction, queries = dict(data["by_direction"]), dict(data["counts"]["by_direction"])
    for modality, figures in data["by_query_modality"].items() if with_any else ():
        if sum(d.startswith(f"{modality}->") for d in by_direction) > 1:
            by_direction[f"{modality}->any"] = figures
            queries[f"{modality}->any"] = data["counts"]["by_query_modality"][modality]
    return {"by_direction": by_direction, "queries": queries, "metrics": data["metrics"]}


def figure_rows(result: DemoResult) -> list[tuple[str, str, list[str], list[str]]]:
    """(direction, queries, filtered Success@1/5/10, unfiltered Success@1/5/10) as text; "-" where not measured."""
    filtered, unfiltered = _figures(result.filtered, with_any=False), _figures(result.unfiltered, with_any=True)
    rows = []
    for direction in DIRECTIONS:
        f, u = filtered["by_direction"].get(direction), unfiltered["by_direction"].get(direction)
        if f is None and u is None:
            continue
        count = (filtered["queries"] | unfiltered["queries"]).get(direction, 0)
        rows.append((
            direction, str(count),
            [f"{f[m]:.2f}" if f else "-" for m in SHOWN], [f"{u[m]:.2f}" if u else "-" for m in SHOWN],
        ))
    return rows


def search_count(images: int, sounds: int, queries: int) -> int:
    """How many searches run_demo sends: every query filtered and unfiltered."""
    return 2 * (2 * min(queries, images) + 2 * min(queries, sounds))


def _key(item: Item) -> tuple[Any, ...]:
    return (item.modality, *(item.attributes[name] for name in ATTRIBUTES[item.modality]))


def _event(item_id: str, modality: str, payload: dict[str, Any], key: tuple[Any, ...]) -> tuple[str, bytes]:
    # `describes`: what a caption is about, so a sound can ask for captions of sounds (see below).
    metadata = {"corpus": "demo", "key": "|".join(map(str, key)), "describes": str(key[0])}
    return item_id, orjson.dumps({"id": item_id, "modality": modality, **payload, "metadata": metadata})


def _corpus_events(images: list[Item], sounds: list[Item]) -> list[tuple[str, bytes]]:
    events = []
    for item in images:
        events.append(_event(item.id, "image", {"data": base64.b64encode(image_png(item.media)).decode()}, _key(item)))
    for item in sounds:
        events.append(_event(item.id, "audio", {"data": base64.b64encode(waveform_wav(item.media)).decode()}, _key(item)))
    for item in images + sounds:
        events.append(_event(f"caption/{item.id}", "text", {"text": item.caption}, _key(item)))
    return events


def _data_uri(item: Item) -> str:
    if item.modality == "image":
        return "data:image/png;base64," + base64.b64encode(image_png(item.media)).decode()
    return "data:audio/wav;base64," + base64.b64encode(waveform_wav(item.media)).decode()


def _media_html(item: Item) -> str:
    if item.modality == "image":
        return f'<img src="{_data_uri(item)}" width="64" height="64" alt="{html.escape(item.caption)}">'
    return f'<audio controls preload="none" src="{_data_uri(item)}"></audio>'


def _write_html(path: Path, examples: list[dict[str, Any]], items: dict[str, Item], result: DemoResult) -> None:
    rows = []
    for ex in examples:
        query = ex["query_item"]
        query_html = html.escape(ex["query"]) if isinstance(query, str) else _media_html(query)
        cells = []
        for hit in ex["hits"]:
            hit_id = hit.id.removeprefix("caption/")
            source = items.get(hit_id)
            body = (
                html.escape(source.caption) if hit.modality == "text" and source else
                _media_html(source) if source else html.escape(hit.id)
            )
            mark = "✔" if hit.metadata.get("key") == ex["key"] else ""
            cells.append(f"<td>{body}<br><small>{hit.score:.3f} {mark}</small></td>")
        rows.append(
            f"<tr><th>{html.escape(ex['direction'])}</th><td>{query_html}</td>{''.join(cells)}</tr>"
        )
    figures = "".join(
        f"<tr><th>{html.escape(direction)}</th><td>{count}</td>" + "".join(f"<td>{v}</td>" for v in f + u) + "</tr>"
        for direction, count, f, u in figure_rows(result)
    )
    heads = "".join(f"<th>{label} {m}</th>" for label in ("filtered", "unfiltered") for m in SHOWN)
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>xmodal demo</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px;vertical-align:top;text-align:left}</style>"
        f"<h1>xmodal demo</h1><p>{sum(result.items.values())} items indexed through Kafka; "
        "✔ = same attributes as the query.</p>"
        "<h2>Through the live pipeline</h2><p>Success@k: a right item in the top k (papers' R@k). "
        "Unfiltered: one mixed gallery, default modalities, no filter; filtered: one result modality.</p>"
        f"<table><tr><th></th><th>queries</th>{heads}</tr>{figures}</table>"
        f"<h2>Example queries</h2><table>{''.join(rows)}</table>",
        encoding="utf-8",
    )


# Filtered searches: direction -> (result modalities, metadata filter).
_FILTERED: dict[str, tuple[list[str], dict[str, str]]] = {
    "text->image": (["image"], {}),
    "text->audio": (["audio"], {}),
    "image->image": (["image"], {}),
    # Captions of sounds only: unfiltered, the modality gap may let the 2x more image captions crowd them out.
    "audio->text": (["text"], {"describes": "audio"}),
}


def _plan(
    held_images: list[Item], held_sounds: list[Item], gallery: list[Item]
) -> tuple[list[EvalQuery], dict[str, dict[str, int]], dict[str, tuple[str, str, Any, str]]]:
    """The queries (each unfiltered and filtered), their qrels, and what the examples show of each.

    Relevant to a query: every gallery item with its attributes, and the captions of those items."""
    by_key: dict[str, list[tuple[str, str]]] = {}  # key -> (item id, modality)
    for item in gallery:
        key = "|".join(map(str, _key(item)))
        by_key.setdefault(key, []).extend([(item.id, item.modality), (f"caption/{item.id}", "text")])
    rng = np.random.default_rng(QUERY_SEED)
    queries: list[EvalQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    shown: dict[str, tuple[str, str, Any, str]] = {}

    def add(item: Item, kind: str, query: dict[str, str], display: Any, filtered: str) -> None:
        key = "|".join(map(str, _key(item)))
        modalities, metadata_filter = _FILTERED[filtered]
        target = modalities[0]
        for name, qid, extra in (
            ("unfiltered", f"unfiltered/{kind}/{item.id}", {}),
            ("filtered", f"filtered/{filtered}/{item.id}", {"modalities": modalities, "filter": metadata_filter or None}),
        ):
            queries.append(make_query(qid, query, **extra))
            qrels[qid] = {i: 1 for i, m in by_key[key] if name == "unfiltered" or m == target}
            label = f"{kind}->any (unfiltered)" if name == "unfiltered" else filtered
            caption = display if isinstance(display, str) else display.caption
            shown[qid] = (label, caption, display, key)

    for item in held_images:
        text = describe("image", item.attributes, rng).text
        add(item, "text", {"text": text}, text, "text->image")
    for item in held_sounds:
        text = describe("audio", item.attributes, rng).text
        add(item, "text", {"text": text}, text, "text->audio")
    for item in held_images:
        fresh = Item(item.id, "image", render_image(item.attributes, rng), item.caption, item.attributes)
        add(item, "image", {"image": base64.b64encode(image_png(fresh.media)).decode()}, fresh, "image->image")
    for item in held_sounds:
        fresh = Item(item.id, "audio", render_sound(item.attributes, rng), item.caption, item.attributes)
        add(item, "audio", {"audio": base64.b64encode(waveform_wav(fresh.media)).decode()}, fresh, "audio->text")
    return queries, qrels, shown


def run_demo(
    settings: Settings,
    *,
    images: int = 500,
    sounds: int = 150,
    queries: int = 100,
    progress: Callable[[str, int], Any] | None = None,
    examples_per_direction: int = 2,
) -> DemoResult:
    """Run the demo in `settings.data_dir / "demo"`; `images`/`sounds` are per half of the gallery."""
    demo_dir = settings.data_dir / "demo"
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    # Own topics per run: a broker shared with other runs (or with `xmodal up`) never mixes them in.
    prefix = f"{settings.topic_prefix}-demo-{uuid.uuid4().hex[:8]}"
    # No freshness probes: the demo counts indexed items, and a probe is one for a moment.
    demo_settings = settings.model_copy(update={"data_dir": demo_dir, "topic_prefix": prefix, "freshness_interval_s": 0})
    say = progress or (lambda _what, _n: None)

    held_img, seen_img = heldout_gallery("image", images)
    held_snd, seen_snd = heldout_gallery("audio", sounds)
    corpus_images, corpus_sounds = held_img + seen_img, held_snd + seen_snd
    by_id = {it.id: it for it in corpus_images + corpus_sounds}
    events = _corpus_events(corpus_images, corpus_sounds)

    node = Node(demo_settings, Roles(ingest=True, query=True, start_broker=not settings.kafka_bootstrap))
    node.start()
    try:
        assert node.index is not None
        start = time.perf_counter()
        report = produce_events(demo_settings, node.bootstrap, events, DeliveryReport(), on_sent=lambda: say("sent", 1))
        if report.failed:
            raise XmodalError(f"{report.failed} demo events were not acknowledged: {report.rejected[:3]}")
        indexed = 0
        deadline = time.monotonic() + 600
        while indexed < len(events):
            if node.failure is not None:
                raise XmodalError(f"ingest stopped: {node.failure}")
            if time.monotonic() > deadline:
                raise XmodalError(f"only {indexed} of {len(events)} demo items were indexed within 10 minutes")
            time.sleep(0.2)
            now = node.index.count("mini")
            say("indexed", now - indexed)
            indexed = now
        ingest_seconds = time.perf_counter() - start

        planned, qrels, shown = _plan(held_img[:queries], held_snd[:queries], corpus_images + corpus_sounds)
        depth = search_depth(KS)
        took: list[float] = []

        def record(future: Future[SearchReply]) -> None:
            if not future.cancelled() and future.exception() is None:
                took.append(future.result().took_ms)

        with SearchClient(demo_settings, node.bootstrap) as client:

            def submit(query: EvalQuery) -> Future[SearchReply]:
                future = client.send(query.to_request(k=depth, reply_to=client.reply_topic), timeout=120)
                future.add_done_callback(record)
                return future

            results, failures = run_queries(planned, submit, concurrency=32, on_done=lambda _q: say("searched", 1))
        if failures:
            first = next(iter(failures.items()))
            raise XmodalError(f"{len(failures)} demo searches failed, e.g. {first[0]}: {first[1]}")
    finally:
        node.stop()

    modality_of = {it.id: it.modality for it in corpus_images + corpus_sounds}
    modality_of |= {f"caption/{it.id}": "text" for it in corpus_images + corpus_sounds}
    parts = {name: [q for q in planned if q.query_id.startswith(f"{name}/")] for name in ("filtered", "unfiltered")}
    measured = {
        name: evaluate(part, qrels, results, ks=KS, item_modalities=modality_of) for name, part in parts.items()
    }
    examples: list[dict[str, Any]] = []
    for query in planned:
        label, text, query_item, key = shown[query.query_id]
        if sum(e["direction"] == label for e in examples) < examples_per_direction:
            examples.append({"direction": label, "query": text, "query_item": query_item, "key": key,
                             "hits": results[query.query_id][:5]})
    result = DemoResult(
        items={"image": len(corpus_images), "audio": len(corpus_sounds), "text": len(corpus_images) + len(corpus_sounds)},
        ingest_seconds=ingest_seconds,
        search_ms_p50=float(np.median(took)) if took else 0.0,
        filtered=measured["filtered"],
        unfiltered=measured["unfiltered"],
        examples=[{k: v for k, v in ex.items() if k != "query_item"} | {"hits": [h.model_dump() for h in ex["hits"]]}
                  for ex in examples],
    )
    page = demo_dir / "demo.html"
    _write_html(page, examples, by_id, result)
    result.html = str(page)
    return result


def format_examples(result: DemoResult) -> list[tuple[str, str, list[Sequence[str]]]]:
    """(direction, query, rows of rank/score/modality/id) for printing."""
    out = []
    for ex in result.examples:
        rows = [
            (str(rank), f"{hit['score']:.3f}", hit["modality"], hit["id"], "✔" if hit["metadata"].get("key") == ex["key"] else "")
            for rank, hit in enumerate(ex["hits"], 1)
        ]
        out.append((ex["direction"], ex["query"], rows))
    return out
