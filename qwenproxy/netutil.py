"""Aborting a streamed HTTP read from another thread or greenlet.

Closing a response alone does not wake a read blocked elsewhere; shutting its socket down
does, and the peer sees the connection close (which is how upstreams and workers learn that
a client left).
"""

from __future__ import annotations

import socket
from typing import Any


def shutdown(sock: Any) -> None:
    """``shutdown(SHUT_RDWR)`` on a socket that may be gone already."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def abort_response(response: Any) -> None:
    """Abort a streamed ``requests`` response, whichever thread is reading it."""
    raw = getattr(response, "raw", None)
    fp = getattr(raw, "_fp", None)  # http.client.HTTPResponse
    sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
    shutdown(sock or getattr(getattr(raw, "_connection", None), "sock", None))
    try:
        response.close()
    except Exception:  # closing a half-read response may raise; it is closed all the same
        pass
