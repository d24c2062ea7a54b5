"""The LiteLLM proxy as a yardstick: installed into a virtualenv of its own, run on the bench's fake.

Never a project dependency: ``ensure_litellm`` creates ``<cache>/litellm-<version>`` (default
``~/.cache/qwenproxy-bench``, outside git) with ``pip install "litellm[proxy]==<version>"``
the first time it is asked. The proxy is configured fairly for a latency comparison: one
model (``openai/fake`` on the fake's OpenAI-compatible route), one worker, no database, no
master key (as the gateway in the bench: no API keys), no callbacks, the bundled model-cost
map (no network), logging at ERROR.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

from bench.common import stop_group

DEFAULT_VERSION = "1.106.12"  # 1.107.0 was a compromised release (pulled); pin what was measured
CACHE = Path(os.environ.get("QWENPROXY_BENCH_CACHE") or Path.home() / ".cache" / "qwenproxy-bench")


def ensure_litellm(version: str = DEFAULT_VERSION) -> Path:
    """The ``litellm`` executable of a virtualenv holding ``litellm[proxy]==version``."""
    venv = CACHE / f"litellm-{version}"
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"# installing litellm[proxy]=={version} into {venv} (once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={version}"], check=True)
    return exe


CONFIG = """\
model_list:
  - model_name: fake
    litellm_params:
      model: openai/fake
      api_base: {api_base}
      api_key: sk-bench
litellm_settings:
  set_verbose: false
  json_logs: false
  drop_params: true
  request_timeout: 120
  telemetry: false
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""


class LiteLLM:
    """``litellm --config … --num_workers 1`` on a free port, pointed at the fake."""

    def __init__(self, exe: Path, fake_url: str, port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qwenproxy-litellm-"))
        config = self.dir / "config.yaml"
        config.write_text(CONFIG.format(api_base=f"{fake_url}/v1"))
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "LITELLM", "OPENAI"))}
        env.update(
            LITELLM_LOG="ERROR",
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            LITELLM_MODE="PRODUCTION",
            NO_DOCS="True",
            DISABLE_ADMIN_UI="True",
            # no keys, as the gateway in the bench: a local comparison, loopback only
            LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
        )
        self.log = open(self.dir / "litellm.out", "wb")
        self.proc = subprocess.Popen(
            [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            cwd=self.dir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(self.url + "/health/liveliness", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("LiteLLM did not start: " + (self.dir / "litellm.out").read_text()[-2000:])

    def cpu_seconds(self) -> float:
        """User + system CPU of the proxy and its children so far."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()
