"""BLIP image–text matching as the `clip` space's reranker (transformers `BlipForImageTextRetrieval`).

BLIP's ITM head reads the text encoder's [CLS] state after every text token has cross-attended to
the image's patch states, and says "match" or "no match" (two logits). The adjustment added to a
candidate's calibrated first-stage score is the head's log-odds of a match,
`logit[match] - logit[no match]` = log(p / (1 - p)): positive when BLIP thinks the pair matches,
0 when it cannot tell, negative when it is sure it does not (BLIP-2 adds the first-stage score to
the ITM score the same way).

`XMODAL_BLIP_MODEL` is a local directory (what `save_pretrained` or `hf download --local-dir`
wrote: config, weights, processor and tokenizer files) or a hub id such as
`Salesforce/blip-itm-base-coco` that must already be in the local hub cache. Nothing is
downloaded: a machine without the weights fails at `load()` with a message saying how to pre-seed.

Images are the candidates' stored thumbnails (xmodal/thumbnails.py), resized by BLIP's image
processor to the model's input (384 x 384 for the published checkpoints): set
XMODAL_THUMBNAIL_SIZE=384 or more before indexing, or BLIP sees 128-pixel thumbnails scaled up.

One image is encoded once per call: an image query is run through the vision tower once and its
patch states are shared by every candidate caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from xmodal.encoders._hub import resolve_model_dir
from xmodal.encoders._torch import TorchRuntime
from xmodal.encoders.base import Modality
from xmodal.errors import EncodeError, ModelLoadError

if TYPE_CHECKING:
    from xmodal.config import Settings

__all__ = ["BLIP_PAIRS", "BlipReranker", "resolve_blip_dir"]

BLIP_PAIRS: frozenset[tuple[Modality, Modality]] = frozenset({("text", "image"), ("image", "text")})
# Pairs run through the model at once: bounds activation memory whatever rerank_k is.
MAX_PAIRS_PER_PASS = 16
PRESEED_HINT = (
    "pre-seed it on a connected machine with `hf download Salesforce/blip-itm-base-coco --local-dir blip-itm-base-coco`, "
    "copy that directory here and set XMODAL_BLIP_MODEL=/path/to/blip-itm-base-coco; see docs/quality.md"
)


def resolve_blip_dir(model: str, hub_cache: str | Path | None = None) -> Path:
    """The local directory holding `XMODAL_BLIP_MODEL`, or ModelLoadError. Never touches the network."""
    if not model.strip():
        raise ModelLoadError(f"XMODAL_BLIP_MODEL is not set: the clip space has no BLIP reranker; {PRESEED_HINT}")
    return resolve_model_dir("BLIP", model, hint=PRESEED_HINT, hub_cache=hub_cache)


@dataclass
class _Loaded:
    model: Any  # transformers.BlipForImageTextRetrieval
    processor: Any  # transformers.BlipProcessor
    runtime: TorchRuntime
    max_tokens: int


class BlipReranker:
    """Reranker protocol. Construct with the settings (cheap), `load()` once, then `score()`.

    Not reentrant (fast tokenizers are not): the rerank stage runs one call at a time.
    """

    name = "blip"
    pairs = BLIP_PAIRS

    def __init__(self, settings: Settings, *, hub_cache: str | Path | None = None) -> None:
        self._settings = settings
        self._hub_cache = hub_cache
        self._loaded: _Loaded | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> None:
        if self._loaded is not None:
            return
        path = resolve_blip_dir(self._settings.blip_model, self._hub_cache)
        runtime = TorchRuntime.from_settings(self._settings)
        from transformers import BlipForImageTextRetrieval, BlipProcessor

        try:
            processor = BlipProcessor.from_pretrained(path, local_files_only=True)
            model = BlipForImageTextRetrieval.from_pretrained(path, local_files_only=True)
        except Exception as e:  # start-up boundary: whatever transformers raise, the model is unusable
            raise ModelLoadError(f"cannot load the BLIP model from {path}: {e}; {PRESEED_HINT}") from e
        model.to(runtime.device).eval()
        max_tokens = min(int(processor.tokenizer.model_max_length), int(model.config.text_config.max_position_embeddings))
        self._loaded = _Loaded(model, processor, runtime, max_tokens)

    def score(
        self, query_modality: Modality, query: Any, candidate_modality: Modality, candidates: Sequence[Any]
    ) -> NDArray[np.float32]:
        """BLIP's log-odds that each candidate matches the query (module docstring)."""
        loaded = self._require()
        if (query_modality, candidate_modality) not in BLIP_PAIRS:
            raise EncodeError(
                f"BLIP scores text-image and image-text pairs, not {query_modality}-{candidate_modality}",
                code="unsupported_modality",
            )
        if not candidates:
            return np.zeros(0, dtype=np.float32)
        out: list[NDArray[np.float32]] = []
        if query_modality == "image":  # one vision pass for the query, shared by every caption
            image_states = self._image_states(loaded, [query])
            for start in range(0, len(candidates), MAX_PAIRS_PER_PASS):
                texts = list(candidates[start : start + MAX_PAIRS_PER_PASS])
                out.append(self._log_odds(loaded, image_states.expand(len(texts), -1, -1), texts))
        else:
            for start in range(0, len(candidates), MAX_PAIRS_PER_PASS):
                images = list(candidates[start : start + MAX_PAIRS_PER_PASS])
                out.append(self._log_odds(loaded, self._image_states(loaded, images), [query] * len(images)))
        scores = np.concatenate(out)
        if scores.shape != (len(candidates),) or not np.isfinite(scores).all():
            raise EncodeError(f"BLIP returned {scores.shape} scores (finite: {np.isfinite(scores).all()}) for {len(candidates)} pairs")
        return scores

    def _image_states(self, loaded: _Loaded, images: list[Any]) -> Any:
        pixels = loaded.processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        with loaded.runtime.inference():
            states = loaded.model.vision_model(pixel_values=pixels["pixel_values"].to(loaded.runtime.device))
        return states.last_hidden_state

    def _log_odds(self, loaded: _Loaded, image_states: Any, texts: list[str]) -> NDArray[np.float32]:
        """The ITM head on (image, text) pairs, as BlipForImageTextRetrieval.forward(use_itm_head=True)."""
        import torch

        tokens = loaded.processor.tokenizer(
            texts, padding=True, truncation=True, max_length=loaded.max_tokens, return_tensors="pt"
        ).to(loaded.runtime.device)
        image_mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=image_states.device)
        with loaded.runtime.inference():
            states = loaded.model.text_encoder(
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                encoder_hidden_states=image_states,
                encoder_attention_mask=image_mask,
            ).last_hidden_state
            logits = loaded.model.itm_head(states[:, 0, :]).float()
        return np.asarray((logits[:, 1] - logits[:, 0]).cpu().numpy(), dtype=np.float32)

    def _require(self) -> _Loaded:
        if self._loaded is None:
            raise EncodeError("the BLIP reranker is not loaded; call load() first", code="not_loaded")
        return self._loaded
