"""`xmodal demo`: the whole system on generated "shapes and sounds", measured through the live pipeline.

1. Brings up the embedded system (tansu, ingest agents, query service, qdrant-edge) in its own
   data dir (`<data dir>/demo`, emptied first), so it never touches the index of `xmodal up`.
2. Generates images and sounds of held-out attribute combinations plus as many of seen ones
   (`corpus.heldout_gallery`), and a caption text item per media item.
3. Publishes them as MediaEvents through Kafka and waits until the index holds them.
4. Searches over Kafka (SearchClient): text->image, text->audio, image->image, audio->text, with
   fresh renderings as media queries (never the indexed bytes), and computes recall@k and
   precision@k against attribute relevance: a result is relevant when it has the same attributes.
5. Writes an HTML page of example queries with thumbnails and audio players.
"""

from __future__ import annotations

import base64
import html
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from xmodal.config import Settings
from xmodal.encoders.mini.corpus import (
    ATTRIBUTES,
    Item,
    heldout_gallery,
    image_png,
    render_image,
    render_sound,
    waveform_wav,
)
from xmodal.errors import XmodalError
from xmodal.query_api.client import SearchClient, hits_or_raise
from xmodal.runtime import Node, Roles
from xmodal.schema import SearchHit
from xmodal.streams.producer import DeliveryReport, produce_events

__all__ = ["DemoResult", "DirectionResult", "run_demo"]

KS = (1, 5, 10)
QUERY_SEED = 7_777  # media queries are re-rendered with other randomness than the indexed items


@dataclass
class DirectionResult:
    direction: str
    queries: int
    recall: dict[int, float]
    precision: dict[int, float]


@dataclass
class DemoResult:
    items: dict[str, int]
    ingest_seconds: float
    search_ms_p50: float
    directions: list[DirectionResult]
    examples: list[dict[str, Any]] = field(default_factory=list)
    html: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "ingest_seconds": round(self.ingest_seconds, 2),
            "search_ms_p50": round(self.search_ms_p50, 2),
            "recall": {d.direction: {f"R@{k}": round(v, 4) for k, v in d.recall.items()} for d in self.directions},
            "precision": {
                d.direction: {f"P@{k}": round(v, 4) for k, v in d.precision.items()} for d in self.directions
            },
            "queries": {d.direction: d.queries for d in self.directions},
            "html": self.html,
        }


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


def _metrics(direction: str, ranked: list[list[bool]]) -> DirectionResult:
    recall = {k: float(np.mean([any(r[:k]) for r in ranked])) for k in KS}
    precision = {k: float(np.mean([sum(r[:k]) / k for r in ranked])) for k in KS}
    return DirectionResult(direction, len(ranked), recall, precision)


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
        f"<tr><th>{d.direction}</th>" + "".join(f"<td>{d.recall[k]:.2f}</td>" for k in KS) + "</tr>"
        for d in result.directions
    )
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>xmodal demo</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px;vertical-align:top;text-align:left}</style>"
        f"<h1>xmodal demo</h1><p>{sum(result.items.values())} items indexed through Kafka; "
        "✔ = same attributes as the query.</p>"
        f"<h2>Recall through the live pipeline</h2><table><tr><th></th>{''.join(f'<th>R@{k}</th>' for k in KS)}</tr>{figures}</table>"
        f"<h2>Example queries</h2><table>{''.join(rows)}</table>",
        encoding="utf-8",
    )


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
    demo_settings = settings.model_copy(update={"data_dir": demo_dir, "topic_prefix": prefix})
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

        rng = np.random.default_rng(QUERY_SEED)
        plans: list[tuple[str, Any, tuple[Any, ...], dict[str, Any]]] = []  # direction, query, key, search args
        for item in held_img[:queries]:
            plans.append(("text->image", item.caption, _key(item), {"text": item.caption, "modalities": ["image"]}))
        for item in held_snd[:queries]:
            plans.append(("text->audio", item.caption, _key(item), {"text": item.caption, "modalities": ["audio"]}))
        for item in held_img[:queries]:
            fresh = Item(item.id, "image", render_image(item.attributes, rng), item.caption, item.attributes)
            plans.append(("image->image", fresh, _key(item), {"image": image_png(fresh.media), "modalities": ["image"]}))
        for item in held_snd[:queries]:
            fresh = Item(item.id, "audio", render_sound(item.attributes, rng), item.caption, item.attributes)
            # Filtered to captions of sounds: unfiltered, the towers' modality gap lets the 2x more
            # image captions crowd them out (docs/mini.md, "Limits").
            plans.append((
                "audio->text", fresh, _key(item),
                {"audio": waveform_wav(fresh.media), "modalities": ["text"], "filter": {"describes": "audio"}},
            ))

        took: list[float] = []
        ranked: dict[str, list[list[bool]]] = {}
        examples: list[dict[str, Any]] = []
        with SearchClient(demo_settings, node.bootstrap) as client:
            futures = [client.search_async(k=max(KS), timeout=120, **args) for _, _, _, args in plans]
            for (direction, query, key, _), future in zip(plans, futures):
                reply = future.result()
                hits: list[SearchHit] = hits_or_raise(reply)
                took.append(reply.took_ms)
                wanted = "|".join(map(str, key))
                ranked.setdefault(direction, []).append([h.metadata.get("key") == wanted for h in hits])
                if sum(e["direction"] == direction for e in examples) < examples_per_direction:
                    examples.append(
                        {"direction": direction, "query": query if isinstance(query, str) else query.caption,
                         "query_item": query, "key": wanted, "hits": hits[:5]}
                    )
                say("searched", 1)
    finally:
        node.stop()

    result = DemoResult(
        items={"image": len(corpus_images), "audio": len(corpus_sounds), "text": len(corpus_images) + len(corpus_sounds)},
        ingest_seconds=ingest_seconds,
        search_ms_p50=float(np.median(took)) if took else 0.0,
        directions=[_metrics(direction, lists) for direction, lists in ranked.items()],
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
