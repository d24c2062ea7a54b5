"""The status page at ``/`` as a browser sees it: Debian's Chromium, headless, a screenshot."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import requests

from qwenproxy.runtime.chromium import launch
from tests.helpers import requires_chromium

pytestmark = requires_chromium


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


async def _visit(url: str, shot: Path) -> dict:
    chromium = await launch(extra_args=["--window-size=1280,900"])
    try:
        page = await chromium.browser.newPage()
        await page.setViewport({"width": 1280, "height": 900})
        response = await page.goto(url, {"waitUntil": "load", "timeout": 20000})
        found = await page.evaluate(
            """() => ({
                title: document.title,
                overall: document.querySelector('#overall').textContent.trim(),
                accounts: document.querySelectorAll('#accounts tr').length - 1,
                requests: document.querySelectorAll('#recent tr').length - 1,
                errors: document.querySelectorAll('#errors tr').length - 1,
                models: document.querySelectorAll('#models code').length,
                refresh: !!document.querySelector('meta[http-equiv=refresh]'),
                headerColor: getComputedStyle(document.querySelector('header')).backgroundColor,
            })"""
        )
        found["status"] = response.status
        await page.screenshot({"path": str(shot), "fullPage": True})
        return found
    finally:
        await chromium.close()


def test_status_page_renders_in_headless_chromium(live_server, tmp_path) -> None:
    ok = requests.post(
        live_server.url + "/api/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10
    )
    assert ok.status_code == 200
    broken = {"Content-Type": "application/json"}
    bad = requests.post(live_server.url + "/api/chat/completions", data=b"{", headers=broken, timeout=10)
    assert bad.status_code == 400
    shot = tmp_path / "status.png"
    found = asyncio.run(asyncio.wait_for(_visit(live_server.url + "/", shot), timeout=60))
    assert found["status"] == 200
    assert found["title"] == "qwenproxy — ready" and found["overall"] == "READY"
    assert found["accounts"] == 1 and found["models"] >= 10
    assert found["requests"] == 2 and found["errors"] == 1
    assert found["refresh"] and found["headerColor"] == "rgb(36, 41, 47)"  # the stylesheet applied
    width, height = _png_size(shot.read_bytes())
    assert 1200 <= width <= 1280 and height >= 900
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
