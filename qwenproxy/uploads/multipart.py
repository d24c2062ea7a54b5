"""Counting the parts of a multipart body while it streams, so that a body with too many
parts is refused as exactly that (werkzeug reports it as "too large", like a big file)."""

from __future__ import annotations

from typing import IO

from ..errors import ApiError


class TooManyParts(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "too_many_parts"


class PartCounter:
    """A read-only stream over a multipart body that raises ``TooManyParts`` as soon as more
    than ``max_parts`` parts have begun. A part begins at each ``--boundary`` delimiter; the
    closing ``--boundary--`` is one more, so ``max_parts + 1`` delimiters are allowed."""

    def __init__(self, stream: IO[bytes], boundary: bytes, max_parts: int) -> None:
        self._stream = stream
        self._delimiter = b"--" + boundary
        self.max_parts = max_parts
        self.delimiters = 0
        self._tail = b""  # the end of the last chunk: a delimiter may straddle two reads

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            window = self._tail + data
            self.delimiters += window.count(self._delimiter)
            keep = len(self._delimiter) - 1
            self._tail = window[-keep:] if keep else b""
            if self.delimiters > self.max_parts + 1:
                raise TooManyParts(f"The multipart body has more than {self.max_parts} parts")
        return data
