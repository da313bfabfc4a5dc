"""Base64 payloads (`data` in events, `image` / `audio` in search requests): strict and size-checked."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from xmodal.encoders.media._limits import fail

if TYPE_CHECKING:
    from xmodal.encoders.media._limits import MediaLimits

__all__ = ["decode_base64"]


def decode_base64(text: str, limits: MediaLimits) -> bytes:
    """Strict standard base64 (RFC 4648 alphabet, padded, no whitespace), size-checked first.

    The decoded size follows from the encoded length, so an oversized payload is refused before
    a single byte is allocated for it.
    """
    if not text:
        fail("media_empty", "data is empty")
    padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
    if len(text) // 4 * 3 - padding > limits.max_bytes:
        fail(
            "media_too_large",
            f"data decodes to {len(text) // 4 * 3 - padding} bytes, over the limit of {limits.max_bytes} "
            "(XMODAL_MAX_MEDIA_BYTES)",
        )
    if text.startswith("data:"):
        fail("invalid_base64", "data must be bare base64: strip the 'data:...;base64,' prefix")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        fail("invalid_base64", f"data is not valid base64 ({e}); send standard padded base64, no newlines")
