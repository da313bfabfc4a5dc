"""Fixtures of the clip and clap space tests: weights the tests create, since no hub is reachable.

Each is built once per session and saved the way a user would hand it over offline: an open_clip
checkpoint file, an open_clip local-dir, a CLAP `save_pretrained` directory, or a hub cache holding them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLAP_DIM = 32
CORPUS = [
    "a dog barks in the distance",
    "rain falls on a tin roof",
    "a red circle and a blue square",
    "a bird sings at dawn, then a car passes",
    "the sound of a piano playing a slow melody",
] * 20


HubCacheMaker = Callable[[str, dict[str, Path]], Path]


def _make_hub_cache(root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """A Hugging Face hub cache in `root` holding `files` (name -> source) of `repo_id` at revision main."""
    revision = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for name, source in files.items():
        (snapshot / name).symlink_to(source.resolve())
    return root


@pytest.fixture
def make_hub_cache(tmp_path: Path) -> HubCacheMaker:
    """make_hub_cache(repo_id, {name: file}) -> a fresh hub cache directory holding those files."""
    return lambda repo_id, files: _make_hub_cache(tmp_path / "hub", repo_id, files)


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init open_clip ViT-B-32 state_dict file (the real architecture, 151M parameters)."""
    import open_clip
    import torch

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    # float16 halves the file (300 MB) and the save time; loading casts back to the float32 parameters.
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An open_clip local-dir (open_clip_config.json + checkpoint) of a tiny architecture."""
    import open_clip
    import torch

    path = tmp_path_factory.mktemp("tiny-clip")
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    torch.save(model.state_dict(), path / "open_clip_pytorch_model.bin")
    config = {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (path / "open_clip_config.json").write_text(json.dumps(config))
    return path


def roberta_tokenizer(bpe_dir: Path) -> Any:
    """A RobertaTokenizerFast over a trained byte-level BPE (vocab.json + merges.txt in `bpe_dir`)."""
    from transformers import RobertaTokenizerFast

    vocab = json.loads((bpe_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (bpe_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    # transformers 5 takes vocab=/merges= contents; vocab_file=/merges_file= are silently ignored.
    tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=512)
    assert tokenizer.vocab_size == len(vocab), "the trained vocabulary did not reach the tokenizer"
    return tokenizer


def _save_tiny_clap(path: Path, *, fused: bool) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok_dir = path / "bpe"
    tok_dir.mkdir(parents=True)
    bpe.save_model(str(tok_dir))
    tokenizer = roberta_tokenizer(tok_dir)
    config = ClapConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 514,
        },
        audio_config={
            "hidden_size": 32,
            "patch_embeds_hidden_size": 16,
            "depths": [1, 1],
            "num_attention_heads": [2, 2],
            "window_size": 8,
            "spec_size": 256,
            "num_mel_bins": 64,
            "enable_fusion": fused,
        },
        projection_dim=TINY_CLAP_DIM,
    )
    model_dir = path / "model"
    # The extractor is saved with its default truncation ("fusion"): the space must choose for itself.
    ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer).save_pretrained(model_dir)
    ClapModel(config).eval().save_pretrained(model_dir)
    shutil.rmtree(tok_dir)
    return model_dir


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unfused CLAP saved with save_pretrained (processor + model), as `hf download --local-dir` leaves it."""
    return _save_tiny_clap(tmp_path_factory.mktemp("tiny-clap"), fused=False)


@pytest.fixture(scope="session")
def tiny_fused_clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, with the feature-fusion audio tower of the `clap-htsat-fused` checkpoints."""
    return _save_tiny_clap(tmp_path_factory.mktemp("tiny-clap-fused"), fused=True)
