"""Issue 10's binding target on the shipped mini cross-encoder (the "mentions" design,
xmodal/encoders/mini/mentions.py), in a small held-out gallery.

The gallery is evaluate_cross's (held-out binding scenes, their colour-swapped twins, single objects
of the scenes' attributes, ordinary corpus images; every image's caption as a text), drawn with
another seed than the evaluation's (0) and the validation's (7). First stage: the shipped `mini`
space; reranked: its top 50 rescored with the shipped checkpoint and its own alpha, as the query
path does. `python benchmarks/rerank_gain.py --n 100` measures the same through Kafka.
"""

from __future__ import annotations

import pytest

from xmodal.encoders.mini.cross import MiniCrossEncoder, checkpoint_design, cross_path
from xmodal.encoders.mini.evaluate_cross import measure, rerank_gallery, score_groups
from xmodal.encoders.mini.space import MiniSpace

pytestmark = pytest.mark.skipif(not cross_path().is_file(), reason=f"no shipped mini cross-encoder at {cross_path()}")

SEED = 5
SCENES = 15  # 60 images and 120 texts: about a minute on the shared 2-core machine
SUCCESS_AT_1_TARGET = 0.8  # issue 10: reranked Success@1 on held-out binding queries


@pytest.fixture(scope="module")
def figures() -> dict[str, dict[str, dict[str, float]]]:
    space = MiniSpace()
    space.load()
    cross = MiniCrossEncoder()
    cross.load()
    scored = score_groups(space, cross, rerank_gallery(SCENES, SEED, "heldout"), rerank_k=50, timed=0)
    out = {name: {"first": measure(s, None), "reranked": measure(s, cross.alpha)} for name, s in scored.items()}
    for name, f in out.items():
        print(f"{name}: S@1 {f['first']['Success@1']:.2f} -> {f['reranked']['Success@1']:.2f}")
    return out


@pytest.mark.xfail(
    condition=cross_path().is_file() and checkpoint_design(cross_path()) == "cross",
    strict=True,  # a real test once the mentions checkpoint is shipped (it passes then: 0.93 and 1.00 here)
    reason="the shipped checkpoint is still the first design (weights/cross.json: held-out binding "
    "text->image Success@1 0.14 reranked); the mentions design (docs/mini.md) reaches 0.85 / 0.91 "
    "held-out but loses one of 150 held-out count queries, so it was not shipped",
)
def test_reranking_binds_colour_to_shape_in_a_mixed_heldout_gallery(figures) -> None:
    """Both directions: the scene for its caption among twins, singles and other scenes, and the
    scene's caption for its image among the twin's, the singles' and every other caption."""
    binding = figures["binding text->image"]
    assert binding["first"]["Success@1"] < 0.5  # what the bi-encoder cannot do
    assert binding["reranked"]["Success@1"] >= SUCCESS_AT_1_TARGET, binding
    image_to_text = figures["binding image->text"]
    assert image_to_text["first"]["Success@1"] < 0.5
    assert image_to_text["reranked"]["Success@1"] >= SUCCESS_AT_1_TARGET, image_to_text


def test_counts_and_sizes_are_no_worse_and_image_to_text_gains(figures) -> None:
    for name in ("counts text->image", "sizes text->image"):
        first, reranked = figures[name]["first"], figures[name]["reranked"]
        assert reranked["Success@1"] >= first["Success@1"], (name, first, reranked)
        assert reranked["nDCG@10"] >= first["nDCG@10"] - 0.02, (name, first, reranked)
    image_to_text = figures["binding image->text"]
    assert image_to_text["reranked"]["Success@1"] > image_to_text["first"]["Success@1"]
