"""The browser pool against the fake chat.qwen.ai in anti-bot mode, with real Debian Chromium.

One pool process (``python -m workers.browser_pool``, 1 browser, 2 pages) serves most tests;
the drain and supervisor tests start their own. Chromium is never downloaded: the tests are
skipped where no Chromium is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from qwenproxy import create_app
from qwenproxy.errors import UpstreamError
from qwenproxy.qwen.browser_transport import BrowserTransport
from tests.conftest import ROOT, Gunicorn, LiveServer, app_config, marked_chromium
from tests.fakes.qwen_web import FakeQwen
from tests.helpers import chromium_available

if not chromium_available():  # pragma: no cover - CI installs it (scripts/setup.sh)
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


class PoolProcess:
    """``python -m workers.browser_pool`` on a short socket path, against ``base_url``."""

    def __init__(self, base_url: str, **settings: str) -> None:
        # Unix socket paths are limited to ~100 bytes: not under pytest's long tmp_path
        self.dir = Path(tempfile.mkdtemp(prefix="qp-pool-", dir="/tmp"))
        self.socket = str(self.dir / "pool.sock")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN", "BROWSER_", "CHROME_"))}
        env.update(
            QWENPROXY_ENV_FILE="",
            SESSION_DIR=str(self.dir / "session"),
            QWEN_BASE_URL=base_url,
            BROWSER_POOL_SOCKET=self.socket,
            BROWSER_POOL_SIZE="2",
            BROWSER_WATCHDOG_SECONDS="0.5",
            BROWSER_DRAIN_TIMEOUT="15",
            BROWSER_ANTIBOT_WAIT_S="5",
            BROWSER_TEST_HOOKS="1",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        env.update(settings)
        self.log = self.dir / "pool.log"
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.browser_pool"],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self.transport = BrowserTransport(self.socket, read_timeout=10)
        deadline = time.time() + 20
        while not self.health().get("running"):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("the pool did not start:\n" + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def health(self) -> dict:
        return self.transport.pool_status()

    def chromium_pids(self) -> list[int]:
        """Every process of this pool's Chromium trees (browser, zygotes, renderers)."""
        pids = []
        for entry in self.health().get("detail", []):
            if entry.get("pid"):
                try:
                    root = psutil.Process(entry["pid"])
                    pids += [root.pid] + [c.pid for c in root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
        return pids

    def renderer_pids(self) -> list[int]:
        """The live renderer processes (the pages) of this pool's Chromium trees."""
        found = []
        for pid in self.chromium_pids():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                if "--type=renderer" in psutil.Process(pid).cmdline():
                    found.append(pid)
        return found

    def xvfb_pids(self) -> list[int]:
        """The pool's own Xvfb (``BROWSER_HEADLESS=auto`` where Xvfb is installed)."""
        return [p.pid for p in psutil.Process(self.proc.pid).children() if p.name() == "Xvfb"]

    def on_every_page(self, method: str, params: dict | None = None) -> dict:
        """One CDP command to every page, through the pool's test hook (``BROWSER_TEST_HOOKS``):
        with the DevTools pipe there is no port for a second client."""
        connection = UnixHTTPConnection(self.socket)
        try:
            connection.request(
                "POST",
                "/v1/debug/pages",
                json.dumps({"method": method, "params": params or {}}),
                {"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            assert response.status == 200, response.read()
            return json.loads(response.read())
        finally:
            connection.close()

    def stop(self) -> None:
        if os.environ.get("KEEP_POOL_LOG"):
            shutil.copy(self.log, os.environ["KEEP_POOL_LOG"] + f".{self.proc.pid}")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("pool", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeQwen]:
    server = FakeQwen()
    server.baxia_ready_after = 0.0  # the 2026 site's anti-bot module, ready at once
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def reset_fake(fake: FakeQwen) -> None:
    # the 2026 site: only the token cookie authenticates, and bodies must be the 2026 front end's
    fake.require_token_cookie = True
    fake.require_2026_body = True
    fake.antibot = True
    fake.chunk_delay = 0.0
    fake.hostile = None
    fake.hostile_times = None
    fake.baxia_ready_after = 0.0


@pytest.fixture(scope="module")
def pool(fake: FakeQwen) -> Iterator[PoolProcess]:
    process = PoolProcess(fake.url)
    try:
        yield process
    finally:
        pids = process.chromium_pids()
        process.stop()
        assert process.proc.returncode == 0
        assert wait_until(lambda: not alive(pids), timeout=10)


_TOKENS: dict[str, str] = {}


def module_token(fake: FakeQwen) -> str:
    """One account token per fake: the account (and so its browser profile) stays the same
    across the apps of this module (the registry names an imported token after its hash)."""
    return _TOKENS.setdefault(fake.url, fake.make_token())


def make_app(tmp_path: Path, fake: FakeQwen, socket_path: str, transport: str = "browser", **extra):
    extra.setdefault("QWEN_TOKEN", module_token(fake))
    return create_app(app_config(tmp_path, fake, QWEN_TRANSPORT=transport, BROWSER_POOL_SOCKET=socket_path, **extra))


def pool_account(pool: PoolProcess) -> str:
    """The account id whose browser the pool runs (one in this module)."""
    accounts = [entry["account"] for entry in pool.health()["detail"] if entry["state"] == "up"]
    assert len(accounts) == 1, pool.health()["detail"]
    return accounts[0]


@pytest.fixture
def served(tmp_path: Path, fake: FakeQwen, pool: PoolProcess) -> Iterator[LiveServer]:
    application = make_app(tmp_path, fake, pool.socket)
    server = LiveServer(application)
    try:
        yield server
    finally:
        server.stop()
        application.extensions["providers"].close()


def chat(url: str, content: str, stream: bool = True, timeout: float = 30) -> requests.Response:
    body = {"model": "qwen3-max", "stream": stream, "messages": [{"role": "user", "content": content}]}
    return requests.post(url + "/api/chat/completions", json=body, stream=stream, timeout=timeout)


def sse_events(response: requests.Response) -> Iterator[dict | str]:
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            data = line[6:]
            yield data if data == "[DONE]" else json.loads(data)


def content_of(event: dict | str) -> str:
    if isinstance(event, dict) and event.get("choices"):
        return event["choices"][0].get("delta", {}).get("content") or ""
    return ""


# --------------------------------------------------------------------------- anti-bot, transports


def test_antibot_fake_refuses_direct_and_the_pool_passes(tmp_path, fake, pool) -> None:
    direct = make_app(tmp_path / "d", fake, pool.socket, transport="direct").test_client()
    refused = direct.post("/api/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 502 and refused.get_json()["error"]["code"] == "upstream_blocked"

    browser = make_app(tmp_path / "b", fake, pool.socket).test_client()
    answer = browser.post("/api/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["choices"][0]["message"]["content"] == "Echo: hi"
    assert answer.headers["X-Upstream-Transport"] == "browser"
    # the page's own cookies went with the fetch, and the account's token is in its profile now
    sent = [r for r in fake.requests if r["path"] == "/api/v2/chat/completions"][-1]["headers"]
    assert "ssxmod_itna=" in sent.get("cookie", "") and "token=" in sent.get("cookie", "")
    assert "HeadlessChrome" not in sent.get("user-agent", "")
    status = browser.get("/api/status").get_json()["browserPool"]
    assert status["running"] and status["browsers"] == 1 and status["pages"] == 2
    assert {"queue", "served", "restarts", "active"} <= set(status)


def test_auto_uses_direct_until_the_wall_then_the_browser(tmp_path, fake, pool) -> None:
    fake.antibot = False
    client = make_app(tmp_path / "a", fake, pool.socket, transport="auto").test_client()
    body = {"messages": [{"role": "user", "content": "one"}]}
    first = client.post("/api/chat/completions", json=body)
    assert first.status_code == 200 and first.headers["X-Upstream-Transport"] == "direct"
    fake.antibot = True
    second = client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": "two"}]})
    assert second.status_code == 200, second.get_json()
    assert second.headers["X-Upstream-Transport"] == "browser"
    assert second.get_json()["choices"][0]["message"]["content"] == "Echo: two"


@pytest.mark.parametrize("mode", ["captcha_frame", "html_line", "actual_status_404"])
def test_auto_falls_back_to_the_browser_on_every_kind_of_wall(tmp_path, fake, pool, mode) -> None:
    """2026 §4: a wall inside a 200 stream or an x-actual-status-code 404 is a wall too."""
    fake.antibot = False
    fake.hostile, fake.hostile_times = mode, 1
    extra = {"QWEN_BX_V": "2.5.36"}
    client = make_app(tmp_path / mode, fake, pool.socket, transport="auto", **extra).test_client()
    r = client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": "walled"}]})
    assert r.status_code == 200, r.get_json()
    assert r.headers["X-Upstream-Transport"] == "browser"
    assert r.get_json()["choices"][0]["message"]["content"] == "Echo: walled"
    assert fake.walls[-1] == mode
    sent = [x for x in fake.requests if x["path"] == "/api/v2/chat/completions"][-1]["headers"]
    assert "bx-v" not in sent  # in the browser the page's own anti-bot script owns the bx-* headers


def test_pool_not_running_is_a_quick_503(tmp_path, fake) -> None:
    client = make_app(tmp_path, fake, "/tmp/qp-no-such-pool.sock").test_client()
    started = time.monotonic()
    response = client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert time.monotonic() - started < 2
    assert response.status_code == 503
    assert "browser pool is not running" in response.get_json()["error"]["message"]


# --------------------------------------------------------------------------- streaming


def test_first_chunk_reaches_the_client_before_the_fake_has_finished(served, fake) -> None:
    fake.chunk_delay = 0.1
    response = chat(served.url, "words:20")
    assert response.headers["X-Upstream-Transport"] == "browser"
    done_at_first_chunk = None
    text = ""
    for event in sse_events(response):
        if content_of(event) and done_at_first_chunk is None:
            done_at_first_chunk = len(fake.completed)
            in_flight = fake.chats and any(c["in_progress"] for c in fake.chats.values())
            assert in_flight, "the fake was no longer generating when the first chunk arrived"
        text += content_of(event)
    assert done_at_first_chunk == len(fake.completed) - 1
    assert text == " ".join(f"w{i}" for i in range(1, 21))


def test_time_to_first_token_is_close_to_direct(tmp_path, fake, pool, served) -> None:
    """The pool adds tens of milliseconds, not seconds (bench/transport.py measures it well)."""
    fake.antibot = False
    fake.chunk_delay = 0.05
    direct_app = make_app(tmp_path / "d", fake, pool.socket, transport="direct")
    direct = LiveServer(direct_app)

    def ttft(url: str) -> float:
        started = time.monotonic()
        response = chat(url, "words:3")
        for event in sse_events(response):
            if content_of(event):
                elapsed = time.monotonic() - started
                response.close()
                return elapsed
        raise AssertionError("no content")

    try:
        ttft(served.url), ttft(direct.url)  # warm both
        browser_times = sorted(ttft(served.url) for _ in range(5))
        direct_times = sorted(ttft(direct.url) for _ in range(5))
    finally:
        direct.stop()
    # medians; generous bound for a loaded CI machine
    assert browser_times[2] - direct_times[2] < 0.25, (browser_times, direct_times)


def test_eight_concurrent_streams_through_two_pages(served, fake, pool) -> None:
    fake.chunk_delay = 0.05
    start = pool.health()
    results: dict[int, str] = {}

    def one(i: int) -> None:
        response = chat(served.url, f"words:{10 + i}")
        results[i] = "".join(content_of(e) for e in sse_events(response))

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    wall = time.monotonic() - started
    for i in range(8):
        assert results.get(i) == " ".join(f"w{n}" for n in range(1, 11 + i)), (i, results.get(i))

    # the pool counts a job once its last chunk is written, a moment after the client has it;
    # the gateway stops reading at the "finished" event and may close the connection before
    # the upstream's end reached the pool (then the job counts as aborted, not failed)
    def settled() -> bool:
        health = pool.health()
        done = health["served"] + health["aborted"] - start["served"] - start["aborted"]
        return done >= 16 and health["active"] == 0 and health["queue"] == 0 and health["failed"] == start["failed"]

    assert wait_until(settled, timeout=5), json.dumps(pool.health())  # 8 × (chats/new + completion)
    health = pool.health()
    assert health["pages"] == 2 and health["browsers"] == 1, health
    # the answers take 0.5–0.85 s each, 5.4 s one after another; Chrome runs 6 at once
    assert wall < 5, wall


def ended_early(fake: FakeQwen) -> int:
    """Turns the fake saw end early: the client closed (aborted), or the gateway's stop call
    (2026 §3) overtook that notice and ended the generation first."""
    return len(fake.aborted) + sum(1 for call in fake.stop_calls if call["active"])


def test_client_disconnect_aborts_the_upstream_request(served, fake, pool) -> None:
    fake.chunk_delay = 0.05
    aborted_before = ended_early(fake)
    response = chat(served.url, "words:400")
    for event in sse_events(response):
        if content_of(event):
            break
    response.close()  # the client goes away mid-stream
    assert fake.wait_for(lambda: ended_early(fake) > aborted_before, timeout=10), "upstream request not closed"
    assert wait_until(lambda: pool.health()["active"] == 0, timeout=5)


def test_transport_close_aborts_the_in_page_fetch(served, fake, pool) -> None:
    """``UpstreamResponse.close()`` (what ``EventStream.cancel`` calls) reaches the page."""
    chat(served.url, "warm", stream=False)
    account = pool_account(pool)
    fake.chunk_delay = 0.05
    from qwenproxy.config import load_config
    from qwenproxy.qwen.client import QwenClient
    from qwenproxy.qwen.protocol import completion_body

    config = load_config({"QWEN_BASE_URL": fake.url, "SESSION_DIR": "/tmp"}, environ={}, env_file="")
    client = QwenClient(pool.transport, config)
    token = module_token(fake)
    chat_id = client.create_chat(token, "qwen3-max", account_id=account)
    events, response = client.open_completion(
        token, completion_body(chat_id=chat_id, model="qwen3-max", content="words:400"), account_id=account
    )
    assert response.served_by == "browser"
    next(events)
    aborted_before = len(fake.aborted)
    threading.Timer(0.2, response.close).start()  # from another thread, while a read is blocked
    with pytest.raises(UpstreamError, match="ended before"):  # the unblocked read ends at once
        list(events)
    assert fake.wait_for(lambda: len(fake.aborted) > aborted_before, timeout=10)


# --------------------------------------------------------------------------- faults


def _stream_until_first_content(url: str, content: str = "words:300") -> tuple[requests.Response, Iterator]:
    response = chat(url, content)
    events = sse_events(response)
    for event in events:
        if content_of(event):
            return response, events
    raise AssertionError("no content")


def _rest_until_done(events: Iterator) -> tuple[list, float]:
    started = time.monotonic()
    rest = []
    for event in events:
        rest.append(event)
        if event == "[DONE]":
            break
    return rest, time.monotonic() - started


def test_chromium_killed_mid_stream_errors_in_band_and_the_next_request_works(served, fake, pool) -> None:
    fake.chunk_delay = 0.05
    restarts = pool.health()["restarts"]
    pids = pool.chromium_pids()
    response, events = _stream_until_first_content(served.url)
    os.killpg(pids[0], signal.SIGKILL)  # Chromium runs in its own process group
    rest, took = _rest_until_done(events)
    assert took < 5
    errors = [e for e in rest if isinstance(e, dict) and "error" in e]
    assert errors and "Chromium" in errors[0]["error"]["message"], rest[-3:]
    assert rest[-1] == "[DONE]"
    assert wait_until(lambda: not alive(pids), timeout=10), "the dead browser's processes are still there"
    again = chat(served.url, "after the crash", stream=False)
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "Echo: after the crash"
    assert pool.health()["restarts"] > restarts


def test_hung_chromium_is_killed_and_relaunched(served, fake, pool) -> None:
    fake.chunk_delay = 0.05
    chat(served.url, "warm", stream=False)
    pids = pool.chromium_pids()
    response, events = _stream_until_first_content(served.url)
    os.killpg(pids[0], signal.SIGSTOP)  # the whole browser freezes
    try:
        rest, took = _rest_until_done(events)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pids[0], signal.SIGCONT)
    assert took < 8
    errors = [e for e in rest if isinstance(e, dict) and "error" in e]
    assert errors and "stopped answering" in errors[0]["error"]["message"], rest[-3:]
    assert wait_until(lambda: not alive(pids), timeout=10)
    again = chat(served.url, "after the hang", stream=False)
    assert again.status_code == 200, again.text


def test_page_navigating_away_fails_its_jobs_and_the_page_comes_back(served, fake, pool) -> None:
    fake.chunk_delay = 0.05
    chat(served.url, "warm", stream=False)
    response, events = _stream_until_first_content(served.url)
    pool.on_every_page("Page.navigate", {"url": "about:blank"})
    rest, took = _rest_until_done(events)
    assert took < 5
    errors = [e for e in rest if isinstance(e, dict) and "error" in e]
    assert errors and "navigated away" in errors[0]["error"]["message"], rest[-3:]
    again = chat(served.url, "back on the site", stream=False)
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "Echo: back on the site"


def test_crashed_page_fails_its_jobs_and_is_replaced(served, fake, pool) -> None:
    fake.chunk_delay = 0.05
    chat(served.url, "warm", stream=False)
    restarts = pool.health()["restarts"]
    response, events = _stream_until_first_content(served.url)
    renderers = pool.renderer_pids()
    assert renderers
    for pid in renderers:  # what the OOM killer does to a page
        os.kill(pid, signal.SIGKILL)
    rest, took = _rest_until_done(events)
    assert took < 5
    errors = [e for e in rest if isinstance(e, dict) and "error" in e]
    assert errors and "page failed" in errors[0]["error"]["message"], rest[-3:]
    assert wait_until(lambda: pool.health()["pages"] == 2 and pool.health()["restarts"] >= restarts + 2, timeout=10)
    again = chat(served.url, "after the page crash", stream=False)
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "Echo: after the page crash"


def test_job_timeout_ends_the_stream_with_an_error(tmp_path, fake, pool) -> None:
    application = make_app(tmp_path, fake, pool.socket, QWEN_READ_TIMEOUT=1.0)
    server = LiveServer(application)
    try:
        fake.chunk_delay = 0.05
        chat(server.url, "warm", stream=False)
        fake.chunk_delay = 4.0  # response.created at once, then 4 s of silence
        aborted_before = ended_early(fake)
        started = time.monotonic()
        response = chat(server.url, "words:3")
        events = list(sse_events(response))
        assert time.monotonic() - started < 3.5
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        assert errors and "job timeout" in errors[0]["error"]["message"]
        assert events[-1] == "[DONE]"
        assert fake.wait_for(lambda: ended_early(fake) > aborted_before, timeout=8)
    finally:
        fake.chunk_delay = 0.0
        server.stop()


# --------------------------------------------------------------------------- DevTools pipe, display, anti-bot module


def test_no_devtools_port_answers(served, pool) -> None:
    """The pool talks to Chromium over ``--remote-debugging-pipe``: no process of its
    Chromium listens on a TCP port, and no ``DevToolsActivePort`` names one (issue 15.3)."""
    chat(served.url, "warm", stream=False)
    pids = pool.chromium_pids()
    browser = psutil.Process(pids[0])
    assert "--remote-debugging-pipe" in browser.cmdline()
    assert not [a for a in browser.cmdline() if a.startswith("--remote-debugging-port")]
    listening = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            listening += [c for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert not listening, listening
    port_file = next(Path(pool.dir, "session", "accounts").iterdir()) / "DevToolsActivePort"
    if port_file.exists():
        port = int(port_file.read_text().split()[0])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _xauthority_cookie(path: str) -> bytes:
    """The MIT-MAGIC-COOKIE-1 of the first entry of an Xauthority file."""
    data = Path(path).read_bytes()
    fields, offset = [], 2  # family, then four length-prefixed fields
    for _ in range(4):
        (size,) = struct.unpack(">H", data[offset : offset + 2])
        fields.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    assert fields[2] == b"MIT-MAGIC-COOKIE-1"
    return fields[3]


def _x11_accepts(display: int, cookie: bytes | None) -> bool:
    """The X11 connection setup on the display's socket: does the server let us in?"""
    name, data = (b"MIT-MAGIC-COOKIE-1", cookie) if cookie else (b"", b"")

    def padded(raw: bytes) -> bytes:
        return raw + b"\0" * (-len(raw) % 4)

    setup = struct.pack("<BxHHHHxx", ord("l"), 11, 0, len(name), len(data)) + padded(name) + padded(data)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(f"/tmp/.X11-unix/X{display}")
        conn.sendall(setup)
        return conn.recv(1) == b"\x01"  # 0 Failed, 1 Success, 2 Authenticate


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed (apt-get install xvfb)")
def test_chromium_runs_headed_on_the_pools_own_xvfb_which_only_we_can_open(served, fake, pool) -> None:
    chat(served.url, "warm", stream=False)
    assert pool.health()["display"] == "xvfb"
    browser = psutil.Process(pool.chromium_pids()[0])
    assert not [a for a in browser.cmdline() if a.startswith("--headless")]
    env = browser.environ()
    assert len(pool.xvfb_pids()) == 1
    display = int(env["DISPLAY"].lstrip(":"))
    assert not _x11_accepts(display, None), "the display lets in a client without the cookie"
    assert _x11_accepts(display, _xauthority_cookie(env["XAUTHORITY"]))
    sent = [r for r in fake.requests if r["path"] == "/api/v2/chat/completions"][-1]["headers"]
    assert "HeadlessChrome" not in sent.get("user-agent", "")


def _fresh_pages(pool: PoolProcess) -> int:
    """Close the account's browser: the next job opens it again, with newly loaded pages."""
    assert pool.transport.release_profile(pool_account(pool)) is True
    return len(pool.log.read_bytes())


def test_a_fresh_page_waits_for_the_antibot_module_before_its_first_call(served, fake, pool) -> None:
    chat(served.url, "warm", stream=False)
    fake.baxia_ready_after = 1.0  # the module hands out its token a second after the page loads
    log_at = _fresh_pages(pool)
    seen = len(fake.requests)
    answer = chat(served.url, "signed", stream=False)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Echo: signed"
    calls = [r for r in fake.requests[seen:] if r["path"].startswith("/api/v2/")]
    assert calls and all(r["headers"].get("bx-umidtoken", "").startswith("T2gA") for r in calls), [
        (r["path"], r["headers"].get("bx-umidtoken")) for r in calls
    ]
    assert "anti-bot module ready after" in pool.log.read_bytes()[log_at:].decode()


def test_a_page_whose_antibot_module_never_gets_ready_calls_after_the_bound(served, fake, pool) -> None:
    chat(served.url, "warm", stream=False)
    fake.baxia_ready_after = float("inf")
    log_at = _fresh_pages(pool)
    seen = len(fake.requests)
    try:
        answer = chat(served.url, "unsigned", stream=False)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Echo: unsigned"
        calls = [r for r in fake.requests[seen:] if r["path"].startswith("/api/v2/")]
        assert calls and not [r for r in calls if "bx-umidtoken" in r["headers"]]
        assert "anti-bot module was not ready within 5 s; calling anyway" in pool.log.read_bytes()[log_at:].decode()
    finally:
        fake.baxia_ready_after = 0.0
        _fresh_pages(pool)  # later tests get pages whose module is ready


def test_the_page_sends_its_own_version_and_the_job_s_is_the_fallback(served, fake, pool) -> None:
    """2026 §2: inside the pool the front end's `version` is the page's own; the gateway's
    QWEN_FRONTEND_VERSION goes only where the page has none. The account authenticates with
    its profile's token cookie (the fake takes nothing else), never an Authorization header."""
    try:
        for page_version, expected in (("0.2.99", "0.2.99"), (None, "0.2.87")):
            fake.frontend_version = page_version
            chat(served.url, "warm", stream=False)  # the account's browser is up
            _fresh_pages(pool)  # and its pages load the page again
            seen = len(fake.requests)
            answer = chat(served.url, f"version {page_version}", stream=False)
            assert answer.status_code == 200, answer.text
            calls = [r for r in fake.requests[seen:] if r["path"].startswith("/api/v2/")]
            assert {r["path"] for r in calls} >= {"/api/v2/chats/new", "/api/v2/chat/completions"}
            for call in calls:
                headers = call["headers"]
                assert headers.get("version") == expected, (call["path"], headers.get("version"))
                assert "authorization" not in headers and f"token={module_token(fake)}" in headers["cookie"]
                assert headers.get("bx-umidtoken", "").startswith("T2gA")  # the page's script signed it
    finally:
        fake.frontend_version = None


def _cookie_names(profile: Path, host: str) -> set[str]:
    """The cookies Chromium keeps on disk for ``host`` in a profile (read-only, no lock)."""
    [database] = [p for p in profile.glob("Default/**/Cookies") if p.is_file()] or [None]
    assert database is not None, f"no cookie database in {profile}"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro&immutable=1", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT name FROM cookies WHERE host_key LIKE ?", (f"%{host}",))}


async def _site_sets_cookie(profile: Path, url: str, name: str, value: str) -> None:
    """What the real site's scripts do during a sign-in: a long-lived cookie of its own."""
    from qwenproxy.runtime.chromium import launch

    chromium = await launch(profile)
    try:
        page = await chromium.browser.newPage()
        await page.setCookie({"name": name, "value": value, "url": url + "/", "expires": time.time() + 86400})
    finally:
        await chromium.close()


def test_a_profile_made_by_the_browser_sign_in_keeps_its_cookie_jar(tmp_path, fake) -> None:
    from qwenproxy.db.models import Account as AccountRow

    fake.add_user("jar@example.com", "pw!")
    process = PoolProcess(fake.url, SESSION_DIR=str(tmp_path / "session"))
    application = make_app(tmp_path, fake, process.socket, QWEN_TOKEN="")
    host = urlsplit(fake.url).hostname
    try:
        args = ["accounts", "add", "--headless", "--timeout", "30", "--no-check"]
        args += ["--autofill-email", "jar@example.com", "--autofill-password", "pw!"]
        result = application.test_cli_runner().invoke(args=args)
        assert result.exit_code == 0, result.output
        row = AccountRow.get()
        profile = Path(row.profile_dir)
        assert "token" in _cookie_names(profile, host)  # the sign-in's cookies reached the disk
        asyncio.run(_site_sets_cookie(profile, fake.url, "cna", "from-the-sign-in"))
        seen = len(fake.requests)
        answer = application.test_client().post(
            "/api/chat/completions", json={"messages": [{"role": "user", "content": "jar"}]}
        )
        assert answer.status_code == 200, answer.get_json()
        assert answer.headers["X-Upstream-Transport"] == "browser"
        sent = [r for r in fake.requests[seen:] if r["path"] == "/api/v2/chat/completions"][-1]["headers"]
        assert "cna=from-the-sign-in" in sent["cookie"] and f"token={row.token}" in sent["cookie"]
        assert process.transport.release_profile(row.id) is True  # Chromium quits and writes its jar
        assert {"token", "cna", "ssxmod_itna"} <= _cookie_names(profile, host)
    finally:
        application.extensions["providers"].close()
        process.stop()


# --------------------------------------------------------------------------- process lifecycle


def test_sigterm_drains_running_jobs_and_refuses_new_ones(tmp_path, fake) -> None:
    process = PoolProcess(fake.url)
    application = make_app(tmp_path, fake, process.socket)
    server = LiveServer(application)
    try:
        fake.chunk_delay = 0.05
        chat(server.url, "warm", stream=False)
        pids = process.chromium_pids() + process.xvfb_pids()
        fake.chunk_delay = 0.1
        response, events = _stream_until_first_content(server.url, "words:25")
        process.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: process.health().get("draining") or not process.health()["running"], 5)
        started = time.monotonic()
        refused = chat(server.url, "new", stream=False)
        assert refused.status_code == 503 and time.monotonic() - started < 2
        rest, _ = _rest_until_done(events)
        text = "".join(content_of(e) for e in rest)
        assert text.endswith("w25") and rest[-1] == "[DONE]"
        assert not [e for e in rest if isinstance(e, dict) and "error" in e]
        assert process.proc.wait(timeout=15) == 0
        assert wait_until(lambda: not alive(pids), timeout=10)
        assert not os.path.exists(process.socket)
    finally:
        fake.chunk_delay = 0.0
        server.stop()
        process.stop()


def test_killed_pool_is_restarted_by_gunicorn_and_the_gap_is_a_503(tmp_path, fake) -> None:
    socket_dir = Path(tempfile.mkdtemp(prefix="qp-gu-", dir="/tmp"))
    env = {
        "SESSION_DIR": str(tmp_path / "session"),
        "QWEN_BASE_URL": fake.url,
        "QWEN_TOKEN": fake.make_token(),
        "QWEN_TRANSPORT": "browser",
        "BROWSER_POOL_SOCKET": str(socket_dir / "pool.sock"),
        "BROWSER_POOL_SIZE": "1",
        "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
    }
    server = Gunicorn(env, workers=1)
    try:
        assert wait_until(lambda: requests.get(server.url + "/api/status").json()["browserPool"]["running"], 20)
        fake.chunk_delay = 0.05
        assert chat(server.url, "warm", stream=False).status_code == 200
        status = requests.get(server.url + "/api/status").json()["browserPool"]
        worker_pid = status["pid"]
        chromium = psutil.Process(status["detail"][0]["pid"])
        chromium_pids = [chromium.pid] + [c.pid for c in chromium.children(recursive=True)]
        chromium_pids += [p.pid for p in psutil.Process(worker_pid).children() if p.name() == "Xvfb"]

        response, events = _stream_until_first_content(server.url)
        os.kill(worker_pid, signal.SIGKILL)
        rest, took = _rest_until_done(events)
        assert took < 3
        errors = [e for e in rest if isinstance(e, dict) and "error" in e]
        assert errors and "browser pool" in errors[0]["error"]["message"], rest[-3:]

        started = time.monotonic()
        gap = chat(server.url, "during the gap", stream=False)
        assert time.monotonic() - started < 3
        assert gap.status_code == 503, gap.text
        # Chromium and the pool's Xvfb died with their worker (PDEATHSIG)
        assert wait_until(lambda: not alive(chromium_pids), timeout=10)

        def restarted() -> bool:
            pool_status = requests.get(server.url + "/api/status").json()["browserPool"]
            return pool_status.get("running") and pool_status["pid"] != worker_pid

        assert wait_until(restarted, timeout=20, step=0.2)
        after = chat(server.url, "after the restart", stream=False)
        assert after.status_code == 200, after.text
        assert after.json()["choices"][0]["message"]["content"] == "Echo: after the restart"
        status = requests.get(server.url + "/api/status").json()["browserPool"]
        new_pid, new_chromium = status["pid"], status["detail"][0]["pid"]
    finally:
        fake.chunk_delay = 0.0
        server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
    # gunicorn's exit stopped the pool, which closed its Chromium
    assert wait_until(lambda: not psutil.pid_exists(new_pid), timeout=15)
    assert wait_until(lambda: not alive([new_chromium]), timeout=10)
    assert "MonkeyPatchWarning" not in server.log.read_text(errors="replace")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the Sora-era videos API of SDK 3.54
def test_todays_site_through_the_pool_with_the_sdk(tmp_path, fake, pool) -> None:
    """The whole 2026 site (models, summary thinking, ids on deltas, cookie-only auth, the 2.1
    body check) through the pool: a thinking-locked model streamed, an image edit (STS inside
    the page, the upload to OSS direct), a video task polled to its end."""
    import openai

    from tests.fakes.oss import FakeOSS
    from tests.http.test_uploads import PNG

    saved = (fake.models, fake.thinking_style, fake.delta_response_ids, fake.image_base_url, fake.oss)
    oss = FakeOSS().start()
    fake.use_2026_site()
    fake.image_base_url, fake.oss = fake.url, oss
    application = make_app(tmp_path, fake, pool.socket, QWEN_OSS_BASE_URL=oss.url, VIDEO_POLL_INTERVAL=0.0)
    server = LiveServer(application)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0, timeout=30)
        seen = len(fake.requests)
        stream = client.chat.completions.create(
            model="qwen3.8-max", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "Echo: hi"
        edited = client.images.edit(image=("cat.png", PNG, "image/png"), prompt="blue")
        assert edited.data[0].url.startswith(fake.url + "/output/")
        video = client.videos.create(prompt="a cat surfing")
        for _ in range(10):
            video = client.videos.retrieve(video.id)
            if video.status in ("completed", "failed"):
                break
        assert video.status == "completed"
        calls = [r for r in fake.requests[seen:] if r["path"].startswith("/api/")]
        assert {"/api/v2/files/getstsToken", "/api/v2/chat/completions"} <= {r["path"] for r in calls}
        assert any(r["path"].startswith("/api/v1/tasks/status/") for r in calls)
        assert all("authorization" not in r["headers"] for r in calls)
        assert fake.body_errors == [] and fake.errors == []
    finally:
        server.stop()
        application.extensions["providers"].close()
        oss.stop()
        fake.models, fake.thinking_style, fake.delta_response_ids, fake.image_base_url, fake.oss = saved


def test_release_closes_an_accounts_browser_and_the_next_job_reopens_it(served, pool) -> None:
    chat(served.url, "warm", stream=False)
    before = pool.chromium_pids()
    assert pool.transport.release_profile(pool_account(pool)) is True
    assert wait_until(lambda: not alive(before), timeout=10)
    assert pool.health()["browsers"] == 0
    again = chat(served.url, "reopened", stream=False)
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "Echo: reopened"
    assert pool.transport.release_profile("nobody") is False


def test_no_chromium_left_behind(pool) -> None:
    """Every Chromium this module started belongs to a live pool (the session check runs last)."""
    ours = set(pool.chromium_pids())
    # crashpad handlers daemonize out of the tree; they exit a moment after their browser
    strays = [p.pid for p in marked_chromium() if p.pid not in ours and "crashpad" not in p.info["name"]]
    assert wait_until(lambda: not [p for p in alive(strays)], timeout=10), strays
