"""The `clip` space: open_clip text and image towers in one vector space (ViT-B-32 by default).

Weights are named by `XMODAL_CLIP_PRETRAINED` with open_clip's schemes, and resolved here from local
disk only, so that an offline machine fails at start-up in milliseconds instead of retrying a hub:

    laion2b_s34b_b79k           a tag of the architecture `XMODAL_CLIP_MODEL`, looked up in the local
                                Hugging Face hub cache (HF_HUB_CACHE / HF_HOME) or open_clip's
                                ~/.cache/clip; never downloaded
    hf-hub:org/repo             an open_clip repo already in the hub cache (architecture from its
                                open_clip_config.json; XMODAL_CLIP_MODEL is not used)
    local-dir:/path/to/dir      a directory with open_clip_config.json and a checkpoint (ditto)
    /path/to/model.bin          a checkpoint file for the architecture XMODAL_CLIP_MODEL

Everything heavy (torch, open_clip, weights) happens in `load()`; importing this module is cheap.
The torch runtime helpers at the bottom (device, threads, autocast) are shared with the `clap` space.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmodal.encoders._hub import cached_hub_file, hub_cache_dir
from xmodal.encoders._torch import TorchRuntime, chunks, concat_rows, finish_vectors
from xmodal.encoders.base import Modality, Vectors, Waveform
from xmodal.errors import EncodeError, ModelLoadError

if TYPE_CHECKING:
    from PIL import Image

    from xmodal.config import Settings

__all__ = ["ClipSpace", "ClipWeights", "resolve_clip_weights"]

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
OPEN_CLIP_CONFIG = "open_clip_config.json"
# What open_clip looks for in a hub repo, safetensors first (open_clip.pretrained's own order).
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# What open_clip picks up in a local-dir (factory._find_checkpoint_in_dir): a .pt there is not seen.
LOCAL_DIR_SUFFIXES = (".safetensors", ".bin", ".pth")
# open_clip's download cache for tags that are plain URLs (open_clip.pretrained.download_pretrained_from_url).
OPEN_CLIP_URL_CACHE = Path("~/.cache/clip")
# Largest batch run through a tower at once: bounds activation memory whatever the caller sends.
MAX_TOWER_BATCH = 64
OFFLINE_HINT = (
    "provide the weights offline with XMODAL_CLIP_PRETRAINED=/path/to/open_clip_pytorch_model.bin "
    "(a checkpoint of XMODAL_CLIP_MODEL) or XMODAL_CLIP_PRETRAINED=local-dir:/path/to/dir "
    "(open_clip_config.json + checkpoint), or copy a hub cache that holds them; see docs/spaces.md"
)


@dataclass(frozen=True)
class ClipWeights:
    """Resolved weights: what to hand to open_clip's factory, and where they came from."""

    model_name: str  # a built-in architecture, or 'local-dir:<dir>' (config and weights inside)
    checkpoint: str | None  # checkpoint file for a built-in architecture; None for local-dir
    preprocess: Mapping[str, Any] = field(default_factory=dict)  # the tag's image mean/std/resize
    quick_gelu: bool = False  # the tag was trained with QuickGELU activations
    source: str = ""  # the setting as written, for messages


def resolve_clip_weights(model: str, pretrained: str, hub_cache: str | Path | None = None) -> ClipWeights:
    """Resolve `XMODAL_CLIP_MODEL` / `XMODAL_CLIP_PRETRAINED` to local files, or raise ModelLoadError.

    Reads nothing but small config files and directory entries; never touches the network.
    """
    pretrained = pretrained.strip()
    if pretrained.startswith(LOCAL_DIR):
        return _local_dir(Path(pretrained[len(LOCAL_DIR) :]).expanduser(), source=pretrained)
    if pretrained.startswith(HF_HUB):
        return _hub_repo(pretrained[len(HF_HUB) :].strip("/"), hub_cache, source=pretrained)
    path = Path(pretrained).expanduser()
    if path.is_file():
        _check_architecture(model)
        return ClipWeights(model, str(path), source=pretrained)
    if path.is_dir():
        raise ModelLoadError(
            f"XMODAL_CLIP_PRETRAINED={pretrained} is a directory; write local-dir:{path} for an open_clip "
            "directory (open_clip_config.json + checkpoint), or name the checkpoint file itself"
        )
    if _looks_like_path(pretrained):
        raise ModelLoadError(f"clip checkpoint file not found: {path}; {OFFLINE_HINT}")
    return _tag(model, pretrained, hub_cache)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(("~", ".")) or value.endswith(CHECKPOINT_SUFFIXES)


def _check_architecture(model: str) -> None:
    import open_clip

    if open_clip.get_model_config(model) is None:
        raise ModelLoadError(
            f"unknown open_clip architecture XMODAL_CLIP_MODEL={model}; valid: {', '.join(open_clip.list_models())}"
        )


def _local_dir(path: Path, *, source: str) -> ClipWeights:
    if not (path / OPEN_CLIP_CONFIG).is_file():
        raise ModelLoadError(f"clip weights: {path / OPEN_CLIP_CONFIG} not found; {OFFLINE_HINT}")
    # open_clip only warns and keeps random weights when the directory has no checkpoint: refuse instead.
    if not any(p.suffix in LOCAL_DIR_SUFFIXES for p in path.iterdir()):
        raise ModelLoadError(f"clip weights: no checkpoint (*.safetensors, *.bin, *.pth) in {path}; {OFFLINE_HINT}")
    return ClipWeights(f"{LOCAL_DIR}{path}", None, source=source)


def _hub_repo(repo: str, hub_cache: str | Path | None, *, source: str) -> ClipWeights:
    config = cached_hub_file(repo, OPEN_CLIP_CONFIG, hub_cache)
    weights = next(filter(None, (cached_hub_file(repo, name, hub_cache) for name in HUB_WEIGHT_FILES)), None)
    if config is None or weights is None:
        raise ModelLoadError(
            f"clip weights {source}: {OPEN_CLIP_CONFIG} and one of {', '.join(HUB_WEIGHT_FILES)} of hub repo "
            f"{repo} are not in the local hub cache {hub_cache_dir(hub_cache)} (nothing is downloaded); {OFFLINE_HINT}"
        )
    # Both files resolve into the same snapshot (revision 'main'), which is an open_clip local-dir.
    return ClipWeights(f"{LOCAL_DIR}{Path(config).parent}", None, source=source)


def _tag(model: str, tag: str, hub_cache: str | Path | None) -> ClipWeights:
    import open_clip

    _check_architecture(model)
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ModelLoadError(
            f"XMODAL_CLIP_PRETRAINED={tag} is neither a file nor a known tag of {model} (tags: {tags}); {OFFLINE_HINT}"
        )
    # open_clip's hf_hub convention: 'org/repo/filename', or 'org/repo/' for the default file name.
    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    hub_files = [(repo, name) for name in _hub_weight_names(filename)] if repo else []
    url_file = OPEN_CLIP_URL_CACHE.expanduser() / os.path.basename(cfg["url"]) if cfg.get("url") else None
    found = next((hit for repo_id, name in hub_files if (hit := cached_hub_file(repo_id, name, hub_cache))), None)
    if found is None and url_file is not None and url_file.is_file():
        found = str(url_file)
    if found is None:
        tried = [f"{repo_id}/{name} in the hub cache {hub_cache_dir(hub_cache)}" for repo_id, name in hub_files]
        tried += [str(url_file)] if url_file is not None else []
        seed = ""
        if hub_files:
            seed = f"run `hf download {repo} {hub_files[-1][1]}` on a connected machine, copy its hub cache here; or "
        raise ModelLoadError(
            f"clip weights {model}/{tag} are not on this machine (looked for {'; '.join(tried)}; nothing is "
            f"downloaded); {seed}{OFFLINE_HINT}"
        )
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if cfg.get(k) is not None}
    return ClipWeights(model, found, preprocess, bool(cfg.get("quick_gelu")), source=tag)


def _hub_weight_names(filename: str) -> tuple[str, ...]:
    """The files open_clip would fetch for a tag, safetensors first (open_clip.pretrained's own order)."""
    if not filename:
        return HUB_WEIGHT_FILES
    stem, suffix = os.path.splitext(filename)
    return (f"{stem}.safetensors", filename) if suffix in (".bin", ".pth") else (filename,)


def _model_config(weights: ClipWeights) -> dict[str, Any]:
    """open_clip's model config (embed_dim, towers) without building the model or reading weights."""
    if weights.model_name.startswith(LOCAL_DIR):
        path = Path(weights.model_name[len(LOCAL_DIR) :]) / OPEN_CLIP_CONFIG
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return dict(config.get("model_cfg", config))
    import open_clip

    return dict(open_clip.get_model_config(weights.model_name))


@dataclass
class _Loaded:
    model: Any  # open_clip.CLIP or CustomTextCLIP
    preprocess: Any  # PIL image -> CHW tensor, the model's own eval transform
    tokenizer: Any  # list[str] -> LongTensor
    runtime: TorchRuntime
    dim: int


class ClipSpace:
    """open_clip text and image towers. Construct with the settings, then call `load()` once."""

    name = "clip"
    modalities: frozenset[Modality] = frozenset({"text", "image"})

    def __init__(self, settings: Settings, *, hub_cache: str | Path | None = None) -> None:
        # hub_cache: None means huggingface_hub's default (HF_HUB_CACHE / HF_HOME); tests pass their own.
        self._settings = settings
        self._hub_cache = hub_cache
        self._weights: ClipWeights | None = None
        self._config_dim: int | None = None
        self._loaded: _Loaded | None = None

    @property
    def dim(self) -> int:
        """Output width. Before `load()` it is read from the architecture's config (no weights are read),
        so the collection can be checked first; after `load()` it is what the model really produces."""
        if self._loaded is not None:
            return self._loaded.dim
        if self._config_dim is None:
            self._config_dim = int(_model_config(self._resolve())["embed_dim"])
        return self._config_dim

    @property
    def fingerprint(self) -> str:
        """Architecture + the checkpoint file (or the local-dir's files) (xmodal/encoders/fingerprint.py)."""
        from xmodal.encoders.fingerprint import directory_weights, make_fingerprint

        weights = self._resolve()
        if weights.checkpoint is not None:
            files = [(Path(weights.checkpoint).name, Path(weights.checkpoint))]
            return make_fingerprint(self.name, self._settings.clip_model, files)
        directory = Path(weights.model_name.removeprefix(LOCAL_DIR))
        return make_fingerprint(self.name, weights.model_name, directory_weights(directory))

    def _resolve(self) -> ClipWeights:
        if self._weights is None:
            self._weights = resolve_clip_weights(
                self._settings.clip_model, self._settings.clip_pretrained, self._hub_cache
            )
        return self._weights

    def load(self) -> None:
        if self._loaded is not None:
            return
        weights = self._resolve()
        runtime = TorchRuntime.from_settings(self._settings)
        import open_clip

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                weights.model_name,
                pretrained=weights.checkpoint,
                device=runtime.device,
                force_quick_gelu=weights.quick_gelu,  # match the activations the tag's weights were trained with
                image_mean=weights.preprocess.get("mean"),
                image_std=weights.preprocess.get("std"),
                image_interpolation=weights.preprocess.get("interpolation"),
                image_resize_mode=weights.preprocess.get("resize_mode"),
            )
            tokenizer = open_clip.get_tokenizer(weights.model_name)
        except Exception as e:  # start-up boundary: whatever open_clip/torch raise, the weights are unusable
            where = weights.checkpoint or weights.model_name
            raise ModelLoadError(f"cannot load clip weights from {where} ({weights.source}): {e}") from e
        model.eval()
        loaded = _Loaded(model, preprocess, tokenizer, runtime, dim=0)
        # The width the model really produces, which the index must match.
        loaded.dim = int(self._run_text(loaded, [""]).shape[1])
        self._loaded = loaded

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        loaded = self._require()
        return finish_vectors(self._run_text(loaded, texts), len(texts), loaded.dim, space=self.name)

    def encode_images(self, images: Sequence[Image.Image]) -> Vectors:
        loaded = self._require()
        import torch

        try:
            pixels = [loaded.preprocess(image) for image in images]  # converts to RGB itself
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise EncodeError(f"clip image preprocessing failed: {e}", code="invalid_image") from e
        outputs = []
        for chunk in chunks(pixels, MAX_TOWER_BATCH):
            batch = torch.stack(chunk).to(loaded.runtime.device)
            with loaded.runtime.inference():
                outputs.append(loaded.model.encode_image(batch).float().cpu().numpy())
        return finish_vectors(concat_rows(outputs, loaded.dim), len(images), loaded.dim, space=self.name)

    def encode_audio(self, clips: Sequence[Waveform]) -> Vectors:
        raise EncodeError("the clip space has no audio tower", code="unsupported_modality")

    def _run_text(self, loaded: _Loaded, texts: Sequence[str]) -> np.ndarray:
        outputs = []
        for chunk in chunks(list(texts), MAX_TOWER_BATCH):
            tokens = loaded.tokenizer(chunk).to(loaded.runtime.device)
            with loaded.runtime.inference():
                outputs.append(loaded.model.encode_text(tokens).float().cpu().numpy())
        return concat_rows(outputs, loaded.dim)

    def _require(self) -> _Loaded:
        if self._loaded is None:
            raise EncodeError("the clip space is not loaded; call load() at start-up", code="not_loaded")
        return self._loaded
