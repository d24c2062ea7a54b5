"""Guest mode through the browser pool (2026 §5), as a fresh install runs it: no account,
``QWEN_TRANSPORT=browser``; the fake's anti-bot mode refuses anything but a page's fetch.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qwenproxy import create_app
from qwenproxy.accounts.pool import GUEST_ID
from tests.browser.test_browser_pool import PoolProcess, alive, wait_until
from tests.conftest import app_config
from tests.fakes.qwen_web import FakeQwen
from tests.helpers import requires_chromium

pytest.importorskip("pyppeteer")


@pytest.fixture
def guest_site() -> Iterator[FakeQwen]:
    server = FakeQwen().use_2026_site()  # the 2026 models and the strict 2.1 body check
    server.require_token_cookie = True
    server.antibot = True  # only a fetch made inside the site's page passes
    server.guest_mode = True
    server.baxia_ready_after = 0.0
    server.start()
    try:
        yield server
    finally:
        server.stop()


@requires_chromium
def test_a_fresh_install_chats_as_a_guest_through_the_browser_pool(tmp_path, guest_site) -> None:
    pool = PoolProcess(guest_site.url)
    application = None
    try:
        application = create_app(
            app_config(
                tmp_path,
                guest_site,
                QWEN_TOKEN="",
                QWEN_GUEST="auto",
                QWEN_TRANSPORT="browser",
                BROWSER_POOL_SOCKET=pool.socket,
            )
        )
        client = application.test_client()
        model = guest_site._guest_model_list()[0]
        r = client.post("/api/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["choices"][0]["message"]["content"] == "Echo: hi"
        assert r.headers["X-Upstream-Transport"] == "browser"
        for path in ("/api/v2/chats/new", "/api/v2/chat/completions"):
            sent = [q for q in guest_site.requests if q["path"] == path][-1]
            cookie = sent["headers"].get("cookie", "")
            assert "authorization" not in sent["headers"] and "token=" not in cookie
            assert "cna=" in cookie  # the guest identity the site's page set
            assert sent["json"]["chat_mode"] == "guest"
        # the guest has its own profile in the pool, never an account's
        assert [b["account"] for b in pool.health()["detail"]] == [GUEST_ID]
        assert client.get("/api/status").get_json()["mode"] == "guest"
    finally:
        if application is not None:
            application.extensions["providers"].close()
        pids = pool.chromium_pids()
        pool.stop()
        assert wait_until(lambda: not alive(pids), timeout=10)
