"""Owner-only files and folders: 0700 folders and 0600 files, whatever the umask.

The database holds every chat and the accounts' tokens, the logs hold request details, the
session folder holds the browser profiles (signed-in cookies) and the uploads folder holds
users' files: none of it is for the other users of the machine. Modes are set explicitly
(``mkdir`` and ``open`` are subject to the umask, commonly 022) and repaired at start-up for
files an older version left readable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and its parents) if needed; the folder itself ends up 0700."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _chmod(directory, DIR_MODE)
    return directory


def private_file(path: str | os.PathLike) -> Path:
    """Create ``path`` empty if it does not exist; it ends up 0600 either way."""
    file = Path(path)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), FILE_MODE)
    os.close(fd)
    _chmod(file, FILE_MODE)
    return file


def restrict(path: str | os.PathLike) -> None:
    """0600 for an existing file (a SQLite ``-wal``/``-shm`` an older version created)."""
    file = Path(path)
    if file.is_file():
        _chmod(file, FILE_MODE)


def open_private(path: str | os.PathLike, mode: str = "a", encoding: str | None = "utf-8"):
    """``open(path, mode)`` that creates the file 0600 (for log handlers)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    _chmod(Path(path), FILE_MODE)
    return os.fdopen(fd, mode, encoding=encoding)


def _chmod(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except OSError as exc:  # not ours (a bind mount owned by someone else): say so, go on
        log.warning("could not make %s private (mode %o): %s", path, mode, exc)
