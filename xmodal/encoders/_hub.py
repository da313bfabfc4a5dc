"""Model files on this machine only: a local directory, or a hub id already in the local hub cache.

Shared by the transformers-backed loaders (clap's towers, the BLIP reranker). Nothing here touches
the network: a model that is not on disk fails at once with a message saying which model, where it
was looked for, and the caller's hint on how to pre-seed it.
"""

from __future__ import annotations

from pathlib import Path

from xmodal.errors import ModelLoadError

__all__ = ["cached_hub_file", "hub_cache_dir", "resolve_model_dir"]


def resolve_model_dir(kind: str, model: str, *, hint: str, hub_cache: str | Path | None = None) -> Path:
    """The local directory holding `model`, or ModelLoadError naming `kind` (e.g. "clap", "BLIP").

    `model` is a directory (what `save_pretrained` or `hf download --local-dir` wrote) or an
    `org/name` hub id whose snapshot is in `hub_cache` (None: huggingface_hub's default). `hint`
    ends every error: how to put the model where it is looked for."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1:
        raise ModelLoadError(f"{kind} model directory not found: {path}; {hint}")
    config = cached_hub_file(model, "config.json", hub_cache)
    if config is None:
        raise ModelLoadError(
            f"{kind} model {model} is not in the local hub cache {hub_cache_dir(hub_cache)} (nothing is downloaded); {hint}"
        )
    return Path(config).parent  # the cached snapshot is a complete model directory


def cached_hub_file(repo: str, filename: str, hub_cache: str | Path | None) -> str | None:
    """The path of `repo`'s `filename` in the local hub cache, or None (never a download)."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, cache_dir=hub_cache)
    return hit if isinstance(hit, str) else None  # None or a "known missing" sentinel otherwise


def hub_cache_dir(hub_cache: str | Path | None) -> str:
    """Where the hub cache is looked for, for messages."""
    from huggingface_hub import constants

    return str(hub_cache or constants.HF_HUB_CACHE)
