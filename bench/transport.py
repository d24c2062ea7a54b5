"""Direct vs browser transport, end to end through the gateway, against the fake chat.qwen.ai.

    .venv/bin/python bench/transport.py [--words 40] [--delay 0.025] [--levels 1,8,32]

One run starts the fake (anti-bot off, so ``direct`` works too), a browser pool
(``python -m workers.browser_pool``, 1 browser, ``--pages`` pages) and two gateways under
gunicorn (gevent workers): one with ``QWEN_TRANSPORT=direct``, one with ``browser``. For each
concurrency level it runs that many streamed chat completions at once (several rounds for the
small levels) and reports time to first token (first content delta at the client), total time
per stream and throughput. Then it measures the pool's memory: PSS of the pool process and of
its Chromium tree, per page, and the cost of each extra page (a second pool with more pages).
Prints a Markdown table (paste it into docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qwenproxy.qwen.browser_transport import BrowserTransport  # noqa: E402
from tests.fakes.qwen_web import FakeQwen  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN", "BROWSER_", "CHROME_"))}
    env.update(QWENPROXY_ENV_FILE="", LOG_LEVEL="WARNING", **extra)
    return env


def pss_mib(p: psutil.Process) -> float:
    try:
        return p.memory_full_info().pss / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def pool_memory(pid: int) -> dict:
    """PSS (MiB) of a pool process, its Chromium tree, and the renderers (one per page).

    Chromium's crashpad handlers daemonize out of the tree; they are small and left out.
    """
    worker = psutil.Process(pid)
    chromium = [c for c in worker.children(recursive=True) if "chrom" in c.name()]
    renderers = [p for p in chromium if "--type=renderer" in " ".join(p.cmdline())]
    return {
        "worker": pss_mib(worker),
        "chromium": sum(pss_mib(p) for p in chromium),
        "renderers": [pss_mib(p) for p in renderers],
        "processes": len(chromium),
    }


class Pool:
    """A pool started by hand (``python -m workers.browser_pool``)."""

    def __init__(self, base_url: str, pages: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qp-bench-", dir="/tmp"))
        self.socket = str(self.dir / "pool.sock")
        env = clean_env(
            SESSION_DIR=str(self.dir / "session"),
            QWEN_BASE_URL=base_url,
            BROWSER_POOL_SOCKET=self.socket,
            BROWSER_POOL_SIZE=str(pages),
        )
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.browser_pool"], cwd=ROOT, env=env)
        self.transport = BrowserTransport(self.socket)
        deadline = time.time() + 30
        while not self.transport.pool_status().get("running"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the browser pool did not start")
            time.sleep(0.05)

    def warm(self) -> None:
        """Open its browser (the pages load the site) with one small job."""
        from qwenproxy.config import load_config
        from qwenproxy.qwen.client import QwenClient

        base = self.transport.pool_status()["origin"]
        config = load_config({"QWEN_BASE_URL": base, "SESSION_DIR": str(self.dir)}, environ={}, env_file="")
        QwenClient(self.transport, config).list_models(None)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Gateway:
    """``gunicorn -c gunicorn.conf.py app:app``: with ``browser`` its hooks start the pool."""

    def __init__(self, base_url: str, token: str, transport: str, workers: int, pages: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qp-bench-gw-", dir="/tmp"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = clean_env(
            HOST="127.0.0.1",
            PORT=str(self.port),
            WEB_WORKERS=str(workers),
            SESSION_DIR=str(self.dir),
            QWEN_BASE_URL=base_url,
            QWEN_TOKEN=token,
            QWEN_TRANSPORT=transport,
            BROWSER_POOL_SIZE=str(pages),
            BROWSER_QUEUE_TIMEOUT="120",
            API_KEYS_FILE=str(self.dir / "Authorization.txt"),
            MODELS_FILE=str(ROOT / "AvailableModels.txt"),
        )
        self.log = open(self.dir / "gunicorn.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--access-logfile", "/dev/null", "app:app"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while True:
            try:
                status = requests.get(self.url + "/api/status", timeout=2).json()
                if transport == "direct" or status.get("browserPool", {}).get("running"):
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"gunicorn ({transport}) did not start")
            time.sleep(0.1)

    def pool(self) -> dict:
        return requests.get(self.url + "/api/status", timeout=5).json().get("browserPool") or {}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def one_stream(url: str, words: int, out: list, barrier: threading.Barrier) -> None:
    body = {"model": "qwen3-max", "stream": True, "messages": [{"role": "user", "content": f"words:{words}"}]}
    barrier.wait()
    started = time.perf_counter()
    first = None
    ok = False
    served_by = ""
    try:
        with requests.post(url + "/api/chat/completions", json=body, stream=True, timeout=180) as response:
            served_by = response.headers.get("X-Upstream-Transport", "")
            for line in response.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    ok = True
                    break
                event = json.loads(line[6:])
                if first is None and event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                    first = time.perf_counter() - started
                if "error" in event:
                    break
    except requests.RequestException:
        pass
    out.append({"ttft": first, "total": time.perf_counter() - started, "ok": ok and first is not None, "by": served_by})


def run_level(url: str, concurrency: int, rounds: int, words: int) -> dict:
    results: list[dict] = []
    wall = 0.0
    for _ in range(rounds):
        barrier = threading.Barrier(concurrency)
        threads = [threading.Thread(target=one_stream, args=(url, words, results, barrier)) for _ in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall += time.perf_counter() - started
    good = [r for r in results if r["ok"]]
    ttfts = sorted(r["ttft"] * 1000 for r in good)
    totals = sorted(r["total"] * 1000 for r in good)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")

    return {
        "n": len(results),
        "ok": len(good),
        "by": sorted({r["by"] for r in good}),
        "ttft_p50": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_p95": pct(ttfts, 0.95),
        "total_p50": statistics.median(totals) if totals else float("nan"),
        "total_max": max(totals) if totals else float("nan"),
        "streams_per_s": len(good) / wall if wall else 0.0,
        "tokens_per_s": len(good) * words / wall if wall else 0.0,
    }


def chromium_version() -> str:
    try:
        out = subprocess.run(
            ["/usr/bin/chromium", "--version"], check=False, capture_output=True, text=True, timeout=20
        ).stdout
        return out.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=40, help="words per answer (one SSE event each)")
    parser.add_argument("--delay", type=float, default=0.025, help="seconds between the fake's events")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--pages", type=int, default=2, help="pages in the browser pool")
    parser.add_argument("--more-pages", type=int, default=4, help="a second pool with this many pages (cost per page)")
    parser.add_argument("--web-workers", type=int, default=2)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]

    fake = FakeQwen(chunk_delay=args.delay)
    fake.baxia_ready_after = 0.0  # the 2026 site: its anti-bot module is ready at once
    fake.start()
    token = fake.make_token()
    gateways = {
        "direct": Gateway(fake.url, token, "direct", args.web_workers, args.pages),
        "browser": Gateway(fake.url, token, "browser", args.web_workers, args.pages),
    }
    rows = []
    try:
        for gateway in gateways.values():  # warm up: browser launch, model list, connections
            run_level(gateway.url, 2, 1, 3)
        for level in levels:
            rounds = 5 if level == 1 else (3 if level <= 8 else 1)
            for name, gateway in gateways.items():
                result = run_level(gateway.url, level, rounds, args.words)
                rows.append((name, level, result))
                print(f"{name:8} x{level:<3} {json.dumps(result)}", file=sys.stderr, flush=True)
        health = gateways["browser"].pool()
        memory = pool_memory(int(health["pid"]))
    finally:
        for gateway in gateways.values():
            gateway.stop()
    idle = {}
    for pages in sorted({args.pages, args.more_pages} - {0}):
        standalone = Pool(fake.url, pages)  # idle pools, one after the other: the cost of a page
        try:
            standalone.warm()
            time.sleep(1)
            idle[pages] = pool_memory(standalone.proc.pid)
        finally:
            standalone.stop()
    fake.stop()

    mem = psutil.virtual_memory().total / 2**30
    print(
        f"\n_{time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, "
        f"{mem:.0f} GiB, {platform.platform()}, {chromium_version()}, Python {platform.python_version()}; "
        f"fake: {args.words} events {args.delay * 1000:g} ms apart (HTTP/1.1); pool: 1 browser, {args.pages} pages; "
        f"gunicorn -k gevent -w {args.web_workers}._\n"
    )
    print("| transport | concurrent | ok | TTFT p50 | TTFT p95 | total p50 | total max | streams/s | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, level, r in rows:
        print(
            f"| {name} | {level} | {r['ok']}/{r['n']} | {r['ttft_p50']:.0f} ms | {r['ttft_p95']:.0f} ms | "
            f"{r['total_p50']:.0f} ms | {r['total_max']:.0f} ms | {r['streams_per_s']:.1f} | {r['tokens_per_s']:.0f} |"
        )
    print()
    renderers = memory["renderers"]
    print("| pool memory (PSS) | value |")
    print("|---|---|")
    print(f"| pool worker (Python, aiohttp, pyppeteer) | {memory['worker']:.0f} MiB |")
    label = f"Chromium, {args.pages} pages, after the run ({memory['processes']} processes)"
    print(f"| {label} | {memory['chromium']:.0f} MiB |")
    print(f"| per page, whole pool / {args.pages} | {(memory['worker'] + memory['chromium']) / args.pages:.0f} MiB |")
    if renderers:
        print(f"| renderer process per page (mean of {len(renderers)}) | {statistics.mean(renderers):.0f} MiB |")
    for pages, idle_memory in idle.items():
        print(f"| Chromium, {pages} pages, idle pool | {idle_memory['chromium']:.0f} MiB |")
    if len(idle) == 2:
        (low, a), (high, b) = sorted(idle.items())
        print(f"| each extra page ({low} → {high}, idle) | {(b['chromium'] - a['chromium']) / (high - low):.0f} MiB |")
    print(f"\npool after the run: {json.dumps({k: health.get(k) for k in ('served', 'failed', 'restarts')})}")


if __name__ == "__main__":
    main()
