"""The local Qwen2.5-Coder inference worker: a separate process serving a GPTQ model over HTTP.

Run by hand with the seed's flags::

    python -m workers.inference -m PATH [-cache normal|q4] [-l MAX_SEQ_LEN] [-p 8001]

or let the gateway start and supervise it (set ``LOCAL_MODEL_PATH``; see ``worker_spec``).

Why a process of its own: torch and a multi-GB model must never live in a gevent web worker
(one per gunicorn worker, blocking the hub). Why threads here: the seed ran generation inside
an ``async def``, so ``/health`` timed out while it generated. Here every request has its own
thread (``ThreadingHTTPServer``), generation runs in yet another thread, and a fair FIFO queue
hands out ``--parallel`` generation slots, so ``/health`` always answers.

Wire protocol (loopback TCP, or a Unix socket with ``--socket``):

- ``GET /health`` -> ``{"status": "ok"|"loading"|"error", "model_loaded", "model", "queue",
  "active", ...}``; 200 when loaded, 503 otherwise.
- ``POST /generate`` -> the seed's blocking endpoint: ``{"response", "generation_time",
  "tokens_generated"}``.
- ``POST /v1/stream`` -> ``application/x-ndjson``: ``{"type": "start", "id", "prompt_tokens"}``,
  optional ``{"type": "queued", "position"}`` while waiting for a slot, ``{"type": "text",
  "text"}`` per token piece, then ``{"type": "end", "finish_reason", "prompt_tokens",
  "completion_tokens"}`` or ``{"type": "error", "message"}``. Closing the connection cancels
  the generation at the next token.

This module imports no torch at import time (``worker_spec`` is used by the gateway); the model
code lives in ``workers.local_model``.
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
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

logger = logging.getLogger("workers.inference")

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements-local.txt"

# the seed's qwen_server.py defaults for its blocking /generate endpoint
SEED_GENERATE_DEFAULTS = {"max_tokens": 4096, "temperature": 0.22, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1}

POLL_SECONDS = 0.25  # how often a waiting request checks that its client is still there
QUEUED_NOTICE_SECONDS = 5.0  # a queued stream gets a "queued" line this often (keeps reads alive)


class FairScheduler:
    """FIFO admission to ``slots`` concurrent generations; a waiter can be abandoned."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = max(1, slots)
        self._lock = threading.Lock()
        self._waiting: deque[threading.Event] = deque()
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def position(self, ticket: threading.Event) -> int:
        with self._lock:
            try:
                return self._waiting.index(ticket) + 1
            except ValueError:
                return 0

    def acquire(self, keep_waiting: Callable[[threading.Event], bool] = lambda t: True) -> bool:
        """Wait for a slot in arrival order; ``keep_waiting`` is polled and may give up."""
        with self._lock:
            if self._active < self.slots and not self._waiting:
                self._active += 1
                return True
            ticket = threading.Event()
            self._waiting.append(ticket)
        while not ticket.wait(POLL_SECONDS):
            if not keep_waiting(ticket):
                with self._lock:
                    if ticket in self._waiting:
                        self._waiting.remove(ticket)
                        return False
                # granted while we decided to leave: pass the slot on
                self.release()
                return False
        return True

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # the slot moves to the next in line
            else:
                self._active -= 1


class WorkerState:
    """What the handlers share: the model once loaded, the queue, and the load status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = None  # workers.local_model.LocalModel once loaded
        self.status = "loading"
        self.stage = "starting"
        self.error: str | None = None
        self.scheduler = FairScheduler(args.parallel)
        self.started = time.monotonic()
        self.name = args.name or Path(args.model).expanduser().resolve().name
        self.served = 0

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "model_loaded": self.ready,
            "model": self.name,
            "queue": self.scheduler.queued,
            "active": self.scheduler.active,
            "parallel": self.scheduler.slots,
            "stage": self.stage,
            "cache": self.args.cache_type,
            "uptime": round(time.monotonic() - self.started, 1),
            "served": self.served,
            "pid": os.getpid(),
        }
        if self.error:
            body["error"] = self.error
        if self.model is not None:
            from workers.local_model import memory_stats

            body.update(
                max_seq_len=self.model.max_seq_len,
                device=self.model.device,
                dtype=self.model.dtype,
                kernel=self.model.kernel,
                memory=memory_stats(),
            )
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
            from workers.local_model import LocalModel

            model = LocalModel(
                args.model,
                device=args.device,
                dtype=args.dtype,
                cache=args.cache_type,
                max_seq_len=args.max_seq_len,
                q4_group_size=args.q4_group_size,
                q4_residual=args.q4_residual,
            )
            model.load(progress)
            if not args.no_warmup:
                progress("warm-up")
                model.warmup()
            self.model = model
            self.stage = "ready"
            self.status = "ok"
            logger.info(
                "model %s ready in %.1f s: device=%s dtype=%s cache=%s max_seq_len=%d parallel=%d",
                self.name, time.monotonic() - started, model.device, model.dtype, model.cache,
                model.max_seq_len, self.scheduler.slots,
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

    def _prepare(self, body: dict[str, Any], defaults: dict[str, Any], system: str | None):
        from workers.local_model import SamplingParams

        params = SamplingParams.from_dict(body, defaults)
        prompt = self.state.model.build_prompt(body.get("messages"), system, params.max_tokens)
        return params, prompt

    def _run(self, prompt, params, on_text: Callable[[str], None]) -> tuple[str, int, float]:
        """Generate under a slot; returns (finish_reason, completion_tokens, seconds).

        Polls the client while waiting, so a closed connection cancels at the next token.
        """
        model = self.state.model
        cancel = threading.Event()
        gen = model.start(prompt, params, cancel)
        started = time.monotonic()
        try:
            while True:
                try:
                    event = gen.next_event(timeout=POLL_SECONDS)
                except queue.Empty:
                    if not cancel.is_set() and self._gone():
                        cancel.set()
                    continue
                except StopIteration:
                    return gen.finish_reason, gen.streamer.completion_tokens, time.monotonic() - started
                kind = event[0]
                if kind == "text":
                    if cancel.is_set():
                        continue  # draining: the generation stops at the next token
                    try:
                        on_text(event[1])
                    except ClientGone:
                        cancel.set()
                        continue
                    if self._gone():
                        cancel.set()
                elif kind == "end":
                    reason = "cancelled" if cancel.is_set() and event[1] != "stop" else event[1]
                    return reason, event[2], time.monotonic() - started
                else:
                    raise RuntimeError(event[1])
        finally:
            cancel.set()
            gen.wait()

    def _stream(self) -> None:
        from workers.local_model import GenerationError

        state = self.state
        body = self._read_json()
        if body is None:
            return
        if not state.ready:
            msg = "Model is still loading" if state.status == "loading" else f"Model failed to load: {state.error}"
            self._send_json(503, {"error": {"message": msg, "code": state.status}})
            return
        try:
            params, prompt = self._prepare(body, {}, body.get("system"))
        except GenerationError as exc:
            self._send_json(exc.status, {"error": {"message": str(exc), "code": exc.code}})
            return
        rid = str(body.get("id") or f"local-{uuid.uuid4().hex[:24]}")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        n_prompt = len(prompt.ids)
        last_notice = [0.0]

        def keep_waiting(ticket: threading.Event) -> bool:
            if self._gone():
                return False
            now = time.monotonic()
            if now - last_notice[0] >= QUEUED_NOTICE_SECONDS:
                last_notice[0] = now
                try:
                    self._write_line({"type": "queued", "position": state.scheduler.position(ticket)})
                except ClientGone:
                    return False
            return True

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
            if not state.scheduler.acquire(keep_waiting):
                logger.info("%s: client left while queued", rid)
                self.close_connection = True
                return
        except ClientGone:
            self.close_connection = True
            return
        try:
            reason, n_out, seconds = self._run(
                prompt, params, lambda text: self._write_line({"type": "text", "text": text})
            )
            state.served += 1
            logger.info(
                "%s: %d prompt + %d completion tokens in %.2f s (%.1f tok/s), %s",
                rid, n_prompt, n_out, seconds, n_out / seconds if seconds else 0.0, reason,
            )  # fmt: skip
            if reason == "cancelled":
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
            self.close_connection = True
        except Exception as exc:
            logger.exception("%s: generation failed", rid)
            try:
                self._write_line({"type": "error", "message": str(exc)})
                self.wfile.write(b"0\r\n\r\n")
            except (ClientGone, OSError):
                self.close_connection = True
        finally:
            state.scheduler.release()

    def _generate(self) -> None:
        """The seed's blocking endpoint, same JSON in and out as its qwen_server.py."""
        from workers.local_model import GenerationError

        state = self.state
        body = self._read_json()
        if body is None:
            return
        if not state.ready:
            self._send_json(503, {"detail": "Model is still loading"})
            return
        try:
            params, prompt = self._prepare(body, SEED_GENERATE_DEFAULTS, body.get("system_prompt"))
        except GenerationError as exc:
            self._send_json(exc.status, {"detail": str(exc)})
            return
        if not state.scheduler.acquire(lambda ticket: not self._gone()):
            self.close_connection = True
            return
        parts: list[str] = []
        try:
            reason, n_out, seconds = self._run(prompt, params, parts.append)
            state.served += 1
        except Exception as exc:
            logger.exception("generation failed")
            self._send_json(500, {"detail": f"Generation error: {exc}"})
            return
        finally:
            state.scheduler.release()
        if reason == "cancelled":
            self.close_connection = True
            return
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


# -- dependencies ---------------------------------------------------------------------------


def read_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """``name==version`` pins of requirements-local.txt (comments stripped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def missing_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """Pins that are not installed at their version (``torch`` 2.13.0+cpu counts as 2.13.0)."""
    from importlib.metadata import PackageNotFoundError, version

    missing = []
    for name, wanted in read_pins(path).items():
        try:
            have = version(name).split("+", 1)[0]
        except PackageNotFoundError:
            have = None
        if have != wanted:
            missing.append(f"{name}=={wanted}")
    return missing


def ensure_requirements(path: Path = REQUIREMENTS) -> None:
    """Install the worker's heavy stack into this interpreter, in the one order that works.

    torch first and pinned (anything unpinned pulls the CUDA build), then the rest with
    auto-gptq and hqq built from source without CUDA kernels (see requirements-local.txt).
    """
    missing = missing_requirements(path)
    if not missing:
        return
    logger.info("installing the worker's requirements (%s missing)", ", ".join(missing))
    pip = [sys.executable, "-m", "pip", "install"]
    torch_pin = f"torch=={read_pins(path)['torch']}"
    if torch_pin in missing:
        subprocess.run([*pip, torch_pin], check=True)
    env = dict(os.environ, BUILD_CUDA_EXT="0", DISABLE_CUDA="1")
    cmd = [*pip, "--no-build-isolation", "--no-binary", "auto-gptq,hqq", "-r", str(path)]
    subprocess.run(cmd, check=True, env=env)


# -- gateway side -------------------------------------------------------------------------


def worker_argv(config: Mapping[str, Any]) -> list[str]:
    """The command line that starts the worker for the gateway's settings."""
    url = str(config.get("LOCAL_MODEL_URL") or "http://127.0.0.1:8001")
    argv = [sys.executable, "-m", "workers.inference", "-m", str(config["LOCAL_MODEL_PATH"])]
    argv += ["-cache", str(config.get("LOCAL_MODEL_CACHE") or "normal")]
    if config.get("LOCAL_MODEL_MAX_SEQ_LEN"):
        argv += ["-l", str(int(config["LOCAL_MODEL_MAX_SEQ_LEN"]))]
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        argv += ["--socket", parsed.path]
    else:
        argv += ["--host", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 8001)]
    argv += ["--device", str(config.get("LOCAL_MODEL_DEVICE") or "auto")]
    argv += ["--dtype", str(config.get("LOCAL_MODEL_DTYPE") or "auto")]
    argv += ["--parallel", str(int(config.get("LOCAL_MODEL_PARALLEL") or 1))]
    if config.get("LOCAL_MODEL_THREADS"):
        argv += ["--threads", str(int(config["LOCAL_MODEL_THREADS"]))]
    if config.get("LOCAL_MODEL_NAME"):
        argv += ["--name", str(config["LOCAL_MODEL_NAME"])]
    if config.get("LOCAL_MODEL_AUTO_INSTALL"):
        argv += ["--ensure-deps"]
    return argv


def worker_spec(config: Mapping[str, Any]):
    """The supervisor's ``WorkerSpec`` for the local model worker, or None when
    ``LOCAL_MODEL_PATH`` is unset (the worker may then be run by hand)."""
    if not config.get("LOCAL_MODEL_PATH"):
        return None
    from qwenproxy.runtime.supervisor import WorkerSpec

    url = str(config.get("LOCAL_MODEL_URL") or "http://127.0.0.1:8001")
    health = None if url.startswith("unix:") else url.rstrip("/") + "/health"
    # the repo root, so that ``-m workers.inference`` resolves whatever the gateway's cwd is
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return WorkerSpec(name="local-coder", argv=worker_argv(config), env=env, health_url=health)


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
    p.add_argument("--parallel", type=int, default=1, help="concurrent generations (the rest queue FIFO)")
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
        server.server_close()
        if args.socket and os.path.exists(args.socket):
            os.unlink(args.socket)


if __name__ == "__main__":
    main()
