"""This process's lifecycle as the probes report it: started, draining (after SIGTERM)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

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


def workers_file(app: Flask) -> Path:
    return Path(app.config["SESSION_DIR"]) / "workers.json"
