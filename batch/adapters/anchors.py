"""Anchor files: chain heads kept outside the database, one JSON line each, only ever appended to.

An anchor file is opened with O_APPEND and written with one ``write`` per line (then fsync'd): an
existing line is never rewritten. Put it on a write-once store (object lock, WORM volume) or ship the
printed line there instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from batch.domain.audit import Anchor, read_anchor_lines


def append_anchor(path: Path, anchor: Anchor) -> None:
    """Append one anchor line to ``path`` (created if missing); never rewrites what is there."""
    data = anchor.line().encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor of a file (AnchorError names a line that cannot be read; OSError if unreadable)."""
    with path.open(encoding="utf-8") as lines:
        return read_anchor_lines(lines, str(path))
