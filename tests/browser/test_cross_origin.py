"""A real browser on a page of another origin (another localhost port) tries what issue 15
found possible: read a chat, delete every chat, start a completion. Headless Chromium; the
gateway without API keys, at its defaults."""

from __future__ import annotations

import asyncio

import requests

from qwenproxy.runtime.chromium import launch
from tests.fakes.server import BackgroundServer
from tests.helpers import requires_chromium

pytestmark = requires_chromium

ATTACK = """async (gateway, chatId) => {
    const out = {};
    const attempt = async (name, url, init) => {
        try {
            const r = await fetch(gateway + url, init);
            out[name] = r.type === "opaque" ? "opaque" : "read " + r.status + " " + (await r.text()).slice(0, 80);
        } catch (e) {
            out[name] = "blocked: " + e.name;
        }
    };
    const plain = {"Content-Type": "text/plain"};
    await attempt("read_chat", "/api/chats/" + chatId, {});
    await attempt("list_chats", "/api/chats", {});
    await attempt("cleanup_text_plain", "/api/chats/cleanup", {method: "POST", headers: plain, body: '{"all":true}'});
    await attempt("cleanup_no_cors", "/api/chats/cleanup",
                  {method: "POST", mode: "no-cors", headers: plain, body: '{"all":true}'});
    await attempt("cleanup_json", "/api/chats/cleanup",
                  {method: "POST", headers: {"Content-Type": "application/json"}, body: '{"all":true}'});
    await attempt("completion", "/api/chat/completions",
                  {method: "POST", mode: "no-cors", headers: plain,
                   body: '{"messages":[{"role":"user","content":"spend a quota"}]}'});
    const form = new FormData();
    form.append("file", new Blob(["hello"], {type: "text/plain"}), "a.txt");
    await attempt("upload", "/api/files/upload", {method: "POST", mode: "no-cors", body: form});
    return out;
}"""


def _page(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/html")])
    return [b"<!doctype html><title>some other site</title><p>nothing to see</p>"]


async def _attack(page_url: str, gateway: str, chat_id: str) -> dict[str, str]:
    chromium = await launch()
    try:
        page = await chromium.browser.newPage()
        await page.goto(page_url, {"waitUntil": "load", "timeout": 20000})
        return await page.evaluate(ATTACK, gateway, chat_id)
    finally:
        await chromium.close()


def test_a_page_on_another_origin_can_neither_read_nor_act(live_server, fake_qwen) -> None:
    chat = requests.post(
        live_server.url + "/api/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10
    ).json()["chatId"]
    other = BackgroundServer(_page, name="other-site")  # another port: another origin
    try:
        found = asyncio.run(asyncio.wait_for(_attack(other.url + "/", live_server.url, chat), timeout=60))
    finally:
        other.stop()
    for name in ("read_chat", "list_chats", "cleanup_text_plain", "cleanup_json"):
        assert found[name].startswith("blocked"), (name, found[name])
    for name in ("cleanup_no_cors", "completion", "upload"):  # sent, but unreadable and refused
        assert found[name] == "opaque", (name, found[name])
    history = requests.get(f"{live_server.url}/api/chats/{chat}", timeout=10)
    assert history.status_code == 200, "the page deleted the chats"
    completions = [r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]
    assert len(completions) == 1, "the page started a completion"
    assert not fake_qwen.files, "the page uploaded a file"
