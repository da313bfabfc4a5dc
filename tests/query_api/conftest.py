"""Fixtures of the search-side tests: the real MiniLM text tower and both index backends holding
the small corpus of qa_support.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from qa_support import MiniText, open_backend, populate

from xmodal.indexer import VectorIndex


@pytest.fixture(scope="session")
def mini() -> MiniText:
    """The mini space's real text tower (all-MiniLM-L6-v2), loaded once: a few seconds."""
    space = MiniText()
    space.load()
    return space


@pytest.fixture(scope="module", params=["edge", "qdrant-local"])
def index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mini: MiniText
) -> Iterator[VectorIndex]:
    """Each backend, holding CORPUS in the spaces `mini` and `toy`."""
    idx = open_backend(request.param, tmp_path_factory.mktemp(request.param))
    populate(idx, mini)
    yield idx
    idx.close()
