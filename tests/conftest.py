"""Shared fixtures: fake upstreams as real servers, the app on a temporary database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from qwenproxy import create_app
from tests.fakes import ISSUED_SECRETS
from tests.fakes.oss import FakeOSS
from tests.fakes.qwen_web import FakeQwen
from tests.fakes.server import BackgroundServer

ROOT = Path(__file__).resolve().parent.parent

# Inherited by every process the suite starts (gunicorn, the browser pool, Chromium and its
# children), so the leftover check below finds exactly ours.
RUN_MARK = ("PYTEST_QWENPROXY_RUN", uuid.uuid4().hex)
os.environ[RUN_MARK[0]] = RUN_MARK[1]

# tests/<layer>/ gives each test its marker: `pytest -m unit` runs the fast layer alone
LAYERS = ("unit", "http", "process", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = item.path.parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


def marked_chromium() -> list:
    """Chromium processes started by this test run that are still alive (zombies excluded)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "status"]):
        try:
            if "chrom" not in (proc.info["name"] or "").lower() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(RUN_MARK[0]) == RUN_MARK[1]:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leftover_chromium() -> Iterator[None]:
    """After the whole suite, no Chromium started by it may be left running."""
    yield
    deadline = time.time() + 10
    while (left := marked_chromium()) and time.time() < deadline:
        time.sleep(0.2)
    for proc in left:
        proc.kill()
    assert not left, f"Chromium processes left behind: {[(p.pid, p.info['name']) for p in left]}"


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite: no token, key or password a fake issued (or a test registered)
    appears in any log the gateway wrote (LOGS_DIR files, gunicorn's output)."""
    yield
    secrets = sorted(s for s in ISSUED_SECRETS if len(s) >= 8)
    # a Chromium profile (a folder with "Local State") keeps the token on purpose, and its
    # LevelDB journals are named *.log: they are the browser's storage, not logs
    logs = [
        p
        for p in tmp_path_factory.getbasetemp().rglob("*.log")
        if p.is_file() and not any((parent / "Local State").exists() for parent in p.parents)
    ]
    leaks = []
    for path in logs:
        text = path.read_text(encoding="utf-8", errors="replace")
        leaks += [f"{path.name}: {secret[:6]}…" for secret in secrets if secret in text]
    assert not leaks, f"secrets found in logs: {leaks}"


@pytest.fixture
def fake_qwen() -> Iterator[FakeQwen]:
    fake = FakeQwen().start()
    try:
        yield fake
    finally:
        fake.stop()


def app_config(tmp_path: Path, fake: FakeQwen, **extra) -> dict:
    config = {
        "TESTING": True,
        "SESSION_DIR": str(tmp_path / "session"),
        "LOGS_DIR": str(tmp_path / "logs"),
        "UPLOADS_DIR": str(tmp_path / "uploads"),
        "QWEN_BASE_URL": fake.url,
        "QWEN_TOKEN": fake.make_token(),
        "QWEN_TRANSPORT": "direct",  # tests that want the browser pool say so
        "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
        "QWEN_READ_TIMEOUT": 10.0,
        "PING_INTERVAL": 15.0,
        "LOG_LEVEL": "WARNING",
        "QWEN_GUEST": "off",  # tests of guest mode say so
        "ACCOUNT_QUOTA_MINUTES": 0,  # no background quota calls unless a test asks
    }
    config.update(extra)
    return config


@pytest.fixture
def app(tmp_path: Path, fake_qwen: FakeQwen):
    application = create_app(app_config(tmp_path, fake_qwen))
    yield application
    application.extensions["providers"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


# The app served by werkzeug in a thread: for clients that need a real socket.
LiveServer = BackgroundServer


@pytest.fixture
def live_server(app) -> Iterator[LiveServer]:
    server = LiveServer(app)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oai(live_server: LiveServer):
    """The official ``openai`` SDK on the app, over a real socket."""
    import openai

    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="dummy", max_retries=0, timeout=30)


@pytest.fixture
def claude(live_server: LiveServer):
    """The official ``anthropic`` SDK as Claude Code configures it: only a base URL and a token."""
    import anthropic

    return anthropic.Anthropic(base_url=live_server.url, auth_token="any", max_retries=0, timeout=30)


@pytest.fixture
def fake_oss(fake_qwen: FakeQwen) -> Iterator[FakeOSS]:
    """A fake OSS bucket attached to the fake chat.qwen.ai (its STS grants this bucket)."""
    fake = FakeOSS().start()
    fake_qwen.oss = fake
    try:
        yield fake
    finally:
        fake.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise TimeoutError(url)


class Gunicorn:
    """The real thing: ``gunicorn -c gunicorn.conf.py app:app`` with gevent workers."""

    def __init__(self, env: dict[str, str], workers: int = 2, cwd: Path = ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN", "GIGACHAT", "LOCAL_MODEL"))}
        full_env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WEB_WORKERS": str(workers),
                "LOG_LEVEL": "WARNING",
                "QWENPROXY_ENV_FILE": "",
                "QWEN_TRANSPORT": "direct",
                "QWEN_GUEST": "off",
                "ACCOUNT_QUOTA_MINUTES": "0",
            }
        )
        full_env["LOGS_DIR"] = str(Path(env["SESSION_DIR"]).parent / "logs")
        full_env.update(env)
        self.log = Path(env["SESSION_DIR"]) / "gunicorn.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            cwd=cwd,
            env=full_env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(self.url + "/api/status", proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(self.log.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log_file.close()


@pytest.fixture
def gunicorn_server(tmp_path: Path, fake_qwen: FakeQwen) -> Iterator[Gunicorn]:
    env = {
        "SESSION_DIR": str(tmp_path / "session"),
        "QWEN_BASE_URL": fake_qwen.url,
        "QWEN_TOKEN": fake_qwen.make_token(),
        "QWEN_TRANSPORT": "direct",
        "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
    }
    server = Gunicorn(env)
    try:
        yield server
    finally:
        server.stop()
