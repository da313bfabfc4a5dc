"""The Reranker protocol: a model that looks at a query and a candidate together.

A bi-encoder (the spaces' towers) embeds query and candidate apart and compares two vectors; a
cross-encoder attends from one to the other, so it can tell "a red circle and a blue square" from
"a blue circle and a red square". It is too slow for a whole gallery, so it only rescores the
first stage's top candidates (query_api/rerank.py).

Contents are what the encoders take: `str` for text, an RGB `PIL.Image.Image`, a `Waveform`.
Candidates are read back from what the index stores with each point (its thumbnail: the start of a
text, a small JPEG of an image, a short preview of a sound), so a reranker must score those views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from xmodal.encoders.base import Modality

__all__ = ["Reranker"]


@runtime_checkable
class Reranker(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def pairs(self) -> frozenset[tuple[Modality, Modality]]:
        """The (query modality, candidate modality) pairs this model can score."""
        ...

    def load(self) -> None:
        """Load weights (start-up); raise ConfigError with a clear message when they are missing."""
        ...

    def score(
        self, query_modality: Modality, query: Any, candidate_modality: Modality, candidates: Sequence[Any]
    ) -> NDArray[np.float32]:
        """One float per candidate, added to its calibrated first-stage score (fusion.py units) to give
        the final score: positive when the pair matches better than the first stage thought."""
        ...
