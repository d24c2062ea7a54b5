"""The local Qwen2.5-Coder worker on a real (tiny) GPTQ checkpoint, end to end.

A session fixture builds a tiny Qwen2 with an offline-trained tokenizer and GPTQ-quantizes it
on the CPU (tests/tools, in a subprocess). The tests then run the real worker process on it
(``python -m workers.inference``), talk to it over TCP and a Unix socket, and through the app's
``/api/chat/completions`` with the ``openai`` client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from qwenproxy.errors import ContextTooLong, UpstreamError, UpstreamUnavailable
from qwenproxy.events import Finished, ResponseStarted, TextDelta, Usage
from qwenproxy.providers.base import ChatRequest
from qwenproxy.providers.local_coder import LocalCoderProvider
from workers.inference import worker_argv, worker_spec

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("auto_gptq", reason="the local model stack (requirements-local.txt) is not installed")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
PROMPT = [{"role": "user", "content": "def add(a, b):"}]
LONG = 1500  # tokens: several seconds of generation on the tiny model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny(tiny_gptq) -> dict[str, str]:
    """Tiny Qwen2 (fp), its GPTQ int4 checkpoint, and a tied copy without ``lm_head.weight``."""
    return tiny_gptq


class Worker:
    """``python -m workers.inference`` as a child process, stopped by its own pid."""

    def __init__(self, model: str, *args: str, log: Path, socket_path: str | None = None) -> None:
        self.port = _free_port()
        self.socket_path = socket_path
        where = ["--socket", socket_path] if socket_path else ["-p", str(self.port)]
        argv = [sys.executable, "-m", "workers.inference", "-m", model, "--threads", "1", *where, *args]
        self.url = f"unix://{socket_path}" if socket_path else f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=self._log_file, stderr=subprocess.STDOUT)

    def provider(self, **kw) -> LocalCoderProvider:
        return LocalCoderProvider(url=self.url, **kw)

    def wait_ready(self, timeout: float = 120.0) -> Worker:
        provider = self.provider()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            if provider.status().get("model_loaded"):
                provider.close()
                return self
            time.sleep(0.2)
        raise TimeoutError(self.log.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log_file.close()


@pytest.fixture(scope="session")
def workers(tiny, tmp_path_factory) -> Iterator[dict[str, Worker]]:
    """Two workers started together (their imports overlap): normal cache on TCP (a batch of 2
    and 1 waiting place, so the admission bound is reachable), and q4 cache on a Unix socket.
    residual 8 makes the q4 cache really quantize on short sequences."""
    logs = tmp_path_factory.mktemp("worker-logs")
    normal = Worker(tiny["quant_dir"], "-l", "1024", "--parallel", "2", "--max-queue", "1", log=logs / "normal.log")
    q4 = Worker(
        tiny["quant_dir"],
        *("-cache", "q4", "--q4-residual", "8", "--q4-group-size", "32", "-l", "1024"),
        log=logs / "q4.log",
        socket_path=str(logs / "q4.sock"),
    )
    try:
        yield {"normal": normal.wait_ready(), "q4": q4.wait_ready()}
    finally:
        normal.stop()
        q4.stop()


@pytest.fixture
def worker(workers) -> Worker:
    """The normal worker, idle: nothing left running or queued by an earlier test."""
    wait_idle(workers["normal"].url)
    return workers["normal"]


def wait_idle(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        health = requests.get(url + "/health", timeout=5).json()
        if not health["active"] and not health["queue"]:
            return
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def stream_lines(url: str, body: dict, **kw) -> Iterator[dict]:
    with requests.post(url + "/v1/stream", json=body, stream=True, timeout=60, **kw) as resp:
        assert resp.status_code == 200, resp.text
        for line in resp.iter_lines(chunk_size=None):
            if line:
                yield json.loads(line)


def greedy(n: int, **extra) -> dict:
    return {"messages": PROMPT, "temperature": 0, "max_tokens": n, "min_tokens": n, **extra}


# -- the worker's protocol -------------------------------------------------------------------


def test_health_reports_the_loaded_model(worker: Worker) -> None:
    health = requests.get(worker.url + "/health", timeout=5).json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    assert health["model"] == "tiny-qwen" and health["queue"] == 0 and health["active"] == 0
    assert health["max_seq_len"] == 1024 and health["cache"] == "normal" and health["device"] == "cpu"
    # torch's int4 kernel runs every projection, q/k/v and gate/up fused
    assert health["kernel"] == "aten._weight_int4pack_mm_for_cpu" and health["dtype"] == "bfloat16"
    assert health["kernel_detail"].startswith("aten._weight_int4pack_mm_for_cpu on 14/14 projections")
    assert health["parallel"] == 2 and health["max_queue"] == 1
    log = worker.log.read_text(errors="replace")  # the load reports its stages as it goes
    for stage in ("importing torch", "tokenizer", "weights (", "kernel aten._weight_int4pack_mm_for_cpu", "warm-up",
                  "model tiny-qwen ready in"):  # fmt: skip
        assert stage in log, stage


def test_stream_sends_token_pieces_and_real_counts(worker: Worker, tiny) -> None:
    from transformers import AutoTokenizer

    lines = list(stream_lines(worker.url, greedy(24)))
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "end"
    texts = [line["text"] for line in lines if line["type"] == "text"]
    assert len(texts) > 5  # streamed piece by piece, not at the end
    tok = AutoTokenizer.from_pretrained(tiny["quant_dir"])
    prompt_ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    end = lines[-1]
    assert end["prompt_tokens"] == lines[0]["prompt_tokens"] == len(prompt_ids)
    assert end["completion_tokens"] == 24 and end["finish_reason"] == "length"
    # the text is what the generated token ids decode to
    assert len(tok.encode("".join(texts), add_special_tokens=False)) <= 24


def test_provider_yields_events_with_usage(worker: Worker) -> None:
    provider = worker.provider()
    stream = provider.open_stream(
        ChatRequest(
            model="qwen2.5-coder-local", messages=PROMPT, max_tokens=16, temperature=0, options={"min_tokens": 16}
        )
    )
    events = list(stream)
    assert isinstance(events[0], ResponseStarted) and events[0].response_id
    assert any(isinstance(e, TextDelta) for e in events)
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.completion_tokens == 16 and usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + 16
    assert events[-1] == Finished(reason="length")
    assert provider.owns("qwen2.5-coder-local") and provider.owns("Qwen2.5-Coder-Local")
    provider.close()


def test_stop_strings_end_the_answer_before_them(worker: Worker) -> None:
    full = "".join(x["text"] for x in stream_lines(worker.url, greedy(40, min_tokens=0)) if x["type"] == "text")
    assert len(full) > 12, full
    stop = full[8:12]
    lines = list(stream_lines(worker.url, {**greedy(40, min_tokens=0), "stop": [stop]}))
    text = "".join(x["text"] for x in lines if x["type"] == "text")
    assert text == full[: full.index(stop)]
    assert lines[-1]["finish_reason"] == "stop" and lines[-1]["completion_tokens"] < 40


def test_seed_generate_endpoint(worker: Worker) -> None:
    body = {"messages": PROMPT, "max_tokens": 8, "temperature": 0}
    resp = requests.post(worker.url + "/generate", json=body, timeout=30).json()
    assert set(resp) == {"response", "generation_time", "tokens_generated"}
    assert 0 < resp["tokens_generated"] <= 8 and resp["generation_time"] > 0


def test_health_answers_while_a_generation_runs(worker: Worker) -> None:
    lines = stream_lines(worker.url, greedy(LONG))
    assert next(lines)["type"] == "start"
    assert next(lines)["type"] == "text"
    try:
        for _ in range(3):
            started = time.monotonic()
            health = requests.get(worker.url + "/health", timeout=2).json()
            assert time.monotonic() - started < 1.0
            assert health["active"] == 1 and health["model_loaded"]
        provider = worker.provider()  # what /qwen/status and /api/status show
        status = provider.status()
        assert status["status"] == "healthy" and status["active"] == 1
        provider.close()
    finally:
        lines.close()


def test_closing_the_stream_cancels_at_the_next_token(worker: Worker) -> None:
    body = {**greedy(LONG), "id": "closed-one"}
    resp = requests.post(worker.url + "/v1/stream", json=body, stream=True, timeout=30)
    pieces = resp.iter_lines(chunk_size=None)
    for _ in range(6):
        next(pieces)
    resp.close()
    deadline = time.monotonic() + 3
    while requests.get(worker.url + "/health", timeout=2).json()["active"]:
        assert time.monotonic() < deadline, "generation still running after the client left"
        time.sleep(0.05)
    last = _summary_line(worker, "closed-one")
    assert "cancelled" in last
    assert int(last.split("+ ")[1].split(" completion")[0]) < LONG // 2


def test_provider_cancel_from_another_thread(worker: Worker) -> None:
    provider = worker.provider()
    stream = provider.open_stream(
        ChatRequest(model="qwen2.5-coder-local", messages=PROMPT, temperature=0, max_tokens=LONG,
                    options={"min_tokens": LONG})
    )  # fmt: skip
    seen = 0
    started = time.monotonic()
    for event in stream:
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 3:
                threading.Timer(0.2, stream.cancel).start()
    assert time.monotonic() - started < 3  # ended by the cancel, not by 1500 tokens
    deadline = time.monotonic() + 3
    while requests.get(worker.url + "/health", timeout=2).json()["active"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    provider.close()


def _text(lines: list[dict]) -> str:
    return "".join(x["text"] for x in lines if x["type"] == "text")


def _summary_line(worker: Worker, rid: str, timeout: float = 10.0) -> str:
    """The worker's summary line of request ``rid``. Its handler thread writes it after the
    scheduler has let the request go (``/health`` may say idle first): waited for."""
    deadline = time.monotonic() + timeout
    while True:
        log = worker.log.read_text(errors="replace").splitlines()
        found = [line for line in log if f"{rid}: " in line and "completion tokens" in line]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no summary line for {rid} in the worker's log"
        time.sleep(0.05)


def test_concurrent_streams_decode_together(worker: Worker) -> None:
    """A second stream joins the running one at the next step (continuous batching) and gets the
    same greedy text it gets alone; it ends while the first, much longer one still runs."""
    solo = _text(list(stream_lines(worker.url, greedy(64))))
    resp = requests.post(worker.url + "/v1/stream", json={**greedy(LONG), "id": "long-one"}, stream=True, timeout=60)
    lines = (json.loads(raw) for raw in resp.iter_lines(chunk_size=None) if raw)
    assert next(lines)["type"] == "start" and next(lines)["type"] == "text"
    try:
        joined = list(stream_lines(worker.url, greedy(64)))
        assert joined[-1]["completion_tokens"] == 64 and _text(joined) == solo
        health = requests.get(worker.url + "/health", timeout=5).json()
        assert health["active"] == 1 and health["batch"]["mean_batch"] > 1.0
    finally:
        resp.close()
    wait_idle(worker.url)
    last = _summary_line(worker, "long-one")
    assert "cancelled" in last  # the long one was still decoding when the joined one ended


def test_admission_is_bounded_and_busy_answers_503_with_retry_after(worker: Worker) -> None:
    """--parallel 2 --max-queue 1: two decode, the third waits (told its place), the fourth is
    refused at once; when a running one leaves, the waiting one starts."""
    opened = []
    try:
        for i in range(2):
            resp = requests.post(worker.url + "/v1/stream", json={**greedy(LONG), "id": f"run-{i}"}, stream=True)
            lines = (json.loads(raw) for raw in resp.iter_lines(chunk_size=None) if raw)
            assert next(lines)["type"] == "start" and next(lines)["type"] == "text"
            opened.append((resp, lines))
        waiting = requests.post(worker.url + "/v1/stream", json=greedy(8), stream=True, timeout=60)
        waiting_lines = (json.loads(raw) for raw in waiting.iter_lines(chunk_size=None) if raw)
        assert next(waiting_lines)["type"] == "start"
        assert next(waiting_lines) == {"type": "queued", "position": 1}
        health = requests.get(worker.url + "/health", timeout=5).json()
        assert health["active"] == 2 and health["queue"] == 1
        busy = requests.post(worker.url + "/v1/stream", json=greedy(8), timeout=10)
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "queue_full"
        assert int(busy.headers["Retry-After"]) >= 1
        seed = requests.post(worker.url + "/generate", json={"messages": PROMPT, "max_tokens": 4}, timeout=10)
        assert seed.status_code == 503 and "Retry-After" in seed.headers and "detail" in seed.json()
        provider = worker.provider()  # the gateway passes the 503 and its Retry-After on
        with pytest.raises(UpstreamUnavailable) as refused:
            provider.open_stream(ChatRequest(model="qwen2.5-coder-local", messages=PROMPT, max_tokens=4))
        assert int(refused.value.headers["Retry-After"]) >= 1 and "capacity" in refused.value.message
        provider.close()
        opened[0][0].close()  # a slot frees: the waiting request is admitted
        rest = [line for line in waiting_lines if line["type"] != "queued"]
        assert rest[-1]["type"] == "end" and rest[-1]["completion_tokens"] == 8
    finally:
        for resp, _ in opened:
            resp.close()
    wait_idle(worker.url)


def test_a_client_that_does_not_read_never_stalls_the_batch(worker: Worker) -> None:
    """A client that reads nothing until the end: its generation still runs to the end in the
    batch (its text waits in its own queue and socket buffers), another stream is served
    meanwhile, and no text is lost."""
    served = requests.get(worker.url + "/health", timeout=5).json()["served"]
    body = json.dumps({**greedy(LONG), "id": "never-reads"}).encode()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    slow.connect(("127.0.0.1", worker.port))
    slow.sendall(
        b"POST /v1/stream HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    try:
        other = list(stream_lines(worker.url, greedy(32)))
        assert other[-1]["type"] == "end" and other[-1]["completion_tokens"] == 32
        deadline = time.monotonic() + 60
        while requests.get(worker.url + "/health", timeout=5).json()["served"] < served + 2:
            assert time.monotonic() < deadline  # the batch finishes the unread generation too
            time.sleep(0.05)
        data = b""
        slow.settimeout(10)
        while not data.endswith(b"\r\n0\r\n\r\n"):
            chunk = slow.recv(65536)
            assert chunk, data[-300:]
            data += chunk
    finally:
        slow.close()
    lines = [json.loads(x) for x in data.split(b"\r\n") if x.startswith(b"{")]
    end = lines[-1]
    assert end["type"] == "end" and end["completion_tokens"] == lines[0]["max_tokens"]
    assert sum(1 for x in lines if x["type"] == "text") > end["completion_tokens"] // 2


def test_scheduler_admits_in_arrival_order_and_refuses_beyond_the_bound(tiny) -> None:
    """In-process, on the real tiny model: a batch of 1 and a line of 2, stepped by hand."""
    import torch

    from workers.inference.model import LocalModel, SamplingParams
    from workers.inference.scheduler import QueueFull, Request, Scheduler

    torch.set_num_threads(1)
    model = LocalModel(tiny["quant_dir"], max_batch=1)
    model.load()
    sched = Scheduler(model, max_batch=1, max_queue=2)
    prompt = model.build_prompt(PROMPT, None, 3)
    reqs = [Request(prompt=prompt, params=SamplingParams(max_tokens=3, temperature=0, min_tokens=3)) for _ in range(4)]
    for r in reqs[:3]:
        sched.submit(r)
    with pytest.raises(QueueFull) as full:
        sched.submit(reqs[3])
    assert full.value.retry_after >= 1
    reqs[1].cancel()  # its client left while it waited: skipped, never run
    order = []
    while sched.has_work():
        sched.step()
        running = [r for r in reqs[:3] if r.state == "running"]
        assert len(running) <= 1
        order += [reqs.index(r) for r in running if reqs.index(r) not in order]
    assert order == [0, 2]
    assert reqs[1].finish_reason == "cancelled" and reqs[1].events.get_nowait() == ("end", "cancelled", 0)
    assert reqs[0].completion_tokens == reqs[2].completion_tokens == 3
    assert model.runner.active == 0


# -- q4 cache, truncation ----------------------------------------------------------------------


def test_q4_cache_gives_the_same_greedy_tokens(workers) -> None:
    body = {
        "messages": [{"role": "system", "content": "You write Python code."}, {"role": "user", "content": "Hello!"}],
        "temperature": 0,
        "max_tokens": 48,
        "min_tokens": 48,
    }
    normal = list(stream_lines(workers["normal"].url, body))
    provider = workers["q4"].provider()  # over the Unix socket
    assert provider.status()["cache"] == "q4"
    events = list(
        provider.open_stream(
            ChatRequest(
                model="tiny-qwen", messages=body["messages"], temperature=0, max_tokens=48, options={"min_tokens": 48}
            )
        )
    )
    q4_text = "".join(e.text for e in events if isinstance(e, TextDelta))
    normal_text = "".join(x["text"] for x in normal if x["type"] == "text")
    assert q4_text == normal_text and len(normal_text) > 20
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.completion_tokens == normal[-1]["completion_tokens"] == 48
    provider.close()


def test_long_history_is_truncated_from_the_oldest_turns(worker: Worker) -> None:
    line = "Beautiful is better than ugly. Explicit is better than implicit. " * 4
    history = []
    for i in range(14):
        history += [{"role": "user", "content": f"{i}: {line}"}, {"role": "assistant", "content": line}]
    history.append({"role": "user", "content": "def add(a, b):"})
    body = {"messages": history, "system": "You write Python code.", "temperature": 0, "max_tokens": 16}
    lines = list(stream_lines(worker.url, body))
    start = lines[0]
    assert start["dropped_messages"] > 0
    assert start["prompt_tokens"] <= 1024 - 16
    assert lines[-1]["type"] == "end" and lines[-1]["prompt_tokens"] == start["prompt_tokens"]
    # a kept history starts with a user turn: an odd number of dropped messages is impossible
    assert start["dropped_messages"] % 2 == 0


def test_a_single_message_over_the_window_is_a_clean_error(worker: Worker) -> None:
    huge = [{"role": "user", "content": "Beautiful is better than ugly. " * 400}]
    resp = requests.post(worker.url + "/v1/stream", json={"messages": huge}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(ContextTooLong):
        worker.provider().open_stream(ChatRequest(model="qwen2.5-coder-local", messages=huge))


# -- supervision, availability -----------------------------------------------------------------


def test_provider_without_a_worker_says_how_to_start_it() -> None:
    provider = LocalCoderProvider(url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(UpstreamUnavailable) as err:
        provider.open_stream(ChatRequest(model="qwen2.5-coder-local", messages=PROMPT))
    assert "python -m workers.inference -m PATH" in err.value.message and "LOCAL_MODEL_PATH" in err.value.message
    status = provider.status()
    assert status["available"] is False and status["status"].startswith("Connection error")
    assert provider.list_models() == []  # no checkpoint configured, no worker: not listed


def test_worker_spec_follows_the_settings(tiny) -> None:
    assert worker_spec({"LOCAL_MODEL_PATH": None}) is None
    cfg = {
        "LOCAL_MODEL_PATH": tiny["quant_dir"],
        "LOCAL_MODEL_URL": "http://127.0.0.1:18555",
        "LOCAL_MODEL_CACHE": "q4",
        "LOCAL_MODEL_MAX_SEQ_LEN": 4096,
        "LOCAL_MODEL_AUTO_INSTALL": True,
    }
    argv = worker_argv(cfg)
    assert argv[1:3] == ["-m", "workers.inference"]
    joined = " ".join(argv)
    assert f"-m {tiny['quant_dir']}" in joined and "-cache q4" in joined and "-l 4096" in joined
    assert "--host 127.0.0.1 -p 18555" in joined and "--ensure-deps" in joined and "--parallel 4" in joined
    assert "--max-queue 3" in " ".join(worker_argv({**cfg, "LOCAL_MODEL_PARALLEL": 4, "LOCAL_MODEL_MAX_QUEUE": 3}))
    assert "--socket /run/w.sock" in " ".join(worker_argv({**cfg, "LOCAL_MODEL_URL": "unix:///run/w.sock"}))


def test_supervisor_restarts_a_killed_worker_and_the_request_fails_cleanly(tiny, tmp_path) -> None:
    supervisor_mod = pytest.importorskip("qwenproxy.runtime.supervisor")
    port = _free_port()
    cfg = {
        "LOCAL_MODEL_PATH": tiny["quant_dir"],
        "LOCAL_MODEL_URL": f"http://127.0.0.1:{port}",
        "LOCAL_MODEL_THREADS": 1,
        "LOCAL_MODEL_AUTO_INSTALL": False,
    }
    spec = worker_spec(cfg)
    assert spec is not None and spec.health_url == f"http://127.0.0.1:{port}/health"
    sup = supervisor_mod.Supervisor([spec], restart_delay=0.2)
    sup.start()
    provider = LocalCoderProvider(url=cfg["LOCAL_MODEL_URL"], model_path=tiny["quant_dir"])
    try:
        wait_loaded(provider)
        first_pid = sup.pid("local-coder")
        stream = provider.open_stream(
            ChatRequest(
                model="tiny-qwen", messages=PROMPT, temperature=0, max_tokens=LONG, options={"min_tokens": LONG}
            )
        )
        got = []
        with pytest.raises(UpstreamError, match="went away"):
            for event in stream:
                got.append(event)
                if len(got) == 4:
                    os.kill(first_pid, signal.SIGKILL)
        wait_loaded(provider)
        assert sup.pid("local-coder") != first_pid
        assert sup.status()["local-coder"]["restarts"] >= 1
        events = list(provider.open_stream(ChatRequest(model="tiny-qwen", messages=PROMPT, max_tokens=4)))
        assert isinstance(events[-1], Finished)
    finally:
        provider.close()
        sup.stop(timeout=10)


def wait_loaded(provider: LocalCoderProvider, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not provider.status().get("model_loaded"):
        assert time.monotonic() < deadline, "worker did not come up"
        time.sleep(0.2)


# -- the model itself (in-process) --------------------------------------------------------------


def test_tied_embeddings_without_lm_head_load_correctly(tiny) -> None:
    """auto-gptq loads a tied checkpoint that has no ``lm_head.weight`` with garbage embeddings
    (recipe §5, gotcha 2); the loader repairs it: logits non-zero and close to the fp model."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.inference.model import LocalModel

    torch.set_num_threads(1)
    keys = _safetensors_keys(Path(tiny["tied_dir"]) / "model.safetensors")
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    tied = LocalModel(tiny["tied_dir"])
    tied.load()
    full = LocalModel(tiny["quant_dir"])
    full.load()
    fp = AutoModelForCausalLM.from_pretrained(tiny["fp_dir"], dtype=torch.float32).eval()
    ids = tied.build_prompt([{"role": "user", "content": "Beautiful is better than ugly."}], None, 8).ids
    got = tied.logits(ids)
    with torch.inference_mode():
        want = fp(torch.tensor([ids])).logits[0]
    assert got.abs().sum() > 0 and torch.isfinite(got).all()
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min() > 0.99, cos
    assert torch.allclose(got, full.logits(ids), atol=1e-4)
    assert tied.model.lm_head.weight.data_ptr() == tied.model.model.embed_tokens.weight.data_ptr()


def test_float16_on_cpu_generates(tiny) -> None:
    """auto-gptq's generate() wrapper fails in fp16 on the CPU (autocast); the worker calls the
    inner model, so fp16 works (recipe §5, gotcha 1)."""
    import torch

    from workers.inference.model import LocalModel, SamplingParams

    torch.set_num_threads(1)
    model = LocalModel(tiny["quant_dir"], dtype="float16")
    model.load()
    prompt = model.build_prompt(PROMPT, None, 4)
    text, n, reason = model.generate_text(prompt, SamplingParams(max_tokens=4, temperature=0, min_tokens=4))
    assert n == 4 and reason == "length"


def _safetensors_keys(path: Path) -> set[str]:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    return {k for k in header if k != "__metadata__"}


# -- through the app ---------------------------------------------------------------------------


def test_openai_client_streams_from_the_local_model(worker: Worker, tmp_path) -> None:
    openai = pytest.importorskip("openai")
    from qwenproxy import create_app
    from tests.fakes.server import BackgroundServer

    app = create_app(
        {
            "TESTING": True,
            "SESSION_DIR": str(tmp_path / "session"),
            "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
            "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
            "LOCAL_MODEL_URL": worker.url,
            "LOG_LEVEL": "WARNING",
        }
    )
    server = BackgroundServer(app, name="app")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        ids = [m.id for m in client.models.list().data]
        assert "qwen2.5-coder-local" in ids and "tiny-qwen" in ids  # the worker answered, so listed
        chunks = list(
            client.chat.completions.create(
                model="qwen2.5-coder-local",
                messages=PROMPT,
                stream=True,
                temperature=0,
                max_tokens=20,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert reasons == ["length"]
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens == 20 and usage.prompt_tokens > 5
        # the checkpoint folder's name is a model id too; non-streaming
        reply = client.chat.completions.create(model="tiny-qwen", messages=PROMPT, temperature=0, max_tokens=6)
        assert reply.choices[0].message.content is not None
        assert 0 < reply.usage.completion_tokens <= 6
    finally:
        server.stop()
        app.extensions["providers"].close()


def test_seed_qwen_route_and_status_on_the_real_worker(worker: Worker, tmp_path) -> None:
    from qwenproxy import create_app

    app = create_app(
        {
            "TESTING": True,
            "SESSION_DIR": str(tmp_path / "session"),
            "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
            "LOCAL_MODEL_URL": worker.url,
            "DEFAULT_SYSTEM_PROMPT": "You write Python code.",
            "LOG_LEVEL": "WARNING",
        }
    )
    try:
        client = app.test_client()
        status = client.get("/qwen/status").get_json()
        kernel = "aten._weight_int4pack_mm_for_cpu"
        assert status == {"available": True, "model_loaded": True, "status": "healthy", "kernel": kernel}
        local = client.get("/api/status").get_json()["providers"]["local"]
        assert local["kernel"] == kernel and local["batch"]["max_batch"] == 2
        body = client.get("/qwen", query_string={"query": "def add(a, b):", "session_id": "s1", "max_tokens": 8})
        assert body.status_code == 200, body.data
        answer = body.get_json()
        assert set(answer) == {"response", "generation_time", "tokens_generated"}
        assert 0 < answer["tokens_generated"] <= 8 and answer["generation_time"] > 0
        history = client.get("/history", query_string={"session_id": "s1"}).get_json()["history"]
        assert history[-1] == {"role": "assistant", "content": answer["response"]}
    finally:
        app.extensions["providers"].close()
