"""The browser pool: Qwen web calls made as ``fetch()`` inside headless Chromium pages.

Why: chat.qwen.ai guards its API with fingerprint cookies and anti-bot headers that its own
JavaScript adds (``shared/specs/qwen-web.md`` §2.4, §3.0, §9). A ``fetch()`` made inside a
page of the site carries all of them, and the answer is read as it arrives.

Run it by hand, or let the gateway start and supervise it (``worker_spec``)::

    python -m workers.browser_pool [--socket PATH]

One asyncio process: an aiohttp server on a Unix socket (``BROWSER_POOL_SOCKET``, default
``<SESSION_DIR>/browser_pool.sock``, mode 0600), one Chromium per account profile
(``<SESSION_DIR>/accounts/<id>/``; a shared profile for jobs without an account),
``BROWSER_POOL_SIZE`` pages per browser kept on the ``QWEN_BASE_URL`` origin, and a queue of
jobs waiting for a page (each page runs up to ``BROWSER_PAGE_JOBS`` fetches at once).

Wire protocol (``curl --unix-socket PATH http://pool/health`` works):

- ``GET /health`` -> ``{"status", "browsers", "pages", "queue", "active", "served",
  "failed", "aborted", "restarts", "draining", "detail": [...]}``; 503 while draining.
- ``POST /v1/fetch`` with ``{"method", "url", "headers", "body" (JSON-able or null),
  "account_id", "timeout"}`` -> 200 and the upstream body, streamed as the page reads it,
  with ``X-Upstream-Status``, ``X-Upstream-Content-Type``, ``X-Upstream-H-<name>`` (the
  upstream's headers) and ``X-Pool-Job``. A failure before the upstream answered is a JSON
  ``{"error": {"message", "code"}}`` with 502 (browser failed), 503 (pool draining or full,
  Chromium cannot start, upstream unreachable) or 504 (no page free in time, upstream silent
  for ``timeout`` s). A failure in the middle of the body closes the connection without the
  final chunk, so the client sees a broken stream at once; ``GET /v1/jobs/<id>`` then says
  why. Closing the connection aborts the in-page fetch (``AbortController``).
- ``GET /v1/jobs/<id>`` -> ``{"id", "outcome", "error"}`` of one of the last 500 jobs.
- ``DELETE /v1/browsers/<account_id>`` -> closes that account's Chromium (its jobs fail), so
  another program can open the profile; the next job for the account relaunches it.

Faults (each ends the affected jobs with an error within seconds and relaunches what died):
Chromium crash (``disconnected``, process exit), Chromium hang (a watchdog pings every
``BROWSER_WATCHDOG_SECONDS``; a silent browser is killed), page crash or hang (the page is
replaced), a page navigating away (jobs in it fail; the page is brought back before its next
job), a job timeout. SIGTERM/SIGINT drain: new jobs get 503, running ones may finish for
``BROWSER_DRAIN_TIMEOUT`` s, then Chromium is closed and the process exits. If the parent
(the gateway) dies, the pool exits too; Chromium dies with the pool (PDEATHSIG).

pyppeteer 2.0.0 rules followed here (``browser-pool-findings.md``): Chromium is started by
``qwenproxy.chromium.launch`` (own process group, PDEATHSIG, ``connect``), never by
pyppeteer; every CDP event handler catches everything (one exception kills the connection);
every page has an ``error`` listener (pyee raises unhandled ``error`` events); chunks come
out through ``Runtime.addBinding`` on a CDP session of our own, never ``page._client``; every
wait races the chunk queue against the ``evaluate`` task and the browser's death.

This module imports nothing heavy at import time: the gateway imports ``worker_spec`` from
it in the gunicorn master.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("workers.browser_pool")

ROOT = Path(__file__).resolve().parent.parent

BINDING = "__qpSink"  # window.<name> is visible to the site's scripts: keep it dull
ABORTS = "__qpAborts"
ANONYMOUS = "_shared"  # the profile for jobs without an account
RECENT_JOBS = 500

# fetch() ignores these (forbidden request headers) or the browser sets them itself
DROPPED_HEADERS = {
    "accept-charset",
    "accept-encoding",
    "connection",
    "content-length",
    "cookie",
    "cookie2",
    "date",
    "dnt",
    "expect",
    "host",
    "keep-alive",
    "origin",
    "referer",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
}
# upstream headers not worth passing back (the pool re-frames the body)
HIDDEN_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "content-encoding", "connection", "set-cookie"}

READER_JS = """async (url, init, job, sinkName, abortsName) => {
  const sink = window[sinkName];
  const send = (m) => { m.job = job; sink(JSON.stringify(m)); };
  const aborts = (window[abortsName] = window[abortsName] || {});
  const ac = new AbortController();
  aborts[job] = ac;
  try {
    const r = await fetch(url, Object.assign({}, init, {signal: ac.signal}));
    const headers = {};
    r.headers.forEach((v, k) => { headers[k] = v; });
    send({type: 'start', status: r.status, headers});
    if (r.body) {
      const reader = r.body.getReader(), dec = new TextDecoder();
      for (;;) {
        const {done, value} = await reader.read();
        if (done) break;
        const text = dec.decode(value, {stream: true});
        if (text) send({type: 'data', data: text});
      }
      const tail = dec.decode();
      if (tail) send({type: 'data', data: tail});
    }
    send({type: 'end'});
  } catch (e) {
    try { send({type: 'error', error: String((e && e.name ? e.name + ': ' : '') + (e && e.message || e))}); }
    catch (e2) {}
  } finally {
    delete aborts[job];
  }
}"""

ABORT_JS = """(job, abortsName) => {
  const a = window[abortsName];
  if (a && a[job]) { a[job].abort(); return true; }
  return false;
}"""

TOKEN_JS = """(token) => {
  try { if (localStorage.getItem('token') !== token) localStorage.setItem('token', token); } catch (e) {}
}"""


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    base_url: str
    session_dir: Path
    address: str
    pages_per_browser: int = 2
    page_jobs: int = 6
    max_browsers: int = 4
    queue_max: int = 256
    queue_timeout: float = 30.0
    drain_timeout: float = 20.0
    watchdog: float = 2.0
    headless: bool = True
    chrome_path: str | None = None
    default_timeout: float = 120.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], address: str | None = None) -> Settings:
        from qwenproxy.qwen.browser_transport import pool_address

        return cls(
            base_url=str(config["QWEN_BASE_URL"]).rstrip("/"),
            session_dir=Path(str(config["SESSION_DIR"])).resolve(),
            address=address or pool_address(config),
            pages_per_browser=max(1, int(config["BROWSER_POOL_SIZE"])),
            page_jobs=max(1, int(config["BROWSER_PAGE_JOBS"])),
            max_browsers=max(1, int(config["BROWSER_MAX_BROWSERS"])),
            queue_max=max(0, int(config["BROWSER_QUEUE_MAX"])),
            queue_timeout=float(config["BROWSER_QUEUE_TIMEOUT"]),
            drain_timeout=float(config["BROWSER_DRAIN_TIMEOUT"]),
            watchdog=max(0.2, float(config["BROWSER_WATCHDOG_SECONDS"])),
            headless=bool(config["BROWSER_HEADLESS"]),
            chrome_path=config.get("CHROME_PATH") or None,
            default_timeout=float(config["QWEN_READ_TIMEOUT"]),
        )

    @property
    def origin(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"


def profile_dir(session_dir: Path, account_id: str | None) -> Path:
    """``<SESSION_DIR>/accounts/<id>/`` (the account's Chromium profile), or the shared one."""
    if not account_id:
        return session_dir / "browser" / ANONYMOUS
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", str(account_id)).strip(".") or "_"
    return session_dir / "accounts" / safe


def bearer_token(headers: Mapping[str, str]) -> str | None:
    for key, value in headers.items():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def jwt_expiry(token: str) -> float | None:
    from qwenproxy.jwt import jwt_expiry as _expiry

    return _expiry(token)


# --------------------------------------------------------------------------- jobs


class JobError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(eq=False)
class Job:
    id: str
    method: str
    url: str
    headers: dict[str, str]
    body: str | None
    account_id: str | None
    timeout: float
    token: str | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    page: PageSlot | None = None
    task: asyncio.Future | None = None
    done: bool = False
    outcome: str = "queued"
    error: str | None = None
    created: float = field(default_factory=time.monotonic)

    def push_error(self, reason: str) -> None:
        """A pool-side failure (crash, navigation, shutdown): the reader sees it next."""
        if not self.done:
            self.queue.put_nowait({"type": "error", "error": reason, "pool": True})

    def fetch_init(self, origin: str) -> dict[str, Any]:
        headers: dict[str, str] = {}
        referrer = None
        for key, value in self.headers.items():
            low = key.lower()
            if low == "referer":
                referrer = str(value)
            elif low not in DROPPED_HEADERS and not low.startswith(("sec-", "proxy-")):
                headers[key] = str(value)
        init: dict[str, Any] = {
            "method": self.method,
            "headers": headers,
            "credentials": "include",
            "cache": "no-store",
            "redirect": "follow",
        }
        if referrer and referrer.startswith(origin):
            init["referrer"] = referrer
        if self.body is not None and self.method not in ("GET", "HEAD"):
            init["body"] = self.body
        return init


# --------------------------------------------------------------------------- pages and browsers


def _quiet(fn):
    """Wrap a CDP/pyee event handler: an exception inside one kills pyppeteer's connection."""

    def handler(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            log.exception("event handler failed")

    return handler


class PageSlot:
    """One tab on the site's origin; runs up to ``page_jobs`` in-page fetches at once."""

    def __init__(self, browser: BrowserSlot, page: Any, session: Any, index: int) -> None:
        self.browser = browser
        self.page = page
        self.session = session
        self.index = index
        self.jobs: dict[str, Job] = {}
        self.broken: str | None = None
        self.needs_navigation = True
        self.nav_lock = asyncio.Lock()

    @property
    def pool(self) -> Pool:
        return self.browser.pool

    def usable(self) -> bool:
        return self.broken is None and self.browser.state == "up"

    def fail(self, reason: str) -> None:
        """The page is gone (crash, close, hang): fail its jobs, have it replaced."""
        if self.broken is not None:
            return
        self.broken = reason
        log.warning("%s: page %d broken: %s", self.browser.key, self.index, reason)
        for job in list(self.jobs.values()):
            job.push_error(f"the browser page failed ({reason})")
        if self.browser.state == "up":
            self.pool.spawn(self.browser.replace_page(self))
        self.pool.notify()

    def on_navigated(self, event: dict) -> None:
        frame = event.get("frame") or {}
        if frame.get("parentId"):
            return  # an iframe
        url = str(frame.get("url") or "")
        origin = self.pool.settings.origin
        if not (url == origin or url.startswith(origin + "/")):
            self.needs_navigation = True
        running = [j for j in self.jobs.values() if j.task is not None]
        if running:
            log.warning("%s: page %d navigated to %s; %d fetches lost", self.browser.key, self.index, url, len(running))
        for job in running:
            job.push_error(f"the browser page navigated away (to {url[:120]})")

    async def navigate(self) -> None:
        """Bring the page (back) to the site, so same-origin fetches carry its cookies."""
        settings = self.pool.settings
        try:
            await self.page.goto(settings.base_url + "/", waitUntil="load", timeout=30_000)
        except Exception as exc:  # noqa: BLE001
            if not self.on_site():
                raise JobError(502, "page_navigation_failed", f"the browser could not open {settings.base_url}: {exc}")
            log.info("%s: page %d: load did not finish (%s); going on", self.browser.key, self.index, exc)
        self.needs_navigation = False

    def on_site(self) -> bool:
        url = getattr(self.page, "url", "") or ""
        origin = self.pool.settings.origin
        return url == origin or url.startswith(origin + "/")

    async def prepare(self, job: Job) -> None:
        async with self.nav_lock:
            if self.needs_navigation or not self.on_site():
                await self.navigate()
        await self.browser.put_token(self, job)

    async def ping(self, timeout: float) -> None:
        await within(self.session.send("Runtime.evaluate", {"expression": "1", "returnByValue": True}), timeout)


class BrowserSlot:
    """One Chromium on one profile (an account's, or the shared one) with its pages."""

    def __init__(self, pool: Pool, key: str, account_id: str | None) -> None:
        self.pool = pool
        self.key = key
        self.account_id = account_id
        self.profile = profile_dir(pool.settings.session_dir, account_id)
        self.chromium: Any = None
        self.pages: list[PageSlot] = []
        self.state = "stopped"  # stopped | starting | up | dead | closing
        self.launches = 0
        self.last_used = time.monotonic()
        self.token: str | None = None
        self.user_agent = ""
        self.last_error: str | None = None
        self._start_task: asyncio.Future | None = None
        self._cleanup: asyncio.Future | None = None
        self._closed: asyncio.Event | None = None
        self._token_lock = asyncio.Lock()

    def load(self) -> int:
        return sum(len(p.jobs) for p in self.pages)

    def free_page(self) -> PageSlot | None:
        limit = self.pool.settings.page_jobs
        pages = [p for p in self.pages if p.usable() and len(p.jobs) < limit]
        return min(pages, key=lambda p: len(p.jobs)) if pages else None

    def ensure_started(self) -> asyncio.Future:
        if self._start_task is None or self._start_task.done():
            self._start_task = asyncio.ensure_future(self._start())
        return self._start_task

    async def _start(self) -> None:
        from qwenproxy.runtime.chromium import launch

        settings = self.pool.settings
        closing = self._closed if self.state == "closing" else None
        self.state = "starting"
        self.token = None
        # the profile must be free: the dead or closing Chromium is gone first
        if self._cleanup is not None:
            await asyncio.shield(self._cleanup)
        if closing is not None:
            await closing.wait()
        t0 = time.monotonic()
        try:
            chromium = await launch(self.profile, headless=settings.headless, chrome_path=settings.chrome_path)
        except Exception as exc:
            self.state = "dead"
            self.last_error = f"Chromium could not be started: {exc}"
            raise JobError(503, "browser_launch_failed", self.last_error) from exc
        try:
            browser = chromium.browser
            browser.on("disconnected", _quiet(lambda *_: self.died("lost its DevTools connection", chromium)))
            self.user_agent = (await browser.userAgent()).replace("HeadlessChrome", "Chrome")
            existing = await browser.pages()
            pages = []
            for index in range(settings.pages_per_browser):
                page = existing[index] if index < len(existing) else await browser.newPage()
                pages.append(await self._setup_page(page, index))
            self.chromium, self.pages = chromium, pages
            results = await asyncio.gather(*(p.navigate() for p in pages), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("%s: first navigation failed: %s", self.key, result)
        except BaseException as exc:
            self.state = "dead"
            self.last_error = f"Chromium started but could not be set up: {exc}"
            await _close_chromium(chromium)
            if isinstance(exc, Exception):
                raise JobError(503, "browser_launch_failed", self.last_error) from exc
            raise
        self.state = "up"
        self.launches += 1
        self.last_error = None
        log.info(
            "%s: Chromium %s up with %d pages in %.2f s (profile %s)",
            self.key,
            chromium.pid,
            len(pages),
            time.monotonic() - t0,
            self.profile,
        )
        self.pool.notify()

    async def _setup_page(self, page: Any, index: int) -> PageSlot:
        session = await page.target.createCDPSession()
        slot = PageSlot(self, page, session, index)
        page.on("error", _quiet(lambda err=None, *_: slot.fail(f"crashed: {err}")))
        page.on("close", _quiet(lambda *_: slot.fail("closed")))
        page._client.on("Page.frameNavigated", _quiet(slot.on_navigated))
        session.on("Runtime.bindingCalled", _quiet(self.pool.on_binding))
        await page.setUserAgent(self.user_agent)
        await session.send("Runtime.enable", {})
        await session.send("Runtime.addBinding", {"name": BINDING})
        return slot

    async def replace_page(self, old: PageSlot) -> None:
        """A new tab in place of a broken one (the browser itself is alive)."""
        await asyncio.sleep(0)
        with contextlib.suppress(Exception):
            await within(old.page.close(), 3)
        if self.state != "up" or old not in self.pages:
            return
        try:
            page = await within(self.chromium.browser.newPage(), 10)
            fresh = await self._setup_page(page, old.index)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: could not replace page %d (%s); relaunching the browser", self.key, old.index, exc)
            self.died(f"could not open a page: {exc}", self.chromium)
            return
        if self.state != "up" or old not in self.pages:
            with contextlib.suppress(Exception):
                await page.close()
            return
        self.pages[self.pages.index(old)] = fresh
        self.pool.restarts += 1
        log.info("%s: page %d replaced", self.key, old.index)
        with contextlib.suppress(Exception):
            async with fresh.nav_lock:
                await fresh.navigate()
        self.pool.notify()

    async def put_token(self, page: PageSlot, job: Job) -> None:
        """An account's token also goes into its profile (``token`` cookie, localStorage)."""
        token = job.token
        if not token or not self.account_id or token == self.token:
            return
        async with self._token_lock:
            if token == self.token:
                return
            origin = self.pool.settings.origin
            try:
                cookies = await page.page.cookies(origin)
                if not any(c.get("name") == "token" and c.get("value") == token for c in cookies):
                    cookie: dict[str, Any] = {"name": "token", "value": token, "url": origin + "/"}
                    exp = jwt_expiry(token)
                    if exp:
                        cookie["expires"] = exp
                    await page.page.setCookie(cookie)
                await page.page.evaluate(TOKEN_JS, token)
                self.token = token
            except Exception as exc:  # noqa: BLE001 - the Bearer header still carries it
                log.warning("%s: could not store the token in the profile: %s", self.key, exc)

    def died(self, reason: str, chromium: Any) -> None:
        """Chromium crashed, hung or lost its connection: fail its jobs, kill it, relaunch it."""
        if self.state != "up" or chromium is not self.chromium:
            return
        self.state = "dead"
        self.last_error = f"Chromium {reason}"
        self.pool.restarts += 1
        log.warning("%s: Chromium %s %s", self.key, getattr(chromium, "pid", "?"), reason)
        with contextlib.suppress(OSError):
            os.killpg(chromium.pid, signal.SIGKILL)  # a hung one too; its own process group
        for page in self.pages:
            page.broken = page.broken or self.last_error
            for job in list(page.jobs.values()):
                job.push_error(f"Chromium {reason}")
        self._cleanup = self.pool.spawn(_close_chromium(chromium))
        self.pool.notify()
        self.pool.spawn(self._relaunch())

    async def _relaunch(self) -> None:
        await asyncio.sleep(0.2)
        if self.pool.draining or self.state != "dead":
            return  # shutting down, or a job has already started it again
        try:
            await asyncio.shield(self.ensure_started())
        except Exception as exc:  # noqa: BLE001 - the next job tries again
            log.warning("%s: relaunch failed: %s", self.key, exc)

    async def close(self, reason: str) -> None:
        """Close this Chromium for good (shutdown, eviction, release); a later job reopens it."""
        closed = self._closed = asyncio.Event()
        try:
            if self._start_task is not None and not self._start_task.done():
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(self._start_task), 35)
            self.state = "closing"
            for page in self.pages:
                for job in list(page.jobs.values()):
                    job.push_error(reason)
            chromium, self.chromium = self.chromium, None
            if chromium is not None:
                await _close_chromium(chromium)
            self.pages = []
            self.state = "stopped"
        finally:
            closed.set()

    def describe(self) -> dict[str, Any]:
        return {
            "account": self.account_id,
            "state": self.state,
            "pid": self.chromium.pid if self.chromium is not None else None,
            "pages": sum(1 for p in self.pages if p.usable()),
            "jobs": self.load(),
            "launches": self.launches,
            "lastError": self.last_error,
        }


async def _close_chromium(chromium: Any) -> None:
    """Disconnect and kill the whole process group, without blocking the loop."""
    if chromium is not None:
        await chromium.close(timeout=3.0)


# --------------------------------------------------------------------------- the pool


class Pool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.browsers: dict[str, BrowserSlot] = {}
        self.jobs: dict[str, Job] = {}
        self.waiting = 0
        self.served = 0
        self.failed = 0
        self.aborted = 0
        self.restarts = 0
        self.draining = False
        self.started_at = time.time()
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Future] = set()

    # -- plumbing
    def spawn(self, coro: Any) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def on_binding(self, event: dict) -> None:
        if event.get("name") != BINDING:
            return
        message = json.loads(event.get("payload") or "{}")
        job = self.jobs.get(str(message.get("job")))
        if job is not None and not job.done:
            job.queue.put_nowait(message)

    # -- jobs
    def make_job(self, spec: Any) -> Job:
        if not isinstance(spec, dict):
            raise JobError(400, "bad_job", "the job must be a JSON object")
        method = str(spec.get("method") or "GET").upper()
        url = str(spec.get("url") or "")
        origin = self.settings.origin
        if not (url == origin or url.startswith(origin + "/")):
            raise JobError(400, "bad_job", f"the pool only fetches from {origin} (QWEN_BASE_URL), not {url[:100]}")
        headers = spec.get("headers") or {}
        if not isinstance(headers, dict):
            raise JobError(400, "bad_job", "headers must be an object")
        headers = {str(k): str(v) for k, v in headers.items()}
        body = spec.get("body")
        body_text = None if body is None else (body if isinstance(body, str) else json.dumps(body, ensure_ascii=False))
        try:
            timeout = float(spec.get("timeout") or self.settings.default_timeout)
        except (TypeError, ValueError):
            timeout = self.settings.default_timeout
        account = spec.get("account_id")
        return Job(
            id=uuid.uuid4().hex,
            method=method,
            url=url,
            headers=headers,
            body=body_text,
            account_id=str(account) if account else None,
            timeout=max(0.1, timeout),
            token=bearer_token(headers),
        )

    async def open(self, job: Job) -> dict[str, Any]:
        """Queue the job, start its in-page fetch, return the upstream's ``start`` message."""
        if self.draining:
            raise JobError(503, "pool_draining", "the browser pool is shutting down")
        if self.waiting >= self.settings.queue_max:
            raise JobError(503, "pool_queue_full", f"the browser pool's queue is full ({self.waiting} jobs waiting)")
        deadline = time.monotonic() + self.settings.queue_timeout
        self.waiting += 1
        try:
            page = await self._acquire(job, deadline)
        finally:
            self.waiting -= 1
        job.page = page
        job.outcome = "running"
        page.jobs[job.id] = job
        self.jobs[job.id] = job
        page.browser.last_used = time.monotonic()
        await page.prepare(job)
        if not page.usable():
            raise JobError(502, "browser_failed", f"the browser page failed ({page.broken or page.browser.last_error})")
        job.task = asyncio.ensure_future(
            page.page.evaluate(READER_JS, job.url, job.fetch_init(self.settings.origin), job.id, BINDING, ABORTS)
        )
        job.task.add_done_callback(_consume)
        message = await self.next(job)
        if message.get("type") == "start":
            return message
        error = str(message.get("error") or "no answer")
        if message.get("pool"):
            raise JobError(502, "browser_failed", error)
        raise JobError(503, "upstream_unreachable", f"the in-page fetch failed: {error}")

    async def _acquire(self, job: Job, deadline: float) -> PageSlot:
        while True:
            if self.draining:
                raise JobError(503, "pool_draining", "the browser pool is shutting down")
            browser = await self._browser_for(job.account_id)
            page = browser.free_page()
            if page is not None:
                return page
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobError(
                    504,
                    "pool_queue_timeout",
                    f"no browser page was free within {self.settings.queue_timeout:g} s "
                    f"({len(self.jobs)} jobs running)",
                )
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 1.0))

    async def _browser_for(self, account_id: str | None) -> BrowserSlot:
        if account_id is None:
            # no account (model list, …): any running profile will do
            up = [b for b in self.browsers.values() if b.state == "up"]
            if up:
                return min(up, key=lambda b: b.load())
        key = account_id or ANONYMOUS
        browser = self.browsers.get(key)
        if browser is None:
            browser = self.browsers[key] = BrowserSlot(self, key, account_id)
        browser.last_used = time.monotonic()
        if browser.state != "up":
            if browser.state in ("stopped", "dead", "closing") and (
                browser._start_task is None or browser._start_task.done()
            ):
                await self._make_room(browser)
            await asyncio.shield(browser.ensure_started())
        return browser

    async def _make_room(self, wanted: BrowserSlot) -> None:
        up = [b for b in self.browsers.values() if b is not wanted and b.state in ("up", "starting")]
        if len(up) < self.settings.max_browsers:
            return
        idle = [b for b in up if b.state == "up" and b.load() == 0]
        if not idle:
            log.warning("all %d browsers are busy; opening one more for %s", len(up), wanted.key)
            return
        victim = min(idle, key=lambda b: b.last_used)
        log.info("closing the idle browser of %s to make room for %s", victim.key, wanted.key)
        await victim.close("the browser was closed to make room")

    async def next(self, job: Job) -> dict[str, Any]:
        """The job's next message; a dead reader, a dead page or ``timeout`` s of silence raise."""
        if not job.queue.empty():
            return job.queue.get_nowait()
        assert job.task is not None
        getter = asyncio.ensure_future(job.queue.get())
        try:
            done, _ = await asyncio.wait({getter, job.task}, timeout=job.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if job.task.done():
            # the reader has returned: its last messages may still be on their way
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(job.queue.get(), 1.0)
            exc = None if job.task.cancelled() else job.task.exception()
            detail = _short(exc) if exc else "the in-page reader stopped without finishing the body"
            raise JobError(502, "browser_failed", f"the in-page fetch failed: {detail}")
        raise JobError(504, "upstream_timeout", f"Qwen sent nothing for {job.timeout:g} s (job timeout)")

    def finish(self, job: Job, outcome: str, error: str | None = None) -> None:
        """The job is over: count it, forget it, abort its in-page fetch if still running."""
        if job.done:
            return
        job.done = True
        job.outcome = outcome
        job.error = error
        self.jobs.pop(job.id, None)
        if job.page is not None:
            job.page.jobs.pop(job.id, None)
        if outcome == "served":
            self.served += 1
        elif outcome == "aborted":
            self.aborted += 1
        else:
            self.failed += 1
        if job.task is not None and not job.task.done():
            self.spawn(self._abort_in_page(job))
        self.recent[job.id] = {"id": job.id, "outcome": outcome, "error": error}
        while len(self.recent) > RECENT_JOBS:
            self.recent.popitem(last=False)
        self.notify()

    async def _abort_in_page(self, job: Job) -> None:
        page = job.page
        if page is not None and page.browser.state == "up":
            with contextlib.suppress(Exception):
                await within(page.page.evaluate(ABORT_JS, job.id, ABORTS), 3)
        # the evaluate task is not cancelled (see ``within``): it ends when the aborted reader
        # returns, or when its page or browser goes away

    # -- watchdog
    async def watchdog(self) -> None:
        interval = self.settings.watchdog
        while True:
            await asyncio.sleep(interval)
            for browser in list(self.browsers.values()):
                if browser.state != "up":
                    continue
                try:
                    await self._check(browser, timeout=max(2.0, interval * 2))
                except Exception:  # noqa: BLE001
                    log.exception("watchdog")

    async def _check(self, browser: BrowserSlot, timeout: float) -> None:
        chromium = browser.chromium
        code = chromium.process.poll()
        if code is not None:
            browser.died(f"exited with code {code}", chromium)
            return
        try:
            await within(chromium.browser._connection.send("Browser.getVersion"), timeout)
        except Exception as exc:  # noqa: BLE001
            browser.died(f"stopped answering ({type(exc).__name__})", chromium)
            return
        pages = [p for p in browser.pages if p.broken is None]
        results = await asyncio.gather(*(p.ping(timeout) for p in pages), return_exceptions=True)
        for page, result in zip(pages, results, strict=True):
            # only silence is a hang: a page in the middle of a navigation has no context to
            # evaluate in, and crashed or closed pages have their own events
            if isinstance(result, asyncio.TimeoutError) and browser.state == "up":
                page.fail(f"stopped answering for {timeout:g} s")

    # -- shutdown
    async def drain(self) -> None:
        self.draining = True
        deadline = time.monotonic() + self.settings.drain_timeout
        if self.jobs or self.waiting:
            log.info("draining: %d jobs running, %d waiting", len(self.jobs), self.waiting)
        while (self.jobs or self.waiting) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self.jobs.values()):
            job.push_error("the browser pool shut down before the answer ended")

    async def close(self) -> None:
        self.draining = True
        await asyncio.gather(
            *(b.close("the browser pool is shutting down") for b in self.browsers.values()), return_exceptions=True
        )
        for task in list(self._tasks):
            task.cancel()

    def health(self) -> dict[str, Any]:
        up = [b for b in self.browsers.values() if b.state == "up"]
        return {
            "status": "draining" if self.draining else "ok",
            "pid": os.getpid(),
            "origin": self.settings.origin,
            "browsers": len(up),
            "pages": sum(1 for b in up for p in b.pages if p.usable()),
            "queue": self.waiting,
            "active": len(self.jobs),
            "served": self.served,
            "failed": self.failed,
            "aborted": self.aborted,
            "restarts": self.restarts,
            "draining": self.draining,
            "uptime": round(time.time() - self.started_at, 1),
            "detail": [b.describe() for b in self.browsers.values()],
        }


async def within(awaitable: Any, timeout: float) -> Any:
    """Await a pyppeteer call for at most ``timeout`` s without cancelling it.

    pyppeteer later calls ``set_exception`` on every pending CDP future when a connection or
    session closes; on a future we had cancelled that raises ``InvalidStateError`` inside its
    close handler, which then skips the rest of its cleanup (other calls would hang).
    """
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(_consume)
    return await asyncio.wait_for(asyncio.shield(task), timeout)


def _consume(task: asyncio.Future) -> None:
    """Mark the evaluate task's exception as retrieved (the reader reports it in-band)."""
    if not task.cancelled():
        task.exception()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


# --------------------------------------------------------------------------- HTTP server


def _error(status: int, code: str, message: str):
    from aiohttp import web

    return web.json_response({"error": {"message": message, "code": code}}, status=status)


async def handle_health(request):
    from aiohttp import web

    pool: Pool = request.app["pool"]
    return web.json_response(pool.health(), status=503 if pool.draining else 200)


async def handle_job(request):
    from aiohttp import web

    pool: Pool = request.app["pool"]
    info = pool.recent.get(request.match_info["id"])
    job = pool.jobs.get(request.match_info["id"])
    if info is None and job is not None:
        info = {"id": job.id, "outcome": job.outcome, "error": job.error}
    if info is None:
        return _error(404, "unknown_job", "no such job (only the last 500 are kept)")
    return web.json_response(info)


async def handle_fetch(request):
    from aiohttp import web

    pool: Pool = request.app["pool"]
    if pool.draining:
        return _error(503, "pool_draining", "the browser pool is shutting down")
    try:
        spec = await request.json()
        job = pool.make_job(spec)
    except JobError as exc:
        return _error(exc.status, exc.code, exc.message)
    except ValueError:
        return _error(400, "bad_job", "the job is not JSON")
    response = None
    try:
        try:
            start = await pool.open(job)
        except JobError as exc:
            pool.finish(job, "failed", exc.message)
            log.warning("job %s failed before the answer: %s", job.id, exc.message)
            return _error(exc.status, exc.code, exc.message)
        headers = {
            "X-Pool-Job": job.id,
            "X-Upstream-Status": str(int(start.get("status") or 0)),
            "Cache-Control": "no-store",
        }
        upstream_headers = start.get("headers") or {}
        for key, value in upstream_headers.items():
            key = str(key).lower()
            if key not in HIDDEN_RESPONSE_HEADERS and re.fullmatch(r"[a-z0-9-]+", key):
                headers["X-Upstream-H-" + key] = str(value).replace("\r", " ").replace("\n", " ")
            if key == "content-type":
                headers["X-Upstream-Content-Type"] = str(value)
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        while True:
            message = await pool.next(job)
            kind = message.get("type")
            if kind == "data":
                await response.write(str(message.get("data", "")).encode("utf-8"))
            elif kind == "end":
                break
            elif kind == "error":
                raise JobError(502, "stream_broken", str(message.get("error")))
        job.outcome = "ended"  # the whole body is out; a client leaving now lost nothing
        await response.write_eof()
        pool.finish(job, "served")
        return response
    except JobError as exc:
        # the answer has started: break the chunked body so the client notices at once
        pool.finish(job, "failed", exc.message)
        log.warning("job %s broke off: %s", job.id, exc.message)
        if response is None:
            return _error(exc.status, exc.code, exc.message)
        if request.transport is not None:
            request.transport.close()
        return response
    except (ConnectionError, asyncio.CancelledError):
        if job.outcome == "ended":
            pool.finish(job, "served")
        else:
            pool.finish(job, "aborted", "the client went away")
        raise
    finally:
        if not job.done:
            pool.finish(job, "failed", "the pool failed while serving the job")


async def handle_release(request):
    """Close an account's browser (its jobs fail), so another program may open its profile
    (``flask accounts add``/``relogin`` with a window). The next job for it relaunches it."""
    from aiohttp import web

    pool: Pool = request.app["pool"]
    account = request.match_info["account"]
    browser = pool.browsers.get(account)
    if browser is None or browser.state in ("stopped", "closing"):
        return web.json_response({"account": account, "closed": False})
    await browser.close("the account's browser was closed (its profile is being used elsewhere)")
    pool.notify()
    return web.json_response({"account": account, "closed": True})


def make_app(pool: Pool):
    from aiohttp import web

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app["pool"] = pool
    app.router.add_get("/health", handle_health)
    app.router.add_post("/v1/fetch", handle_fetch)
    app.router.add_get("/v1/jobs/{id}", handle_job)
    app.router.add_delete("/v1/browsers/{account}", handle_release)
    return app


def _socket_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


async def serve(settings: Settings, parent_pid: int | None = None) -> int:
    from aiohttp import web

    pool = Pool(settings)
    runner = web.AppRunner(make_app(pool), handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    address = settings.address
    if address.startswith("http://"):
        parts = urlsplit(address)
        site: Any = web.TCPSite(runner, parts.hostname or "127.0.0.1", parts.port or 8765)
        path = None
    else:
        path = address
        if len(path.encode()) > 100:
            log.error("socket path too long for a Unix socket (%d bytes): %s", len(path.encode()), path)
            await runner.cleanup()
            return 2
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(path):
            if _socket_in_use(path):
                log.error("another browser pool is already serving on %s", path)
                await runner.cleanup()
                return 3
            os.unlink(path)
        site = web.UnixSite(runner, path)
    old_umask = os.umask(0o077)  # the socket: this user only (jobs run with the accounts' cookies)
    try:
        await site.start()
    finally:
        os.umask(old_umask)
    log.info("browser pool listening on %s (pid %d) for %s", address, os.getpid(), settings.origin)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_exception)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # only a flag: the work happens below
    watchdog = pool.spawn(pool.watchdog())
    parent_watch = pool.spawn(_watch_parent(parent_pid, stop)) if parent_pid else None
    await stop.wait()
    log.info("shutting down: draining for up to %g s", settings.drain_timeout)
    await pool.drain()
    watchdog.cancel()
    if parent_watch is not None:
        parent_watch.cancel()
    await pool.close()
    await runner.cleanup()
    if path and os.path.exists(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    log.info("browser pool stopped")
    return 0


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """pyppeteer sends session messages without awaiting them; when the page is already gone
    their errors surface here as "never retrieved". That is expected: keep it out of the log."""
    exc = context.get("exception")
    if (
        exc is not None
        and type(exc).__name__ == "NetworkError"
        and ("No session with given id" in str(exc) or "Target closed" in str(exc))
    ):
        log.debug("pyppeteer: %s", exc)
        return
    loop.default_exception_handler(context)


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """The gateway died without stopping us (SIGKILL): do not outlive it."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    log.warning("parent %d is gone; stopping", parent_pid)
    stop.set()


# --------------------------------------------------------------------------- gateway side


def worker_spec(config: Mapping[str, Any]):
    """The supervisor's ``WorkerSpec`` for the pool, or None unless ``QWEN_TRANSPORT`` is
    ``browser`` or ``auto`` (with ``direct`` the pool is not needed)."""
    if str(config.get("QWEN_TRANSPORT") or "").lower() not in ("browser", "auto"):
        return None
    # stdlib only here: this runs in the gunicorn master, before gevent patches the workers
    from qwenproxy.runtime.supervisor import WorkerSpec

    env = {}
    for key, value in config.items():
        if key.startswith(("BROWSER_", "CHROME_")) and value is not None:
            env[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    env.update(
        SESSION_DIR=str(Path(str(config["SESSION_DIR"])).resolve()),
        QWEN_BASE_URL=str(config["QWEN_BASE_URL"]),
        QWEN_READ_TIMEOUT=str(config["QWEN_READ_TIMEOUT"]),
        LOG_LEVEL=str(config.get("LOG_LEVEL") or "INFO"),
        BROWSER_POOL_SOCKET=str(config["BROWSER_POOL_SOCKET"]),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    argv = [sys.executable, "-m", "workers.browser_pool", "--parent-pid", str(os.getpid())]
    return WorkerSpec(name="browser-pool", argv=argv, env=env)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.browser_pool", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", help="Unix socket path or http://127.0.0.1:PORT (default: BROWSER_POOL_SOCKET)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer our parent")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from qwenproxy.config import load_config

    config = load_config()
    logging.basicConfig(
        level=str(config.get("LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s browser-pool[%(process)d] %(message)s",
    )
    logging.getLogger("pyppeteer").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    settings = Settings.from_config(config, address=args.socket)
    return asyncio.run(serve(settings, parent_pid=args.parent_pid))


if __name__ == "__main__":
    sys.exit(main())
