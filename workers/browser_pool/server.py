"""The pool's HTTP server: aiohttp on a Unix socket (mode 0600), the process's life."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .browsers import short_error, within
from .display import DisplayPlan, VirtualDisplay, find_xvfb, plan
from .jobs import HIDDEN_RESPONSE_HEADERS, JobError
from .pool import Pool
from .settings import Settings

log = logging.getLogger("workers.browser_pool")


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


async def handle_debug_pages(request):
    """Tests only (``BROWSER_TEST_HOOKS``): one CDP command to every page, on the page's own
    CDP session, so a test can make a page navigate away or crash. With the DevTools pipe
    there is no port a second client could use for that."""
    from aiohttp import web

    pool: Pool = request.app["pool"]
    spec = await request.json()
    pages = [p for b in pool.browsers.values() if b.state == "up" for p in b.pages if p.broken is None]
    results = await asyncio.gather(
        *(within(p.session.send(str(spec["method"]), spec.get("params") or {}), 3) for p in pages),
        return_exceptions=True,
    )
    return web.json_response(
        {"pages": len(pages), "errors": [short_error(r) for r in results if isinstance(r, BaseException)]}
    )


def make_app(pool: Pool):
    from aiohttp import web

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app["pool"] = pool
    app.router.add_get("/health", handle_health)
    app.router.add_post("/v1/fetch", handle_fetch)
    app.router.add_get("/v1/jobs/{id}", handle_job)
    app.router.add_delete("/v1/browsers/{account}", handle_release)
    if pool.settings.test_hooks:
        app.router.add_post("/v1/debug/pages", handle_debug_pages)
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

    address = settings.address
    path = None if address.startswith("http://") else address
    if path is not None:
        if len(path.encode()) > 100:
            log.error("socket path too long for a Unix socket (%d bytes): %s", len(path.encode()), path)
            return 2
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(path):
            if _socket_in_use(path):
                log.error("another browser pool is already serving on %s", path)
                return 3
            os.unlink(path)
    display, xvfb, env = await open_display(settings)
    try:
        pool = Pool(settings, display, env)
        runner = web.AppRunner(make_app(pool), handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        if path is None:
            parts = urlsplit(address)
            site: Any = web.TCPSite(runner, parts.hostname or "127.0.0.1", parts.port or 8765)
        else:
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
    finally:
        if xvfb is not None:
            xvfb.stop()
    log.info("browser pool stopped")
    return 0


async def open_display(settings: Settings) -> tuple[DisplayPlan, VirtualDisplay | None, dict[str, str]]:
    """Where Chromium draws (``BROWSER_HEADLESS``); starts the pool's Xvfb when that is the plan.
    An Xvfb that will not start leaves Chromium headless rather than not at all."""
    xvfb_path = find_xvfb()
    display = plan(settings.headless, os.environ, xvfb_path)
    xvfb = None
    env: dict[str, str] = {}
    if display.mode == "xvfb" and xvfb_path:
        xvfb = VirtualDisplay(xvfb_path)
        try:
            env = await xvfb.start()
        except Exception as exc:  # noqa: BLE001
            log.error("Xvfb could not start (%s); Chromium runs headless", exc)
            xvfb, display = None, DisplayPlan("headless", f"Xvfb could not start: {exc}")
    log.info("Chromium runs %s (%s)", "headless" if display.headless else "headed", display.reason)
    return display, xvfb, env


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
