"""An account's folder and the credentials auto re-login needs (``SESSION_DIR/accounts/<id>/``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CREDENTIALS_FILE = "credentials.json"


def account_dir(session_dir: str | os.PathLike, account_id: str) -> Path:
    """``SESSION_DIR/accounts/<id>``: the account's Chromium profile and credentials."""
    if not account_id or "/" in account_id or "\\" in account_id or account_id in (".", ".."):
        raise ValueError(f"bad account id: {account_id!r}")
    return Path(session_dir) / "accounts" / account_id


def save_credentials(session_dir: str | os.PathLike, account_id: str, email: str, password: str) -> Path:
    """Store what auto re-login needs, readable by the owner only (mode 0600).

    Only the SHA-256 of the password is kept: it is what the sign-in API takes (§2.2), and
    it does not reveal a password the user may use elsewhere.
    """
    directory = account_dir(session_dir, account_id)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CREDENTIALS_FILE
    data = {"email": email, "password_sha256": hashlib.sha256(password.encode("utf-8")).hexdigest()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    try:
        os.chmod(path, 0o600)  # an existing file keeps its old mode through os.open
    except OSError:
        pass
    return path


def load_credentials(session_dir: str | os.PathLike, account_id: str) -> dict[str, str] | None:
    path = account_dir(session_dir, account_id) / CREDENTIALS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and data.get("email") and data.get("password_sha256"):
        return {"email": str(data["email"]), "password_sha256": str(data["password_sha256"])}
    return None
