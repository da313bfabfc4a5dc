"""One mixed gallery, default modalities: every modality ranks against the others.

Images, sounds, their captions and unrelated sentences of the mini corpus's held-out split are
ingested by the real pipeline into a real qdrant-edge index and searched by the real Searcher with
the shipped mini towers — no modality filter, as users search. Floors are the issue's targets.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from xmodal.config import load_settings
from xmodal.encoders.media import MediaLimits
from xmodal.encoders.mini import corpus
from xmodal.encoders.mini.space import MiniSpace
from xmodal.indexer.edge import EdgeIndex
from xmodal.query_api.searcher import Searcher
from xmodal.schema import SearchHit, SearchRequest
from xmodal.streams.pipeline import IngestPipeline, SourceRecord

N_IMAGES, N_SOUNDS, N_UNRELATED = 18, 6, 8  # held-out and as many seen items of each


class Gallery:
    def __init__(self, root: Path) -> None:
        settings = load_settings({})
        self.space = MiniSpace(settings)
        self.index = EdgeIndex(root)
        limits = MediaLimits.from_settings(settings)
        pipeline = IngestPipeline({"mini": self.space}, self.index, limits)
        pipeline.start()
        images = [it for pair in zip(*corpus.heldout_gallery("image", N_IMAGES)) for it in pair]
        sounds = [it for pair in zip(*corpus.heldout_gallery("audio", N_SOUNDS)) for it in pair]
        self.items = {it.id: it for it in images + sounds}
        rng = np.random.default_rng(11)
        # a caption item for every held-out image and sound, worded afresh; unrelated sentences beside them
        self.captions = {f"caption/{it.id}": corpus.describe(it.modality, it.attributes, rng).text for it in images + sounds}
        unrelated = corpus.unrelated_sentences(N_UNRELATED, "heldout")
        events: list[dict[str, Any]] = []
        for it in images:
            events.append({"id": it.id, "modality": "image", "data": _b64(corpus.image_png(it.media))})
        for it in sounds:
            events.append({"id": it.id, "modality": "audio", "data": _b64(corpus.waveform_wav(it.media))})
        events += [{"id": cid, "modality": "text", "text": text} for cid, text in self.captions.items()]
        events += [{"id": f"unrelated/{n}", "modality": "text", "text": t} for n, t in enumerate(unrelated)]
        records = [SourceRecord("media", 0, n, e["id"].encode(), orjson.dumps(e)) for n, e in enumerate(events)]
        for start in range(0, len(records), 64):
            assert not pipeline.process(records[start : start + 64]).dead
        self.searcher = Searcher({"mini": self.space}, self.index, limits)
        self.held_images = [it for it in images if it.id in {x.id for x in corpus.heldout_gallery("image", N_IMAGES)[0]}]
        self.held_sounds = [it for it in sounds if it.id in {x.id for x in corpus.heldout_gallery("audio", N_SOUNDS)[0]}]

    def search(self, query: dict[str, Any], **fields: Any) -> list[SearchHit]:
        return self.searcher.search(SearchRequest.model_validate({"request_id": "r", "query": query, "k": 5, **fields}))

    def right(self, item: corpus.Item, hit: SearchHit) -> bool:
        """A hit is right for `item`'s description if it is an item of the same attributes, or its caption."""
        other = self.items.get(hit.id) or self.items.get(hit.id.removeprefix("caption/"))
        return other is not None and other.modality == item.modality and other.attributes == item.attributes


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gallery]:
    g = Gallery(tmp_path_factory.mktemp("mixed") / "index")
    yield g
    g.index.close()


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


def test_a_text_query_finds_images_and_sounds_among_all_modalities(gallery: Gallery) -> None:
    rng = np.random.default_rng(5)
    image_hits, sound_hits, top1 = [], [], []
    for item in gallery.held_images + gallery.held_sounds:
        query = corpus.describe(item.modality, item.attributes, rng).text  # another wording again
        hits = gallery.search({"text": query})
        assert {h.modality for h in hits} <= {"text", "image", "audio"}
        right_media = [h for h in hits if h.modality == item.modality and gallery.right(item, h)]
        (image_hits if item.modality == "image" else sound_hits).append(bool(right_media))
        top1.append(gallery.right(item, hits[0]))
    assert rate(image_hits) >= 0.95, f"text->image Success@5 {rate(image_hits):.2f}"
    assert rate(sound_hits) >= 0.95, f"text->audio Success@5 {rate(sound_hits):.2f}"
    assert rate(top1) >= 0.9, f"text->any Success@1 {rate(top1):.2f}"


def test_a_sound_finds_its_description_among_all_captions(gallery: Gallery) -> None:
    found = []
    for item in gallery.held_sounds:
        hits = gallery.search({"audio": _b64(corpus.waveform_wav(item.media))}, modalities=["text"])
        found.append(hits[0].id == f"caption/{item.id}" or gallery.right(item, hits[0]))
    assert rate(found) >= 0.8, f"audio->text Success@1 {rate(found):.2f}"


def test_an_image_finds_its_description_among_all_captions(gallery: Gallery) -> None:
    found = []
    for item in gallery.held_images:
        hits = gallery.search({"image": _b64(corpus.image_png(item.media))}, modalities=["text"])
        found.append(gallery.right(item, hits[0]))
    assert rate(found) >= 0.9, f"image->text Success@1 {rate(found):.2f}"
