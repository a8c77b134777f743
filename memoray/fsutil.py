"""Durable file-system steps shared by the stores that write their own files (tokens, index
snapshots): a rename is durable only once its directory is fsync'ed."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """fsync a directory, so the renames and creations in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
