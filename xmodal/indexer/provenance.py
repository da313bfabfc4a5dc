"""Which model made a generation's vectors, and the refusal to mix models.

Every index generation records the fingerprint of the encoder that filled it (`model` in its
manifest, xmodal.indexer.generations); every point records it too (payload `model`). A vector is
only comparable with vectors of the same model, so a process refuses:

- to start when a space's serving generation was made by another model than its own encoder
  (`ModelMismatch`, a ConfigError: exit 2 with what to do);
- to search, or write into, a generation another process switched the space to when another
  model made it (`xmodal reindex` with a new model): searches get an error reply with code
  `model_mismatch`, ingest stops (exit 3) rather than write vectors of the wrong model.

A generation made before fingerprints existed records none; the first process to open it claims
it for its model, unless the points it holds say they were made by another one.

On a Qdrant server the fingerprint is in the generation's collection metadata, and the same checks
apply (the alias names the serving generation). Each point's payload also says which model made it,
and `xmodal verify` reports points of another model as `wrong_model`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from xmodal.errors import ConfigError
from xmodal.indexer.base import VectorIndex

__all__ = ["GuardedIndex", "ModelGuard", "ModelMismatch", "settings_tag"]

RECHECK_S = 1.0  # how stale the guard's view of the serving generation may be (the index follows within ~1 s)
CLAIM_SAMPLE = 64  # points looked at before claiming a generation that records no model


class ModelMismatch(ConfigError):
    code = "model_mismatch"


class ModelGuard:
    """Checks that each space's serving generation was made by this process's encoder."""

    def __init__(self, index: VectorIndex, fingerprints: Mapping[str, str], *, recheck_s: float = RECHECK_S) -> None:
        self._index = index
        self._fingerprints = dict(fingerprints)
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._checked: dict[str, tuple[float, Any]] = {}  # space -> (when, generation)

    @property
    def enabled(self) -> bool:
        return callable(getattr(self._index, "serving_generation", None))

    def start(self) -> None:
        """Start-up hook: claim unrecorded generations, refuse ones made by another model."""
        if not self.enabled:
            return
        for space in self._fingerprints:
            generation = self._serving(space)
            if generation is not None and generation.model is None:
                self._claim(space, generation)
            self.check(space)

    def check(self, space: str) -> None:
        """Raise ModelMismatch when the generation serving `space` now was made by another model."""
        if not self.enabled or space not in self._fingerprints:
            return
        now = time.monotonic()
        with self._lock:
            when, generation = self._checked.get(space, (-1e9, None))
        if now - when >= self._recheck_s:
            generation = self._serving(space)
            with self._lock:
                self._checked[space] = (now, generation)
        mine = self._fingerprints[space]
        if generation is not None and generation.model is not None and generation.model != mine:
            raise ModelMismatch(
                f"space {space!r} is served by generation {generation.number}, made by model "
                f"{generation.model}; this process encodes with {mine}. Start it with the settings of that "
                f"model (XMODAL_CLIP_*/XMODAL_CLAP_MODEL/weights), or switch the space back "
                f"(`xmodal reindex {space} --rollback`)"
            )

    def _serving(self, space: str) -> Any:
        try:
            return self._index.serving_generation(space)  # type: ignore[attr-defined]
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - no collection yet: nothing made by anyone to refuse
            return None

    def _claim(self, space: str, generation: Any) -> None:
        from xmodal.indexer.generations import SpaceLayout

        mine = self._fingerprints[space]
        scroll = getattr(self._index, "scroll", None)
        if callable(scroll):
            records, _ = scroll(space, None, CLAIM_SAMPLE)
            others = {m for r in records if (m := (r.payload or {}).get("model")) is not None and m != mine}
            if others:
                raise ModelMismatch(
                    f"space {space!r}: generation {generation.number} holds points made by model "
                    f"{sorted(others)[0]}; this process encodes with {mine}. Rebuild the space for this model "
                    f"with `xmodal reindex {space}`, or start with the settings of that model"
                )
        server_update = getattr(self._index, "update_generation_metadata", None)
        if callable(server_update):  # a Qdrant server: the collection metadata, not a manifest file
            server_update(space, generation.number, model=mine)
            return
        layout = SpaceLayout(generation.path.parent.parent, space)
        layout.write_generation(replace(generation, model=mine))


class GuardedIndex:
    """A VectorIndex whose searches first pass the model guard; everything else goes through."""

    def __init__(self, inner: VectorIndex, guard: ModelGuard) -> None:
        self._inner = inner
        self._guard = guard

    def search(self, space: str, vector: Any, k: int, **kwargs: Any) -> Any:
        self._guard.check(space)
        return self._inner.search(space, vector, k, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def settings_tag(settings: Any) -> str:
    """The build settings a point was indexed with, as one short string (payload `index_settings`)."""
    from xmodal.indexer.settings import BUILD_FIELDS

    return ",".join(f"{name}={getattr(settings, name)}" for name in BUILD_FIELDS if hasattr(settings, name))
