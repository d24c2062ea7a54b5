"""The test suite's fake chat.qwen.ai, served by gevent so that it holds thousands of streams.

``python -m bench.fake_upstream --port 0 --chunk-delay 0`` prints one JSON line
``{"url", "token"}`` and serves until killed. Benchmarks only (loopback).

For the side-by-side with other proxies (``bench.overhead --litellm``) the same server also
answers ``POST /v1/chat/completions`` in the OpenAI format, with the same words the Qwen
route streams for ``words:N`` (one SSE event per token, usage at the end), so an
OpenAI-speaking proxy can be measured against the same upstream in the same run.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from tests.fakes.qwen_web import FakeQwen  # noqa: E402

_WORDS = re.compile(r"words:(\d+)")


def _answer(messages: list[dict[str, Any]]) -> list[str]:
    text = str(next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), ""))
    found = _WORDS.search(text)
    count = int(found.group(1)) if found else 1
    return [("" if i == 1 else " ") + f"w{i}" for i in range(1, count + 1)]


def openai_app(delay: float) -> Callable[..., Any]:
    """``POST /v1/chat/completions`` (and ``GET /v1/models``) as an OpenAI-compatible server."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"].rstrip("/") == "/v1/models":
            body = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "bench"}]})
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body.encode()]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request = json.loads(environ["wsgi.input"].read(length) or b"{}")
        tokens = _answer(request.get("messages") or [])
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), str(request.get("model") or "fake")
        usage = {"prompt_tokens": 12, "completion_tokens": len(tokens), "total_tokens": 12 + len(tokens)}
        if not request.get("stream"):
            body = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        def events() -> Iterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            for token in tokens:
                if delay:
                    gevent.sleep(delay)
                yield chunk({"content": token})
            yield chunk({}, "stop")
            if (request.get("stream_options") or {}).get("include_usage"):
                payload = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield b"data: " + json.dumps(payload).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return events()

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fake = FakeQwen(chunk_delay=args.chunk_delay)
    fake.captcha_body_limit = None
    openai = openai_app(args.chunk_delay)

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["PATH_INFO"].startswith("/v1/"):
            return openai(environ, start_response)
        return fake._wsgi(environ, start_response)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gunicorn does: no 40 ms stalls
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    server = WSGIServer(listener, wsgi, log=None, error_log=None, spawn=Pool(20000))
    server.start()
    fake.url = f"http://127.0.0.1:{server.server_port}"
    print(json.dumps({"url": fake.url, "token": fake.make_token()}), flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
