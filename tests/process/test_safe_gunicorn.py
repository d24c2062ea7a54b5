"""Safe by default (issue 15) under the real gunicorn: cross-site requests over HTTP, streams
longer than the graceful timeout at SIGTERM, file modes under umask 022, a fast 50 MB answer
beside a liveness probe, and gunicorn's own refusals in JSON."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.conftest import ROOT, Gunicorn

COMPLETIONS = "/api/chat/completions"


def _env(tmp_path: Path, fake_qwen, **extra: str) -> dict[str, str]:
    env = {
        "SESSION_DIR": str(tmp_path / "session"),
        "UPLOADS_DIR": str(tmp_path / "uploads"),
        "QWEN_BASE_URL": fake_qwen.url,
        "QWEN_TOKEN": fake_qwen.make_token(),
        "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
        "QWEN_TRANSPORT": "direct",
    }
    env.update(extra)
    return env


def _content(events: list[dict]) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for e in events if "choices" in e for c in e["choices"])


# --- 1. cross-site requests and 8. gunicorn's refusals, over real HTTP ---------------------------


def test_browser_style_cross_origin_requests_through_gunicorn(tmp_path, fake_qwen) -> None:
    server = Gunicorn(_env(tmp_path, fake_qwen), workers=1)
    try:
        url = server.url
        chat = requests.post(url + COMPLETIONS, json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        chat_id = chat.json()["chatId"]
        evil = {"Origin": "https://evil.example", "Content-Type": "text/plain;charset=UTF-8"}
        for path, body in (
            (COMPLETIONS, '{"messages":[{"role":"user","content":"x"}]}'),
            ("/api/chats/cleanup", '{"all":true}'),
        ):
            r = requests.post(url + path, data=body, headers=evil, timeout=10)
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin_forbidden"
            assert "Access-Control-Allow-Origin" not in r.headers
            plain = requests.post(url + path, data=body, headers={"Content-Type": "text/plain"}, timeout=10)
            assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
        read = requests.get(f"{url}/api/chats/{chat_id}", headers={"Origin": "https://evil.example"}, timeout=10)
        assert read.status_code == 403 and "Access-Control-Allow-Origin" not in read.headers
        assert requests.get(f"{url}/api/chats/{chat_id}", timeout=10).status_code == 200
        assert len([r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]) == 1

        # gunicorn's parser: its limits raised, and what it still refuses is JSON, not HTML
        long_query = requests.get(url + "/api/models?pad=" + "q" * 6000, timeout=10)
        assert long_query.status_code == 200  # 4094 bytes was gunicorn's default request line
        too_long = requests.get(url + "/api/models?pad=" + "q" * 9000, timeout=10)
        assert too_long.status_code == 414 and too_long.headers["Content-Type"] == "application/json"
        assert too_long.json()["error"]["code"] == "uri_too_long"
        many = {f"X-Pad-{i}": "v" for i in range(250)}
        too_many = requests.get(url + "/api/models", headers=many, timeout=10)
        assert too_many.status_code == 431 and too_many.json()["error"]["code"] == "header_fields_too_large"
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    assert "WITHOUT API keys" not in log  # bound to 127.0.0.1 here


def test_exposure_warning_at_start_on_a_non_loopback_address(tmp_path, fake_qwen) -> None:
    server = Gunicorn(_env(tmp_path, fake_qwen, HOST="0.0.0.0"), workers=1)
    server.stop()
    log = server.log.read_text(errors="replace")
    assert "!!!!!!!!" in log and "listens on 0.0.0.0 WITHOUT API keys" in log


# --- 2. SIGTERM with streams longer than the graceful timeout ------------------------------------


def _stream_reader(url: str, prompt: str, out: dict, started: threading.Event) -> None:
    events, lines = [], []
    try:
        body = {"stream": True, "messages": [{"role": "user", "content": prompt}]}
        with requests.post(url + COMPLETIONS, json=body, stream=True, timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith(b"data: {"):
                    events.append(json.loads(line[6:]))
                    if len(_content(events)) > 10:
                        started.set()
    except requests.RequestException as exc:
        lines.append(f"<{type(exc).__name__}>".encode())
    out.update(events=events, lines=[x for x in lines if x])


def test_sigterm_ends_long_streams_in_band_saves_them_and_stops_accepting(tmp_path, fake_qwen) -> None:
    """Five 8-second streams and a JSON answer, GRACEFUL_TIMEOUT=3: each client gets an in-band
    ``server_shutdown`` and ``[DONE]`` (the JSON one a 503), the partial answers are in the
    database as sent, the upstream calls are closed, gunicorn exits 0 without killing a worker,
    and new connections are refused at once."""
    fake_qwen.chunk_delay = 0.1  # words:80 takes 8 s
    graceful = 3
    server = Gunicorn(_env(tmp_path, fake_qwen, GRACEFUL_TIMEOUT=str(graceful)), workers=2)
    try:
        results = [{} for _ in range(5)]
        flags = [threading.Event() for _ in range(5)]
        threads = [
            threading.Thread(target=_stream_reader, args=(server.url, f"words:80 #{i}", results[i], flags[i]))
            for i in range(5)
        ]
        json_answer: dict = {}

        def non_stream() -> None:
            body = {"messages": [{"role": "user", "content": "words:80"}]}
            r = requests.post(server.url + COMPLETIONS, json=body, timeout=60)
            json_answer.update(status=r.status_code, body=r.json())

        threads.append(threading.Thread(target=non_stream))
        for t in threads:
            t.start()
        for flag in flags:
            assert flag.wait(20), "a stream did not start"
        upstream = lambda: [r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]  # noqa: E731
        assert fake_qwen.wait_for(lambda: len(upstream()) == 6, timeout=20), "the JSON request did not start"
        assert not fake_qwen.completed

        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        refused_after = _seconds_until_refused(server.port, deadline=signalled + 5)
        assert refused_after < 0.5, f"new connections were still accepted {refused_after:.2f} s after SIGTERM"

        for t in threads:
            t.join(timeout=graceful + 10)
        assert server.proc.wait(timeout=graceful + 10) == 0
        took = time.monotonic() - signalled
        assert took < graceful + 1.5, f"gunicorn took {took:.1f} s to exit"
    finally:
        server.stop()

    log = server.log.read_text(errors="replace")
    assert "SIGKILL" not in log and "graceful timeout" not in log.lower(), log[-2000:]
    db = sqlite3.connect(tmp_path / "session" / "qwenproxy.db")
    saved = db.execute("SELECT content, status FROM message WHERE role = 'assistant'").fetchall()
    everything = " ".join(f"w{i}" for i in range(1, 81))
    for result in results:
        events, lines = result["events"], result["lines"]
        assert lines[-1] == b"data: [DONE]", lines[-3:]
        errors = [e["error"] for e in events if "error" in e]
        assert [e["code"] for e in errors] == ["server_shutdown"], errors
        assert errors[0]["type"] == "service_unavailable"
        text = _content(events)
        assert 10 < len(text) < len(everything) and everything.startswith(text)
        assert (text, "partial") in saved, f"partial answer not saved as sent: {text[-30:]!r}"
    assert json_answer["status"] == 503 and json_answer["body"]["error"]["code"] == "server_shutdown"
    assert len(saved) == 6 and {s for _, s in saved} == {"partial"}, saved  # the five streams and the JSON one
    # the upstream calls were closed (or, 2026, stopped by the gateway's stop call): none completed
    turns = [chat["turn"] for chat in fake_qwen.chats.values() if chat.get("turn")]
    ended = lambda: [t.outcome for t in turns if t.outcome in ("aborted", "stopped")]  # noqa: E731
    assert len(turns) == 6 and fake_qwen.wait_for(lambda: len(ended()) == 6), [t.outcome for t in turns]
    assert not fake_qwen.completed


def _seconds_until_refused(port: int, deadline: float) -> float:
    """Seconds from now until a connection to the port is refused (or ``deadline``)."""
    start = time.monotonic()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except ConnectionRefusedError:
            return time.monotonic() - start
        except OSError:
            pass
    return deadline - start


# --- 4. file modes --------------------------------------------------------------------------------


def test_file_modes_under_umask_022(tmp_path, fake_qwen) -> None:
    previous = os.umask(0o022)  # inherited by gunicorn
    try:
        server = Gunicorn(_env(tmp_path, fake_qwen, LOG_LEVEL="INFO"), workers=1)
    finally:
        os.umask(previous)
    try:
        r = requests.post(server.url + COMPLETIONS, json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 200
    finally:
        server.stop()
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    for folder in ("session", "logs", "uploads"):
        assert mode(tmp_path / folder) == 0o700, folder
    files = [tmp_path / "session" / n for n in ("qwenproxy.db", "qwenproxy.db-wal", "qwenproxy.db-shm")]
    files += sorted((tmp_path / "logs").glob("*.log"))
    assert {p.name for p in files} >= {"qwenproxy.db", "access.log", "error.log", "qwenproxy.log"}
    for path in files:
        if path.exists():  # the WAL and SHM go when the last connection closes
            assert mode(path) == 0o600, path


# --- 7. a fast upstream must not stall a worker ----------------------------------------------------

BIG_TOKEN = 16 * 1024
BIG_TOTAL = 50 * 1024 * 1024

# The prober runs in a process of its own: in this one, the fake's work (tokenizing 50 MB) and
# the reader's would hold the GIL and show up as latency that is not the gateway's.
PROBER = """
import http.client, select, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
while True:
    started = time.perf_counter()
    conn.request("GET", "/health/live")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    print(time.perf_counter() - started, flush=True)
    if select.select([sys.stdin], [], [], 0.01)[0]:
        break
"""


def _hub_blocks(log: str) -> int:
    """gevent monitor reports about the worker's own hub (a request or the worker loop was
    blocked), not about the hubs of native helper threads (``off_hub``'s threadpool)."""
    reports = log.split("appears to be blocked")[1:]
    return sum(1 for r in reports if "gunicorn/workers" in r.split("\nInfo:")[0])


def test_a_fast_50mb_answer_leaves_the_worker_responsive(tmp_path, fake_qwen) -> None:
    """One gevent worker relays a 50 MB answer that the fake sends as fast as it can while a
    second client probes ``/health/live`` on the same worker. The hub must get control between
    chunks. Two measures, with bounds generous enough for a shared, loaded machine: gevent's
    own monitor thread, which reports a greenlet holding the hub for over 100 ms (a loop that
    never yields is reported every 100 ms, hundreds of times here; the process being
    descheduled can cause a stray report or two), and the prober's wall-clock latencies (a
    probe takes milliseconds when the hub is free; before the fix it never got an answer and
    gunicorn killed the worker on its timeout)."""
    word = "x" * (BIG_TOKEN - 1)
    answer = " ".join([word] * (BIG_TOTAL // BIG_TOKEN))
    fake_qwen.answer = lambda _text: answer
    monitor = {"GEVENT_MONITOR_THREAD_ENABLE": "true", "GEVENT_MAX_BLOCKING_TIME": "0.1"}
    server = Gunicorn(_env(tmp_path, fake_qwen, QWEN_READ_TIMEOUT="60", **monitor), workers=1)
    prober = None
    try:
        prober = subprocess.Popen(
            [sys.executable, "-c", PROBER, str(server.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        received = 0
        tail = b""
        body = {"stream": True, "messages": [{"role": "user", "content": "big"}]}
        started = time.perf_counter()
        with requests.post(server.url + COMPLETIONS, json=body, stream=True, timeout=120) as r:
            for chunk in r.iter_content(1 << 20):
                received += len(chunk)
                tail = (tail + chunk)[-64:]
        took = time.perf_counter() - started
        out, _ = prober.communicate(input="stop\n", timeout=60)
    finally:
        if prober is not None and prober.poll() is None:
            prober.kill()
        server.stop()
    assert prober.returncode == 0, "the prober failed"
    latencies = [float(line) for line in out.split()]
    assert tail.endswith(b"data: [DONE]\n\n") and received > BIG_TOTAL, (received, tail)
    assert len(latencies) >= 10, f"only {len(latencies)} probes in {took:.1f} s"
    log = server.log.read_text(errors="replace")
    blocked = _hub_blocks(log)
    assert blocked <= 2, (
        f"gevent's monitor saw the hub held for over 100 ms {blocked} times while a fast 50 MB answer streamed "
        f"for {took:.1f} s: something in the stream loop does not yield between chunks\n"
        + log[log.find("appears to be blocked") :][:3000]
    )
    median, worst = statistics.median(latencies), max(latencies)
    assert median < 0.1 and worst < 1.0, (
        f"/health/live took {median * 1000:.0f} ms (median) and {worst * 1000:.0f} ms (worst) over "
        f"{len(latencies)} probes while a fast 50 MB answer streamed for {took:.1f} s: the worker is not responsive"
    )
