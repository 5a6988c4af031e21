"""Making a file's rename durable: ``sync_dir`` after ``Path.replace`` into a folder (the
env store's saved images on the host, a fetched backup on the client)."""

from __future__ import annotations

import os
from pathlib import Path


def sync_dir(folder: Path) -> None:
    """``fsync`` ``folder`` itself, so that a rename into it survives a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
