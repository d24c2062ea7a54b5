"""One Chromium per profile (an account's, or the shared one) and its pages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from .jobs import Job, JobError
from .page_scripts import ANTIBOT_READY_JS, BINDING, TOKEN_JS
from .settings import profile_dir

if TYPE_CHECKING:
    from .pool import Pool

log = logging.getLogger("workers.browser_pool")


def jwt_expiry(token: str) -> float | None:
    from qwenproxy.jwt import jwt_expiry as _expiry

    return _expiry(token)


def quiet(fn):
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
        self.antibot_pending = True  # the site's anti-bot module: not seen ready since the last load
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
        self.antibot_pending = True  # a new document: its anti-bot module starts over
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
            if self.antibot_pending:
                await self.wait_antibot()
        await self.browser.put_token(self, job)

    async def wait_antibot(self) -> None:
        """Before a page's first call: wait (``BROWSER_ANTIBOT_WAIT_S`` at most) until the site's
        anti-bot module hands out its token; a call made earlier carries no valid signature
        (``qwen-web-2026.md`` §4). Past the bound the call goes anyway, with a log line."""
        bound = self.pool.settings.antibot_wait
        started = time.monotonic()
        while True:
            try:
                ready = await within(self.page.evaluate(ANTIBOT_READY_JS), 2)
            except Exception:  # noqa: BLE001 - navigating (no context yet), or a slow page
                ready = False
            waited = time.monotonic() - started
            if ready:
                self.antibot_pending = False
                if waited >= 0.05:
                    log.info("%s: page %d: anti-bot module ready after %.1f s", self.browser.key, self.index, waited)
                return
            if waited >= bound:
                self.antibot_pending = False
                log.warning(
                    "%s: page %d: the site's anti-bot module was not ready within %g s; calling anyway",
                    self.browser.key,
                    self.index,
                    bound,
                )
                return
            await asyncio.sleep(min(0.1, bound - waited))

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
            chromium = await launch(
                self.profile,
                headless=self.pool.display.headless,
                chrome_path=settings.chrome_path,
                env=self.pool.chromium_env,
            )
        except Exception as exc:
            self.state = "dead"
            self.last_error = f"Chromium could not be started: {exc}"
            raise JobError(503, "browser_launch_failed", self.last_error) from exc
        try:
            browser = chromium.browser
            browser.on("disconnected", quiet(lambda *_: self.died("lost its DevTools connection", chromium)))
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
            await close_chromium(chromium)
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
        page.on("error", quiet(lambda err=None, *_: slot.fail(f"crashed: {err}")))
        page.on("close", quiet(lambda *_: slot.fail("closed")))
        page._client.on("Page.frameNavigated", quiet(slot.on_navigated))
        session.on("Runtime.bindingCalled", quiet(self.pool.on_binding))
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
        """An account's token goes into its profile (``token`` cookie, localStorage): the
        2026 site authenticates with the cookie only. A token that cannot be stored there
        (a job without an account, a failed ``setCookie``) goes as ``Authorization``."""
        token = job.token
        if not token:
            return
        if not self.account_id or job.account_id != self.account_id:
            job.header_auth = True  # an account-less job: this profile's cookie is not its to change
            return
        if token == self.token:
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
            except Exception as exc:  # noqa: BLE001 - the Bearer header carries it instead
                job.header_auth = True
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
        self._cleanup = self.pool.spawn(close_chromium(chromium, graceful=False))
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
                await close_chromium(chromium)
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


async def close_chromium(chromium: Any, graceful: bool = True) -> None:
    """Close Chromium and kill its whole process group, without blocking the loop;
    ``graceful``: ask it to quit first (it writes its cookies to the profile)."""
    if chromium is not None:
        await chromium.close(timeout=3.0, graceful=graceful)


async def within(awaitable: Any, timeout: float) -> Any:
    """Await a pyppeteer call for at most ``timeout`` s without cancelling it.

    pyppeteer later calls ``set_exception`` on every pending CDP future when a connection or
    session closes; on a future we had cancelled that raises ``InvalidStateError`` inside its
    close handler, which then skips the rest of its cleanup (other calls would hang).
    """
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(consume_exception)
    return await asyncio.wait_for(asyncio.shield(task), timeout)


def consume_exception(task: asyncio.Future) -> None:
    """Mark the evaluate task's exception as retrieved (the reader reports it in-band)."""
    if not task.cancelled():
        task.exception()


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
