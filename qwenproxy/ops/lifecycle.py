"""This process's lifecycle as the probes report it: started, draining, shut down on SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, current_app


@dataclass
class Health:
    """This process's lifecycle, as the probes report it."""

    started: float = field(default_factory=time.time)
    draining: bool = False
    pid: int = field(default_factory=os.getpid)


def health(app: Flask | None = None) -> Health:
    return (app or current_app).extensions["health"]


def start_draining(app: Flask) -> None:
    """From now on ``/health/ready`` answers 503 (the process is shutting down)."""
    health(app).draining = True


def drain_on_sigterm(app: Flask, then: Callable[[int, Any], Any]) -> None:
    """Install a SIGTERM handler that marks the app draining, then calls ``then`` (gunicorn's
    own ``handle_exit``, which stops accepting and waits ``graceful_timeout`` for streams)."""

    def _handler(signum: int, frame: Any) -> None:
        start_draining(app)
        then(signum, frame)

    signal.signal(signal.SIGTERM, _handler)


def workers_file(app: Flask) -> Path:
    return Path(app.config["SESSION_DIR"]) / "workers.json"
