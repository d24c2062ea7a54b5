"""The gateway's side of the inference worker: its command line, its supervisor spec, and the
one-time install of its heavy stack. Imports neither torch nor the server (the gateway and the
supervisor import this in gevent processes)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

logger = logging.getLogger("workers.inference")

ROOT = Path(__file__).resolve().parent.parent.parent
REQUIREMENTS = ROOT / "requirements-local.txt"


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
    argv += ["--parallel", str(int(config.get("LOCAL_MODEL_PARALLEL") or 4))]
    if config.get("LOCAL_MODEL_MAX_QUEUE") is not None:
        argv += ["--max-queue", str(int(config["LOCAL_MODEL_MAX_QUEUE"]))]
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
