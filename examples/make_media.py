"""Write the small gallery that README's "Use it" ingests: shapes, sounds and a few notes.

    python examples/make_media.py            # writes examples/media/ (deterministic)

Images and sounds come from the mini corpus's renderers (xmodal.encoders.mini.corpus), so the
`mini` space knows what they show; the notes are plain text files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmodal.encoders.mini import corpus

OUT = Path(__file__).parent / "media"

IMAGES = {
    "red-circle.png": {"shape": "circle", "colour": "red", "size": "large", "count": 1, "background": "white"},
    "blue-square.png": {"shape": "square", "colour": "blue", "size": "medium", "count": 1, "background": "white"},
    "green-triangles.png": {"shape": "triangle", "colour": "green", "size": "small", "count": 3, "background": "black"},
    "yellow-star.png": {"shape": "star", "colour": "yellow", "size": "large", "count": 1, "background": "gray"},
}
SOUNDS = {
    "low-hum.wav": {"source": "sine", "pitch": "very low", "contour": "steady", "repetitions": 1, "loudness": "quiet"},
    "high-bell.wav": {"source": "bell", "pitch": "high", "contour": "steady", "repetitions": 3, "loudness": "loud"},
    "rising-organ.wav": {"source": "organ", "pitch": "medium", "contour": "rising", "repetitions": 1, "loudness": "loud"},
    "white-noise.wav": {"source": "white noise", "pitch": None, "contour": None, "repetitions": 1, "loudness": "quiet"},
}
NOTES = {
    "bell-note.txt": "three loud high bell chimes",
    "circle-note.txt": "a big red circle on a white background",
    "budget.txt": "quarterly budget meeting notes",
    "train.txt": "the train to the coast leaves at noon",
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(2026)
    for name, attributes in IMAGES.items():
        (OUT / name).write_bytes(corpus.image_png(corpus.render_image(attributes, rng)))
    for name, attributes in SOUNDS.items():
        (OUT / name).write_bytes(corpus.waveform_wav(corpus.render_sound(attributes, rng)))
    for name, text in NOTES.items():
        (OUT / name).write_text(text + "\n")
    print(f"wrote {len(IMAGES) + len(SOUNDS) + len(NOTES)} files to {OUT}")


if __name__ == "__main__":
    main()
