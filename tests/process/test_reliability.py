"""Reliability under gunicorn (and ``python app.py``): graceful SIGTERM with live streams,
SIGKILL under 200 concurrent writers. Bounded in time, loopback only.

The client-disconnect case (upstream request closed within 2 s, partial answer saved) is
``tests/process/test_live.py::test_client_disconnect_cancels_upstream_and_keeps_the_partial_answer``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.conftest import ROOT, Gunicorn, free_port, wait_http

WORDS = 30
EXPECTED = " ".join(f"w{i}" for i in range(1, WORDS + 1))


def _env(tmp_path: Path, fake_qwen, **extra: str) -> dict[str, str]:
    env = {
        "SESSION_DIR": str(tmp_path / "session"),
        "QWEN_BASE_URL": fake_qwen.url,
        "QWEN_TOKEN": fake_qwen.make_token(),
        "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
        "QWEN_TRANSPORT": "direct",  # the browser pool has its own tests
    }
    env.update(extra)
    return env


def _stream(url: str, results: list, index: int) -> None:
    """One streamed completion read to the end: (text, ended with [DONE], seconds)."""
    started = time.monotonic()
    text, done = [], False
    try:
        body = {"stream": True, "messages": [{"role": "user", "content": f"words:{WORDS}"}]}
        with requests.post(url + "/api/chat/completions", json=body, stream=True, timeout=60) as r:
            import json

            for line in r.iter_lines():
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices") or []:
                        text.append((choice.get("delta") or {}).get("content") or "")
    except requests.RequestException as exc:
        text.append(f"<{type(exc).__name__}>")
    results[index] = ("".join(text), done, time.monotonic() - started)


def _ready_status(session: requests.Session, url: str) -> int:
    return session.get(url + "/health/ready", timeout=5).status_code


def test_sigterm_lets_20_live_streams_finish_and_readiness_turns_503_at_once(tmp_path, fake_qwen) -> None:
    fake_qwen.chunk_delay = 0.1  # each stream takes about 3 s
    graceful = 20
    server = Gunicorn(_env(tmp_path, fake_qwen, GRACEFUL_TIMEOUT=str(graceful), KEEPALIVE="30"), workers=2)
    try:
        # one keep-alive connection per worker, opened before the signal: after SIGTERM the
        # listening socket is closed, but a connection that is already open is still served
        probes = []
        pids = set()
        deadline = time.monotonic() + 10
        while len(pids) < 2 and time.monotonic() < deadline:
            probe = requests.Session()
            answer = probe.get(server.url + "/health/ready", timeout=5)
            assert answer.status_code == 200
            if answer.json()["pid"] not in pids:
                pids.add(answer.json()["pid"])
                probes.append(probe)
        assert probes, "no keep-alive probe connection"

        results: list = [None] * 20
        threads = [threading.Thread(target=_stream, args=(server.url, results, i)) for i in range(20)]
        for t in threads:
            t.start()
        started = lambda: len([r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"])  # noqa: E731
        assert fake_qwen.wait_for(lambda: started() == 20, timeout=20), f"only {started()} streams started"
        assert not fake_qwen.completed, "streams ended before the signal: make them longer"

        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for probe in probes:
            status = 200
            while status == 200 and time.monotonic() - signalled < 2:
                status = _ready_status(probe, server.url)
                if status == 200:
                    time.sleep(0.02)
            assert status == 503, "readiness did not turn 503 after SIGTERM"
            probe.close()
        assert time.monotonic() - signalled < 2

        for t in threads:
            t.join(timeout=graceful + 10)
        assert all(r is not None for r in results)
        for text, done, _seconds in results:
            assert done and text == EXPECTED, f"a stream did not finish normally: {text[-40:]!r} done={done}"
        assert time.monotonic() - signalled < graceful, "the streams outlived graceful_timeout"
        assert server.proc.wait(timeout=graceful + 10) == 0
        assert len(fake_qwen.completed) == 20 and not fake_qwen.aborted
    finally:
        server.stop()


def test_200_concurrent_writers_then_sigkill_lose_nothing_acknowledged(tmp_path, fake_qwen) -> None:
    env = _env(tmp_path, fake_qwen)
    server = Gunicorn(env, workers=2)
    acknowledged: list[tuple[str, str, str]] = []  # (chatId, response id, prompt)
    lock = threading.Lock()
    half = threading.Event()

    def writer(i: int) -> None:
        prompt = f"message number {i}"
        try:
            r = requests.post(
                server.url + "/api/chat/completions",
                json={"messages": [{"role": "user", "content": prompt}]},
                timeout=60,
            )
        except requests.RequestException:
            return  # killed before it was acknowledged
        try:
            body = r.json() if r.status_code == 200 else None
        except ValueError:  # cut off mid-body by the kill (urllib3 1.x does not check the length)
            body = None
        if body is not None:
            with lock:
                acknowledged.append((body["chatId"], body["id"], prompt))
                if len(acknowledged) >= 100:
                    half.set()

    try:
        with ThreadPoolExecutor(max_workers=200) as pool:
            futures = [pool.submit(writer, i) for i in range(200)]
            half.wait(timeout=90)
            os.killpg(server.proc.pid, signal.SIGKILL)  # master and workers, mid-flight
            for f in futures:
                f.result(timeout=90)
        server.proc.wait(timeout=10)
    finally:
        server.stop()
    assert len(acknowledged) >= 100

    db_path = tmp_path / "session" / "qwenproxy.db"
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for chat_id, response_id, prompt in acknowledged:
            rows = conn.execute(
                "SELECT role, content, response_id, status FROM message WHERE chat_id = ? ORDER BY id", (chat_id,)
            ).fetchall()
            assert rows[0][:2] == ("user", prompt), rows
            assert ("assistant", f"Echo: {prompt}", response_id, "complete") in rows

    restarted = Gunicorn(env, workers=1)  # and the server comes back on the same database
    try:
        chat_id, _, prompt = acknowledged[0]
        history = requests.get(f"{restarted.url}/api/chats/{chat_id}", timeout=10).json()["history"]["messages"]
        assert [m["content"] for m in history] == [prompt, f"Echo: {prompt}"]
        assert requests.get(restarted.url + "/health/ready", timeout=10).status_code == 200
    finally:
        restarted.stop()


def test_python_app_py_drains_on_sigterm_like_gunicorn(tmp_path, fake_qwen) -> None:
    """The one-process server: SIGTERM -> readiness 503, the running stream still ends."""
    fake_qwen.chunk_delay = 0.1
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN", "GIGACHAT", "LOCAL_MODEL"))}
    env.update(_env(tmp_path, fake_qwen), HOST="127.0.0.1", PORT=str(port), QWENPROXY_ENV_FILE="")
    env.update(LOGS_DIR=str(tmp_path / "logs"), SKIP_ACCOUNT_MENU="true", GRACEFUL_TIMEOUT="20", LOG_LEVEL="WARNING")
    env.update(KEEPALIVE="30")
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health/live", proc=proc)
        probe = requests.Session()
        assert _ready_status(probe, url) == 200
        results: list = [None]
        thread = threading.Thread(target=_stream, args=(url, results, 0))
        thread.start()
        assert fake_qwen.wait_for(lambda: any(r["path"] == "/api/v2/chat/completions" for r in fake_qwen.requests))
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        status = 200
        while status == 200 and time.monotonic() < deadline:
            status = _ready_status(probe, url)
        assert status == 503
        probe.close()
        thread.join(timeout=30)
        text, done, _ = results[0]
        assert done and text == EXPECTED, (text[-80:], (tmp_path / "app.log").read_text()[-2000:])
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
