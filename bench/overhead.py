"""Gateway overhead: the same completions sent straight to the fake upstream and through the
gateway (direct transport), interleaved in one run; optionally beside another checkout of the
gateway and beside the LiteLLM proxy on the same fake.

    .venv/bin/python -m bench.overhead [--requests 300] [--words 20] [--concurrency 20]
                                       [--repeat 3] [--baseline DIR] [--litellm]

"Direct" does exactly what the gateway does upstream for a new chat: ``POST /api/v2/chats/new``
then a streamed ``POST /api/v2/chat/completions``, with the same headers and bodies, read to
the finished event. "Gateway" is ``POST /api/chat/completions`` (so it also stores the chat,
both messages and the request-log row in SQLite), read to its end (``[DONE]`` when streamed).
Three phases: non-stream one at a time, streamed one at a time, ``--concurrency`` streams at
once. Each client task cycles through the targets in turn, so all see the same load.

``--baseline DIR``: a second gateway served from another checkout (e.g. ``git worktree add
/tmp/base main``), measured in the same run. ``--litellm``: the LiteLLM proxy (installed into
its own virtualenv under ``~/.cache/qwenproxy-bench`` when first asked; bench/litellm_side.py)
in front of the same fake's OpenAI-compatible route, against that route called directly.

The machine may be shared: every figure is a median over ``--repeat`` rounds, and only
figures taken side by side in one run should be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from bench.common import Fake, Gateway, free_port, machine, percentile, raise_fd_limit
from qwenproxy.config import load_config
from qwenproxy.qwen.protocol import completion_body, new_chat_body
from qwenproxy.qwen.transport import browser_headers

MODEL = "qwen-max-latest"
FIRST_TOKEN = re.compile(rb'"content": ?" ?w\d')
QWEN_END = b'"status": "finished"'

Call = Callable[[aiohttp.ClientSession, str, bool], Awaitable[tuple[float, float]]]


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


def qwen_direct(fake: Fake, config: dict) -> Call:
    async def call(session: aiohttp.ClientSession, prompt: str, _stream: bool) -> tuple[float, float]:
        """What the gateway does upstream, streamed or not for its client."""
        started = time.perf_counter()
        headers = browser_headers(config, token=fake.token)
        async with session.post(f"{fake.url}/api/v2/chats/new", json=new_chat_body(MODEL), headers=headers) as r:
            chat_id = (await r.json())["data"]["id"]
        body = completion_body(chat_id=chat_id, model=MODEL, content=prompt, parent_id=None, system=None)
        headers = browser_headers(config, token=fake.token, referer_path=f"/c/{chat_id}", stream=True)
        url = f"{fake.url}/api/v2/chat/completions?chat_id={chat_id}"
        async with session.post(url, json=body, headers=headers) as r:
            ttft = await _read_stream(r, started, QWEN_END)
        return time.perf_counter() - started, ttft

    return call


def openai_call(url: str, model: str) -> Call:
    """``POST {url}/chat/completions`` of an OpenAI-compatible server (the gateway, LiteLLM or
    the fake's own route)."""

    async def call(session: aiohttp.ClientSession, prompt: str, stream: bool) -> tuple[float, float]:
        started = time.perf_counter()
        body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}
        async with session.post(f"{url}/chat/completions", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"{url} answered {r.status}: {await r.text()}")
            if stream:
                ttft = await _read_stream(r, started, b"data: [DONE]")
            else:
                answer = await r.json()
                if not answer["choices"][0]["message"]["content"].startswith("w1"):
                    raise RuntimeError(f"unexpected answer {answer!r}")
                ttft = time.perf_counter() - started
        return time.perf_counter() - started, ttft

    return call


async def phase(targets: dict[str, Call], concurrency: int, total: int, prompt: str, stream: bool) -> dict:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    errors: dict[str, int] = dict.fromkeys(targets, 0)
    names = list(targets)
    per_task = max(1, total // concurrency)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def task(i: int) -> None:
            for n in range(per_task):
                shift = (i + n) % len(names)
                for name in names[shift:] + names[:shift]:
                    try:
                        results[name].append(await targets[name](session, prompt, stream))
                    except Exception as exc:
                        errors[name] += 1
                        if errors[name] == 1:
                            print(f"# {name}: {exc}")

        await asyncio.gather(*(task(i) for i in range(concurrency)))
    out = {}
    for name, rows in results.items():
        out[name] = {
            "n": len(rows),
            "errors": errors[name],
            "p50": percentile([r[0] * 1000 for r in rows], 50),
            "p99": percentile([r[0] * 1000 for r in rows], 99),
            "ttft50": percentile([r[1] * 1000 for r in rows], 50),
        }
    return out


PHASES = (("non-stream", False, False), ("streamed", True, False), ("concurrent", True, True))


def run_round(
    targets: dict[str, Call], cpu: dict[str, Callable[[], float]], args: argparse.Namespace
) -> dict[str, dict]:
    prompt = f"words:{args.words}"
    rows = {}
    for name, stream, concurrent in PHASES:
        level = args.concurrency if concurrent else 1
        total = args.requests
        before = {k: f() for k, f in cpu.items()}
        row = asyncio.run(phase(targets, level, max(total, level), prompt, stream))
        for k, f in cpu.items():
            row[k]["cpu_ms"] = (f() - before[k]) * 1000 / max(1, row[k]["n"])
        rows[name] = row
    return rows


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def report(rounds: list[dict[str, dict]], pairs: dict[str, str], args: argparse.Namespace) -> None:
    """Medians over rounds of what each proxy adds to its own direct calls."""

    def added(proxy: str, phase_name: str, key: str = "p50") -> float:
        return median([r[phase_name][proxy][key] - r[phase_name][pairs[proxy]][key] for r in rounds])

    def cpu(proxy: str, phase_name: str) -> float:
        return median([r[phase_name][proxy].get("cpu_ms", float("nan")) for r in rounds])

    proxies = list(pairs)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} · {machine()} · gunicorn 1 gevent worker, SQLite, direct transport; "
        f"{args.words}-token answers, {args.requests} requests of each kind per phase, "
        f"{args.concurrency} concurrent; medians of {len(rounds)} round(s); fake and client on the same machine"
    )
    print("| figure | goal | " + " | ".join(proxies) + " |")
    print("|---|---|" + "---:|" * len(proxies))
    lines = [
        ("non-stream, one at a time: added p50 ms", "≤ 2.5", lambda p: added(p, "non-stream")),
        ("streamed, one at a time: added p50 ms", "≤ 3", lambda p: added(p, "streamed")),
        ("streamed: first token added p50 ms", "", lambda p: added(p, "streamed", "ttft50")),
        ("streamed: proxy CPU ms / request", "≤ 4", lambda p: cpu(p, "streamed")),
        ("non-stream: proxy CPU ms / request", "", lambda p: cpu(p, "non-stream")),
        (f"{args.concurrency} concurrent streams: added p50 ms", "≤ 45", lambda p: added(p, "concurrent")),
        (f"{args.concurrency} concurrent streams: added p99 ms", "", lambda p: added(p, "concurrent", "p99")),
    ]
    for label, goal, fn in lines:
        print(
            f"| {label} | {goal} | "
            + " | ".join(f"{fn(p):+.2f}" if "added" in label else f"{fn(p):.2f}" for p in proxies)
            + " |"
        )
    directs = sorted(set(pairs.values()))
    for d in directs:
        cells = ", ".join(f"{ph} {median([r[ph][d]['p50'] for r in rounds]):.2f}" for ph, _, _ in PHASES)
        print(f"# {d} itself p50 ms: {cells}")
    errors = {name: sum(r[ph][name]["errors"] for r in rounds for ph, _, _ in PHASES) for name in rounds[0]["streamed"]}
    print(f"# errors: {errors}")
    if "litellm" in pairs and "gateway" in pairs:
        for ph, label in (("streamed", "streamed"), ("non-stream", "non-stream"), ("concurrent", "concurrent")):
            g, lt = added("gateway", ph), added("litellm", ph)
            ratio = lt / g if g > 0 else float("nan")
            print(f"# LiteLLM / gateway, {label} added p50: {lt:.2f} / {g:.2f} = {ratio:.1f}x")
        gc, lc = cpu("gateway", "streamed"), cpu("litellm", "streamed")
        print(f"# LiteLLM / gateway, CPU per streamed request: {lc:.2f} / {gc:.2f} = {lc / gc:.1f}x")
    if "baseline" in pairs:
        for ph, _, _ in PHASES:
            print(f"# baseline - gateway, {ph} added p50: {added('baseline', ph) - added('gateway', ph):+.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests of each kind per phase")
    parser.add_argument("--words", type=int, default=20, help="tokens in each answer")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--baseline", type=Path, help="another checkout served beside this one")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="another gateway from this checkout with other settings, e.g. pg:DATABASE_SHARED_CONNECTION=false",
    )
    parser.add_argument("--litellm", action="store_true", help="also measure the LiteLLM proxy")
    parser.add_argument("--litellm-version", default=None)
    parser.add_argument("--py-spy", type=Path, help="record the gateway worker's stacks here (collapsed)")
    args = parser.parse_args()
    raise_fd_limit()
    fake = Fake()
    started = []
    try:
        config = load_config({"QWEN_BASE_URL": fake.url}, environ={}, env_file="")
        gw = Gateway(fake)
        started.append(gw)
        targets: dict[str, Call] = {"direct": qwen_direct(fake, config), "gateway": openai_call(gw.url + "/api", MODEL)}
        cpu: dict[str, Callable[[], float]] = {"gateway": gw.cpu_seconds}
        pairs = {"gateway": "direct"}
        if args.baseline:
            base = Gateway(fake, root=args.baseline.resolve())
            started.append(base)
            targets["baseline"] = openai_call(base.url + "/api", MODEL)
            cpu["baseline"] = base.cpu_seconds
            pairs["baseline"] = "direct"
        for spec in args.variant:
            name, _, settings = spec.partition(":")
            env = dict(item.split("=", 1) for item in settings.split(",") if "=" in item)
            variant = Gateway(fake, **env)
            started.append(variant)
            targets[name] = openai_call(variant.url + "/api", MODEL)
            cpu[name] = variant.cpu_seconds
            pairs[name] = "direct"
        if args.litellm:
            from bench.litellm_side import DEFAULT_VERSION, LiteLLM, ensure_litellm

            lite = LiteLLM(ensure_litellm(args.litellm_version or DEFAULT_VERSION), fake.url, free_port())
            started.append(lite)
            targets["openai-direct"] = openai_call(fake.url + "/v1", "fake")
            targets["litellm"] = openai_call(lite.url + "/v1", "fake")
            cpu["litellm"] = lite.cpu_seconds
            pairs["litellm"] = "openai-direct"
        for stream in (False, True):
            asyncio.run(phase(targets, 1, args.warmup, f"words:{args.words}", stream))
        spy = None
        if args.py_spy:
            from bench.profile_summary import py_spy

            spy = subprocess.Popen(
                [
                    str(py_spy()),
                    "record",
                    "--pid",
                    str(gw.worker_pids()[0]),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(args.py_spy),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        rounds = []
        for n in range(args.repeat):
            rounds.append(run_round(targets, cpu, args))
            print(f"# round {n + 1}/{args.repeat} done", flush=True)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
    finally:
        for proc in reversed(started):
            proc.stop()
        fake.stop()
    report(rounds, pairs, args)
    if args.py_spy:
        from bench.profile_summary import summarize

        print("| gateway worker: concern | share of CPU samples |\n|---|---:|")
        for label, share in summarize(args.py_spy):
            print(f"| {label} | {share:.1f} % |")


if __name__ == "__main__":
    main()
