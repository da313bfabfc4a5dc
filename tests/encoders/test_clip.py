"""The clip space on weights the tests create, loaded through the settings as a user would offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from xmodal.config import load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    HubCacheMaker = Callable[[str, dict[str, Path]], Path]
from xmodal.encoders.base import Encoder, Waveform
from xmodal.encoders.clip import ClipSpace, resolve_clip_weights
from xmodal.errors import EncodeError, ModelLoadError

# Half-precision autocast on a GPU moves values by ~1e-3; float32 on the CPU agrees far closer.
TOL = 1e-4
GPU_TOL = 2e-2
TEXTS = ["a red circle", "a dog barking at the postman on a rainy afternoon", ""]


def clip_space(pretrained: str | Path, **env: str) -> ClipSpace:
    return ClipSpace(load_settings({"XMODAL_CLIP_PRETRAINED": str(pretrained), **env}))


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.new("RGB", (320, 200), (200, 30, 30)),
        Image.fromarray(rng.integers(0, 255, (90, 60, 3), dtype=np.uint8)),
        Image.new("L", (40, 40), 128),  # greyscale: the model's own preprocessing makes it RGB
    ]


@pytest.fixture(scope="module")
def space(clip_checkpoint: Path) -> ClipSpace:
    loaded = clip_space(clip_checkpoint)
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def tol(space: ClipSpace) -> float:
    return TOL if space._require().runtime.device.type == "cpu" else GPU_TOL


def assert_unit_rows(vectors: np.ndarray, count: int, dim: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (count, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_dim_is_known_before_load_without_reading_weights(clip_checkpoint: Path) -> None:
    fresh = clip_space(clip_checkpoint)
    assert fresh.dim == 512
    assert fresh._loaded is None
    assert isinstance(fresh, Encoder)
    assert fresh.name == "clip" and fresh.modalities == {"text", "image"}


def test_loaded_dim_comes_from_the_model(space: ClipSpace) -> None:
    assert space.dim == 512


def test_text_and_image_rows_are_unit_float32(space: ClipSpace) -> None:
    assert_unit_rows(space.encode_texts(TEXTS), len(TEXTS), 512)
    assert_unit_rows(space.encode_images(pictures()), 3, 512)


def test_empty_batches(space: ClipSpace) -> None:
    assert space.encode_texts([]).shape == (0, 512)
    assert space.encode_images([]).shape == (0, 512)


def test_a_batch_equals_its_items_one_by_one(space: ClipSpace, tol: float) -> None:
    one_by_one = np.concatenate([space.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(space.encode_texts(TEXTS), one_by_one, atol=tol)
    one_by_one = np.concatenate([space.encode_images([p]) for p in pictures()])
    np.testing.assert_allclose(space.encode_images(pictures()), one_by_one, atol=tol)


def test_same_input_same_vector(space: ClipSpace) -> None:
    np.testing.assert_array_equal(space.encode_texts(TEXTS), space.encode_texts(TEXTS))
    np.testing.assert_array_equal(space.encode_images(pictures()), space.encode_images(pictures()))


def test_audio_is_unsupported(space: ClipSpace) -> None:
    with pytest.raises(EncodeError) as info:
        space.encode_audio([Waveform(np.zeros(100, dtype=np.float32), 16_000)])
    assert info.value.code == "unsupported_modality"


def test_encoding_before_load_says_so(clip_checkpoint: Path) -> None:
    with pytest.raises(EncodeError) as info:
        clip_space(clip_checkpoint).encode_texts(["x"])
    assert info.value.code == "not_loaded"


def test_missing_checkpoint_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "open_clip_pytorch_model.bin"
    with pytest.raises(ModelLoadError) as info:
        clip_space(missing).load()
    assert str(missing) in str(info.value)
    assert "local-dir:" in str(info.value)


def test_uncached_tag_fails_fast_naming_the_hub_file(tmp_path: Path) -> None:
    space = ClipSpace(load_settings({}), hub_cache=tmp_path)  # the default tag, laion2b_s34b_b79k
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        space.load()
    assert time.monotonic() - started < 5  # no network retries
    message = str(info.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/open_clip_pytorch_model.bin" in message
    assert str(tmp_path) in message and "XMODAL_CLIP_PRETRAINED=" in message


def test_cached_tag_resolves_to_the_cached_file_with_its_preprocessing(
    make_hub_cache: HubCacheMaker, clip_checkpoint: Path
) -> None:
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    cache = make_hub_cache(repo, {"open_clip_pytorch_model.bin": clip_checkpoint})
    weights = resolve_clip_weights("ViT-B-32", "laion2b_s34b_b79k", cache)
    assert weights.model_name == "ViT-B-32"
    assert weights.checkpoint is not None and Path(weights.checkpoint).resolve() == clip_checkpoint.resolve()
    assert weights.preprocess["interpolation"] == "bicubic"


def test_bad_architecture_lists_valid_names(clip_checkpoint: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        clip_space(clip_checkpoint, XMODAL_CLIP_MODEL="ViT-B-33").load()
    assert "ViT-B-33" in str(info.value)
    assert "ViT-B-32" in str(info.value) and "ViT-L-14" in str(info.value)


def test_unknown_tag_lists_the_architectures_tags() -> None:
    with pytest.raises(ModelLoadError) as info:
        clip_space("laion9b_nonsense").load()
    assert "laion2b_s34b_b79k" in str(info.value)


def test_local_dir_loads_config_and_weights_from_the_directory(tiny_clip_dir: Path) -> None:
    space = clip_space(f"local-dir:{tiny_clip_dir}")
    assert space.dim == 32  # from open_clip_config.json, before any weights are read
    space.load()
    assert_unit_rows(space.encode_texts(["a tiny model"]), 1, 32)
    assert_unit_rows(space.encode_images(pictures()), 3, 32)


def test_local_dir_without_checkpoint_is_refused(tmp_path: Path, tiny_clip_dir: Path) -> None:
    (tmp_path / "open_clip_config.json").write_bytes((tiny_clip_dir / "open_clip_config.json").read_bytes())
    with pytest.raises(ModelLoadError) as info:
        clip_space(f"local-dir:{tmp_path}").load()
    assert str(tmp_path) in str(info.value)


def test_hf_hub_repo_loads_from_the_hub_cache(make_hub_cache: HubCacheMaker, tiny_clip_dir: Path) -> None:
    files = {name: tiny_clip_dir / name for name in ("open_clip_config.json", "open_clip_pytorch_model.bin")}
    cache = make_hub_cache("someone/tiny-clip", files)
    space = ClipSpace(load_settings({"XMODAL_CLIP_PRETRAINED": "hf-hub:someone/tiny-clip"}), hub_cache=cache)
    assert space.dim == 32
    space.load()
    assert_unit_rows(space.encode_texts(["from the cache"]), 1, 32)


def test_uncached_hf_hub_repo_names_it(tmp_path: Path) -> None:
    space = ClipSpace(load_settings({"XMODAL_CLIP_PRETRAINED": "hf-hub:someone/absent"}), hub_cache=tmp_path)
    with pytest.raises(ModelLoadError, match="someone/absent"):
        space.load()


def test_checkpoint_of_another_architecture_is_a_load_error(tiny_clip_dir: Path) -> None:
    checkpoint = tiny_clip_dir / "open_clip_pytorch_model.bin"  # a tiny model's weights, not ViT-B-32's
    with pytest.raises(ModelLoadError) as info:
        clip_space(checkpoint).load()
    assert str(checkpoint) in str(info.value)
