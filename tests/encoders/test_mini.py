"""The `mini` space with its shipped image and audio towers: loading, shapes, batching, the corpus
generator and its held-out design, and retrieval quality on held-out combinations and foreign media.

Quality thresholds sit a margin below what the training command printed for the shipped checkpoint
(xmodal/encoders/mini/weights/*.json, docs/mini.md); this gallery is smaller (150 + 150 items) and
drawn with another seed than the one the training run reported on.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from xmodal.encoders.base import Encoder, Waveform
from xmodal.encoders.mini import corpus
from xmodal.encoders.mini.evaluate import (
    evaluate_foreign,
    evaluate_heldout,
    evaluate_mixed,
    mixed_gallery,
    rank_metrics,
)
from xmodal.encoders.mini.space import WEIGHTS_DIR, MiniSpace, tower_path
from xmodal.encoders.mini.train import training_combos
from xmodal.errors import ModelLoadError

GALLERY_N = 150
GALLERY_SEED = 1

# The training command printed, for the shipped towers (300 + 300 items, seed 0), R@1 / R@5:
# text->image 1.000 / 1.000, image->text 0.970 / 1.000, text->audio 0.947 / 0.993,
# audio->text 0.950 / 0.997, foreign hit@1 1.0 (images, 64 queries) and 1.0 (sounds, 9).
# The floors sit a margin below, and never below the targets the towers were trained for.
THRESHOLDS = {
    "text->image": {1: 0.93, 5: 0.98},
    "image->text": {1: 0.90, 5: 0.98},
    "text->audio": {1: 0.88, 5: 0.96},
    "audio->text": {1: 0.88, 5: 0.96},
}
# One mixed gallery, unfiltered (evaluate.evaluate_mixed; metrics.mixed_gallery in the JSONs):
# `python -m xmodal.encoders.mini.evaluate --write` printed, R@1 / R@5 (= Success@k; 300 + 300 items
# of each modality, their 1200 captions, 300 unrelated sentences, seed 0): text->image 1.000 / 1.000,
# text->audio 0.947 / 0.993, image->text (among all 1500 texts) 0.970 / 1.000, audio->text 0.927 /
# 0.997, text->media (all 1200 images and sounds, raw cosine) 0.973 / 0.997. Targets of issue 8:
# audio->text Success@1 >= 0.8, text->image and text->audio Success@5 >= 0.95.
MIXED_THRESHOLDS = {
    "text->image": {1: 0.93, 5: 0.98},
    "text->audio": {1: 0.88, 5: 0.96},
    "image->text": {1: 0.90, 5: 0.98},
    "audio->text": {1: 0.85, 5: 0.96},
    "text->media": {1: 0.90, 5: 0.97},
}
FOREIGN_HIT1 = {"image": 0.95, "audio": 0.88}  # at most 3 of 64 images, 1 of 9 sounds missed


@pytest.fixture(scope="module")
def space() -> MiniSpace:
    s = MiniSpace()
    s.load()
    return s


def _images() -> list[Image.Image]:
    items = corpus.image_items(3, "seen", seed=5)
    odd = [
        items[0].media.resize((200, 120)),  # not square, not 64 px
        items[1].media.convert("RGBA"),
        items[2].media.convert("L"),
        Image.new("RGB", (17, 300), (255, 0, 0)),
    ]
    return [it.media for it in items] + odd


def _clips() -> list[Waveform]:
    items = corpus.sound_items(3, "seen", seed=5)
    rng = np.random.default_rng(0)
    t = np.arange(int(0.3 * 8000)) / 8000
    odd = [
        Waveform((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000),  # 8 kHz, short
        Waveform((0.1 * rng.standard_normal(3 * 44100)).astype(np.float32), 44100),  # 44.1 kHz, long
        Waveform(np.zeros(16000, np.float32), 16000),  # digital silence
        Waveform(np.zeros(0, np.float32), 22050),  # nothing at all
    ]
    return [it.media for it in items] + odd


# --- loading ------------------------------------------------------------------------------------


def test_shipped_towers_load_offline(space: MiniSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    for modality in ("image", "audio"):
        assert tower_path(modality).is_file()
        record = json.loads((WEIGHTS_DIR / f"{modality}.json").read_text())
        assert record["metrics"]["heldout"], "the checkpoint's JSON carries its training figures"
        assert tower_path(modality).stat().st_size < 8 * 1024 * 1024
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    fresh = MiniSpace()
    fresh.load()
    assert isinstance(fresh, Encoder)
    assert fresh.modalities == frozenset({"text", "image", "audio"})
    assert fresh.dim == 384


def test_missing_checkpoint_names_path_and_command(tmp_path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        MiniSpace(weights_dir=tmp_path).load()
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "python -m xmodal.encoders.mini.train" in message


# --- encoding -----------------------------------------------------------------------------------


def test_shapes_and_unit_norm(space: MiniSpace) -> None:
    for vectors, n in (
        (space.encode_images(_images()), 7),
        (space.encode_audio(_clips()), 7),
        (space.encode_texts(["a red circle", "a low beep"]), 2),
    ):
        assert vectors.shape == (n, 384)
        assert vectors.dtype == np.float32
        assert np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert space.encode_images([]).shape == (0, 384)
    assert space.encode_audio([]).shape == (0, 384)


def test_batch_equals_one_by_one(space: MiniSpace) -> None:
    images, clips = _images(), _clips()
    batch_i = space.encode_images(images)
    single_i = np.concatenate([space.encode_images([im]) for im in images])
    np.testing.assert_allclose(batch_i, single_i, atol=1e-5)
    batch_a = space.encode_audio(clips)
    single_a = np.concatenate([space.encode_audio([c]) for c in clips])
    np.testing.assert_allclose(batch_a, single_a, atol=1e-5)


# --- the corpus ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [corpus.image_items, corpus.sound_items])
def test_generator_is_deterministic_by_seed(make) -> None:
    a, b, c = make(6, "train", seed=3), make(6, "train", seed=3), make(6, "train", seed=4)
    assert [x.caption for x in a] == [x.caption for x in b]
    assert [x.attributes for x in a] == [x.attributes for x in b]
    same = [_media_bytes(x.media) == _media_bytes(y.media) for x, y in zip(a, b, strict=True)]
    assert all(same)
    assert [_media_bytes(x.media) for x in a] != [_media_bytes(x.media) for x in c]
    # item i does not depend on how many were asked for
    tail = make(3, "train", seed=3, start=3)
    assert [_media_bytes(x.media) for x in tail] == [_media_bytes(x.media) for x in a[3:]]
    assert len({x.id for x in a + c}) == 12


def _media_bytes(media) -> bytes:
    return media.tobytes() if isinstance(media, Image.Image) else media.samples.tobytes()


def test_media_encodings_round_trip() -> None:
    import soundfile as sf

    image = corpus.image_items(1, "seen")[0].media
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(corpus.image_png(image)))), np.asarray(image))
    clip = corpus.sound_items(1, "seen")[0].media
    samples, rate = sf.read(io.BytesIO(corpus.waveform_wav(clip)), dtype="float32")
    assert rate == corpus.SAMPLE_RATE
    np.testing.assert_allclose(samples, clip.samples, atol=1 / 16384)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_heldout_split_is_compositional(modality) -> None:
    held = corpus.heldout_pairs(modality)
    rows = {r for r, _ in held}
    cols = {c for _, c in held}
    # every value of both attributes is held out with at least two partners: no single attribute
    # identifies a held-out item
    for value in rows:
        assert sum(r == value for r, _ in held) >= 2
    for value in cols:
        assert sum(c == value for _, c in held) >= 2
    all_rows, all_cols = (corpus.SHAPES, corpus.COLOURS) if modality == "image" else (corpus.TIMBRES, corpus.PITCHES)
    assert rows == set(all_rows) and cols == set(all_cols)
    make = corpus.image_items if modality == "image" else corpus.sound_items
    pair = ("shape", "colour") if modality == "image" else ("source", "pitch")
    for split in ("train", "seen"):
        for item in make(150, split, seed=11):
            assert (item.attributes[pair[0]], item.attributes[pair[1]]) not in held
    for item in make(60, "heldout", seed=11):
        assert (item.attributes[pair[0]], item.attributes[pair[1]]) in held
    assert not any((c[pair[0]], c[pair[1]]) in held for c in training_combos(modality))


def test_unrelated_sentences_are_deterministic_and_describe_nothing() -> None:
    a = corpus.unrelated_sentences(200, "train", seed=3)
    assert a == corpus.unrelated_sentences(200, "train", seed=3)
    assert a[50:] == corpus.unrelated_sentences(150, "train", seed=3, start=50)
    assert a != corpus.unrelated_sentences(200, "train", seed=4)
    held = corpus.unrelated_sentences(200, "heldout", seed=3)
    assert not set(held) & set(corpus.unrelated_sentences(3000, "train", seed=0))
    vocabulary = corpus.caption_vocabulary()
    assert {"red", "circle", "beep", "loud", "twice", "background"} <= vocabulary
    for text in a + held:
        words = set(re.split(r"[^a-z0-9]+", text.lower())) - {""}
        assert not words & vocabulary, text
    assert len(set(a)) > 150


def test_captions_state_what_they_say() -> None:
    rng = np.random.default_rng(0)
    for item in corpus.image_items(30, "train") + corpus.sound_items(30, "train"):
        for caption in corpus.caption_variants(item.modality, item.attributes, rng, 4):
            assert caption.constraint.matches(item.attributes), caption.text
            assert caption.text and caption.text == caption.text.strip()


def test_rank_metrics_against_hand_computed() -> None:
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    rel = np.array([[False, False, True], [True, False, False]])
    r = rank_metrics(sim, rel, ks=(1, 2))
    assert r.recall == {1: 0.0, 2: 1.0}
    assert r.precision == {1: 0.0, 2: 0.5}
    assert r.chance_recall[1] == pytest.approx(1 / 3)
    assert r.chance_recall[2] == pytest.approx(2 / 3)


# --- quality ------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_heldout_combinations_are_found(space: MiniSpace, modality) -> None:
    results = evaluate_heldout(space, modality, n=GALLERY_N, seed=GALLERY_SEED)
    for direction, r in results.items():
        assert r.gallery == 2 * GALLERY_N
        for k, floor in THRESHOLDS[direction].items():
            assert r.recall[k] >= floor, f"{direction} R@{k} {r.recall[k]:.3f} < {floor}"
            assert r.recall[k] > 5 * r.chance_recall[k]


@pytest.fixture(scope="module")
def mixed(space: MiniSpace) -> dict:
    return evaluate_mixed(space, n=GALLERY_N, seed=GALLERY_SEED, gallery=mixed_gallery(GALLERY_N, GALLERY_SEED))


def test_mixed_gallery_every_direction(mixed: dict) -> None:
    """One gallery with images, sounds, every caption and unrelated sentences, no modality filter."""
    for direction, floors in MIXED_THRESHOLDS.items():
        r = mixed[direction]
        for k, floor in floors.items():
            assert r.recall[k] >= floor, f"mixed {direction} Success@{k} {r.recall[k]:.3f} < {floor}"
            assert r.recall[k] > 5 * r.chance_recall[k]
    assert mixed["audio->text"].gallery == mixed["image->text"].gallery == 5 * GALLERY_N  # every text


def test_shipped_json_records_the_mixed_gallery() -> None:
    for modality in ("image", "audio"):
        metrics = json.loads((WEIGHTS_DIR / f"{modality}.json").read_text())["metrics"]
        directions = metrics["mixed_gallery"]["directions"]
        for direction, floors in MIXED_THRESHOLDS.items():
            for k, floor in floors.items():
                assert directions[direction]["recall"][str(k)] >= floor, (modality, direction, k)
        stats = metrics["cosine_statistics"]
        for pair in ("text-text", "text-image", "text-audio", "image-image", "audio-audio", "image-audio"):
            assert {"mean", "std", "pairs"} <= set(stats[pair]["nonmatching"]), pair


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_foreign_media_are_found_by_simple_captions(space: MiniSpace, modality) -> None:
    result = evaluate_foreign(space, modality)
    assert result.hit_at_1 >= FOREIGN_HIT1[modality], result.misses


def test_registry_builds_the_mini_space() -> None:
    from xmodal.config import load_settings
    from xmodal.encoders.registry import build_space

    built = build_space("mini", load_settings({}))
    assert isinstance(built, MiniSpace)
    assert built.modalities == frozenset({"text", "image", "audio"})
