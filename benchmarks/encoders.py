"""Speed and memory of the production spaces (`clip`, `clap`) on this machine.

No hub is reachable, so the weights are random, but the architectures are the real ones
(open_clip ViT-B-32; transformers' default ClapConfig, which is laion/clap-htsat-unfused), and the
weights go through the same load path as a user's: a checkpoint file / a save_pretrained directory
handed over with XMODAL_* settings. Random weights run at the speed of trained ones.

    python benchmarks/encoders.py            # both spaces, each in its own process (memory apart)
    python benchmarks/encoders.py clip       # one space
    XMODAL_DEVICE=cuda python benchmarks/encoders.py

Prints items/s per tower and the process's resident memory (VmRSS now, VmHWM peak).
The CLAP tokenizer is a byte-level BPE trained on the benchmark captions (about one token per word,
like RoBERTa's on common English), since the real one cannot be downloaded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

WORDS = (
    "a dog barks at the red car while rain falls on the roof and a bird sings in the old tree near "
    "small children laughing by the river as music plays from an open window on a quiet summer evening"
).split()


def captions(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 16)))) for _ in range(count)]


def memory() -> str:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    rss, peak = (int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM"))
    return f"rss {rss:.0f} MiB, peak {peak:.0f} MiB"


def rate(label: str, fn: Callable[[], object], items: int, repeats: int) -> None:
    fn()  # warm-up: first calls allocate and pick kernels
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    elapsed = time.perf_counter() - started
    per_batch_ms = elapsed / repeats * 1000
    print(f"  {label:<38} {items * repeats / elapsed:8.1f}/s   ({per_batch_ms:.0f} ms per batch of {items})")


def env_settings(**values: str) -> dict[str, str]:
    # Device and threads from the environment, so the same script measures CPU and GPU.
    keep = {k: v for k, v in os.environ.items() if k in ("XMODAL_DEVICE", "XMODAL_TORCH_THREADS")}
    return {**keep, **values}


def make_clip_weights(workdir: Path) -> None:
    import open_clip
    import torch

    model = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save(model.state_dict(), workdir / "open_clip_pytorch_model.bin")


def bench_clip(workdir: Path, repeats: int) -> None:
    import open_clip  # noqa: F401  (imported first: "after imports" is the memory of the libraries alone)
    from PIL import Image

    from xmodal.config import load_settings
    from xmodal.encoders.clip import ClipSpace

    in_child(make_clip_weights, workdir)
    checkpoint = workdir / "open_clip_pytorch_model.bin"
    print(f"clip ViT-B-32 (random init), after imports: {memory()}")
    space = ClipSpace(load_settings(env_settings(XMODAL_CLIP_PRETRAINED=str(checkpoint))))
    started = time.perf_counter()
    space.load()
    print(f"  load {time.perf_counter() - started:.1f} s, dim {space.dim}, {memory()}  [{device(space)}]")
    texts = captions(64)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(32)]
    rate("texts (batch 64)", lambda: space.encode_texts(texts), len(texts), repeats)
    rate("images 640x480 (batch 32)", lambda: space.encode_images(images), len(images), repeats)
    rate("text query (batch 1)", lambda: space.encode_texts(texts[:1]), 1, repeats * 10)
    print(f"  after encoding: {memory()}")


def make_clap_weights(workdir: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(captions(2000, seed=1), vocab_size=1000, special_tokens=specials)
    bpe.save_model(str(workdir))
    vocab = json.loads((workdir / "vocab.json").read_text(encoding="utf-8"))
    lines = (workdir / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    # transformers 5 takes vocab=/merges= contents; vocab_file=/merges_file= are silently ignored.
    tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=512)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer).save_pretrained(workdir / "clap")
    ClapModel(ClapConfig()).save_pretrained(workdir / "clap")  # the default config is the htsat-unfused architecture


def bench_clap(workdir: Path, repeats: int) -> None:
    import torch  # noqa: F401  (imported first: "after imports" is the memory of the libraries alone)
    import transformers  # noqa: F401

    from xmodal.config import load_settings
    from xmodal.encoders.base import Waveform
    from xmodal.encoders.clap import ClapSpace

    in_child(make_clap_weights, workdir)
    model_dir = workdir / "clap"
    texts = captions(64)
    print(f"clap htsat-unfused (random init), after imports: {memory()}")
    space = ClapSpace(load_settings(env_settings(XMODAL_CLAP_MODEL=str(model_dir))))
    started = time.perf_counter()
    space.load()
    print(f"  load {time.perf_counter() - started:.1f} s, dim {space.dim}, {memory()}  [{device(space)}]")
    tokens = np.mean([len(ids) for ids in space._require().processor.tokenizer(texts)["input_ids"]])
    rng = np.random.default_rng(0)

    def clips(count: int, seconds: float, sample_rate: int) -> list[Waveform]:
        return [
            Waveform(rng.uniform(-0.5, 0.5, int(seconds * sample_rate)).astype(np.float32), sample_rate)
            for _ in range(count)
        ]

    ten_s, thirty_s, five_s_16k = clips(8, 10, 48_000), clips(4, 30, 48_000), clips(8, 5, 16_000)
    rate(f"texts (batch 64, {tokens:.0f} tokens avg)", lambda: space.encode_texts(texts), len(texts), repeats)
    rate("audio 10 s @48k (batch 8)", lambda: space.encode_audio(ten_s), len(ten_s), repeats)
    rate("audio 30 s @48k, 3 windows (batch 4)", lambda: space.encode_audio(thirty_s), len(thirty_s), repeats)
    rate("audio 5 s @16k, resampled (batch 8)", lambda: space.encode_audio(five_s_16k), len(five_s_16k), repeats)
    print(f"  after encoding: {memory()}")


def in_child(make: Callable[[Path], None], workdir: Path) -> None:
    """Build the random weights in another process, so this one's memory is the space's alone."""
    child = multiprocessing.get_context("spawn").Process(target=make, args=(workdir,))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"building the weights failed (exit {child.exitcode})")


def device(space: object) -> str:
    runtime = space._require().runtime  # type: ignore[attr-defined]
    import torch

    return f"{runtime.device}, {torch.get_num_threads()} threads, autocast {runtime.autocast_dtype}"


BENCHES = {"clip": bench_clip, "clap": bench_clap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spaces", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per measurement")
    args = parser.parse_args()
    if unknown := set(args.spaces) - set(BENCHES):
        parser.error(f"unknown space {', '.join(sorted(unknown))}; valid: {', '.join(BENCHES)}")
    if len(args.spaces) != 1:
        # One process per space, so each one's resident memory is its own.
        for name in args.spaces or list(BENCHES):
            subprocess.run([sys.executable, __file__, name, "--repeats", str(args.repeats)], check=True)
        return
    print(f"machine: {os.cpu_count()} CPUs visible, {len(os.sched_getaffinity(0))} usable")
    with tempfile.TemporaryDirectory(prefix="xmodal-bench-") as workdir:
        BENCHES[args.spaces[0]](Path(workdir), args.repeats)


if __name__ == "__main__":
    main()
