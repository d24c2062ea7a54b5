"""The pool's settings (from ``qwenproxy.config``) and the gateway's ``worker_spec``.

Stdlib only: ``worker_spec`` runs in the gunicorn master, before gevent patches the workers.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent.parent

ANONYMOUS = "_shared"  # the profile for jobs without an account


@dataclass
class Settings:
    base_url: str
    session_dir: Path
    address: str
    pages_per_browser: int = 2
    page_jobs: int = 6
    max_browsers: int = 4
    queue_max: int = 256
    queue_timeout: float = 30.0
    drain_timeout: float = 20.0
    watchdog: float = 2.0
    headless: str = "auto"  # BROWSER_HEADLESS: auto | true | false (display.plan)
    antibot_wait: float = 8.0  # seconds a fresh page waits for the site's anti-bot module
    test_hooks: bool = False  # POST /v1/debug/pages (tests only)
    chrome_path: str | None = None
    default_timeout: float = 120.0
    page_version_path: str = "__APP_CONFIG__.version"  # BROWSER_PAGE_VERSION_PATH; "" = never read

    @classmethod
    def from_config(cls, config: Mapping[str, Any], address: str | None = None) -> Settings:
        from qwenproxy.qwen.browser_transport import pool_address

        return cls(
            base_url=str(config["QWEN_BASE_URL"]).rstrip("/"),
            session_dir=Path(str(config["SESSION_DIR"])).resolve(),
            address=address or pool_address(config),
            pages_per_browser=max(1, int(config["BROWSER_POOL_SIZE"])),
            page_jobs=max(1, int(config["BROWSER_PAGE_JOBS"])),
            max_browsers=max(1, int(config["BROWSER_MAX_BROWSERS"])),
            queue_max=max(0, int(config["BROWSER_QUEUE_MAX"])),
            queue_timeout=float(config["BROWSER_QUEUE_TIMEOUT"]),
            drain_timeout=float(config["BROWSER_DRAIN_TIMEOUT"]),
            watchdog=max(0.2, float(config["BROWSER_WATCHDOG_SECONDS"])),
            headless=_headless_setting(config.get("BROWSER_HEADLESS")),
            antibot_wait=max(0.0, float(config["BROWSER_ANTIBOT_WAIT_S"])),
            test_hooks=bool(config.get("BROWSER_TEST_HOOKS")),
            chrome_path=config.get("CHROME_PATH") or None,
            default_timeout=float(config["QWEN_READ_TIMEOUT"]),
            page_version_path=str(config.get("BROWSER_PAGE_VERSION_PATH") or "").strip(),
        )

    @property
    def page_owned_paths(self) -> dict[str, str]:
        """Where the page keeps its own value of each header it owns (for ``READER_JS``)."""
        return {"version": self.page_version_path} if self.page_version_path else {}

    @property
    def origin(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"


def _headless_setting(value: object) -> str:
    """``auto``, ``true`` or ``false`` (booleans and ``1``/``0`` from older configurations too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value or "auto").strip().lower()


def profile_dir(session_dir: Path, account_id: str | None) -> Path:
    """``<SESSION_DIR>/accounts/<id>/`` (the account's Chromium profile), or the shared one."""
    if not account_id:
        return session_dir / "browser" / ANONYMOUS
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", str(account_id)).strip(".") or "_"
    return session_dir / "accounts" / safe


def worker_spec(config: Mapping[str, Any]):
    """The supervisor's ``WorkerSpec`` for the pool, or None unless ``QWEN_TRANSPORT`` is
    ``browser`` or ``auto`` (with ``direct`` the pool is not needed)."""
    if str(config.get("QWEN_TRANSPORT") or "").lower() not in ("browser", "auto"):
        return None
    # stdlib only here: this runs in the gunicorn master, before gevent patches the workers
    from qwenproxy.runtime.supervisor import WorkerSpec

    env = {}
    for key, value in config.items():
        if key.startswith(("BROWSER_", "CHROME_")) and value is not None:
            env[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    env.update(
        SESSION_DIR=str(Path(str(config["SESSION_DIR"])).resolve()),
        QWEN_BASE_URL=str(config["QWEN_BASE_URL"]),
        QWEN_READ_TIMEOUT=str(config["QWEN_READ_TIMEOUT"]),
        LOG_LEVEL=str(config.get("LOG_LEVEL") or "INFO"),
        BROWSER_POOL_SOCKET=str(config["BROWSER_POOL_SOCKET"]),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    argv = [sys.executable, "-m", "workers.browser_pool", "--parent-pid", str(os.getpid())]
    return WorkerSpec(name="browser-pool", argv=argv, env=env)
