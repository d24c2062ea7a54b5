"""Launching Debian's Chromium for pyppeteer, the way ``browser-pool-findings.md`` found safe.

We start Chromium ourselves (own process group, killed with its parent via PDEATHSIG) and
talk DevTools to it over ``--remote-debugging-pipe`` (fds 3 and 4 of the child): no DevTools
TCP port listens, so no other local user can drive the signed-in pages or read their cookies.
pyppeteer's own launcher orphans Chromium on SIGTERM/SIGKILL and only knows WebSockets;
``PipeConnection`` gives its ``Connection`` the pipe instead. Chromium's sandbox stays on
unless it cannot start: as root (Chromium refuses it), or when a sandboxed start fails (no
user namespaces); then ``--no-sandbox``, logged once. Used by the browser pool and by
``flask accounts add``. Asyncio only — never import this from a gevent web process.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from typing_extensions import override

log = logging.getLogger(__name__)

CHROME_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-blink-features=AutomationControlled",
    # pages in background tabs keep their timers and network (a headed browser has one visible tab)
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    # the same cookie encryption key whoever opens the profile (no desktop keyring prompt under
    # Xvfb, and the pool can read what `flask accounts add` stored on a desktop)
    "--password-store=basic",
    "--remote-debugging-pipe",
]
DEFAULT_CHROME_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
PIPE_FDS = (3, 4)  # Chromium reads commands from fd 3 and writes replies and events to fd 4

# None: not decided yet; True/False once a launch has shown whether the sandbox starts
_sandbox_works: bool | None = None


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


def _child_setup(commands_fd: int, replies_fd: int) -> None:
    """In the child before exec: own session, SIGKILL when the parent dies (Linux), and the
    DevTools pipe on fds 3/4 (dup2 leaves them inheritable; both sources are above 4)."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.dup2(commands_fd, PIPE_FDS[0])
    os.dup2(replies_fd, PIPE_FDS[1])


def _high_fd(fd: int) -> int:
    """A close-on-exec copy of ``fd`` numbered 10 or more (so dup2 onto 3/4 cannot clobber it)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


# --------------------------------------------------------------------------- the DevTools pipe


class _PipeReader(asyncio.Protocol):
    """Splits what Chromium writes on fd 4 into NUL-terminated messages."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[str | None] = asyncio.Queue()
        self._buffer = bytearray()
        self._scanned = 0

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\0", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                return
            self.messages.put_nowait(self._buffer[:end].decode("utf-8", errors="replace"))
            del self._buffer[: end + 1]
            self._scanned = 0

    def eof_received(self) -> bool:
        self.messages.put_nowait(None)
        return False

    @override
    def connection_lost(self, exc: Exception | None) -> None:
        self.messages.put_nowait(None)


class PipeTransport:
    """What pyppeteer's ``Connection`` expects of a WebSocket (``recv``/``send``/``close`` and
    ``async with``), over the two pipes of ``--remote-debugging-pipe``."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._reader: _PipeReader | None = None
        self._read_transport: asyncio.ReadTransport | None = None
        self._write_transport: asyncio.WriteTransport | None = None
        self._eof = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._read_transport, self._reader = await loop.connect_read_pipe(
            _PipeReader, os.fdopen(self._read_fd, "rb", buffering=0)
        )
        self._write_transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(self._write_fd, "wb", buffering=0)
        )

    async def __aenter__(self) -> PipeTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def recv(self) -> str:
        assert self._reader is not None
        message = None if self._eof else await self._reader.messages.get()
        if message is None:
            self._eof = True
            raise ConnectionResetError("Chromium closed its DevTools pipe")
        return message

    async def send(self, message: str) -> None:
        transport = self._write_transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the DevTools pipe to Chromium is closed")
        transport.write(message.encode("utf-8") + b"\0")

    async def close(self) -> None:
        for transport in (self._write_transport, self._read_transport):
            if transport is not None and not transport.is_closing():
                transport.close()


def _pipe_connection_class() -> type:
    """``PipeConnection``: pyppeteer's ``Connection`` on a ``PipeTransport`` (pyppeteer is
    imported only when a browser is launched)."""
    from pyee import EventEmitter
    from pyppeteer.connection import Connection

    class PipeConnection(Connection):
        def __init__(self, transport: PipeTransport, loop: asyncio.AbstractEventLoop) -> None:
            # Connection.__init__ would open a WebSocket; the same state, on the pipe
            EventEmitter.__init__(self)
            self._url = "pipe:"
            self._lastId = 0
            self._callbacks: dict[int, asyncio.Future] = {}
            self._delay = 0
            self._loop = loop
            self._sessions: dict[str, Any] = {}
            self._connected = False
            self._ws = transport  # entered by Connection._recv_loop, which reads until EOF
            self._closeCallback = None
            self._recv_fut = loop.create_task(self._recv_loop())

        @override
        async def _async_send(self, msg: str, callback_id: int) -> None:
            while not self._connected:
                await asyncio.sleep(0)
            try:
                await self.connection.send(msg)
            except ConnectionError:
                # the pending calls fail with "Target closed" and "disconnected" is emitted
                if self._connected:
                    await self.dispose()

    return PipeConnection


# --------------------------------------------------------------------------- the browser


@dataclass
class Chromium:
    process: subprocess.Popen
    browser: Any  # pyppeteer.browser.Browser
    profile_dir: Path
    temporary_profile: bool = False
    sandbox: bool = True
    stderr: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def close(self, timeout: float = 5.0, graceful: bool = True) -> None:
        """Ask Chromium to quit (it writes its cookies to the profile), then make sure the
        whole process group is gone, then close the pipe. ``graceful=False``: signals only
        (a crashed or hung browser would not answer)."""
        asked = False
        if graceful and self.process.poll() is None:
            try:
                await asyncio.wait_for(asyncio.shield(self.browser._connection.send("Browser.close")), timeout=2)
                asked = True
            except Exception:
                pass
        # waiting for the process blocks: not on the event loop's thread
        await asyncio.get_running_loop().run_in_executor(None, kill_process_group, self.process, timeout, asked)
        try:
            await asyncio.wait_for(self.browser.disconnect(), timeout=2)
        except Exception:
            pass
        if self.stderr is not None:
            self.stderr.close()
        if self.temporary_profile:
            shutil.rmtree(self.profile_dir, ignore_errors=True)


def kill_process_group(process: subprocess.Popen, timeout: float = 5.0, asked: bool = False) -> None:
    """SIGTERM, then SIGKILL, to Chromium's process group; ``asked``: it was told to quit
    already, so give it ``timeout`` s before the first signal."""
    if asked:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # renderers and zygotes left in the group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def _tail(stream: IO[bytes] | None, limit: int = 600) -> str:
    """The last lines Chromium wrote on stderr, without the Debian wrapper's noise."""
    if stream is None:
        return ""
    try:
        stream.seek(0)
        lines = stream.read().decode("utf-8", errors="replace").splitlines()
    except (OSError, ValueError):
        return ""
    lines = [line for line in lines if line.strip() and "unexpected operator" not in line]
    return " | ".join(lines[-3:])[-limit:]


def sandbox_refused_reason() -> str | None:
    """Why Chromium's sandbox cannot start here before even trying, or None."""
    if os.geteuid() == 0:
        return "Chromium refuses its sandbox when run as root"
    return None


async def _start(
    args: list[str], env: Mapping[str, str] | None, timeout: float
) -> tuple[subprocess.Popen, Any, IO[bytes]]:
    """Start Chromium with the DevTools pipe and connect pyppeteer to it."""
    from pyppeteer.browser import Browser

    commands_read, commands_write = os.pipe()  # we write, Chromium reads (its fd 3)
    replies_read, replies_write = os.pipe()  # Chromium writes (its fd 4), we read
    commands_read, replies_write = _high_fd(commands_read), _high_fd(replies_write)
    stderr = tempfile.TemporaryFile(prefix="qwenproxy-chrome-")  # noqa: SIM115 - Chromium.close closes it
    child_env = dict(os.environ)
    child_env.update(env or {})
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=child_env,
            # fds 3/4 must survive exec: every other fd of ours is close-on-exec (PEP 446)
            close_fds=False,
            preexec_fn=lambda: _child_setup(commands_read, replies_write),  # noqa: PLW1509 - dup2 + prctl only
        )
    except BaseException:
        for fd in (commands_read, commands_write, replies_read, replies_write):
            os.close(fd)
        stderr.close()
        raise
    os.close(commands_read)
    os.close(replies_write)
    transport = PipeTransport(replies_read, commands_write)
    loop = asyncio.get_running_loop()
    try:
        await transport.open()
        connection = _pipe_connection_class()(transport, loop)
        try:
            contexts = await asyncio.wait_for(asyncio.shield(connection.send("Target.getBrowserContexts")), timeout)
        except Exception as exc:
            await connection.dispose()
            await loop.run_in_executor(None, kill_process_group, process, 2.0)
            if process.returncode is not None and not isinstance(exc, asyncio.TimeoutError):
                detail = _tail(stderr)
                raise RuntimeError(
                    f"Chromium exited at start with code {process.returncode}" + (f": {detail}" if detail else "")
                ) from exc
            if isinstance(exc, asyncio.TimeoutError):
                raise TimeoutError(f"Chromium did not answer on its DevTools pipe within {timeout:g} s") from exc
            raise
        browser = await Browser.create(
            connection,
            (contexts or {}).get("browserContextIds", []),
            False,
            None,
            None,
            lambda: connection.send("Browser.close"),
        )
    except BaseException:
        await transport.close()
        await loop.run_in_executor(None, kill_process_group, process, 2.0)
        stderr.close()
        raise
    return process, browser, stderr


async def launch(
    profile_dir: str | os.PathLike | None = None,
    *,
    headless: bool = True,
    chrome_path: str | None = None,
    extra_args: list[str] | None = None,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> Chromium:
    """Start Chromium on ``profile_dir`` (a persistent login; temporary if ``None``) and connect.

    ``env``: added to Chromium's environment (``DISPLAY``/``XAUTHORITY`` of a virtual display).
    """
    global _sandbox_works  # noqa: PLW0603 - learnt once per process

    temporary = profile_dir is None
    profile = Path(profile_dir) if profile_dir else Path(tempfile.mkdtemp(prefix="qwenproxy-chrome-"))
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a port file from an older launch
    for lock in ("SingletonLock", "SingletonSocket", "SingletonCookie"):
        (profile / lock).unlink(missing_ok=True)  # left behind by a killed browser
    base = [find_chrome(chrome_path), *CHROME_ARGS, f"--user-data-dir={profile}", *(extra_args or [])]
    if headless:
        base.insert(1, "--headless=new")

    def argv(sandbox: bool) -> list[str]:
        return [*base, *([] if sandbox else ["--no-sandbox"]), "about:blank"]

    refused = sandbox_refused_reason()
    sandbox = _sandbox_works is not False and refused is None
    if refused and _sandbox_works is None:
        log.warning("%s: Chromium runs with --no-sandbox (run the gateway as a normal user to keep it)", refused)
        _sandbox_works = False
    try:
        try:
            process, browser, stderr = await _start(argv(sandbox), env, timeout)
        except RuntimeError as exc:
            if not sandbox:
                raise
            # a sandbox that cannot start (no user namespaces, no setuid helper) ends Chromium
            # at once; try once more without it, and keep to that for this process
            process, browser, stderr = await _start(argv(False), env, timeout)
            log.warning("Chromium's sandbox could not start (%s); Chromium runs with --no-sandbox", exc)
            sandbox = False
            _sandbox_works = False
        else:
            if sandbox:
                _sandbox_works = True
    except BaseException:
        if temporary:
            shutil.rmtree(profile, ignore_errors=True)
        raise
    return Chromium(
        process=process,
        browser=browser,
        profile_dir=profile,
        temporary_profile=temporary,
        sandbox=sandbox,
        stderr=stderr,
    )
