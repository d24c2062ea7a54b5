"""Launching Debian's Chromium for pyppeteer, the way ``browser-pool-findings.md`` found safe.

We start Chromium ourselves (own process group, killed with its parent via PDEATHSIG), read
``DevToolsActivePort`` and ``pyppeteer.connect`` to it: pyppeteer's own launcher orphans
Chromium on SIGTERM/SIGKILL. Used by the browser pool and by ``flask accounts add``.
Asyncio only — never import this from a gevent web process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROME_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-blink-features=AutomationControlled",
    "--remote-debugging-port=0",
]
DEFAULT_CHROME_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_chrome(configured: str | None = None) -> str:
    """``CHROME_PATH`` if set, else Debian's Chromium; never downloads one."""
    for candidate in ([configured] if configured else []) + list(DEFAULT_CHROME_PATHS):
        if candidate and Path(candidate).exists():
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    raise FileNotFoundError(
        "Chromium not found: run `apt-get install chromium` or set CHROME_PATH to a Chrome/Chromium binary"
    )


def _die_with_parent() -> None:
    """In the child before exec: own session, and SIGKILL when the parent dies (Linux)."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Chromium:
    process: subprocess.Popen
    browser: Any  # pyppeteer.browser.Browser
    profile_dir: Path
    temporary_profile: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    async def close(self, timeout: float = 5.0) -> None:
        """Close the CDP connection, then make sure the whole process group is gone."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.browser.disconnect(), timeout=2)
        # waiting for the process blocks: not on the event loop's thread
        await asyncio.get_running_loop().run_in_executor(None, kill_process_group, self.process, timeout)
        if self.temporary_profile:
            shutil.rmtree(self.profile_dir, ignore_errors=True)


def kill_process_group(process: subprocess.Popen, timeout: float = 5.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # renderers and zygotes left in the group
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=2)


async def launch(
    profile_dir: str | os.PathLike | None = None,
    *,
    headless: bool = True,
    chrome_path: str | None = None,
    extra_args: list[str] | None = None,
    timeout: float = 30.0,
) -> Chromium:
    """Start Chromium on ``profile_dir`` (a persistent login; temporary if ``None``) and connect."""
    import pyppeteer

    temporary = profile_dir is None
    profile = Path(profile_dir) if profile_dir else Path(tempfile.mkdtemp(prefix="qwenproxy-chrome-"))
    profile.mkdir(parents=True, exist_ok=True)
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)
    for lock in ("SingletonLock", "SingletonSocket", "SingletonCookie"):
        (profile / lock).unlink(missing_ok=True)  # left behind by a killed browser
    args = [find_chrome(chrome_path), *CHROME_ARGS, f"--user-data-dir={profile}", *(extra_args or [])]
    if headless:
        args.insert(1, "--headless=new")
    args.append("about:blank")
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl(PDEATHSIG), async-signal-safe
    )
    deadline = time.monotonic() + timeout
    endpoint = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Chromium exited at start with code {process.returncode}")
        try:
            lines = port_file.read_text().splitlines()
            if len(lines) >= 2:
                endpoint = f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
                break
        except OSError:
            pass
        await asyncio.sleep(0.05)
    if endpoint is None:
        kill_process_group(process)
        raise TimeoutError("Chromium did not open its DevTools port in time")
    try:
        browser = await pyppeteer.connect(browserWSEndpoint=endpoint, defaultViewport=None)
    except Exception:
        kill_process_group(process)
        raise
    return Chromium(process=process, browser=browser, profile_dir=profile, temporary_profile=temporary)
