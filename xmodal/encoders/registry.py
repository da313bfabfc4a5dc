"""The spaces registry: one place that maps a space name to the class that builds it.

Classes are imported lazily so `XMODAL_SPACES=mini` never imports open_clip, and a wrong name
lists the valid ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from xmodal.encoders.base import Encoder
from xmodal.errors import ConfigError

if TYPE_CHECKING:
    from xmodal.config import Settings

__all__ = ["SPACES", "build_space", "build_spaces"]

SPACES: dict[str, str] = {
    "mini": "xmodal.encoders.mini.space:MiniSpace",
    "clip": "xmodal.encoders.clip:ClipSpace",
    "clap": "xmodal.encoders.clap:ClapSpace",
}


def build_space(name: str, settings: Settings) -> Encoder:
    """Construct (not load) the encoder of space `name`."""
    try:
        target = SPACES[name]
    except KeyError:
        raise ConfigError(
            f"unknown space {name!r} in XMODAL_SPACES; valid spaces: {', '.join(sorted(SPACES))}",
            code="unknown_space",
        ) from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    encoder: Encoder = cls(settings)
    return encoder


def build_spaces(settings: Settings) -> dict[str, Encoder]:
    """Construct every configured space, in the order of XMODAL_SPACES."""
    if len(set(settings.spaces)) != len(settings.spaces):
        raise ConfigError(f"XMODAL_SPACES lists a space twice: {','.join(settings.spaces)}")
    return {name: build_space(name, settings) for name in settings.spaces}
