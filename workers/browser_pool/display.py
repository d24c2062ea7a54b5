"""Headed Chromium without a screen: the pool's own Xvfb (``BROWSER_HEADLESS``).

Why: chat.qwen.ai flags headless Chromium as a bot, and its anti-bot module never hands a
headless page a token (``shared/specs/qwen-web-2026.md`` §4); the maintained peers run the
browser headed under a virtual display. ``plan`` picks the mode; ``VirtualDisplay`` runs Xvfb
on a free display number (``-displayfd``), dies with the pool (PDEATHSIG) and admits only
clients holding its cookie (a 0600 Xauthority file), so another local user cannot watch or
drive the signed-in pages through the display either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("workers.browser_pool")

SCREEN = "1920x1080x24"
MIT_COOKIE = b"MIT-MAGIC-COOKIE-1"
FAMILY_WILD = 0xFFFF  # Xauthority entry for any host and (with an empty number) any display


@dataclass(frozen=True)
class DisplayPlan:
    """How Chromium runs: ``headless``, or headed on ``$DISPLAY`` or on the pool's own Xvfb."""

    mode: str  # "headless" | "display" | "xvfb"
    reason: str

    @property
    def headless(self) -> bool:
        return self.mode == "headless"


def plan(setting: object, environ: Mapping[str, str], xvfb: str | None) -> DisplayPlan:
    """``BROWSER_HEADLESS`` = ``auto`` (default): headed on an own Xvfb when Xvfb is installed,
    else on ``$DISPLAY`` when set, else headless. ``true``: headless. ``false``: headed, on
    ``$DISPLAY`` first (to watch the windows), else on an own Xvfb."""
    value = str(setting).strip().lower() if setting is not None else "auto"
    display = environ.get("DISPLAY")
    if value in ("1", "true", "yes", "on"):
        return DisplayPlan("headless", "BROWSER_HEADLESS=true")
    if value in ("0", "false", "no", "off"):
        if display:
            return DisplayPlan("display", f"BROWSER_HEADLESS=false, on DISPLAY={display}")
        if xvfb:
            return DisplayPlan("xvfb", "BROWSER_HEADLESS=false and no DISPLAY: on an own Xvfb")
        return DisplayPlan("headless", "BROWSER_HEADLESS=false, but there is no DISPLAY and no Xvfb")
    if value != "auto":
        log.warning("BROWSER_HEADLESS=%r is not auto, true or false; using auto", setting)
    if xvfb:
        return DisplayPlan("xvfb", "BROWSER_HEADLESS=auto and Xvfb is installed")
    if display:
        return DisplayPlan("display", f"BROWSER_HEADLESS=auto, on DISPLAY={display}")
    return DisplayPlan("headless", "BROWSER_HEADLESS=auto, but there is no DISPLAY and no Xvfb (apt-get install xvfb)")


def write_xauthority(path: Path, cookie: bytes) -> None:
    """One MIT-MAGIC-COOKIE-1 entry valid for any display on any host, mode 0600."""

    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    entry = struct.pack(">H", FAMILY_WILD) + counted(b"") + counted(b"") + counted(MIT_COOKIE) + counted(cookie)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(entry)


def _die_with_parent() -> None:
    os.setsid()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class VirtualDisplay:
    """The pool's Xvfb: ``await start()`` gives the environment Chromium needs, ``stop()``."""

    def __init__(self, xvfb: str) -> None:
        self.xvfb = xvfb
        self.process: subprocess.Popen | None = None
        self.number: int | None = None
        self._dir: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        assert self.number is not None and self._dir is not None
        return {"DISPLAY": f":{self.number}", "XAUTHORITY": str(self._dir / "Xauthority")}

    async def start(self, timeout: float = 15.0) -> dict[str, str]:
        self._dir = Path(tempfile.mkdtemp(prefix="qwenproxy-xvfb-"))  # 0700
        auth = self._dir / "Xauthority"
        write_xauthority(auth, secrets.token_bytes(16))
        read_fd, write_fd = os.pipe()
        args = [self.xvfb, "-displayfd", str(write_fd), "-auth", str(auth), "-nolisten", "tcp"]
        args += ["-screen", "0", SCREEN, "-noreset"]
        try:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                preexec_fn=_die_with_parent,  # the event loop's thread: PDEATHSIG follows it
            )
        finally:
            os.close(write_fd)
        try:
            self.number = await self._read_number(read_fd, timeout)
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(read_fd)
        log.info("Xvfb %d on display :%d (%s, this user only)", self.process.pid, self.number, SCREEN)
        return self.env

    async def _read_number(self, fd: int, timeout: float) -> int:
        """The display number Xvfb writes on ``-displayfd`` once it listens."""
        assert self.process is not None
        os.set_blocking(fd, False)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data:
            try:
                chunk = os.read(fd, 64)
                if not chunk and self.process.poll() is not None:
                    raise RuntimeError(f"Xvfb exited at start with code {self.process.returncode}")
                data += chunk
            except BlockingIOError:
                pass
            if b"\n" in data:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Xvfb did not open a display within {timeout:g} s")
            await asyncio.sleep(0.02)
        return int(data.split(b"\n", 1)[0])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if process is not None:
            log.info("Xvfb :%s stopped", self.number)


def find_xvfb() -> str | None:
    return shutil.which("Xvfb")
