"""The `mini` cross-encoder (xmodal/encoders/mini/cross.py) as shipped, and the binding scenes it is
judged on (corpus.py).

Quality thresholds sit well below what `python -m xmodal.encoders.mini.evaluate_cross` printed for
the shipped checkpoint (xmodal/encoders/mini/weights/cross.json, docs/mini.md); the scenes here are
drawn with another seed than the evaluation's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xmodal.encoders.mini import corpus
from xmodal.encoders.mini.cross import (
    CROSS_PAIRS,
    CrossConfig,
    CrossModel,
    MiniCrossEncoder,
    cross_path,
    load_cross,
    save_cross,
)
from xmodal.encoders.mini.evaluate_cross import measure, rerank_gallery, score_groups, stored_image
from xmodal.encoders.mini.space import MiniSpace
from xmodal.encoders.rerank import Reranker
from xmodal.errors import ConfigError, ModelLoadError

SEED = 3  # not the evaluation's seed (0) nor the validation's (7)
HELD_OUT_PAIRS = 40
# Share of held-out scenes (swap classes never trained on) whose own caption outscores its swapped
# twin's caption for the scene image. The shipped model gets 0.675 on these 40 (27 of 40; printed
# by test_binding_beats_the_swapped_twin with -s; deterministic), a model blind to binding 0.5.
# The other direction (the scene's view above the twin's view for the caption) is *not* learnt for
# held-out classes: 0.425 here (docs/mini.md, Cross-encoder, Limits), so it is printed, not asserted.
BINDING_FLOOR = 0.6


@pytest.fixture(scope="module")
def cross() -> MiniCrossEncoder:
    encoder = MiniCrossEncoder()
    encoder.load()
    return encoder


@pytest.fixture(scope="module")
def pairs() -> list[tuple[corpus.Item, corpus.Item]]:
    return corpus.scene_pairs(HELD_OUT_PAIRS, "heldout", SEED)


# --- the corpus's binding scenes ----------------------------------------------------------------


def test_scenes_are_deterministic_and_twins_swap_the_colours(pairs) -> None:
    again = corpus.scene_pairs(3, "heldout", SEED)
    for (scene, twin), (scene2, twin2) in zip(pairs[:3], again, strict=True):
        assert scene.caption == scene2.caption and twin.caption == twin2.caption
        assert np.array_equal(np.asarray(scene.media), np.asarray(scene2.media))
        assert np.array_equal(np.asarray(twin.media), np.asarray(twin2.media))
    for scene, twin in pairs:
        (s1, c1, z1), (s2, c2, z2) = scene.attributes["objects"]
        assert s1 != s2 and c1 != c2
        assert twin.attributes["objects"] == ((s1, c2, z1), (s2, c1, z2))
        assert scene.media.size == (64, 64) and scene.media.mode == "RGB"
        assert corpus.swap_class(scene.attributes) == corpus.swap_class(twin.attributes)


def test_heldout_swap_classes_never_reach_training() -> None:
    held = corpus.heldout_swap_classes()
    assert len(held) == 98
    for split in ("train", "seen"):
        for scene, twin in corpus.scene_pairs(200, split, seed=2):
            assert not corpus.scene_is_heldout(scene.attributes) and not corpus.scene_is_heldout(twin.attributes)
    assert all(corpus.scene_is_heldout(s.attributes) for s in corpus.scene_items(50, "heldout", seed=2))
    # every shape and colour still occurs in training scenes
    train = corpus.scene_items(300, "train", seed=2)
    assert {o[0] for s in train for o in s.attributes["objects"]} == set(corpus.SHAPES)
    assert {o[1] for s in train for o in s.attributes["objects"]} == set(corpus.COLOURS)


def test_binding_captions_state_the_binding_only(pairs) -> None:
    rng = np.random.default_rng(0)
    scene, twin = pairs[0]
    single = corpus.image_items(1, "seen", seed=SEED)[0]
    for caption in corpus.scene_caption_variants(scene.attributes, rng, 20):
        assert caption.constraint.matches(scene.attributes)
        assert not caption.constraint.matches(twin.attributes)
        assert not caption.constraint.matches(single.attributes)
    for caption in corpus.caption_variants("image", single.attributes, rng, 20):
        assert not caption.constraint.matches(scene.attributes)  # a single-object caption never describes a scene


# --- the shipped checkpoint ---------------------------------------------------------------------


def test_protocol_name_and_pairs(cross: MiniCrossEncoder) -> None:
    assert isinstance(cross, Reranker)
    assert cross.name == "mini-cross"
    assert cross.pairs == CROSS_PAIRS == frozenset({("text", "image"), ("image", "text")})
    assert cross_path().stat().st_size < 10 * 1024 * 1024
    assert cross.alpha > 0


def test_missing_checkpoint_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        MiniCrossEncoder(weights_dir=tmp_path).load()
    assert str(tmp_path / "cross.safetensors") in str(caught.value)
    assert "python -m xmodal.encoders.mini.train_cross" in str(caught.value)
    (tmp_path / "cross.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load the mini cross-encoder"):
        MiniCrossEncoder(weights_dir=tmp_path).load()


def test_pixel_patch_regions_round_trip_and_need_the_images(tmp_path) -> None:
    """A model whose regions also read their own 8x8 pixels (train_cross --pixel-patches) saves and
    loads with that config; its regions follow each patch's pixels, and cannot be made from the
    maps alone."""
    torch.manual_seed(0)
    model = CrossModel(CrossConfig(pixel_patches=True)).eval()
    save_cross(model, tmp_path / "cross.safetensors", alpha=0.5)
    loaded, alpha = load_cross(tmp_path / "cross.safetensors")
    assert loaded.config.pixel_patches and alpha == 0.5
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        regions = loaded.regions(images)
        np.testing.assert_allclose(regions.numpy(), model.regions(images).numpy(), atol=1e-6)
        assert regions.shape == (2, 64, loaded.config.width)
        maps = loaded.feature_map(images)
        with pytest.raises(ValueError, match="pixel patches"):
            loaded.regions_from_features(maps)
        # region 9 is row 1, column 1 of the 8x8 grid: pixels 8-15 down and across
        changed = images.clone()
        changed[:, :, 8:16, 8:16] = 1.0 - changed[:, :, 8:16, 8:16]
        moved = (loaded.regions_from_features(maps, changed) - loaded.regions_from_features(maps, images)).abs()
    assert moved[:, 9].max() > 1e-3
    assert moved[:, [k for k in range(64) if k != 9]].max() < 1e-6


def test_scores_shape_dtype_and_bad_input(cross: MiniCrossEncoder, pairs) -> None:
    images = [stored_image(s.media) for s, _ in pairs[:5]]
    out = cross.score("text", "a red circle and a blue square", "image", images)
    assert out.shape == (5,) and out.dtype == np.float32 and np.isfinite(out).all()
    texts = [s.caption for s, _ in pairs[:4]]
    out = cross.score("image", pairs[0][0].media, "text", texts)
    assert out.shape == (4,) and out.dtype == np.float32 and np.isfinite(out).all()
    assert cross.score("text", "a red circle", "image", []).shape == (0,)
    # any size or mode of image, as thumbnails and queries come
    odd = [pairs[0][0].media.resize((128, 90)), pairs[0][0].media.convert("L"), Image.new("RGBA", (30, 200))]
    assert cross.score("text", "a red circle", "image", odd).shape == (3,)
    with pytest.raises(ValueError, match="cannot score text->audio"):
        cross.score("text", "a low beep", "audio", [np.zeros(16000, dtype=np.float32)])
    with pytest.raises(ValueError, match="expected a text"):
        cross.score("image", pairs[0][0].media, "text", [b"bytes"])
    with pytest.raises(RuntimeError, match="load"):
        MiniCrossEncoder().score("text", "a red circle", "image", images)


def test_deterministic_and_batch_independent(cross: MiniCrossEncoder, pairs) -> None:
    images = [stored_image(s.media) for s, _ in pairs[:6]]
    query = pairs[0][0].caption
    first = cross.score("text", query, "image", images)
    assert np.array_equal(first, cross.score("text", query, "image", images))
    one_by_one = np.concatenate([cross.score("text", query, "image", [im]) for im in images])
    np.testing.assert_allclose(first, one_by_one, atol=1e-4)
    texts = [s.caption for s, _ in pairs[:6]]
    batch = cross.score("image", pairs[1][0].media, "text", texts)
    singly = np.concatenate([cross.score("image", pairs[1][0].media, "text", [t]) for t in texts])
    np.testing.assert_allclose(batch, singly, atol=1e-4)


def test_binding_beats_the_swapped_twin(cross: MiniCrossEncoder, pairs) -> None:
    """Held-out scenes: the right caption above the twin's caption for the scene image (the image
    query's direction); the caption's preference between the two stored views is reported only."""
    text_wins = image_wins = 0
    for scene, twin in pairs:
        texts = cross.score("image", scene.media, "text", [scene.caption, twin.caption])
        images = cross.score("text", scene.caption, "image", [stored_image(scene.media), stored_image(twin.media)])
        text_wins += int(texts[0] > texts[1])
        image_wins += int(images[0] > images[1])
    text_share, image_share = text_wins / len(pairs), image_wins / len(pairs)
    print(f"binding vs twin, {len(pairs)} held-out scenes: image->text {text_share:.3f}, text->image {image_share:.3f}")
    assert text_share >= BINDING_FLOOR


def test_evaluation_scores_what_the_reranker_scores(cross: MiniCrossEncoder) -> None:
    """evaluate_cross computes logits from cached parts; they must be what `score()` returns."""
    space = MiniSpace()
    space.load()
    gallery = rerank_gallery(6, seed=SEED)
    scored = score_groups(space, cross, gallery, rerank_k=10, timed=0)
    views = [stored_image(it.media) for it in gallery.images]
    for name, group in gallery.groups.items():
        s = scored[name]
        for q in (0, 1):
            top = s.top[q]
            if group.query_modality == "text":
                direct = cross.score("text", group.queries[q], "image", [views[i] for i in top])
            else:
                direct = cross.score("image", group.queries[q], "text", [gallery.texts[i] for i in top])
            np.testing.assert_allclose(s.logits[q] * cross.alpha, direct, atol=1e-3)
        first = measure(s, None, 10)
        assert set(first) == {"Success@1", "Success@5", "nDCG@10", "relevant_in_top10"}
        assert all(0.0 <= v <= 1.0 for v in first.values())
