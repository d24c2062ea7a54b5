"""The deployment files, checked without a Docker engine: gunicorn's own view of its config,
the compose file's shape, the Dockerfile, the boot and Windows scripts."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT


def _gunicorn_settings(tmp_path, **env: str) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN", "GIGACHAT", "PROMETHEUS"))}
    full.update(QWENPROXY_ENV_FILE="", SESSION_DIR=str(tmp_path / "session"), LOGS_DIR=str(tmp_path / "logs"), **env)
    out = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--print-config", "app:app"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    settings = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings[key.strip()] = value.strip()
    return settings


def test_gunicorn_conf_as_gunicorn_reads_it(tmp_path) -> None:
    s = _gunicorn_settings(tmp_path, HOST="127.0.0.1", PORT="4321", GRACEFUL_TIMEOUT="90", WEB_WORKERS="3")
    assert s["bind"] == "['127.0.0.1:4321']"
    assert s["worker_class"] == "qwenproxy.runtime.gworker.GatewayWorker" and s["workers"] == "3"
    assert s["limit_request_line"] == "8190" and int(s["limit_request_field_size"]) > 8190
    assert s["graceful_timeout"] == "90" and s["control_socket_disable"] == "True"
    assert s["preload_app"] == "False" and s["accesslog"] == "-"
    assert "x-request-id" in s["access_log_format"]
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    hooks = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"on_starting", "when_ready", "child_exit", "on_exit"} <= hooks
    default = _gunicorn_settings(tmp_path)
    assert default["bind"] == "['0.0.0.0:3264']" and 2 <= int(default["workers"]) <= 8


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    web = compose["services"]["qwenproxy"]
    assert "3264:3264" in web["ports"]
    assert web["environment"]["SKIP_ACCOUNT_MENU"] == "true"
    assert {v.split(":")[1] for v in web["volumes"]} == {"/app/session", "/app/logs", "/app/uploads"}
    assert "/health/live" in " ".join(web["healthcheck"]["test"])
    assert int(web["stop_grace_period"].rstrip("s")) > 60  # longer than GRACEFUL_TIMEOUT's default
    gpu = compose["services"]["inference"]
    assert gpu["gpus"] == "all" and gpu["profiles"] == ["gpu"]
    assert gpu["command"][:3] == ["python", "-m", "workers.inference"]


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_compose_config_when_the_client_has_compose() -> None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker has no compose plugin here")
    subprocess.run(["docker", "compose", "config", "-q"], cwd=ROOT, check=True, timeout=60)


def test_dockerfile_and_scripts() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "chromium" in dockerfile and "SKIP_ACCOUNT_MENU=true" in dockerfile
    # the browser pool's virtual display (BROWSER_HEADLESS=auto), in the image and from setup.sh
    assert "xvfb" in dockerfile and "xvfb" in (ROOT / "scripts" / "setup.sh").read_text()
    assert "EXPOSE 3264" in dockerfile and "HEALTHCHECK" in dockerfile
    assert 'CMD ["sh", "scripts/boot.sh"]' in dockerfile
    assert "useradd" in dockerfile and "QWENPROXY_USER=qwenproxy" in dockerfile and "chmod 700" in dockerfile
    boot = (ROOT / "scripts" / "boot.sh").read_text()
    assert "setpriv --reuid=" in boot and boot.index("setpriv") < boot.index("db upgrade")
    assert "db upgrade" in boot and "exec" in boot and "gunicorn -c gunicorn.conf.py app:app" in boot
    subprocess.run(["sh", "-n", str(ROOT / "scripts" / "boot.sh")], check=True)
    bat = (ROOT / "start.bat").read_bytes()
    assert b"\r\n" in bat and b"venv .venv" in bat and b"app.py" in bat
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "session", "logs", ".env"} <= set(ignored)
