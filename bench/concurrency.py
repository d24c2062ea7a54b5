"""How many simultaneous SSE streams one gevent worker holds, and its memory per idle stream.

    .venv/bin/python -m bench.concurrency [--steps 250,500,1000,1500,2000,2500] [--workers 1]

The fake upstream answers ``response.created`` and then stays silent (an idle stream: the
gateway has sent the role chunk and waits, with a ``: ping`` every PING_INTERVAL). Streams are
opened in steps; after each step the table shows how many are open, how many failed, the
worker's RSS and the latency of ``/health/live`` on a fresh connection while they are held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.common import Fake, Gateway, machine, percentile, raise_fd_limit

REQUEST = (
    "POST /api/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)


class Stream:
    """One client connection holding an SSE stream open."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, host: str, port: int, timeout: float) -> None:
        body = json.dumps({"stream": True, "messages": [{"role": "user", "content": "hold"}]})
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        self.writer = writer
        writer.write(REQUEST.format(length=len(body), body=body).encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        first = await asyncio.wait_for(reader.readuntil(b"\n\n"), timeout)  # the role chunk
        if b"data: " not in first:
            raise RuntimeError(f"no first chunk: {first[:80]!r}")
        self.reader = reader

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def health_latency(host: str, port: int, tries: int = 20) -> float:
    """p50 ms of GET /health/live on fresh connections."""
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50)


async def run(gw: Gateway, steps: list[int], open_concurrency: int, timeout: float) -> list[dict]:
    host, port = "127.0.0.1", gw.port
    streams: list[Stream] = []
    rows = []
    baseline = gw.rss()
    errors: list[str] = []
    gate = asyncio.Semaphore(open_concurrency)

    async def open_one() -> None:
        async with gate:
            s = Stream()
            try:
                await s.open(host, port, timeout)
                streams.append(s)
            except Exception as exc:
                s.close()
                errors.append(f"{type(exc).__name__}: {exc}")

    for target in steps:
        started = time.perf_counter()
        await asyncio.gather(*(open_one() for _ in range(target - len(streams) - len(errors))))
        opened_in = time.perf_counter() - started
        await asyncio.sleep(1.0)
        rss = gw.rss()
        rows.append(
            {
                "target": target,
                "open": len(streams),
                "errors": len(errors),
                "rss_mib": rss / 2**20,
                "per_stream_kib": (rss - baseline) / max(1, len(streams)) / 1024,
                "health_ms": await health_latency(host, port),
                "open_s": opened_in,
            }
        )
        if errors:
            break
    for s in streams:
        s.close()
    return rows, baseline, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="250,500,1000,1500,2000,2500")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--open-concurrency", type=int, default=50, help="streams being opened at once")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    raise_fd_limit()
    fake = Fake(chunk_delay=3600)  # response.created, then silence
    gw = Gateway(fake, workers=args.workers, WORKER_CONNECTIONS="10000")
    try:
        steps = [int(s) for s in args.steps.split(",")]
        rows, baseline, errors = asyncio.run(run(gw, steps, args.open_concurrency, args.timeout))
        time.sleep(2)
        alive = gw.proc.poll() is None
    finally:
        gw.stop()
        fake.stop()
    print(
        f"# {time.strftime('%Y-%m-%d')} · {machine()} · gunicorn {args.workers} gevent worker(s), "
        f"idle SSE streams (the upstream is silent after response.created); worker RSS at rest "
        f"{baseline / 2**20:.1f} MiB"
    )
    print("| streams asked | open | errors | worker RSS MiB | RSS per stream KiB | /health/live p50 ms | opened in s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['target']} | {r['open']} | {r['errors']} | {r['rss_mib']:.1f} | {r['per_stream_kib']:.1f} "
            f"| {r['health_ms']:.1f} | {r['open_s']:.1f} |"
        )
    if errors:
        print(f"first error: {errors[0]}")
    print(f"gateway still running after the streams closed: {alive}")


if __name__ == "__main__":
    main()
