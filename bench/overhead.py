"""Gateway overhead: the same streamed completions sent straight to the fake upstream and
through the gateway (direct transport), interleaved in one run.

    .venv/bin/python -m bench.overhead [--levels 1,50,200] [--requests 400] [--words 20]

"Direct" does exactly what the gateway does upstream for a new chat: ``POST /api/v2/chats/new``
then a streamed ``POST /api/v2/chat/completions``, with the same headers and bodies, read to
the finished event. "Gateway" is ``POST /api/chat/completions`` with ``stream: true`` read to
``[DONE]`` (so it also stores the chat, both messages and the request log row in SQLite).
Each client task alternates direct and gateway requests, so both see the same load. Prints
a table: latency and time to first token, p50/p99, and what the gateway adds.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import aiohttp

from bench.common import Fake, Gateway, machine, percentile, raise_fd_limit
from qwenproxy.config import load_config
from qwenproxy.qwen.protocol import completion_body, new_chat_body
from qwenproxy.qwen.transport import browser_headers

MODEL = "qwen-max-latest"
FIRST_TOKEN = re.compile(rb'"content": ?" ?w\d')


async def _read_stream(response: aiohttp.ClientResponse, started: float, end: bytes) -> float:
    """Read an SSE body to its end marker; returns the time to the first token."""
    ttft = None
    buffer = b""
    async for chunk in response.content.iter_any():
        if ttft is None and FIRST_TOKEN.search(buffer[-64:] + chunk):
            ttft = time.perf_counter() - started
        buffer = (buffer + chunk)[-256:]
        if end in buffer:
            break
    if ttft is None or end not in buffer:
        raise RuntimeError(f"stream ended early: {buffer[-120:]!r}")
    return ttft


async def direct(session: aiohttp.ClientSession, fake: Fake, config: dict, prompt: str) -> tuple[float, float]:
    started = time.perf_counter()
    headers = browser_headers(config, token=fake.token)
    async with session.post(f"{fake.url}/api/v2/chats/new", json=new_chat_body(MODEL), headers=headers) as r:
        chat_id = (await r.json())["data"]["id"]
    body = completion_body(chat_id=chat_id, model=MODEL, content=prompt, parent_id=None, system=None)
    headers = browser_headers(config, token=fake.token, referer_path=f"/c/{chat_id}", stream=True)
    url = f"{fake.url}/api/v2/chat/completions?chat_id={chat_id}"
    async with session.post(url, json=body, headers=headers) as r:
        ttft = await _read_stream(r, started, b'"status": "finished"')
    return time.perf_counter() - started, ttft


async def gateway(session: aiohttp.ClientSession, gw: Gateway, prompt: str) -> tuple[float, float]:
    started = time.perf_counter()
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    async with session.post(f"{gw.url}/api/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"gateway answered {r.status}: {await r.text()}")
        ttft = await _read_stream(r, started, b"data: [DONE]")
    return time.perf_counter() - started, ttft


async def level(fake: Fake, gw: Gateway, config: dict, concurrency: int, total: int, words: int) -> dict:
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "gateway": []}
    errors = 0
    per_task = max(1, total // concurrency)
    prompt = f"words:{words}"
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def task(i: int) -> None:
            nonlocal errors
            for n in range(per_task):
                order = ("direct", "gateway") if (i + n) % 2 == 0 else ("gateway", "direct")
                for kind in order:
                    try:
                        if kind == "direct":
                            results[kind].append(await direct(session, fake, config, prompt))
                        else:
                            results[kind].append(await gateway(session, gw, prompt))
                    except Exception:
                        errors += 1

        await asyncio.gather(*(task(i) for i in range(concurrency)))
    out = {"concurrency": concurrency, "pairs": min(len(results["direct"]), len(results["gateway"])), "errors": errors}
    for kind, rows in results.items():
        lat = [r[0] * 1000 for r in rows]
        ttft = [r[1] * 1000 for r in rows]
        out[kind] = {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "ttft50": percentile(ttft, 50),
                     "ttft99": percentile(ttft, 99)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,50,200")
    parser.add_argument("--requests", type=int, default=400, help="requests of each kind per level")
    parser.add_argument("--words", type=int, default=20, help="tokens in each answer")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn gevent workers")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    raise_fd_limit()
    fake = Fake()
    gw = Gateway(fake, workers=args.workers)
    config = load_config({"QWEN_BASE_URL": fake.url}, environ={}, env_file="")
    rows = []
    try:
        asyncio.run(level(fake, gw, config, 1, args.warmup, args.words))
        for c in args.levels.split(","):
            before = gw.cpu_seconds()
            row = asyncio.run(level(fake, gw, config, int(c), max(args.requests, int(c)), args.words))
            row["cpu_ms"] = (gw.cpu_seconds() - before) * 1000 / max(1, row["pairs"])
            rows.append(row)
    finally:
        gw.stop()
        fake.stop()
    print(f"# {time.strftime('%Y-%m-%d')} · {machine()} · gunicorn {args.workers} gevent worker(s), "
          f"{args.words}-token streamed answers, SQLite; the fake upstream and the client on the same machine")
    print("| streams | pairs | direct p50 / p99 ms | gateway p50 / p99 ms | added p50 / p99 ms "
          "| TTFT added p50 / p99 ms | gateway CPU ms/request | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d, g = r["direct"], r["gateway"]
        print(
            f"| {r['concurrency']} | {r['pairs']} | {d['p50']:.2f} / {d['p99']:.2f} "
            f"| {g['p50']:.2f} / {g['p99']:.2f} "
            f"| {g['p50'] - d['p50']:+.2f} / {g['p99'] - d['p99']:+.2f} "
            f"| {g['ttft50'] - d['ttft50']:+.2f} / {g['ttft99'] - d['ttft99']:+.2f} "
            f"| {r['cpu_ms']:.2f} | {r['errors']} |"
        )


if __name__ == "__main__":
    main()
