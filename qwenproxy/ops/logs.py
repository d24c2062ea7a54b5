"""Where log lines go (console and ``LOGS_DIR``) and the scrubbing that keeps secrets out.

Flask-free: ``gunicorn.conf.py`` uses it in the master for gunicorn's own loggers, the app
for the root logger. Scrubbing is a safety net under the rule that nothing logs a token,
key or password in the first place.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

from ..private import open_private, private_dir

FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"

_SECRETS = [
    # Authorization: Bearer/Basic <credential>
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE), r"\1 ***"),
    # JWTs (chat.qwen.ai tokens, GigaChat access tokens)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "<jwt>"),
    # token=… in cookies and query strings; "password": "…" / "token": "…" in JSON
    (re.compile(r"\b(token|access_token|api_key|apikey|password|credentials)=([^&;\s\"']+)", re.IGNORECASE), r"\1=***"),
    (
        re.compile(
            r"([\"'](?:token|access_token|api_key|password|credentials|authorization)[\"']\s*:\s*[\"'])[^\"']+",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
]


# one search over the line first: most lines (every access-log line) hold no credential, and
# the four substitutions then cost nothing (a superset of the patterns: only a pre-check)
_ANY_SECRET = re.compile("|".join(f"(?:{pattern.pattern})" for pattern, _ in _SECRETS), re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with credentials that look like credentials replaced."""
    if not _ANY_SECRET.search(text):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats as usual (tracebacks included), then scrubs the whole line."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingFilter(logging.Filter):
    """For loggers whose handlers we do not own (gunicorn's): scrubs the message itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class _DefaultRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


class PrivateWatchedFileHandler(logging.handlers.WatchedFileHandler):
    """``WatchedFileHandler`` whose file (also the one reopened after logrotate moved the
    old one) is created 0600 whatever the umask."""

    def _open(self):  # type: ignore[no-untyped-def]
        return open_private(self.baseFilename, self.mode, encoding=self.encoding)


def file_handler(logs_dir: str | Path, name: str, fmt: str = FORMAT) -> logging.Handler:
    """An appending handler on ``LOGS_DIR/name`` (0600, in a 0700 folder) that logrotate may
    move (it reopens)."""
    path = private_dir(logs_dir)
    handler = PrivateWatchedFileHandler(path / name, encoding="utf-8")
    handler.setFormatter(RedactingFormatter(fmt))
    handler.addFilter(_DefaultRequestId())
    return handler


def has_file_handler(logger: logging.Logger, path: Path) -> bool:
    target = str(path.resolve())
    return any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in logger.handlers)


def attach_gunicorn_files(logs_dir: str | Path) -> None:
    """gunicorn's access and error logs also go to ``LOGS_DIR/access.log`` and ``error.log``."""
    for logger_name, file_name in (("gunicorn.access", "access.log"), ("gunicorn.error", "error.log")):
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
        if not has_file_handler(logger, Path(logs_dir) / file_name):
            logger.addHandler(file_handler(logs_dir, file_name, "%(message)s" if "access" in file_name else FORMAT))
