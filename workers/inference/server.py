"""The worker's HTTP server: routes, NDJSON streaming, load status, ``main``.

Every request has its own thread (``ThreadingHTTPServer``) and only waits on its request's event
queue, which the scheduler thread fills; so ``/health`` always answers, and a client that does
not read never holds the batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import select
import signal
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .launch import ensure_requirements
from .protocol import GenerationError, SamplingParams
from .scheduler import POLL_SECONDS, QueueFull, Request, Scheduler

logger = logging.getLogger("workers.inference")

# the seed's qwen_server.py defaults for its blocking /generate endpoint
SEED_GENERATE_DEFAULTS = {"max_tokens": 4096, "temperature": 0.22, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1}

QUEUED_NOTICE_SECONDS = 5.0  # a queued stream gets a "queued" line this often (keeps reads alive)


class WorkerState:
    """What the handlers share: the model and its scheduler once loaded, and the load status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = None  # workers.inference.model.LocalModel once loaded
        self.scheduler: Scheduler | None = None
        self.status = "loading"
        self.stage = "starting"
        self.error: str | None = None
        self.started = time.monotonic()
        self.name = args.name or Path(args.model).expanduser().resolve().name

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    def health(self) -> dict[str, Any]:
        sched = self.scheduler
        body: dict[str, Any] = {
            "status": self.status,
            "model_loaded": self.ready,
            "model": self.name,
            "queue": sched.queued if sched else 0,
            "active": sched.active if sched else 0,
            "parallel": sched.max_batch if sched else self.args.parallel,
            "max_queue": self.args.max_queue,
            "stage": self.stage,
            "cache": self.args.cache_type,
            "uptime": round(time.monotonic() - self.started, 1),
            "served": sched.served if sched else 0,
            "pid": os.getpid(),
        }
        if self.error:
            body["error"] = self.error
        if self.model is not None:
            from .model import memory_stats

            body.update(
                max_seq_len=self.model.max_seq_len,
                device=self.model.device,
                dtype=self.model.dtype,
                kernel=self.model.kernel,
                kernel_detail=self.model.kernels.summary() if self.model.kernels else None,
                memory=memory_stats(),
            )
            if sched is not None:
                body["batch"] = sched.stats()
        return body

    def load(self) -> None:
        """Load the model (in a thread, so /health answers "loading" meanwhile)."""
        args = self.args
        started = time.monotonic()
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(5.0):
                logger.info("still loading %s: %s (%.0f s)", self.name, self.stage, time.monotonic() - started)

        threading.Thread(target=heartbeat, name="load-heartbeat", daemon=True).start()

        def progress(stage: str) -> None:
            self.stage = stage
            logger.info("loading %s: %s (%.1f s)", self.name, stage, time.monotonic() - started)

        try:
            if args.ensure_deps:
                progress("installing requirements-local.txt (first start)")
                ensure_requirements()
            progress("importing torch and auto-gptq")
            import torch

            if args.threads:
                torch.set_num_threads(args.threads)
            from .model import LocalModel

            model = LocalModel(
                args.model,
                device=args.device,
                dtype=args.dtype,
                cache=args.cache_type,
                max_seq_len=args.max_seq_len,
                q4_group_size=args.q4_group_size,
                q4_residual=args.q4_residual,
                kernel=args.kernel,
                max_batch=args.parallel,
                cuda_graphs=not args.no_cuda_graphs,
                lm_head=args.lm_head,
            )
            model.load(progress)
            if not args.no_warmup:
                progress("warm-up")
                model.warmup()
            chunk = args.prefill_chunk or (512 if str(model.device).startswith("cuda") else 64)
            scheduler = Scheduler(model, max_batch=args.parallel, max_queue=args.max_queue, prefill_chunk=chunk)
            scheduler.start()
            self.model, self.scheduler = model, scheduler
            self.stage = "ready"
            self.status = "ok"
            logger.info(
                "model %s ready in %.1f s: device=%s dtype=%s cache=%s max_seq_len=%d batch=%d queue=%d kernel=%s",
                self.name, time.monotonic() - started, model.device, model.dtype, model.cache,
                model.max_seq_len, scheduler.max_batch, scheduler.max_queue, model.kernel,
            )  # fmt: skip
        except Exception as exc:
            logger.exception("loading %s failed", self.name)
            self.error = f"{type(exc).__name__}: {exc}"
            self.stage = "failed"
            self.status = "error"
        finally:
            done.set()


def client_gone(sock: socket.socket) -> bool:
    """True when the peer closed the connection (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True


class ClientGone(Exception):
    """The client went away while we were writing to it."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qwenproxy-local-worker/1"

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # one small write per token: without this, Nagle + delayed ACK add ~40 ms each
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def state(self) -> WorkerState:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def address_string(self) -> str:
        addr = self.client_address
        return str(addr[0]) if isinstance(addr, tuple) and addr else "unix"

    # -- plumbing --------------------------------------------------------------------------

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_json(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, json.JSONDecodeError):
            self._send_json(400, {"error": {"message": "Body must be JSON", "code": "invalid_request"}})
            return None
        if not isinstance(body, dict):
            self._send_json(400, {"error": {"message": "Body must be a JSON object", "code": "invalid_request"}})
            return None
        return body

    def _write_line(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        except OSError as exc:
            raise ClientGone() from exc

    def _gone(self) -> bool:
        return client_gone(self.connection)

    # -- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/health":
            health = self.state.health()
            self._send_json(200 if self.state.ready else 503, health)
        elif path in ("/v1/models", "/models"):
            card = {"id": self.state.name, "object": "model", "owned_by": "local"}
            self._send_json(200, {"object": "list", "data": [card]})
        else:
            self._send_json(404, {"error": {"message": f"No route {path}", "code": "not_found"}})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/v1/stream":
            self._stream()
        elif path == "/generate":
            self._generate()
        else:
            self._send_json(404, {"error": {"message": f"No route {path}", "code": "not_found"}})

    def _prepare(self, body: dict[str, Any], defaults: dict[str, Any], system: str | None, rid: str) -> Request:
        params = SamplingParams.from_dict(body, defaults)
        prompt = self.state.model.build_prompt(body.get("messages"), system, params.max_tokens)
        return Request(prompt=prompt, params=params, id=rid)

    def _busy(self, full: QueueFull, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", str(full.retry_after))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _follow(
        self, request: Request, on_text: Callable[[str], None], on_queued: Callable[[int], None] | None = None
    ) -> tuple[str, int]:
        """Relay the request's events until its end; returns (finish_reason, completion_tokens).

        Polls the client meanwhile: when it has gone the request is cancelled (the batch drops it
        at its next token) and the rest of its text is discarded.
        """
        gone = False
        last_notice = 0.0
        while True:
            try:
                event = request.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if gone:
                    continue
                if self._gone():
                    gone = True
                    request.cancel()
                elif on_queued is not None and request.state == "queued":
                    now = time.monotonic()
                    if now - last_notice >= QUEUED_NOTICE_SECONDS:
                        last_notice = now
                        try:
                            on_queued(self.state.scheduler.position(request))
                        except ClientGone:
                            gone = True
                            request.cancel()
                continue
            kind = event[0]
            if kind == "text":
                if gone:
                    continue
                try:
                    on_text(event[1])
                except ClientGone:
                    gone = True
                    request.cancel()
                    continue
                if self._gone():
                    gone = True
                    request.cancel()
            elif kind == "end":
                return event[1], event[2]
            else:
                raise RuntimeError(event[1])

    def _stream(self) -> None:
        state = self.state
        body = self._read_json()
        if body is None:
            return
        if not state.ready:
            msg = "Model is still loading" if state.status == "loading" else f"Model failed to load: {state.error}"
            self._send_json(503, {"error": {"message": msg, "code": state.status}})
            return
        rid = str(body.get("id") or f"local-{uuid.uuid4().hex[:24]}")
        try:
            request = self._prepare(body, {}, body.get("system"), rid)
            state.scheduler.submit(request)
        except GenerationError as exc:
            self._send_json(exc.status, {"error": {"message": str(exc), "code": exc.code}})
            return
        except QueueFull as full:
            logger.info("%s: refused, %d running and %d waiting", rid, state.scheduler.active, state.scheduler.queued)
            self._busy(full, {"error": {"message": str(full), "code": "queue_full"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        prompt = request.prompt
        n_prompt = len(prompt.ids)
        try:
            self._write_line(
                {
                    "type": "start",
                    "id": rid,
                    "model": state.name,
                    "prompt_tokens": n_prompt,
                    "max_tokens": prompt.max_new_tokens,
                    "dropped_messages": prompt.dropped_messages,
                }
            )
        except ClientGone:
            request.cancel()
            self.close_connection = True
            return
        try:
            reason, n_out = self._follow(
                request,
                lambda text: self._write_line({"type": "text", "text": text}),
                lambda position: self._write_line({"type": "queued", "position": position}),
            )
            seconds = (request.finished or time.monotonic()) - (request.started or request.submitted)
            logger.info(
                "%s: %d prompt + %d completion tokens in %.2f s (%.1f tok/s), %s",
                rid, n_prompt, n_out, seconds, n_out / seconds if seconds else 0.0, reason,
            )  # fmt: skip
            if reason == "cancelled":
                if request.started is None:
                    logger.info("%s: client left while queued", rid)
                self.close_connection = True
                return
            self._write_line(
                {
                    "type": "end",
                    "finish_reason": reason,
                    "prompt_tokens": n_prompt,
                    "completion_tokens": n_out,
                    "generation_time": round(seconds, 4),
                }
            )
            self.wfile.write(b"0\r\n\r\n")
        except ClientGone:
            request.cancel()
            self.close_connection = True
        except Exception as exc:
            request.cancel()
            logger.error("%s: generation failed: %s", rid, exc)
            try:
                self._write_line({"type": "error", "message": str(exc)})
                self.wfile.write(b"0\r\n\r\n")
            except (ClientGone, OSError):
                self.close_connection = True

    def _generate(self) -> None:
        """The seed's blocking endpoint, same JSON in and out as its qwen_server.py."""
        state = self.state
        body = self._read_json()
        if body is None:
            return
        if not state.ready:
            self._send_json(503, {"detail": "Model is still loading"})
            return
        try:
            request = self._prepare(
                body, SEED_GENERATE_DEFAULTS, body.get("system_prompt"), f"gen-{uuid.uuid4().hex[:24]}"
            )
            state.scheduler.submit(request)
        except GenerationError as exc:
            self._send_json(exc.status, {"detail": str(exc)})
            return
        except QueueFull as full:
            self._busy(full, {"detail": str(full)})
            return
        parts: list[str] = []
        try:
            reason, n_out = self._follow(request, parts.append)
        except Exception as exc:
            logger.error("generation failed: %s", exc)
            self._send_json(500, {"detail": f"Generation error: {exc}"})
            return
        if reason == "cancelled":
            self.close_connection = True
            return
        seconds = (request.finished or time.monotonic()) - (request.started or request.submitted)
        self._send_json(
            200, {"response": "".join(parts), "generation_time": round(seconds, 4), "tokens_generated": n_out}
        )


class WorkerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: WorkerState) -> None:
        self.state = state
        super().__init__(address, Handler)


class WorkerUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, state: WorkerState) -> None:
        self.state = state
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a killed worker
        super().__init__(path, Handler)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workers.inference", description="Local GPTQ Qwen2.5-Coder worker")
    p.add_argument("-m", "--model", "--model_dir", dest="model", required=True, help="checkpoint folder")
    p.add_argument(
        "-cache",
        "--cache_type",
        dest="cache_type",
        choices=["normal", "q4"],
        default="normal",
        help="KV cache: normal, or q4 = 4-bit HQQ-quantized (transformers QuantizedCache)",
    )
    p.add_argument(
        "-l",
        "--max_seq_len",
        dest="max_seq_len",
        type=int,
        default=None,
        help="context window; prompts are cut from the oldest turns to fit (default: model config)",
    )
    p.add_argument("-p", "--port", type=int, default=8001)
    p.add_argument("-host", "--host", default="127.0.0.1")
    p.add_argument("--socket", help="serve on this Unix socket instead of TCP")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--parallel", type=int, default=4, help="sequences decoded together in one batch")
    p.add_argument(
        "--max-queue", type=int, default=16, help="requests waiting (FIFO) beyond the batch; more get 503 + Retry-After"
    )
    p.add_argument("--prefill-chunk", type=int, default=0, help="prompt tokens per step (0: 64 on CPU, 512 on CUDA)")
    p.add_argument(
        "--kernel",
        default="auto",
        choices=["auto", "gptq"],
        help="auto: torch int4 kernels; gptq: auto-gptq QuantLinear",
    )
    p.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA")
    p.add_argument(
        "--lm-head", default="bf16", choices=["bf16", "int8"], help="int8: per-row int8 output layer (CPU, ~2x faster)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--name", help="model name to report (default: the folder's name)")
    p.add_argument("--q4-group-size", type=int, default=64)
    p.add_argument("--q4-residual", type=int, default=128, help="newest tokens kept unquantized in -cache q4")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--ensure-deps", action="store_true", help="pip-install requirements-local.txt if needed")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )
    # the worker never downloads: the checkpoint is a local folder
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    state = WorkerState(args)
    if args.socket:
        server: socketserver.BaseServer = WorkerUnixServer(args.socket, state)
        where = f"unix:{args.socket}"
    else:
        server = WorkerHTTPServer((args.host, args.port), state)
        where = f"http://{args.host}:{server.server_address[1]}"
    logger.info("worker listening on %s (pid %d); loading %s", where, os.getpid(), args.model)
    threading.Thread(target=state.load, name="load", daemon=True).start()

    def stop(signum: int, frame: Any) -> None:
        logger.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        if state.scheduler is not None:
            state.scheduler.stop()
        server.server_close()
        if args.socket and os.path.exists(args.socket):
            os.unlink(args.socket)
