"""The BLIP reranker on a tiny random BLIP the tests save, loaded through the settings as a user would offline.

Its adjustments are checked against transformers' own `BlipForImageTextRetrieval.forward` on the
processor's inputs (a separate path: the reranker shares one vision pass between captions).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from blip_support import save_tiny_blip
from PIL import Image, ImageDraw

from xmodal.config import load_settings
from xmodal.encoders.rerank import Reranker
from xmodal.encoders.rerank.blip import MAX_PAIRS_PER_PASS, BlipReranker
from xmodal.errors import EncodeError, ModelLoadError

HubCacheMaker = Callable[[str, dict[str, Path]], Path]
TOL = 1e-4
CAPTIONS = ["a red circle and a blue square", "a blue circle and a red square", "a small green triangle", "a dog"]


def scene(left: tuple[int, int, int], right: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 8, 28, 32), fill=left)
    draw.rectangle((36, 8, 60, 32), fill=right)
    return image


IMAGES = [scene((220, 20, 20), (20, 20, 220)), scene((20, 20, 220), (220, 20, 20)), scene((20, 160, 20), (250, 250, 0))]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("tiny-blip") / "model")


def blip(model: str | Path, **kwargs: object) -> BlipReranker:
    return BlipReranker(load_settings({"XMODAL_BLIP_MODEL": str(model), "XMODAL_DEVICE": "cpu"}), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reranker(blip_dir: Path) -> BlipReranker:
    loaded = blip(blip_dir)
    loaded.load()
    return loaded


def reference_log_odds(blip_dir: Path, pairs: list[tuple[Image.Image, str]]) -> np.ndarray:
    """transformers' documented path, one pair at a time: processor -> model(**inputs).itm_score."""
    import torch
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    processor = BlipProcessor.from_pretrained(blip_dir, local_files_only=True)
    model = BlipForImageTextRetrieval.from_pretrained(blip_dir, local_files_only=True).eval()
    out = []
    for image, text in pairs:
        inputs = processor(images=image, text=text, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs, use_itm_head=True).itm_score[0]
        out.append(float(logits[1] - logits[0]))
    return np.array(out)


def test_it_is_a_reranker_for_text_image_pairs(reranker: BlipReranker) -> None:
    assert isinstance(reranker, Reranker)
    assert reranker.pairs == {("text", "image"), ("image", "text")}


def test_text_query_adjustments_are_the_itm_log_odds(reranker: BlipReranker, blip_dir: Path) -> None:
    got = reranker.score("text", CAPTIONS[0], "image", IMAGES)
    assert got.dtype == np.float32 and got.shape == (len(IMAGES),)
    expected = reference_log_odds(blip_dir, [(image, CAPTIONS[0]) for image in IMAGES])
    np.testing.assert_allclose(got, expected, atol=TOL)
    assert np.ptp(got) > 0.1  # the pairs are told apart: a test of ranking, not of a constant


def test_image_query_adjustments_are_the_itm_log_odds(reranker: BlipReranker, blip_dir: Path) -> None:
    got = reranker.score("image", IMAGES[1], "text", CAPTIONS)
    expected = reference_log_odds(blip_dir, [(IMAGES[1], caption) for caption in CAPTIONS])
    np.testing.assert_allclose(got, expected, atol=TOL)


def test_ranking_is_deterministic_and_independent_of_order_and_batching(reranker: BlipReranker) -> None:
    many = [scene((i * 5 % 256, 255 - i * 5 % 256, 90), (30, i * 7 % 256, 200)) for i in range(MAX_PAIRS_PER_PASS + 5)]
    first = reranker.score("text", CAPTIONS[1], "image", many)
    np.testing.assert_array_equal(first, reranker.score("text", CAPTIONS[1], "image", many))
    one_by_one = np.concatenate([reranker.score("text", CAPTIONS[1], "image", [image]) for image in many])
    np.testing.assert_allclose(first, one_by_one, atol=TOL)
    backwards = reranker.score("text", CAPTIONS[1], "image", many[::-1])
    np.testing.assert_allclose(backwards[::-1], first, atol=TOL)
    assert list(np.argsort(-first, kind="stable")) == list(np.argsort(-one_by_one, kind="stable"))
    captions = reranker.score("image", IMAGES[0], "text", CAPTIONS * 6)  # more captions than one pass
    np.testing.assert_allclose(captions, np.tile(reranker.score("image", IMAGES[0], "text", CAPTIONS), 6), atol=TOL)


def test_empty_candidates_and_refused_pairs(reranker: BlipReranker) -> None:
    assert reranker.score("text", "a dog", "image", []).shape == (0,)
    with pytest.raises(EncodeError, match="text-image and image-text") as caught:
        reranker.score("text", "a dog", "text", ["a dog"])
    assert caught.value.code == "unsupported_modality"


def test_scoring_before_load_is_a_clear_error(blip_dir: Path) -> None:
    with pytest.raises(EncodeError, match="call load") as caught:
        blip(blip_dir).score("text", "a dog", "image", IMAGES)
    assert caught.value.code == "not_loaded"


def test_a_missing_directory_names_it_and_how_to_preseed(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-blip"
    with pytest.raises(ModelLoadError, match="BLIP model directory not found") as caught:
        blip(missing).load()
    assert str(missing) in caught.value.message and "hf download" in caught.value.message


def test_an_unset_model_says_which_variable(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="XMODAL_BLIP_MODEL is not set"):
        blip("").load()


def test_a_directory_without_a_model_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="cannot load the BLIP model"):
        blip(tmp_path).load()


def test_a_hub_id_loads_from_the_local_cache_only(blip_dir: Path, make_hub_cache: HubCacheMaker) -> None:
    files = {p.name: p for p in blip_dir.iterdir() if p.is_file()}
    cache = make_hub_cache("Salesforce/blip-itm-base-coco", files)
    from_cache = blip("Salesforce/blip-itm-base-coco", hub_cache=cache)
    from_cache.load()
    reference = blip(blip_dir)
    reference.load()
    np.testing.assert_array_equal(
        from_cache.score("text", CAPTIONS[2], "image", IMAGES), reference.score("text", CAPTIONS[2], "image", IMAGES)
    )
    with pytest.raises(ModelLoadError, match="not in the local hub cache"):
        blip("Salesforce/blip-itm-large-coco", hub_cache=cache).load()
