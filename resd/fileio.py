"""Crash-safe small-file writes for the run directory.

``Path.write_text`` truncates the file before writing it, so a process killed in between leaves
an empty or cut file behind: a ``config.yaml`` cut that way would make ``resd train --resume``
run with defaults for the lost keys. Every file the trainer rewrites in place goes through
:func:`atomic_write_text` instead: the new text is written to a temporary file in the same
directory, flushed to disk, and renamed over the old one, so a reader sees either the old
file or the new one, never a mixture.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` by ``text`` atomically (temporary file, fsync, rename). Returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
