"""The browser pool: Qwen web calls made as ``fetch()`` inside Chromium pages.

Why: chat.qwen.ai guards its API with fingerprint cookies and anti-bot headers that its own
JavaScript adds (``shared/specs/qwen-web.md`` §2.4, §3.0, §9). A ``fetch()`` made inside a
page of the site carries all of them, and the answer is read as it arrives. The site flags
headless browsers (``qwen-web-2026.md`` §4): where Xvfb is installed Chromium runs headed on the
pool's own virtual display (``BROWSER_HEADLESS``), and a freshly loaded page waits for the
site's anti-bot module before its first call (``BROWSER_ANTIBOT_WAIT_S``).

Run it by hand, or let the gateway start and supervise it (``worker_spec``)::

    python -m workers.browser_pool [--socket PATH]

One asyncio process: an aiohttp server on a Unix socket (``BROWSER_POOL_SOCKET``, default
``<SESSION_DIR>/browser_pool.sock``, mode 0600), one Chromium per account profile
(``<SESSION_DIR>/accounts/<id>/``; a shared profile for jobs without an account),
``BROWSER_POOL_SIZE`` pages per browser kept on the ``QWEN_BASE_URL`` origin, and a queue of
jobs waiting for a page (each page runs up to ``BROWSER_PAGE_JOBS`` fetches at once).

Wire protocol (``curl --unix-socket PATH http://pool/health`` works):

- ``GET /health`` -> ``{"status", "browsers", "pages", "queue", "active", "served",
  "failed", "aborted", "restarts", "draining", "display", "detail": [...]}``; 503 while
  draining. ``display``: ``xvfb``, ``display`` (``$DISPLAY``) or ``headless``.
- ``POST /v1/fetch`` with ``{"method", "url", "headers", "body" (JSON-able or null),
  "account_id", "timeout", "token", "page_headers"}`` (``token``: put in the account
  profile's ``token`` cookie; ``page_headers``: fallbacks for headers the page owns, such as
  ``version``) -> 200 and the upstream body, streamed as the page reads it,
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
- ``POST /v1/debug/pages`` ``{"method", "params"}`` (only with ``BROWSER_TEST_HOOKS``, for
  tests) -> one CDP command sent to every page.

Faults (each ends the affected jobs with an error within seconds and relaunches what died):
Chromium crash (``disconnected``, process exit), Chromium hang (a watchdog pings every
``BROWSER_WATCHDOG_SECONDS``; a silent browser is killed), page crash or hang (the page is
replaced), a page navigating away (jobs in it fail; the page is brought back before its next
job), a job timeout. SIGTERM/SIGINT drain: new jobs get 503, running ones may finish for
``BROWSER_DRAIN_TIMEOUT`` s, then Chromium is closed and the process exits. If the parent
(the gateway) dies, the pool exits too; Chromium dies with the pool (PDEATHSIG).

pyppeteer 2.0.0 rules followed here (``browser-pool-findings.md``): Chromium is started by
``qwenproxy.runtime.chromium.launch`` (own process group, PDEATHSIG, DevTools over
``--remote-debugging-pipe`` so no port listens), never by pyppeteer; every CDP event handler
catches everything (one exception kills the connection); every page has an ``error``
listener (pyee raises unhandled ``error`` events); chunks come out through
``Runtime.addBinding`` on a CDP session of our own, never ``page._client``; every wait races
the chunk queue against the ``evaluate`` task and the browser's death.

Modules: ``settings`` (the pool's settings, ``worker_spec`` for the gateway),
``page_scripts`` (the JavaScript run in the pages), ``jobs``, ``display`` (the pool's Xvfb),
``browsers`` (one Chromium per profile and its pages), ``pool`` (the queue, the watchdog,
shutdown), ``server`` (aiohttp on the Unix socket), ``__main__``. This package imports
nothing heavy at import time: the gateway imports ``worker_spec`` from it in the gunicorn
master.
"""

from .settings import worker_spec

__all__ = ["worker_spec"]
