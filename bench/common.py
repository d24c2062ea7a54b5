"""What the benchmarks share: the fake upstream and the gateway as real processes, RSS."""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    system = f"{platform.system()} {platform.machine()}"
    return f"{system}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"



def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a server's process group, SIGKILL it if it has not gone within 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

class Fake:
    """``bench.fake_upstream`` in a process of its own (gevent: thousands of streams)."""

    def __init__(self, chunk_delay: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_upstream", "--chunk-delay", str(chunk_delay)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        info = json.loads(self.proc.stdout.readline())
        self.url, self.token = info["url"], info["token"]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Gateway:
    """``gunicorn -c gunicorn.conf.py app:app`` with gevent workers, on a fresh database."""

    def __init__(self, fake: Fake, workers: int = 1, root: Path = ROOT, **env: str) -> None:
        """``root``: the checkout to serve (another one to compare two versions in one run)."""
        self.dir = Path(tempfile.mkdtemp(prefix="qwenproxy-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN", "GIGACHAT", "PROMETHEUS"))}
        full.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            WEB_WORKERS=str(workers),
            QWENPROXY_ENV_FILE="",
            SESSION_DIR=str(self.dir / "session"),
            LOGS_DIR=str(self.dir / "logs"),
            API_KEYS_FILE=str(self.dir / "none.txt"),
            MODELS_FILE=str(Path(root) / "AvailableModels.txt"),
            QWEN_BASE_URL=fake.url,
            QWEN_TOKEN=fake.token,
            QWEN_TRANSPORT="direct",
            LOG_LEVEL="WARNING",
            SKIP_ACCOUNT_MENU="true",
        )
        full.update(env)
        self.log = open(self.dir / "gunicorn.out", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            cwd=root,
            env=full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError((self.dir / "gunicorn.out").read_text()[-2000:])

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def rss(self) -> int:
        """Resident memory of the web workers, bytes."""
        return sum(psutil.Process(pid).memory_info().rss for pid in self.worker_pids())

    def cpu_seconds(self) -> float:
        """User + system CPU time of the web workers so far."""
        total = 0.0
        for pid in self.worker_pids():
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        return total

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
