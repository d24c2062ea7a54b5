"""Starts the long-running worker processes and restarts the ones that die.

Runs in the gunicorn master (its hooks) or in ``python app.py`` — never inside a gevent web
worker, which must not fork. Plain threads and ``subprocess`` only.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    health_url: str | None = None


@dataclass
class _Child:
    spec: WorkerSpec
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    last_exit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    """Keeps each ``WorkerSpec`` running; ``stop`` sends SIGTERM, then SIGKILL."""

    def __init__(
        self, specs: list[WorkerSpec], restart_delay: float = 1.0, status_file: str | Path | None = None
    ) -> None:
        self._children = {s.name: _Child(s) for s in specs}
        self.restart_delay = restart_delay
        # the web workers read it for /metrics and the status page (they cannot see this object)
        self.status_file = Path(status_file) if status_file else None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _spawn(self, child: _Child) -> None:
        env = dict(os.environ)
        env.update(child.spec.env or {})
        argv = list(child.spec.argv)
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        # own process group, so that stop() reaches the worker's children (Chromium) too
        child.process = subprocess.Popen(argv, env=env, start_new_session=True)
        child.started_at = time.time()
        log.info("started worker %s (pid %s)", child.spec.name, child.process.pid)

    def start(self) -> None:
        with self._lock:
            for child in self._children.values():
                self._spawn(child)
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last_written = 0.0
        while not self._stopping.wait(0.2):
            if time.time() - last_written >= 1.0:
                self.write_status()
                last_written = time.time()
            with self._lock:
                for child in self._children.values():
                    proc = child.process
                    if proc is None or proc.poll() is None:
                        continue
                    child.last_exit = proc.returncode
                    if time.time() - child.started_at < self.restart_delay:
                        continue  # crash loop guard: wait at least restart_delay between starts
                    log.warning("worker %s %s; restarting", child.spec.name, describe_exit(proc.returncode))
                    child.restarts += 1
                    self._spawn(child)

    def reap(self) -> None:
        """Collect the exit status of every child that ended, with a waitpid on its own pid.

        Called by gunicorn's master before its own ``waitpid(-1)`` reaper (gunicorn.conf.py),
        which would otherwise take the status of our children too: ``Popen`` then only sees
        "no such child" and reports exit code 0 for a worker that was SIGKILLed. No lock:
        the master must not wait for the watcher thread."""
        for child in list(self._children.values()):
            if child.process is not None:
                child.process.poll()

    def reap_first(self, reaper: Callable[[], None]) -> Callable[[], None]:
        """``reaper`` (gunicorn's ``Arbiter.reap_workers``), after ``reap``."""

        def reap_ours_first() -> None:
            self.reap()
            reaper()

        return reap_ours_first

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            procs = [c.process for c in self._children.values() if c.process is not None]
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.time() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        self.write_status()

    def write_status(self) -> None:
        """Write ``status()`` to ``status_file`` atomically (when one was given)."""
        if self.status_file is None:
            return
        try:
            tmp = self.status_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.status()), encoding="utf-8")
            os.replace(tmp, self.status_file)
        except OSError as exc:
            log.warning("could not write %s: %s", self.status_file, exc)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                name: {
                    "pid": c.process.pid if c.process else None,
                    "running": bool(c.process and c.process.poll() is None),
                    "restarts": c.restarts,
                    "last_exit": c.last_exit,
                }
                for name, c in self._children.items()
            }

    def pid(self, name: str) -> int | None:
        child = self._children.get(name)
        return child.process.pid if child and child.process else None


# Modules that may offer ``worker_spec(config) -> WorkerSpec | None``; a module not in this
# build is skipped.
WORKER_MODULES = ("workers.browser_pool", "workers.inference")


def configured_specs(config: Mapping[str, Any], modules: tuple[str, ...] = WORKER_MODULES) -> list[WorkerSpec]:
    """The workers this configuration needs (browser pool, local model), in start order."""
    specs: list[WorkerSpec] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        factory = getattr(module, "worker_spec", None)
        spec = factory(config) if factory is not None else None
        if spec is not None:
            specs.append(spec)
    return specs


def start_configured(config: Mapping[str, Any]) -> Supervisor | None:
    """Start and supervise the configured workers, or None when there are none. Called once
    for the whole server: from gunicorn's master (``when_ready``) or from ``python app.py``."""
    specs = configured_specs(config)
    status_file = Path(str(config["SESSION_DIR"])) / "workers.json"
    if not specs:
        status_file.unlink(missing_ok=True)
        return None
    supervisor = Supervisor(specs, status_file=status_file)
    supervisor.start()
    supervisor.write_status()
    return supervisor


def describe_exit(returncode: int | None) -> str:
    """``exited with 1`` or ``was killed by SIGKILL`` (Popen's negative return codes)."""
    if returncode is None:
        return "is running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with {returncode}"


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
