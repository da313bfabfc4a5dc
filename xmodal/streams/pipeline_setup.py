"""What every ingest pipeline of a process is built with, read from the settings in one place.

Live ingest (xmodal/runtime.py, and the per-space pipelines its handoff makes), the embedded
reindex and each worker of a server reindex job write points the same way: the same media limits
and decoded-bytes budget, the same thumbnails, the same index-settings tag beside the model's
fingerprint. Built here once, they cannot drift apart (a reindexed generation whose points carried
another tag or no thumbnails would answer differently from the one it replaces).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xmodal.config import Settings
    from xmodal.encoders.base import Encoder
    from xmodal.encoders.media import MediaLimits
    from xmodal.indexer.base import VectorIndex
    from xmodal.indexer.settings import IndexSettings
    from xmodal.streams.pipeline import IngestPipeline
    from xmodal.thumbnails import ThumbnailSpec

__all__ = ["PipelineSetup"]


@dataclass(frozen=True)
class PipelineSetup:
    limits: MediaLimits
    max_decoded_bytes: int
    thumbnails: ThumbnailSpec
    index_settings: str  # the settings tag every point records (xmodal/indexer/provenance.py)

    @classmethod
    def from_settings(cls, settings: Settings, index_settings: IndexSettings | None = None) -> PipelineSetup:
        """`index_settings`: the ones the target index is built with (default: the settings')."""
        from xmodal.encoders.media import MediaLimits
        from xmodal.indexer.provenance import settings_tag
        from xmodal.indexer.settings import IndexSettings
        from xmodal.thumbnails import ThumbnailSpec

        if index_settings is None:
            index_settings = IndexSettings.from_settings(settings)
        return cls(
            limits=MediaLimits.from_settings(settings),
            max_decoded_bytes=settings.batch_max_decoded_bytes,
            thumbnails=ThumbnailSpec.from_settings(settings),
            index_settings=settings_tag(index_settings),
        )

    @property
    def options(self) -> dict[str, Any]:
        """IngestPipeline's keyword options (xmodal/streams/handoff.py passes them on as they are)."""
        return {
            "max_decoded_bytes": self.max_decoded_bytes,
            "thumbnails": self.thumbnails,
            "index_settings": self.index_settings,
        }

    def pipeline(self, spaces: Mapping[str, Encoder], index: VectorIndex) -> IngestPipeline:
        from xmodal.streams.pipeline import IngestPipeline

        return IngestPipeline(spaces, index, self.limits, **self.options)
