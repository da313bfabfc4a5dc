"""The region encoder's labels (corpus masks, regions.cell_labels) and a tiny training of both stages.

The masks are an additive option of the renderer: the corpus's pixels must stay what they were
(every shipped tower and checkpoint was trained on them), which the digests below pin.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from xmodal.encoders.mini import corpus
from xmodal.encoders.mini.cross import CrossConfig, CrossModel, load_cross, save_cross
from xmodal.encoders.mini.regions import (
    HEADS,
    MIN_COVER,
    RegionConfig,
    RegionEncoder,
    RegionTrainConfig,
    cell_accuracy,
    cell_labels,
    held_back_pairs,
    region_set,
    silhouette,
    train_regions,
)

# sha256 of the pixels of image_items(40, "train", 3) and of scene_pairs(20, "heldout", 4), computed
# with the renderer as it was before the mask option existed (commit 06bfdab)
IMAGES_DIGEST = "cba4e9a76862f876dc3184ee136eda86152cdac67c46605409dcaf7658ff25fd"
SCENES_DIGEST = "0629a53784e29ee1c0c9a6dcbb9c71935a9d6c108e76d11e68df375b2208197a"


def test_the_mask_option_leaves_every_render_byte_identical() -> None:
    h = hashlib.sha256()
    for item in corpus.image_items(40, "train", 3):
        h.update(np.asarray(item.media).tobytes())
    assert h.hexdigest() == IMAGES_DIGEST
    h = hashlib.sha256()
    for scene, twin in corpus.scene_pairs(20, "heldout", 4):
        h.update(np.asarray(scene.media).tobytes())
        h.update(np.asarray(twin.media).tobytes())
    assert h.hexdigest() == SCENES_DIGEST
    rng = np.random.default_rng(9)
    for _ in range(10):
        attrs = corpus.sample_attributes("image", "train", rng)
        seed = int(rng.integers(2**63))
        plain = corpus.render_image(attrs, np.random.default_rng(seed))
        with_masks, masks = corpus.render_image_with_masks(attrs, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(plain), np.asarray(with_masks))
        assert masks.shape == (attrs["count"], 64, 64)
        scene = corpus.sample_scene("train", rng)
        plain = corpus.render_scene(scene, np.random.default_rng(seed))
        with_masks, masks = corpus.render_scene_with_masks(scene, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(plain), np.asarray(with_masks))
        assert masks.shape == (2, 64, 64)


def test_masks_match_the_pixels() -> None:
    """Where an object's mask is full the pixel is that object's colour (one RGB value per object,
    different objects different values); where no mask touches it, the background's."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        scene = corpus.sample_scene("train", rng)
        image, masks = corpus.render_scene_with_masks(scene, np.random.default_rng(int(rng.integers(2**63))))
        pixels = np.asarray(image).reshape(-1, 3)
        flat = masks.reshape(2, -1)
        assert flat.min() >= 0.0 and flat.max() <= 1.0
        assert not ((flat[0] > 0) & (flat[1] > 0)).any()  # objects never overlap
        colours = []
        for k in range(2):
            full = flat[k] == 1.0
            assert full.sum() > 20  # even a small object covers this many whole pixels
            assert len(np.unique(pixels[full], axis=0)) == 1
            colours.append(tuple(pixels[full][0]))
        empty = flat.sum(0) == 0.0
        assert len(np.unique(pixels[empty], axis=0)) == 1
        assert colours[0] != colours[1] and tuple(pixels[empty][0]) not in colours
        # antialiased edges: partly covered pixels lie between the object's colour and the background
        part = (flat[0] > 0.2) & (flat[0] < 0.8)
        expected = flat[0][part, None] * np.array(colours[0]) + (1 - flat[0][part, None]) * pixels[empty][0]
        assert np.abs(pixels[part] - expected).max() <= 1.0
    for _ in range(10):
        attrs = corpus.sample_attributes("image", "train", rng)
        image, masks = corpus.render_image_with_masks(attrs, np.random.default_rng(int(rng.integers(2**63))))
        pixels = np.asarray(image).reshape(-1, 3)
        union = masks.sum(0).reshape(-1)
        assert len(np.unique(pixels[union == 1.0], axis=0)) == 1
        assert len(np.unique(pixels[union == 0.0], axis=0)) == 1


def test_cell_labels_name_the_object_covering_each_cell() -> None:
    masks = np.zeros((2, 64, 64), dtype=np.float32)
    masks[0, 0:16, 0:16] = 1.0  # cells (0, 0), (0, 1), (1, 0), (1, 1)
    masks[1, 40:44, 40:48] = 1.0  # half of cell (5, 5)
    masks[1, 56:57, 56:64] = 1.0  # 1/8 of cell (7, 7): below MIN_COVER
    objects = [("heart", "pink", "large"), ("star", "blue", "small")]
    labels = cell_labels(masks, objects)
    assert labels.shape == (3, 8, 8) and labels.dtype == np.int64
    want_first = [corpus.SHAPES.index("heart") + 1, corpus.COLOURS.index("pink") + 1, corpus.SIZES.index("large") + 1]
    want_second = [corpus.SHAPES.index("star") + 1, corpus.COLOURS.index("blue") + 1, corpus.SIZES.index("small") + 1]
    for r, c in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        assert labels[:, r, c].tolist() == want_first
    assert 0.5 >= MIN_COVER > 1 / 8
    assert labels[:, 5, 5].tolist() == want_second
    assert labels[:, 7, 7].tolist() == [0, 0, 0]
    assert (labels > 0).sum() == 3 * 5
    # real renders: every object labels at least one cell, and the labels are that object's
    rng = np.random.default_rng(1)
    for _ in range(10):
        scene = corpus.sample_scene("train", rng)
        _, masks = corpus.render_scene_with_masks(scene, np.random.default_rng(int(rng.integers(2**63))))
        labels = cell_labels(masks, scene["objects"])
        for shape, colour, _size in scene["objects"]:
            cells = labels[0] == corpus.SHAPES.index(shape) + 1
            assert cells.any()
            assert (labels[1][cells] == corpus.COLOURS.index(colour) + 1).all()


def test_region_encoder_trains_and_a_cross_model_on_it_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = RegionTrainConfig(steps=4, batch=8, singles=12, scenes=12, val=8, warmup=2)
    encoder, metrics = train_regions(cfg, log=lambda s: None)
    assert metrics["steps"] == 4 and np.isfinite(metrics["final_loss"])
    cells = metrics["validation_cells"]["stored_view"]
    assert cells["object_cells"] > 0 and all(0.0 <= cells[f"{name}_accuracy"] <= 1.0 for name in HEADS)
    images = torch.rand(3, 3, 64, 64)
    features = encoder.features(images)
    assert features.shape == (3, 64, RegionConfig().feature_dim)
    # the heads' probabilities sum to one in every region
    offset = RegionConfig().widths[-1]
    for name, vocab in HEADS.items():
        probs = features[..., offset : offset + len(vocab) + 1]
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 64))
        offset += len(vocab) + 1

    model = CrossModel(CrossConfig(width=32, layers=1, heads=2, mlp=64, regions="attributes", token_min=True))
    model.features.load_state_dict(encoder.state_dict())
    model.eval()
    states, mask = torch.randn(3, 7, 384), torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    save_cross(model, tmp_path / "cross.safetensors", alpha=0.7)
    loaded, alpha = load_cross(tmp_path / "cross.safetensors")
    assert alpha == 0.7 and loaded.config == model.config and isinstance(loaded.features, RegionEncoder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(states, mask, images), model(states, mask, images))
        # padding is ignored: the same text without its padded tail scores the same
        short = model.match(states[1:2, :5], mask[1:2, :5], model.regions(images[1:2]))
        torch.testing.assert_close(short, model(states, mask, images)[1:2], atol=1e-5, rtol=1e-5)


def test_small_objects_cells_are_measured_apart_and_their_loss_weight_is_applied() -> None:
    data = region_set(6, 6, "seen", seed=2)
    small = int((data.labels[:, 2] == corpus.SIZES.index("small") + 1).sum())
    assert small > 0
    cfg = RegionTrainConfig(steps=3, batch=8, singles=12, scenes=12, val=8, warmup=1)
    plain, _ = train_regions(cfg, log=lambda s: None)
    cells = cell_accuracy(plain, data)
    assert cells["small_object_cells"] == small <= cells["object_cells"]
    assert 0.0 <= cells["small_all_three"] <= cells["small_shape_accuracy"] <= 1.0
    # the same seeded run with small objects' cells weighted up takes other steps
    weighted, _ = train_regions(RegionTrainConfig(**{**cfg.__dict__, "small_weight": 4.0}), log=lambda s: None)
    images = data.views[:4].float().div(255.0)
    with torch.no_grad():
        assert not torch.allclose(plain(images)[0], weighted(images)[0])


def test_held_back_pairs_stay_out_of_training_and_are_measured_apart() -> None:
    """The stage-1 check of unseen (shape, colour) pairs: training pictures never hold one, its
    validation pictures hold only them, and they are training pairs (the held-out split is not used)."""
    held = held_back_pairs(8)
    assert 6 <= len(held) <= 8
    assert len({s for s, _ in held}) == len(held) == len({c for _, c in held})
    assert not held & corpus.heldout_pairs("image")
    data = region_set(30, 30, "train", seed=5, pairs=lambda p: p not in held)
    for shape_ids, colour_ids in zip(data.labels[:, 0], data.labels[:, 1], strict=True):
        cells = shape_ids > 0
        pairs = {(corpus.SHAPES[s - 1], corpus.COLOURS[c - 1]) for s, c in zip(shape_ids[cells], colour_ids[cells], strict=True)}
        assert pairs and not pairs & held
    # without a filter the draws are the ones they always were (the shipped stage 1's data)
    assert torch.equal(region_set(5, 5, "train", seed=5).labels, region_set(5, 5, "train", seed=5, pairs=lambda p: True).labels)
    cfg = RegionTrainConfig(steps=2, batch=8, singles=12, scenes=12, val=8, warmup=1, hold_back=8, gray_share=0.5)
    _, metrics = train_regions(cfg, log=lambda s: None)
    assert metrics["held_back_pairs"] == sorted(held)
    unseen = metrics["validation_cells_held_back_pairs"]
    assert unseen["object_cells"] > 0 and 0.0 <= unseen["shape_accuracy"] <= 1.0


def test_grayscale_share_trains_shape_and_size_but_not_colour_on_gray_pictures() -> None:
    """With every picture in grayscale the colour head gets no gradient (its loss is off: a gray
    picture says nothing about colour), while the other heads learn: AdamW's weight decay is the
    only thing that moves the colour head."""
    base = RegionTrainConfig(steps=3, batch=8, singles=12, scenes=12, val=8, warmup=1, weight_decay=0.0)
    torch.manual_seed(0)
    start = RegionEncoder().state_dict()
    gray, _ = train_regions(RegionTrainConfig(**{**base.__dict__, "gray_share": 1.0}), log=lambda s: None)
    colour, _ = train_regions(base, log=lambda s: None)
    for name in ("weight", "bias"):
        key = f"heads.colour.{name}"
        torch.testing.assert_close(gray.state_dict()[key], start[key])
        assert not torch.allclose(colour.state_dict()[key], start[key])
        assert not torch.allclose(gray.state_dict()[f"heads.shape.{name}"], start[f"heads.shape.{name}"])


def test_the_silhouette_marks_objects_whatever_their_colour() -> None:
    """On every background, inside an object the silhouette is 1 and on the background 0; and the
    same picture with its colour channels swapped (the object another colour, the achromatic
    background unchanged) has nearly the same silhouette: what the form body reads carries no
    colour, so no colour can stand in for a shape."""
    rng = np.random.default_rng(6)
    seen = set()
    for _ in range(24):
        attrs = corpus.sample_attributes("image", "train", rng)
        image, masks = corpus.render_image_with_masks(attrs, np.random.default_rng(int(rng.integers(2**63))))
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255.0)
        inside, outside = torch.from_numpy(masks.sum(0) > 0.99), torch.from_numpy(masks.sum(0) == 0.0)
        s = silhouette(x)[0, 0]
        assert s.shape == (64, 64) and float(s.min()) >= 0.0 and float(s.max()) <= 1.0
        assert float(s[inside].min()) == 1.0 and float(s[outside].max()) == 0.0
        swapped = silhouette(x[:, [2, 0, 1]])[0, 0]
        assert float((swapped - s).abs().mean()) < 0.01
        seen.add(attrs["background"])
    assert seen == set(corpus.BACKGROUNDS)


def test_with_form_input_shape_and_size_read_only_the_silhouette() -> None:
    """Two pictures with one silhouette get the same shape and size logits (whatever their colours),
    and their colour logits differ; a checkpoint's config round-trips the option."""
    torch.manual_seed(0)
    encoder = RegionEncoder(RegionConfig(form_input=True)).eval()
    assert RegionConfig.from_dict(RegionConfig(form_input=True).to_dict()).form_input
    assert not RegionConfig.from_dict({"widths": [24, 48, 96], "extra": 2}).form_input  # the first encoders
    attrs = corpus.sample_attributes("image", "train", np.random.default_rng(2))
    image = corpus.render_image(attrs, np.random.default_rng(3))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255.0)
    other = x.clone()
    other[:, :, silhouette(x)[0, 0] == 1.0] = torch.tensor([0.1, 0.2, 0.9]).view(1, 3, 1)  # recoloured, same form
    torch.testing.assert_close(silhouette(other), silhouette(x))
    with torch.no_grad():
        hidden, a = encoder(x)
        _, b = encoder(other)
    assert hidden.shape == (1, 2 * RegionConfig().widths[-1], 8, 8)
    assert RegionConfig(form_input=True).feature_dim == encoder.features(x).shape[-1]
    torch.testing.assert_close(a["shape"], b["shape"])
    torch.testing.assert_close(a["size"], b["size"])
    assert not torch.allclose(a["colour"], b["colour"])


def test_both_stages_of_the_trainer_run_end_to_end_at_a_tiny_size(tmp_path) -> None:
    """train_cross with `--regions attributes`: stage 1, stage 2, alpha on validation, the held-out
    figures, the checkpoint and its record; a few steps of each on a few images."""
    import json

    from xmodal.encoders.mini.cross import MiniCrossEncoder
    from xmodal.encoders.mini.train_cross import CrossTrainConfig, train

    cfg = CrossTrainConfig(
        steps=3, batch=4, scenes=4, singles=6, captions=1, mine_from=5, mined=2, warmup=1, val_n=3, eval_n=3,
        rerank_k=5, model=CrossConfig(width=32, layers=1, heads=2, mlp=64, regions="attributes", token_min=True, maxsim=16),
        regions=RegionTrainConfig(steps=2, batch=4, singles=6, scenes=6, val=4, warmup=1),
    )  # fmt: skip
    record = train(cfg, tmp_path, log=lambda s: None)
    assert record["steps"] == 3 and np.isfinite(record["final_loss"])
    assert record["regions"]["steps"] == 2
    assert "--regions attributes --region-steps 2 --token-min --maxsim 16" in record["repeat_with"]
    saved = json.loads((tmp_path / "cross.json").read_text())
    assert saved["config"]["model"]["regions"] == "attributes"
    encoder = MiniCrossEncoder(weights_dir=tmp_path)
    encoder.load()
    assert encoder.alpha == record["alpha"]
    scene = corpus.scene_items(1, "train", 0)[0]
    assert np.isfinite(encoder.score("text", scene.caption, "image", [scene.media, scene.media])).all()
