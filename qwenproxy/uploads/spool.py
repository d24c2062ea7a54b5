"""A request's incoming files, kept in the uploads folder under random names and always removed."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import IO, Any

from ..private import private_dir
from .validation import FileTooLarge

log = logging.getLogger(__name__)


class _CappedFile:
    """A temporary file that refuses to grow past the size limit."""

    def __init__(self, path: Path, handle: IO[bytes], limit: int) -> None:
        self.path = path
        self.raw = handle
        self.limit = limit
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise FileTooLarge(f"The file is larger than the limit of {self.limit / 1048576:g} MB")
        return self.raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class Spool:
    """A request's incoming files: in the uploads folder, random names, removed by ``close``.

    ``factory`` is a werkzeug ``stream_factory``: the client's file name never reaches the
    disk, and the multipart parser writes into these files instead of the system temp dir.
    """

    def __init__(self, directory: str | Path, limit: int) -> None:
        self.directory = Path(directory)
        self.limit = limit
        self.files: list[_CappedFile] = []

    def factory(
        self,
        total_content_length: int | None,  # noqa: ARG002 - werkzeug's stream_factory keywords
        content_type: str | None,  # noqa: ARG002
        filename: str | None,  # noqa: ARG002
        content_length: int | None = None,  # noqa: ARG002
    ) -> _CappedFile:
        private_dir(self.directory)
        path = self.directory / f"upload-{secrets.token_hex(16)}.part"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        capped = _CappedFile(path, os.fdopen(fd, "w+b"), self.limit)
        self.files.append(capped)
        return capped

    def close(self) -> None:
        for capped in self.files:
            with contextlib.suppress(OSError):
                capped.raw.close()
            try:
                capped.path.unlink(missing_ok=True)
            except OSError:
                log.warning("could not remove the temporary upload %s", capped.path)
        self.files.clear()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
