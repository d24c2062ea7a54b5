"""``qwenproxy.runtime.chromium``: Debian's Chromium over the DevTools pipe, with its sandbox where it can start.

Real Chromium throughout. As root the sandbox is refused by Chromium itself, so the
normal-user cases run the same code as ``nobody`` (``setpriv``); as a normal user they run
as that user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from qwenproxy.runtime import chromium
from tests.conftest import ROOT
from tests.helpers import chromium_available

if not chromium_available():  # pragma: no cover - CI installs it (scripts/setup.sh)
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore:remove loop argument:DeprecationWarning")

# Two launches in one process: the sandbox decision is made (and logged) once.
SCRIPT = """
import asyncio, json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
import os
from qwenproxy.runtime.chromium import launch

async def main():
    first = await launch(chrome_path=os.environ.get("CHROME_PATH"))
    second = await launch(chrome_path=os.environ.get("CHROME_PATH"))
    try:
        page = await first.browser.newPage()
        value = await page.evaluate("() => 6 * 7")
        print(json.dumps({"sandbox": [first.sandbox, second.sandbox], "value": value,
                          "flags": ["--no-sandbox" in c.process.args for c in (first, second)]}))
    finally:
        await first.close()
        await second.close()

asyncio.run(main())
"""


@pytest.fixture
def home() -> Iterator[Path]:
    """A folder the normal user owns (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="qp-chromium-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(path, 65534, 65534)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_normal_user(home: Path, **env: str) -> tuple[dict, str]:
    """Run ``SCRIPT`` as a normal user: ourselves, or ``nobody`` when we are root."""
    argv = [sys.executable, "-c", SCRIPT]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: no normal user to try the sandbox with")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CHROME_", "BROWSER_"))}
    environment.update(HOME=str(home), TMPDIR=str(home), PYTHONPATH=str(ROOT), **env)
    done = subprocess.run(argv, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _user_namespaces(home: Path) -> bool:
    """Whether the normal user may create a user namespace (what the sandbox needs)."""
    argv = ["unshare", "--user", "true"]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_the_pipe_leaves_no_port_and_chromium_quits_when_asked() -> None:
    async def run() -> tuple[list, int | None, Path, int]:
        browser = await chromium.launch()
        pids = [browser.pid] + [c.pid for c in psutil.Process(browser.pid).children(recursive=True)]
        page = await browser.browser.newPage()
        await page.goto("data:text/html,<title>pipe</title>")
        shot = await page.screenshot({"fullPage": True})  # one large message through the pipe
        listening = [c for p in pids for c in psutil.Process(p).net_connections("inet") if c.status == "LISTEN"]
        await browser.close()
        return listening, browser.process.returncode, browser.profile_dir, len(shot)

    listening, code, profile, shot = asyncio.run(run())
    assert listening == []
    assert code == 0  # Browser.close, not a signal: the profile's cookies are written
    assert not profile.exists()  # a temporary profile goes with its browser
    assert shot > 1000


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes Chromium refuse its sandbox")
def test_as_root_the_sandbox_is_off_and_said_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(chromium, "_sandbox_works", None)

    async def run() -> list:
        browsers = [await chromium.launch(), await chromium.launch()]
        for browser in browsers:
            await browser.close()
        return browsers

    with caplog.at_level(logging.WARNING, logger="qwenproxy.runtime.chromium"):
        browsers = asyncio.run(run())
    assert all("--no-sandbox" in b.process.args and not b.sandbox for b in browsers)
    said = [r.getMessage() for r in caplog.records if "--no-sandbox" in r.getMessage()]
    assert len(said) == 1 and "root" in said[0]


def test_a_normal_user_keeps_the_sandbox(home) -> None:
    if not _user_namespaces(home):
        pytest.skip("no user namespaces here: the fallback test covers this machine")
    result, log = _as_normal_user(home)
    assert result == {"sandbox": [True, True], "value": 42, "flags": [False, False]}
    assert "no-sandbox" not in log


def test_a_sandbox_that_cannot_start_falls_back_once_with_a_log_line(home) -> None:
    # a Chromium whose sandbox fails at start, as on a kernel without user namespaces
    wrapper = home / "chromium-without-sandbox"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" --no-sandbox "*) exec {chromium.find_chrome()} "$@";; esac\n'
        'echo "FATAL:zygote_host_impl_linux.cc No usable sandbox!" >&2\nexit 1\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IROTH)
    if os.geteuid() == 0:
        shutil.chown(wrapper, 65534, 65534)
    result, log = _as_normal_user(home, CHROME_PATH=str(wrapper))
    assert result == {"sandbox": [False, False], "value": 42, "flags": [True, True]}
    said = [line for line in log.splitlines() if "no-sandbox" in line]
    assert len(said) == 1 and "No usable sandbox" in said[0], log
