"""Which reranker reranks which space: one place, like the spaces registry.

    mini  the project's cross-encoder (xmodal.encoders.mini.cross.MiniCrossEncoder), trained in-house
    clip  BLIP image-text matching (blip.py), when XMODAL_BLIP_MODEL names the weights
    clap  none: no audio-text cross-encoder is available, so clap lists stay first-stage

Classes are imported lazily (importing this module loads no torch). A space whose reranker cannot be
built gets a reason instead, which the rerank stage logs at start-up and puts in the
`rerank_unavailable` error a request that asked for reranking gets.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from xmodal.encoders.rerank.base import Reranker

if TYPE_CHECKING:
    from xmodal.config import Settings

__all__ = ["RERANKERS", "NO_RERANKER", "build_rerankers"]

RERANKERS: dict[str, str] = {
    "mini": "xmodal.encoders.mini.cross:MiniCrossEncoder",
    "clip": "xmodal.encoders.rerank.blip:BlipReranker",
}
# Spaces that have no reranker at all, and what to tell the operator.
NO_RERANKER: dict[str, str] = {
    "clap": "no audio-text reranker is available for the clap space: its lists stay first-stage",
}


def build_rerankers(settings: Settings, spaces: Iterable[str]) -> tuple[dict[str, Reranker], dict[str, str]]:
    """Construct (not load) the reranker of each space that has one: (space -> reranker, space -> why not)."""
    built: dict[str, Reranker] = {}
    missing: dict[str, str] = {}
    for space in spaces:
        target = RERANKERS.get(space)
        if target is None:
            missing[space] = NO_RERANKER.get(space, f"no reranker is available for the {space} space")
            continue
        if space == "clip" and not settings.blip_model.strip():
            missing[space] = "XMODAL_BLIP_MODEL is not set, so the clip space has no BLIP reranker"
            continue
        module_name, _, class_name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as e:  # e.g. the mini cross-encoder is not part of this install
            missing[space] = f"the {space} reranker {target} cannot be imported: {type(e).__name__}: {e}"
            continue
        built[space] = cls(settings)
    return built, missing
