"""A browser pool job as the gateway posts it (2026 §2): the fetch options made from it."""

from __future__ import annotations

import pytest

from workers.browser_pool.jobs import JobError, parse_job
from workers.browser_pool.settings import Settings

ORIGIN = "https://chat.qwen.ai"


def job(**spec):
    return parse_job({"method": "POST", "url": ORIGIN + "/api/v2/chats/new", "body": "{}", **spec}, ORIGIN, 30.0)


def test_the_token_comes_from_the_job_and_no_authorization_is_made_up() -> None:
    made = job(headers={"source": "web", "bx-ua": "x", "version": "0.2.1"}, token="tok", page_headers={"version": "9"})
    assert made.token == "tok" and made.page_headers == {"version": "9"}  # page_headers win over headers
    init = made.fetch_init(ORIGIN)
    assert init["headers"] == {"source": "web"}  # version is the page's, bx-* the page script's
    made.header_auth = True  # the token is not in the profile's cookie (no account, setCookie failed)
    assert made.fetch_init(ORIGIN)["headers"]["Authorization"] == "Bearer tok"


def test_an_older_gateways_job_still_works() -> None:
    made = job(headers={"Authorization": "Bearer old", "version": "0.2.63"})
    assert made.token == "old" and made.page_headers == {"version": "0.2.63"}
    assert made.fetch_init(ORIGIN)["headers"] == {"Authorization": "Bearer old"}  # sent as it came


def test_bad_page_headers_are_a_400() -> None:
    with pytest.raises(JobError) as info:
        job(page_headers=["version"])
    assert info.value.status == 400


def test_where_the_page_keeps_its_version_is_a_setting(tmp_path) -> None:
    config = {
        "QWEN_BASE_URL": ORIGIN,
        "SESSION_DIR": str(tmp_path),
        "BROWSER_POOL_SOCKET": str(tmp_path / "s"),
        "BROWSER_POOL_SIZE": 1,
        "BROWSER_PAGE_JOBS": 1,
        "BROWSER_MAX_BROWSERS": 1,
        "BROWSER_QUEUE_MAX": 1,
        "BROWSER_QUEUE_TIMEOUT": 1,
        "BROWSER_DRAIN_TIMEOUT": 1,
        "BROWSER_WATCHDOG_SECONDS": 1,
        "BROWSER_ANTIBOT_WAIT_S": 1,
        "QWEN_READ_TIMEOUT": 1,
    }
    assert Settings.from_config({**config, "BROWSER_PAGE_VERSION_PATH": "a.b"}).page_owned_paths == {"version": "a.b"}
    assert Settings.from_config({**config, "BROWSER_PAGE_VERSION_PATH": ""}).page_owned_paths == {}
