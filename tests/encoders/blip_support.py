"""A tiny random BLIP image-text matching model, saved the way a user hands one over offline.

No hub is reachable, so the BLIP reranker is tested (and benchmarked, benchmarks/rerank.py) on a
model built here: the real `BlipForImageTextRetrieval` architecture, shrunk to 32-wide layers and
32 x 32 images, with a WordPiece vocabulary trained in a second and saved with `save_pretrained`
next to a `BlipProcessor`, as `hf download --local-dir` leaves the published checkpoints.
"""

from __future__ import annotations

from pathlib import Path

TINY_IMAGE_SIZE = 32
CORPUS = [
    "a red circle and a blue square",
    "a blue circle and a red square",
    "a small green triangle",
    "a dog barks in the park",
    "one large yellow star on a white background",
] * 20


def save_tiny_blip(path: Path, *, seed: int = 0) -> Path:
    """Build, save and return the directory of a tiny random BLIP ITM model (processor included)."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(CORPUS, vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    # transformers 5 takes the vocabulary's contents (vocab=); a vocab_file= is silently ignored.
    tokenizer = BertTokenizerFast(vocab=wordpiece.get_vocab(), model_max_length=64)
    assert tokenizer.vocab_size == wordpiece.get_vocab_size(), "the trained vocabulary did not reach the tokenizer"
    config = BlipConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "initializer_range": 0.5,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "initializer_range": 0.5,
        },
        image_text_hidden_size=32,
        initializer_range=0.5,
        projection_dim=32,
    )
    # Wide random weights (0.5, not BERT's 0.02) so that different pairs get clearly different scores.
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    BlipProcessor(image_processor=BlipImageProcessor(size=size), tokenizer=tokenizer).save_pretrained(path)
    model.save_pretrained(path)
    return path
