"""Crash-safe file writes for the run directory and checkpoints.

``Path.write_text`` truncates the file before writing it, so a process killed in between leaves
an empty or cut file behind: a ``config.yaml`` cut that way would make ``resd train --resume``
run with defaults for the lost keys. Every file the trainer rewrites in place goes through
:func:`atomic_write_text` instead: the new text is written to a temporary file in the same
directory, flushed to disk, and renamed over the old one, so a reader sees either the old
file or the new one, never a mixture.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk; a no-op where that is not possible."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` by ``text`` atomically (temporary file, fsync, rename). Returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one writer per file and process
    try:
        with open(tmp, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
