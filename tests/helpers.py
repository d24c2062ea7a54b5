"""Small helpers several test modules share: what the fake was sent, a scripted tool-using
model, a client that hangs up, a clock tests move, a maker of several apps."""

from __future__ import annotations

import json
import re
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask

from qwenproxy import create_app
from qwenproxy.runtime.chromium import find_chrome
from tests.conftest import app_config

COMPLETIONS = "/api/v2/chat/completions"

def chromium_available() -> bool:
    try:
        find_chrome()
        return True
    except FileNotFoundError:
        return False


# the browser tests need Debian's chromium (scripts/setup.sh installs it)
requires_chromium = pytest.mark.skipif(
    not chromium_available(), reason="Chromium is not installed (apt-get install chromium)"
)


# the weather tool of the agent tests, as each client API declares it
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_DESCRIPTION = "Current weather for a city"
ANTHROPIC_WEATHER = {"name": "get_weather", "description": WEATHER_DESCRIPTION, "input_schema": CITY}
CHAT_WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": WEATHER_DESCRIPTION, "parameters": CITY},
}
RESPONSES_WEATHER = {"type": "function", "name": "get_weather", "description": WEATHER_DESCRIPTION, "parameters": CITY}
PARIS_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def completions(fake: Any) -> list[dict]:
    """The JSON bodies of every completions call the fake chat.qwen.ai received, oldest first."""
    return [r["json"] for r in fake.requests if r["path"] == COMPLETIONS]


def weather_script(first: str = PARIS_CALL) -> Callable[[str], str]:
    """A scripted model for the fake's ``answer`` knob: it answers ``first`` (a call of
    ``get_weather``), then, once the turn carries the tool's result, the temperature in it."""

    def answer(text: str) -> str:
        if "Result of get_weather" in text:
            result = text.rsplit("<tool_response>\n", maxsplit=1)[-1]
            temp = json.loads(result.split("\n</tool_response>", maxsplit=1)[0])["temp"]
            return f"It is {temp} degrees in Paris."
        return first

    return answer


def hang_up_after(url: str, body: dict, words: int) -> None:
    """POST a streamed chat, read until ``words`` answer words (``words:N`` answers ``w1 …``)
    arrived, then drop the connection with a RST, like a killed client."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(
        b"POST /api/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while len(re.findall(rb'"content":" ?w\d', received)) < words:
        data = sock.recv(4096)
        assert data, "the server closed the stream early"
        received += data
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Clock:
    """A clock a test moves by hand (``clock.now += 3600``)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class AppMaker:
    """``create_app`` for the several gateways of one test (the same registry, each its own
    process state), with a shared account clock; ``close`` closes their providers."""

    def __init__(self, tmp_path: Path, fake: Any, clock: Clock | None = None, **base: Any) -> None:
        self.tmp_path = tmp_path
        self.fake = fake
        self.clock = clock
        self.base = base
        self.apps: list[Flask] = []

    def __call__(self, **extra: Any) -> Flask:
        config = app_config(self.tmp_path, self.fake, **self.base)
        config.update(extra)
        application = create_app(config)
        if self.clock is not None:
            application.extensions["account_pool"].clock = self.clock
        self.apps.append(application)
        return application

    def close(self) -> None:
        for application in self.apps:
            application.extensions["providers"].close()
