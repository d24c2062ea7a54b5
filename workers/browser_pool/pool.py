"""The pool: browsers by profile, the queue of jobs waiting for a page, the watchdog, drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Any

from .browsers import BrowserSlot, PageSlot, consume_exception, short_error, within
from .display import DisplayPlan
from .jobs import Job, JobError, parse_job
from .page_scripts import ABORT_JS, ABORTS, BINDING, READER_JS
from .settings import ANONYMOUS, Settings

log = logging.getLogger("workers.browser_pool")

RECENT_JOBS = 500


class Pool:
    def __init__(
        self, settings: Settings, display: DisplayPlan | None = None, chromium_env: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.display = display or DisplayPlan("headless", "no display planned")
        self.chromium_env = dict(chromium_env or {})  # DISPLAY/XAUTHORITY of the pool's Xvfb
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
        return parse_job(spec, self.settings.origin, self.settings.default_timeout)

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
        init = job.fetch_init(self.settings.origin)
        job.task = asyncio.ensure_future(
            page.page.evaluate(
                READER_JS, job.url, init, job.id, BINDING, ABORTS, job.page_headers, self.settings.page_owned_paths
            )
        )
        job.task.add_done_callback(consume_exception)
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
            detail = short_error(exc) if exc else "the in-page reader stopped without finishing the body"
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
            "display": self.display.mode,
            "uptime": round(time.time() - self.started_at, 1),
            "detail": [b.describe() for b in self.browsers.values()],
        }
