"""Configuration, resolved once at the edge: defaults -> .env -> environment -> test mapping.

Nothing else in the project reads ``os.environ``; everything takes its settings from
``app.config`` (or from the mapping this module returns).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"  # qwenproxy.__version__

TRUE_WORDS = {"1", "true", "yes", "on"}

# Every setting the project knows, with its default. The type of the default decides how a
# string from .env or the environment is converted. ``None`` means "string, may be unset".
DEFAULTS: dict[str, Any] = {
    # server
    "HOST": "0.0.0.0",
    "PORT": 3264,
    "LOG_LEVEL": "INFO",
    "LOGS_DIR": "./logs",
    "SESSION_DIR": "./session",
    "UPLOADS_DIR": "./uploads",
    "DATABASE_URL": None,  # default: sqlite:///<SESSION_DIR>/qwenproxy.db
    "AUTO_MIGRATE": True,
    "DATABASE_SHARED_CONNECTION": "auto",  # SQLite: one connection per worker (auto: under gevent) or one per greenlet
    "DATABASE_POOL_SIZE": 20,  # PostgreSQL: pooled connections per worker
    "WEB_WORKERS": 0,  # 0: from the number of CPUs
    "GRACEFUL_TIMEOUT": 60,
    "MAX_REQUEST_MB": 32,  # largest request body (a JSON body is held in memory while it is read)
    "MAX_CONTENT_LENGTH_MB": None,  # the old name of MAX_REQUEST_MB, used when that is not set
    "WORKER_CONNECTIONS": 4000,  # gunicorn: connections (open streams included) one gevent worker holds
    "KEEPALIVE": 10,  # seconds an idle keep-alive connection stays open (sent as Keep-Alive: timeout=N)
    # operations (docs/OPERATIONS.md)
    # browser origins allowed to call the API: "*", a comma-separated list, or "" for none;
    # unset: "*" when API keys are configured, none without keys
    "CORS_ORIGINS": None,
    "STATUS_PAGE_PUBLIC": False,  # the status page at / without a key even when keys are configured
    "RATE_LIMIT_PER_MINUTE": 0,  # requests per API key (per client address without keys) a minute; 0 = off
    "REQUEST_LOG_KEEP": 1000,  # recent requests kept in the database for the status page
    "PROMETHEUS_MULTIPROC_DIR": None,  # set by gunicorn.conf.py: /metrics then adds up every worker
    # client API keys (seed: Authorization.txt); empty or missing file = no auth
    "API_KEYS_FILE": "./Authorization.txt",
    # models
    "MODELS_FILE": "./AvailableModels.txt",
    "DEFAULT_MODEL": None,  # unset or gone upstream: the first model of chat.qwen.ai's live list (2026 §1)
    "MODEL_ALIASES": None,  # extra legacy/foreign names, "name=target,gpt-4*=qwen3.7-max" (globs; docs/MODES.md)
    "MODELS_CACHE_SECONDS": 600,
    # Anthropic Messages API (docs/AGENTS.md): claude-* names -> served models; "name=target|fallback,…",
    # a target may be auto:max (newest coder/max model) or auto:fast (newest flash/turbo/plus)
    "ANTHROPIC_MODEL_MAP": "opus=auto:max,sonnet=auto:max,haiku=auto:fast",
    # streaming
    "PING_INTERVAL": 15.0,  # seconds of upstream silence before a ": ping" comment
    # Qwen web modes (docs/MODES.md)
    "REASONING_IN_CONTENT": False,  # reasoning as <think>…</think> in content, not reasoning_content
    # a model that cannot think off (think_skip.enable false) always thinks upstream; its
    # reasoning reaches a client that did not ask for thinking only when this is on
    "QWEN_SHOW_FORCED_REASONING": False,
    "QWEN_THINKING_LOCKED_MODELS": "qwen3.8-*",  # globs, used when the live list does not say
    # media (docs/MODES.md): downloads for b64_json and /v1/videos/{id}/content, video tasks
    "MEDIA_HOSTS": "*.qwenlm.ai,qwen-webui-prod.oss-accelerate.aliyuncs.com",  # + QWEN_BASE_URL's host
    "MEDIA_MAX_MB": 100.0,  # largest image or video the gateway downloads
    "VIDEO_POLL_INTERVAL": 2.0,  # seconds before the first upstream task poll; grows 1.5x per poll
    "VIDEO_POLL_MAX_INTERVAL": 15.0,
    "VIDEO_CHAT_TIMEOUT": 900.0,  # seconds a -video chat waits for its task
    "VIDEO_CONTENT": "stream",  # GET /v1/videos/{id}/content: stream (through the gateway) | redirect
    # Qwen web (chat.qwen.ai)
    "QWEN_BASE_URL": "https://chat.qwen.ai",
    "QWEN_TRANSPORT": "browser",  # browser (fetch inside a Chromium page) | direct | auto (direct, browser on captcha)
    "QWEN_TOKEN": None,  # a single account token, for quick starts
    "QWEN_CONNECT_TIMEOUT": 10.0,
    "QWEN_READ_TIMEOUT": 120.0,
    "QWEN_USER_AGENT": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/141.0.0.0 Safari/537.36"
    ),
    # the 2026 front end's headers (2026 §2); the browser transport lets the page supply its own
    "QWEN_FRONTEND_VERSION": "0.2.87",  # `version` header
    "QWEN_BX_V": None,  # `bx-v` (e.g. 2.5.36) is sent only when set
    "QWEN_AUTH_HEADER": False,  # also send Authorization: Bearer (the front end uses only the token cookie)
    "QWEN_ACCEPT_LANGUAGE": "en-US,en;q=0.9",
    "QWEN_STOP_TIMEOUT": 2.0,  # seconds for the best-effort stop call when a client leaves (2026 §3)
    "QWEN_IN_PROGRESS_BACKOFF": "0.5,1,2",  # seconds between retries of a chat "in progress" (2026 §3)
    # conversations (README "Conversations"): recognise re-sent histories; the body size wall
    "QWEN_HISTORY_MATCHING": True,  # false: every request without chatId folds its history into a new chat
    "QWEN_MAX_BODY_BYTES": 120000,  # larger completions bodies move their long part into a document
    # browser pool (QWEN_TRANSPORT=browser|auto): workers/browser_pool/, docs/BROWSER_POOL.md
    "BROWSER_POOL_SOCKET": None,  # Unix socket path (default <SESSION_DIR>/browser_pool.sock) or http://127.0.0.1:PORT
    "BROWSER_POOL_SIZE": 2,  # pages per browser (one browser per account profile)
    "BROWSER_PAGE_JOBS": 6,  # fetches one page runs at once; more wait in the pool's queue
    "BROWSER_MAX_BROWSERS": 4,  # browsers open at once; the least recently used idle one is closed first
    "BROWSER_QUEUE_MAX": 256,  # jobs waiting for a page; more are refused with 503
    "BROWSER_QUEUE_TIMEOUT": 30.0,  # seconds a job may wait for a page before a 504
    "BROWSER_DRAIN_TIMEOUT": 20.0,  # on SIGTERM: seconds running jobs may take to finish
    "BROWSER_WATCHDOG_SECONDS": 2.0,  # how often browsers and pages are pinged; a silent one is relaunched
    "BROWSER_HEADLESS": "auto",  # auto: headed on an own Xvfb (or $DISPLAY) when there is one | true | false
    "BROWSER_ANTIBOT_WAIT_S": 8.0,  # seconds a fresh page waits for the site's anti-bot module before its first call
    # where on `window` the site's page keeps its front-end version (the `version` header the pool sends;
    # QWEN_FRONTEND_VERSION when the page has none; "" = never read it)
    "BROWSER_PAGE_VERSION_PATH": "__APP_CONFIG__.version",
    "BROWSER_TEST_HOOKS": False,  # tests only: the pool's POST /v1/debug/pages sends a CDP command to its pages
    "BROWSER_AUTO_STICKY_SECONDS": 300.0,  # auto: after a captcha, go straight to the browser this long
    # uploads (docs/UPLOADS.md)
    "MAX_UPLOAD_MB": 20.0,  # per file; also bounds data: URIs in chat messages
    "QWEN_OSS_BASE_URL": None,  # PUT uploads here instead of https://<bucket>.<endpoint> (tests, mirrors)
    "QWEN_OSS_SIGNATURE": "v4",  # v4 (web front end) | v1 (the seed's ali-oss)
    "QWEN_PARSE_TIMEOUT": 60.0,  # seconds to wait for Qwen to parse an uploaded document
    "QWEN_PARSE_POLL_INTERVAL": 1.0,
    "VISION_MODEL": "qwen3-vl-plus",  # used instead of a model without vision when images are sent
    # GigaChat (Sber), through the official SDK; names are the SDK's own variables
    "GIGACHAT_CREDENTIALS": None,  # the "authorization key": base64(client_id:client_secret)
    "API_KEY": None,  # the seed's name for GIGACHAT_CREDENTIALS, used when that is unset
    "GIGACHAT_SCOPE": "GIGACHAT_API_PERS",  # or GIGACHAT_API_B2B / GIGACHAT_API_CORP
    "GIGACHAT_BASE_URL": "https://gigachat.devices.sberbank.ru/api/v1",
    "GIGACHAT_AUTH_URL": "https://ngw.devices.sberbank.ru:9443/api/v2/oauth",
    "GIGACHAT_VERIFY_SSL_CERTS": True,
    "GIGACHAT_CA_BUNDLE_FILE": None,  # e.g. the "Russian Trusted Root CA" bundle
    "GIGACHAT_MODEL": "GigaChat",  # the model the /gigachat route uses
    "GIGACHAT_TIMEOUT": 120.0,  # seconds per read; long answers take a while
    "GIGACHAT_TOKEN_EXPIRY_BUFFER_MS": 60000,  # refresh the token this long before expiry
    # Dual AI Chat routes (/gigachat, /qwen, /history)
    "DUAL_HISTORY_TURNS": 10,  # stored messages of a session sent with a prompt (seed: 10)
    # Qwen web accounts (`flask accounts`, docs/ACCOUNTS.md)
    "ACCOUNT_DEFAULT_WAIT_HOURS": 1.0,  # WAIT after a rate limit that does not say how long
    "ACCOUNT_AUTO_RELOGIN": False,  # sign in again with credentials kept by `add --remember`
    "ACCOUNT_LOGIN_TIMEOUT": 300.0,  # seconds `accounts add`/`relogin` wait for a browser login
    "CHROME_PATH": None,  # Chrome/Chromium binary; default: Debian's /usr/bin/chromium
    "ACCOUNT_REFRESH_AHEAD_HOURS": 6.0,  # renew a token (refresh token) when less than this is left
    "ACCOUNT_KEEP_MEMORY": False,  # `accounts add/relogin` leave the account's memory and tools on
    "ACCOUNT_QUOTA_MINUTES": 30.0,  # ask entitlement_quota at most this often per account; 0 = never
    "QWEN_QUOTA_FEATURES": "model,thinking,search,t2i,t2v,image_edit,deep_research_deep_research",
    "ACCOUNT_WALLS_FOR_HUMAN": 3,  # captcha walls in a row before an account "needs a human"
    "QWEN_GUEST": "auto",  # auto: chat as a guest when no account is usable | off
    # shared by the bots
    "DEFAULT_SYSTEM_PROMPT": None,
    # local Qwen2.5-Coder (GPTQ) inference worker: workers/inference.py, requirements-local.txt
    "LOCAL_MODEL_PATH": None,  # checkpoint folder; when set the gateway starts and supervises the worker
    "LOCAL_MODEL_URL": "http://127.0.0.1:8001",  # where the worker listens; or unix:///path/to.sock
    "QWEN_SERVER_URL": None,  # the seed's name for LOCAL_MODEL_URL (used when that is left at its default)
    "LOCAL_MODEL_NAME": "qwen2.5-coder-local",  # model id; the checkpoint folder's name is accepted too
    "LOCAL_MODEL_CACHE": "normal",  # normal | q4 (4-bit HQQ KV cache)
    "LOCAL_MODEL_MAX_SEQ_LEN": 0,  # context window (-l); 0 = the checkpoint's max_position_embeddings
    "LOCAL_MODEL_DEVICE": "auto",  # auto | cpu | cuda | cuda:N
    "LOCAL_MODEL_DTYPE": "auto",  # auto (bf16: torch's int4 kernels) | float32 | bfloat16 | float16
    "LOCAL_MODEL_PARALLEL": 4,  # requests decoded together in one batch; the others queue FIFO
    "LOCAL_MODEL_MAX_QUEUE": 16,  # requests waiting beyond the batch; more get 503 + Retry-After
    "LOCAL_MODEL_THREADS": 0,  # torch CPU threads in the worker; 0 = torch's default
    "LOCAL_MODEL_AUTO_INSTALL": True,  # the worker pip-installs requirements-local.txt when missing
    "LOCAL_MODEL_MAX_TOKENS": 4096,  # seed 002 defaults, each overridable per request
    "LOCAL_MODEL_TEMPERATURE": 0.4,
    "LOCAL_MODEL_TOP_P": 0.9,
    "LOCAL_MODEL_TOP_K": 60,
    "LOCAL_MODEL_REPETITION_PENALTY": 1.1,
    "LOCAL_MODEL_CONNECT_TIMEOUT": 3.0,
    "LOCAL_MODEL_READ_TIMEOUT": 600.0,  # seconds without a line from the worker (queued streams get keep-alives)
    # start-up
    "SKIP_ACCOUNT_MENU": False,
    "NON_INTERACTIVE": False,
}


def _coerce(key: str, value: Any) -> Any:
    """Turn a string from .env/environment into the type of the key's default."""
    default = DEFAULTS.get(key)
    if not isinstance(value, str) or default is None:
        return value
    if isinstance(default, bool):
        return value.strip().lower() in TRUE_WORDS
    if isinstance(default, int):
        return int(value.strip())
    if isinstance(default, float):
        return float(value.strip())
    return value


def load_config(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Resolve the settings: defaults, then ``.env``, then the environment, then ``overrides``.

    A test passes ``overrides`` (and usually ``environ={}``) so that the machine's own
    environment cannot leak into it.
    """
    environ = os.environ if environ is None else environ
    if env_file is None:
        env_file = environ.get("QWENPROXY_ENV_FILE", ".env")
    config: dict[str, Any] = dict(DEFAULTS)
    file_values = dotenv_values(env_file) if env_file and Path(env_file).is_file() else {}
    explicit: set[str] = set()  # keys set anywhere but in DEFAULTS
    # an empty env_file ("") means: read no .env at all
    for source in (file_values, environ):
        for key, value in source.items():
            if key in DEFAULTS and value is not None:
                config[key] = _coerce(key, value)
                explicit.add(key)
    for key, value in (overrides or {}).items():
        config[key] = _coerce(key, value)
        explicit.add(key)
    if config.get("MAX_CONTENT_LENGTH_MB") is not None and "MAX_REQUEST_MB" not in explicit:
        config["MAX_REQUEST_MB"] = _coerce("MAX_REQUEST_MB", str(config["MAX_CONTENT_LENGTH_MB"]))
    # the seed's alias for SKIP_ACCOUNT_MENU
    if config.get("NON_INTERACTIVE"):
        config["SKIP_ACCOUNT_MENU"] = True
    pool_socket = str(config.get("BROWSER_POOL_SOCKET") or "")
    if not pool_socket.startswith("http://"):  # a Unix socket: an absolute path, the same for every process
        config["BROWSER_POOL_SOCKET"] = str(Path(pool_socket).resolve()) if pool_socket else _pool_socket(config)
    if not config.get("DATABASE_URL"):
        session_dir = Path(config["SESSION_DIR"])
        config["DATABASE_URL"] = f"sqlite:///{session_dir / 'qwenproxy.db'}"
    return config


def _pool_socket(config: Mapping[str, Any]) -> str:
    """``<SESSION_DIR>/browser_pool.sock``; when that path is too long for a Unix socket
    (about 100 bytes), a name in the temp folder derived from it, the same in every process."""
    path = (Path(config["SESSION_DIR"]) / "browser_pool.sock").resolve()
    if len(str(path).encode()) <= 100:
        return str(path)
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"qwenproxy-{digest}.sock")
