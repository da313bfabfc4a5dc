"""`file://` URIs: confined to the media roots, symlinks and `..` resolved, regular files only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, unquote

from xmodal.encoders.media._limits import check_bytes, fail, short
from xmodal.errors import MediaError

if TYPE_CHECKING:
    from xmodal.encoders.media._limits import MediaLimits

__all__ = ["read_file"]


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(os.path.commonpath([path, root]) == root for root in roots)


def read_file(parts: SplitResult, uri: str, limits: MediaLimits) -> bytes:
    if not limits.media_roots:
        fail(
            "uri_scheme_forbidden",
            "file:// URIs are disabled: set XMODAL_MEDIA_ROOTS to the directories media may be read from",
        )
    if parts.netloc not in ("", "localhost"):
        fail("invalid_uri", f"file URI must not name a host: use file:///absolute/path, not {short(uri)!r}")
    path = unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        fail("invalid_uri", f"file URI needs an absolute path: {short(uri)!r}")
    roots = [os.path.realpath(root) for root in limits.media_roots]
    # realpath resolves `..` and every symlink, so the check is on where the file really is.
    real = os.path.realpath(path)
    if not _inside(real, roots):
        fail("uri_outside_roots", f"{short(uri)!r} is outside the media roots (XMODAL_MEDIA_ROOTS)")
    try:
        # O_NONBLOCK: opening a FIFO must not hang the worker; O_NOFOLLOW: no last-second symlink.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as e:
        raise MediaError(f"file not found: {short(uri)!r}", code="uri_not_found") from e
    except OSError as e:
        raise MediaError(f"cannot open {short(uri)!r}: {e.strerror}", code="uri_not_found") from e
    try:
        _check_opened(fd, uri, roots, limits)
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as f:
        data = f.read(limits.max_bytes + 1)  # the file may have grown since fstat
    check_bytes(len(data), limits, f"file {short(uri)!r}")
    return data


def _check_opened(fd: int, uri: str, roots: Sequence[str], limits: MediaLimits) -> None:
    opened = f"/proc/self/fd/{fd}"  # Linux: where the descriptor really points
    if os.path.islink(opened) and not _inside(os.readlink(opened), roots):
        # A directory on the way was swapped for a symlink between the check and the open.
        fail("uri_outside_roots", f"{short(uri)!r} is outside the media roots (XMODAL_MEDIA_ROOTS)")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        fail("uri_not_found", f"not a regular file: {short(uri)!r}")
    check_bytes(st.st_size, limits, f"file {short(uri)!r}")
