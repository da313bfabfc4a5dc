"""The clap space on tiny CLAP models the tests save, loaded through the settings as a user would offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from xmodal.config import load_settings
from xmodal.encoders.base import Encoder, Waveform, l2_normalize
from xmodal.encoders.clap import ClapSpace, audio_windows
from xmodal.errors import EncodeError, ModelLoadError

if TYPE_CHECKING:
    from collections.abc import Callable

    HubCacheMaker = Callable[[str, dict[str, Path]], Path]

DIM = 32  # projection_dim of the tiny models in conftest
RATE = 48_000
TOL = 1e-4
GPU_TOL = 2e-2
TEXTS = ["a dog barks", "rain falls on a tin roof while a bird sings at dawn", "x"]


def clap_space(model: str | Path, **kwargs: int) -> ClapSpace:
    return ClapSpace(load_settings({"XMODAL_CLAP_MODEL": str(model)}), **kwargs)


def noise(seconds: float, rate: int = RATE, seed: int = 0) -> Waveform:
    rng = np.random.default_rng(seed)
    return Waveform(rng.uniform(-0.5, 0.5, round(seconds * rate)).astype(np.float32), rate)


def tone(seconds: float, rate: int, hz: float = 440.0) -> Waveform:
    t = np.arange(round(seconds * rate)) / rate
    return Waveform((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)


CLIPS = [noise(0.5, seed=1), noise(3.0, seed=2), tone(10.0, RATE)]


@pytest.fixture(scope="module")
def space(tiny_clap_dir: Path) -> ClapSpace:
    loaded = clap_space(tiny_clap_dir)
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def tol(space: ClapSpace) -> float:
    return TOL if space._require().runtime.device.type == "cpu" else GPU_TOL


def assert_unit_rows(vectors: np.ndarray, count: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (count, DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_dim_is_known_before_load(tiny_clap_dir: Path) -> None:
    fresh = clap_space(tiny_clap_dir)
    assert fresh.dim == DIM
    assert fresh._loaded is None
    assert isinstance(fresh, Encoder)
    assert fresh.name == "clap" and fresh.modalities == {"text", "audio"}


def test_text_and_audio_rows_are_unit_float32(space: ClapSpace) -> None:
    assert space.dim == DIM
    assert_unit_rows(space.encode_texts(TEXTS), len(TEXTS))
    assert_unit_rows(space.encode_audio(CLIPS), len(CLIPS))
    assert space.encode_texts([]).shape == (0, DIM)
    assert space.encode_audio([]).shape == (0, DIM)


def test_a_batch_equals_its_items_one_by_one(space: ClapSpace, tol: float) -> None:
    one_by_one = np.concatenate([space.encode_texts([t]) for t in TEXTS])  # padding differs per batch
    np.testing.assert_allclose(space.encode_texts(TEXTS), one_by_one, atol=tol)
    one_by_one = np.concatenate([space.encode_audio([c]) for c in CLIPS])
    np.testing.assert_allclose(space.encode_audio(CLIPS), one_by_one, atol=tol)


def test_same_clip_same_vector(space: ClapSpace) -> None:
    first = space.encode_audio(CLIPS)
    np.testing.assert_array_equal(first, space.encode_audio(CLIPS))
    np.testing.assert_array_equal(space.encode_texts(TEXTS), space.encode_texts(TEXTS))


def test_fused_model_is_deterministic_and_batch_independent(tiny_fused_clap_dir: Path, tol: float) -> None:
    fused = clap_space(tiny_fused_clap_dir)
    fused.load()
    batch = fused.encode_audio(CLIPS)
    assert_unit_rows(batch, len(CLIPS))
    np.testing.assert_array_equal(batch, fused.encode_audio(CLIPS))
    one_by_one = np.concatenate([fused.encode_audio([c]) for c in CLIPS])
    np.testing.assert_allclose(batch, one_by_one, atol=tol)


def test_long_audio_is_the_renormalised_mean_of_its_10s_windows(space: ClapSpace, tol: float) -> None:
    clip = noise(25.0, seed=3)
    windows = [Waveform(clip.samples[start:end], RATE) for start, end in audio_windows(clip.samples.size, 10 * RATE)]
    assert [w.seconds for w in windows] == [10.0, 10.0, 10.0]
    expected = l2_normalize(space.encode_audio(windows).mean(axis=0, keepdims=True))
    np.testing.assert_allclose(space.encode_audio([clip]), expected, atol=tol)


def test_very_long_audio_is_capped_at_max_windows(tiny_clap_dir: Path, tol: float) -> None:
    capped = clap_space(tiny_clap_dir, max_windows=2)
    capped.load()
    clip = noise(45.0, seed=4)
    first, last = clip.samples[: 10 * RATE], clip.samples[-10 * RATE :]  # 2 evenly spaced windows: both ends
    expected = l2_normalize(capped.encode_audio([Waveform(first, RATE), Waveform(last, RATE)]).mean(0, keepdims=True))
    np.testing.assert_allclose(capped.encode_audio([clip]), expected, atol=tol)


def test_audio_windows_cover_the_clip_with_full_windows() -> None:
    assert audio_windows(5, 10) == [(0, 5)]
    assert audio_windows(10, 10) == [(0, 10)]
    assert audio_windows(11, 10) == [(0, 10), (1, 11)]
    assert audio_windows(30, 10) == [(0, 10), (10, 20), (20, 30)]
    many = audio_windows(1000, 10, max_windows=4)
    assert len(many) == 4 and many[0] == (0, 10) and many[-1] == (990, 1000)
    assert all(end - start == 10 for start, end in many)


def test_other_sample_rates_are_resampled(space: ClapSpace) -> None:
    at_16k, at_48k, other = space.encode_audio([tone(2.0, 16_000), tone(2.0, RATE), tone(2.0, RATE, hz=3000.0)])
    # Random weights put every clip close together: compare with the gap to a different sound.
    assert np.linalg.norm(at_16k - at_48k) < 0.1 * np.linalg.norm(at_48k - other)


def test_empty_clip_is_an_encode_error(space: ClapSpace) -> None:
    with pytest.raises(EncodeError) as info:
        space.encode_audio([Waveform(np.zeros(0, dtype=np.float32), RATE)])
    assert info.value.code == "invalid_audio"


def test_images_are_unsupported(space: ClapSpace) -> None:
    with pytest.raises(EncodeError) as info:
        space.encode_images([Image.new("RGB", (8, 8))])
    assert info.value.code == "unsupported_modality"


def test_missing_directory_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "clap-htsat-unfused"
    with pytest.raises(ModelLoadError) as info:
        clap_space(missing).load()
    assert str(missing) in str(info.value)


def test_uncached_hub_id_fails_fast_explaining_how_to_preseed(tmp_path: Path) -> None:
    space = ClapSpace(load_settings({}), hub_cache=tmp_path)  # the default, laion/clap-htsat-unfused
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        space.load()
    assert time.monotonic() - started < 5  # no network retries
    message = str(info.value)
    assert "laion/clap-htsat-unfused" in message and str(tmp_path) in message
    assert "download" in message and "XMODAL_CLAP_MODEL=" in message


def test_cached_hub_id_loads_from_the_hub_cache(make_hub_cache: HubCacheMaker, tiny_clap_dir: Path) -> None:
    cache = make_hub_cache("someone/tiny-clap", {p.name: p for p in tiny_clap_dir.iterdir()})
    space = ClapSpace(load_settings({"XMODAL_CLAP_MODEL": "someone/tiny-clap"}), hub_cache=cache)
    assert space.dim == DIM
    space.load()
    assert_unit_rows(space.encode_texts(["from the cache"]), 1)
