"""The `mini` space: frozen all-MiniLM-L6-v2 text tower plus image/audio towers trained by xmodal."""

from xmodal.encoders.mini.space import MiniSpace

__all__ = ["MiniSpace"]
