"""The test suite's fake chat.qwen.ai, served by gevent so that it holds thousands of streams.

``python -m bench.fake_upstream --port 0 --chunk-delay 0`` prints one JSON line
``{"url", "token"}`` and serves until killed. Benchmarks only (loopback).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from tests.fakes.qwen_web import FakeQwen  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fake = FakeQwen(chunk_delay=args.chunk_delay)
    fake.captcha_body_limit = None
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gunicorn does: no 40 ms stalls
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    server = WSGIServer(listener, fake._wsgi, log=None, error_log=None, spawn=Pool(20000))
    server.start()
    fake.url = f"http://127.0.0.1:{server.server_port}"
    print(json.dumps({"url": fake.url, "token": fake.make_token()}), flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
