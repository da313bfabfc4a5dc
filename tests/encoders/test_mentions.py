"""The "mentions" design of the mini cross-encoder (xmodal/encoders/mini/mentions.py): its word-piece
labels from real corpus captions, its checkpoint format beside the first design's, and the shipped
checkpoint's binding against the exact swapped twin on held-out scenes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from xmodal.encoders.mini import corpus
from xmodal.encoders.mini.cross import (
    CrossConfig,
    CrossModel,
    MiniCrossEncoder,
    checkpoint_design,
    cross_path,
    load_cross,
    save_cross,
)
from xmodal.encoders.mini.evaluate_cross import stored_image
from xmodal.encoders.mini.mentions import (
    IGNORE,
    MentionsConfig,
    MentionsModel,
    find_mentions,
    token_labels,
    training_captions,
)
from xmodal.encoders.mini.regions import HEADS
from xmodal.encoders.mini.text import minilm_dir


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)


def labelled(tokenizer, caption: corpus.Caption) -> list[tuple[str, tuple[int, int, int] | None]]:
    """(word piece, (shape, colour, size) classes, or None for a piece that is not an object word)."""
    enc = tokenizer(caption.text, return_offsets_mapping=True)
    lab = token_labels(caption, enc["offset_mapping"])
    pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    out = []
    for i, piece in enumerate(pieces):
        if lab.word[i]:
            out.append((piece, (lab.shape[i], lab.colour[i], lab.size[i])))
        else:
            assert lab.shape[i] == lab.colour[i] == lab.size[i] == IGNORE
            out.append((piece, None))
    return out


def cls(shape: str | None, colour: str | None, size: str | None) -> tuple[int, int, int]:
    values = zip(("shape", "colour", "size"), (shape, colour, size), strict=True)
    return tuple(0 if v is None else HEADS[k].index(v) + 1 for k, v in values)  # type: ignore[return-value]


def test_vocabulary_phrases_longest_first() -> None:
    found = [(m.kind, m.value) for m in find_mentions("a hollow circle in light pink beside a five-pointed star")]
    assert found == [("shape", "ring"), ("colour", "pink"), ("shape", "star")]
    found = [(m.kind, m.value) for m in find_mentions("a lemon-yellow plus sign and a grass-green round shape")]
    assert found == [("colour", "yellow"), ("shape", "cross"), ("colour", "green"), ("shape", "circle")]
    # background words ("light", "dark") and numbers are not object words
    assert find_mentions("two things against a light backdrop") == find_mentions("two things")
    assert [(m.kind, m.value) for m in find_mentions("two things")] == [("generic", None)]


def test_scene_words_go_to_their_own_object_in_either_order(tokenizer) -> None:
    square, circle = ("square", "blue", None), ("circle", "red", None)
    caption = corpus.Caption("there is a square in navy with a red dot", corpus.SceneConstraint((square, circle)))
    got = labelled(tokenizer, caption)
    assert [p for p, y in got if y == cls(*square)] == ["square", "navy"]
    assert [p for p, y in got if y == cls(*circle)] == ["red", "dot"]
    assert [p for p, y in got if y is None] == ["[CLS]", "there", "is", "a", "in", "with", "a", "[SEP]"]
    # sizes go to the noun that follows them; "two shapes:" names no single object
    small, large = ("ring", "green", "small"), ("star", "pink", "large")
    caption = corpus.Caption(
        "two shapes: a large rosy star and a tiny hollow circle in grass-green",
        corpus.SceneConstraint((small, large)),
    )
    got = labelled(tokenizer, caption)
    assert [p for p, y in got if y == cls(*large)] == ["large", "rosy", "star"]
    assert [p for p, y in got if y == cls(*small)] == ["tiny", "hollow", "circle", "grass", "-", "green"]
    assert ("shapes", None) in got


def test_single_object_words_share_the_stated_attributes(tokenizer) -> None:
    attrs = {"shape": "heart", "colour": "brown", "size": "small", "count": 2, "background": "black"}
    rng = np.random.default_rng(4)
    for mention in ({"shape", "colour", "count"}, {"colour", "size"}, {"shape", "size", "background"}):
        caption = corpus.describe("image", attrs, rng, mention)
        got = [y for _, y in labelled(tokenizer, caption) if y is not None]
        want = cls(
            "heart" if "shape" in mention else None,
            "brown" if "colour" in mention else None,
            "small" if "size" in mention else None,
        )
        assert got and all(y == want for y in got), (caption.text, got, want)


def test_every_generated_caption_names_its_objects(tokenizer) -> None:
    """Train-split captions of both kinds: each scene object is named by its own words, a single's
    words all carry the one object's stated attributes."""
    for caption in training_captions(60, 60, 2, "train", seed=3):
        objects = {y for _, y in labelled(tokenizer, caption) if y is not None}
        if isinstance(caption.constraint, corpus.SceneConstraint):
            assert objects == {cls(*o) for o in caption.constraint.objects}, caption.text
        else:
            assert len(objects) == 1, caption.text


def test_checkpoint_round_trip_records_the_design(tmp_path) -> None:
    torch.manual_seed(0)
    model = MentionsModel(MentionsConfig(hidden=32, context_layers=1)).eval()
    path = tmp_path / "cross.safetensors"
    save_cross(model, path, alpha=3.0)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["design"] == "mentions"
    loaded, alpha = load_cross(path)
    assert isinstance(loaded, MentionsModel) and alpha == 3.0 and loaded.config == model.config
    states, mask = torch.randn(3, 7, 384), torch.ones(3, 7, dtype=torch.bool)
    mask[2, 5:] = False
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        scores = loaded(states, mask, images)
        np.testing.assert_allclose(scores.numpy(), model(states, mask, images).numpy(), atol=1e-6)
    bound = (1 + loaded.config.region_weight) * np.log(1 + loaded.config.eps)  # both terms' ceiling
    assert scores.shape == (3,) and bool((scores <= bound + 1e-6).all())
    with pytest.raises(ValueError, match="design"):
        MentionsConfig(design="cross")


def test_checkpoints_without_a_design_load_as_the_first_design(tmp_path) -> None:
    """The first checkpoints' metadata has no `design`: they load as CrossModel, as before."""
    torch.manual_seed(0)
    model = CrossModel(CrossConfig(width=32, heads=2, mlp=64, layers=1)).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "cross.safetensors"
    old = {"kind": "mini-cross", "config": json.dumps(model.config.to_dict()), "alpha": "0.05"}
    save_file(state, str(path), metadata=old)
    loaded, alpha = load_cross(path)
    assert isinstance(loaded, CrossModel) and alpha == 0.05 and loaded.config == model.config
    save_file(state, str(path), metadata={"kind": "mini-cross", "design": "other", "config": "{}", "alpha": "1"})
    with pytest.raises(ValueError, match="unknown cross-encoder design 'other'"):
        load_cross(path)


@pytest.mark.skipif(
    not cross_path().is_file() or checkpoint_design(cross_path()) != "mentions",
    reason="the installed mini cross-encoder is not of the mentions design (the shipped one is: docs/mini.md)",
)
def test_shipped_matcher_tells_held_out_scenes_from_their_twins() -> None:
    """40 held-out scenes (swap classes never trained on), seed 3: the scene's own caption above its
    twin's for the scene image, and the scene's stored view above the twin's for the caption."""
    cross = MiniCrossEncoder()
    cross.load()
    text_wins = image_wins = 0
    pairs = corpus.scene_pairs(40, "heldout", seed=3)
    for scene, twin in pairs:
        texts = cross.score("image", scene.media, "text", [scene.caption, twin.caption])
        images = cross.score("text", scene.caption, "image", [stored_image(scene.media), stored_image(twin.media)])
        text_wins += int(texts[0] > texts[1])
        image_wins += int(images[0] > images[1])
    text_share, image_share = text_wins / len(pairs), image_wins / len(pairs)
    print(f"binding vs twin, {len(pairs)} held-out scenes: image->text {text_share:.3f}, text->image {image_share:.3f}")
    assert text_share >= 0.85 and image_share >= 0.85


def test_the_mentions_trainer_runs_end_to_end_at_a_tiny_size(tmp_path) -> None:
    """`train_cross --design mentions`: stage 1, the text heads, alpha on validation, the held-out
    figures, the checkpoint and its record (with the command that repeats it); a few steps each."""
    from xmodal.encoders.mini import mentions
    from xmodal.encoders.mini.regions import RegionTrainConfig

    cfg = mentions.MentionsTrainConfig(
        steps=2, batch=4, singles=4, scenes=4, captions=1, val=6,
        model=MentionsConfig(hidden=32, context_layers=1, mirror=False),
    )
    regions = RegionTrainConfig(steps=2, batch=4, singles=6, scenes=6, val=4, warmup=1, gray_share=0.5)
    record = mentions.train(cfg, tmp_path, region_cfg=regions, val=(3, 7), evaluation=(3, 0), rerank_k=5, log=lambda s: None)
    assert record["design"] == "mentions" and record["regions"]["steps"] == 2
    assert record["repeat_with"].endswith(
        "--design mentions --seed 0 --steps 2 --region-steps 2 --region-gray-share 0.5 --no-mirror --val-n 3"
    )
    saved = json.loads((tmp_path / "cross.json").read_text())
    assert saved["checkpoint_bytes"] == (tmp_path / "cross.safetensors").stat().st_size
    assert saved["config"]["regions"]["gray_share"] == 0.5
    encoder = MiniCrossEncoder(weights_dir=tmp_path)
    encoder.load()
    assert encoder.alpha == record["alpha"] and checkpoint_design(tmp_path / "cross.safetensors") == "mentions"
    loaded, _ = load_cross(tmp_path / "cross.safetensors")
    assert isinstance(loaded, MentionsModel) and not loaded.config.mirror
    scene = corpus.scene_items(1, "train", 0)[0]
    assert np.isfinite(encoder.score("text", scene.caption, "image", [scene.media, scene.media])).all()
