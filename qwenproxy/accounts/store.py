"""The accounts registry in the database: ``DatabasePool`` and what ``flask accounts`` needs.

The database is the source of truth, not process memory, so every gunicorn worker (and every
gateway machine sharing a PostgreSQL database) sees the same states and the same rotation.

Rotation: each request reads the accounts (one SELECT: a WAIT or INVALID set anywhere counts
at once) and takes the OK one used least recently, by the database's ``last_used_at`` and this
process's own picks. The pick itself writes nothing: ``last_used_at`` and ``requests_served``
are written with the turn's answer, in its transaction (``flush_usage``). One process uses the
accounts in strict turn; several processes or machines are fair within a few requests (a
turn's use is seen by the others when it ends). State changes (WAIT, INVALID, a new token)
are written at once.

States (seed §7.10): OK, WAIT (``reset_at`` in the future), INVALID (``invalid`` set, or the
JWT's ``exp`` has passed — computed, so no request is wasted on an expired token).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from peewee import Case

from .. import db
from ..db.models import Account as AccountRow
from ..errors import RateLimited, UpstreamUnavailable
from ..jwt import jwt_expiry, jwt_user_id
from .credentials import account_dir, load_credentials
from .pool import INVALID, MARKS, OK, WAIT, Account, AccountPool, mask

log = logging.getLogger(__name__)

RELOGIN_AHEAD = 600.0  # with auto re-login, renew a token this many seconds before it expires
RELOGIN_BACKOFF = 300.0  # a failed automatic re-login is not retried sooner than this
RELOGIN_AFTER_SUCCESS = 60.0  # nor a successful one repeated sooner than this

Relogin = Callable[[AccountRow], "str | None"]


# --------------------------------------------------------------------------- small helpers

_JWT = re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]{4,}")


class RedactTokens(logging.Filter):
    """Masks anything JWT-shaped in a record: peewee logs SQL parameters at DEBUG level."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if _JWT.search(text):
            record.msg, record.args = _JWT.sub(lambda m: mask(m.group()), text), None
        return True


def iso(ts: float | None) -> str | None:
    """Unix seconds as the seed's ISO form (``2025-07-18T02:11:30.000Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def parse_time(value: Any) -> float | None:
    """A ``resetAt`` from tokens.json: ISO string, epoch ms or s, or null."""
    if value in (None, "", 0):
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) / 1000 if value > 1e11 else float(value)
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def mask_email(email: str | None) -> str | None:
    if not email:
        return None
    name, at, domain = email.partition("@")
    return (name[:2] + "…" + at + domain) if at else mask(email)


def new_account_id(clock: Callable[[], float] = time.time) -> str:
    """``acc_<epoch-ms>`` like the seed (made unique if that id is taken)."""
    base = int(clock() * 1000)
    with db.session():
        for n in range(1000):
            candidate = f"acc_{base + n}"
            if not AccountRow.select().where(AccountRow.id == candidate).exists():
                return candidate
    raise RuntimeError("could not find a free account id")


def state_of(row: AccountRow, now: float) -> str:
    if row.invalid:
        return INVALID
    if row.expires_at is not None and row.expires_at <= now:
        return INVALID
    if row.reset_at is not None and row.reset_at > now:
        return WAIT
    return OK


def _usable(now: float):
    """The SQL condition for OK (kept portable: SQLite and PostgreSQL)."""
    return (
        (AccountRow.invalid == False)  # noqa: E712 - a SQL expression, not a Python comparison
        & (AccountRow.expires_at.is_null() | (AccountRow.expires_at > now))
        & (AccountRow.reset_at.is_null() | (AccountRow.reset_at <= now))
    )


# --------------------------------------------------------------------------- credentials


def signin_relogin(client: Any, session_dir: str | os.PathLike) -> Relogin:
    """A re-login hook for ``DatabasePool``: the sign-in API with the stored credentials."""

    def relogin(row: AccountRow) -> str | None:
        creds = load_credentials(session_dir, row.id)
        if creds is None:
            return None
        payload = client.signin(creds["email"], creds["password_sha256"], prehashed=True)
        return str(payload["token"])

    return relogin


# --------------------------------------------------------------------------- the pool


class DatabasePool(AccountPool):
    """Accounts in the ``account`` table; ``clock`` is injectable (tests move time)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        default_wait_hours: float = 1.0,
        relogin: Relogin | None = None,
    ) -> None:
        self.clock = clock
        self.default_wait_hours = default_wait_hours
        self.relogin = relogin
        self._relogin_after: dict[str, float] = {}  # account id -> earliest next automatic try
        self._relogin_lock = threading.Lock()
        # usage not yet written (flush_usage): picks and served counts of this process
        self._usage_lock = threading.Lock()
        self._picked: dict[str, float] = {}  # account id -> when this process last took it
        self._stamp = 0.0
        self._used: dict[str, float] = {}
        self._served: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], client: Any = None) -> DatabasePool:
        relogin = None
        if config.get("ACCOUNT_AUTO_RELOGIN") and client is not None:
            relogin = signin_relogin(client, config["SESSION_DIR"])
        return cls(default_wait_hours=float(config.get("ACCOUNT_DEFAULT_WAIT_HOURS") or 1.0), relogin=relogin)

    # ------------------------------------------------------------------ AccountPool

    def acquire(self, *, prefer: str | None = None, exclude: set[str] | frozenset = frozenset()) -> Account:
        """The usable account used least recently (``prefer`` if usable); no write.

        The states are read from the database on every call, so a WAIT or INVALID set by any
        worker or machine counts at once. Who used what: this process's own picks at once,
        other processes' when their turns end (``flush_usage``).
        """
        with db.session():
            for _ in range(3):
                now = self.clock()
                rows = list(AccountRow.select().order_by(AccountRow.last_used_at, AccountRow.id))
                if self.relogin is None or not self._auto_relogin(rows, now):
                    break  # else tokens changed: read again
        usable = [r for r in rows if r.id not in exclude and state_of(r, now) == OK]
        if not usable:
            raise self.unavailable(rows, now)
        with self._usage_lock:
            picked = self._picked

            def last_use(row: AccountRow) -> float:
                return max(row.last_used_at or 0.0, picked.get(row.id, 0.0))

            choice = next((r for r in usable if r.id == prefer), None) or min(usable, key=last_use)
            latest = max(self._stamp, *(last_use(r) for r in rows))
            self._stamp = stamp = max(now, latest + 0.001)
            picked[choice.id] = stamp
            self._used[choice.id] = stamp
        return Account(id=choice.id, token=choice.token, email=choice.email, profile_dir=choice.profile_dir)

    def any_token(self) -> str | None:
        """A token for background calls (the model list), without a turn in the rotation."""
        account = self.any_account()
        return account.token if account is not None else None

    def any_account(self) -> Account | None:
        """The most recently used usable account, without a turn in the rotation."""
        try:
            now = self.clock()
            with db.session():
                row = AccountRow.select().where(_usable(now)).order_by(AccountRow.last_used_at.desc()).first()
            if row is None:
                return None
            return Account(id=row.id, token=row.token, email=row.email, profile_dir=row.profile_dir)
        except Exception:
            return None

    def unavailable(self, rows: list[AccountRow], now: float) -> Exception:
        """The error for "no OK account": 429 + Retry-After if one waits, else 503."""
        if not rows:
            return UpstreamUnavailable(
                "No Qwen account is configured: run `flask accounts add` (or set QWEN_TOKEN) and try again",
                code="no_accounts",
            )
        invalid = [r.id for r in rows if state_of(r, now) == INVALID]
        waiting = [r.reset_at for r in rows if state_of(r, now) == WAIT]
        hint = ""
        if invalid:
            shown = ", ".join(invalid[:3]) + (" …" if len(invalid) > 3 else "")
            hint = f" Invalid accounts ({shown}): run `flask accounts relogin ID`."
        if waiting:
            first = min(waiting)
            return RateLimited(
                f"Every usable Qwen account has reached its quota; the first is free again at {iso(first)}."
                f" Add accounts with `flask accounts add`.{hint}",
                retry_after=max(1.0, first - now),
                code="accounts_rate_limited",
            )
        if not invalid:  # every OK account was excluded by the caller
            return UpstreamUnavailable("No other Qwen account is available", code="accounts_exhausted")
        return UpstreamUnavailable(
            "No usable Qwen account: every token is expired or was rejected."
            f"{hint} Or add one with `flask accounts add`; `flask accounts list` shows them all.",
            code="accounts_invalid",
        )

    def mark_rate_limited(self, account_id: str, hours: float | None) -> None:
        hours = float(hours) if hours and hours > 0 else self.default_wait_hours
        until = self.clock() + 3600.0 * hours
        with db.session():
            AccountRow.update(reset_at=until, last_error=f"RateLimited: quota reached, wait {hours:g} h").where(
                AccountRow.id == account_id
            ).execute()
        log.warning("account %s rate limited for %g h (until %s)", account_id, hours, iso(until))

    def mark_invalid(self, account_id: str, reason: str) -> None:
        with db.session():
            AccountRow.update(invalid=True, last_error=str(reason)[:500]).where(AccountRow.id == account_id).execute()
            log.warning("account %s is INVALID: %s", account_id, reason)
            if self.relogin is not None:
                row = AccountRow.get_or_none(AccountRow.id == account_id)
                if row is not None:
                    self._try_relogin(row, self.clock())

    def mark_success(self, account_id: str) -> None:
        """Counted in memory; written with the turn's answer (``flush_usage``)."""
        with self._usage_lock:
            self._served[account_id] = self._served.get(account_id, 0) + 1

    def flush_usage(self) -> None:
        """Write this process's picks (``last_used_at``) and served counts since the last
        flush. Runs inside the transaction that saves a turn's answer (``db.flush_deferred``),
        so the rotation costs no write of its own."""
        with self._usage_lock:
            used, self._used = self._used, {}
            served, self._served = self._served, {}
        if not used and not served:
            return
        with db.session():
            for account_id in used.keys() | served.keys():
                values: dict[Any, Any] = {}
                if account_id in served:
                    values[AccountRow.requests_served] = AccountRow.requests_served + served[account_id]
                if account_id in used:
                    stamp = used[account_id]
                    values[AccountRow.last_used_at] = Case(
                        None, [(AccountRow.last_used_at < stamp, stamp)], AccountRow.last_used_at
                    )
                AccountRow.update(values).where(AccountRow.id == account_id).execute()

    def status(self) -> list[dict[str, Any]]:
        now = self.clock()
        self.flush_usage()
        with db.session():
            rows = list(AccountRow.select().order_by(AccountRow.created_at, AccountRow.id))
        return [self.describe(r, now) for r in rows]

    @staticmethod
    def describe(row: AccountRow, now: float) -> dict[str, Any]:
        state = state_of(row, now)
        error = row.last_error
        if state == INVALID and not row.invalid:
            error = f"Token expired at {iso(row.expires_at)}"
        return {
            "id": row.id,
            "status": state,
            "mark": MARKS[state],
            "resetAt": iso(row.reset_at) if state == WAIT else None,
            "lastError": error,
            "requests": row.requests_served,
            "token": mask(row.token),
            "email": mask_email(row.email),
            "expiresAt": iso(row.expires_at),
            "lastUsedAt": iso(row.last_used_at) if row.last_used_at else None,
            "source": row.source,
        }

    # ------------------------------------------------------------------ automatic re-login

    def _auto_relogin(self, rows: list[AccountRow], now: float) -> bool:
        changed = False
        for row in rows:
            expiring = row.expires_at is not None and row.expires_at <= now + RELOGIN_AHEAD
            if row.invalid or expiring:
                changed |= self._try_relogin(row, now)
        return changed

    def _try_relogin(self, row: AccountRow, now: float) -> bool:
        """Re-login with stored credentials (``ACCOUNT_AUTO_RELOGIN``); True if the token changed."""
        assert self.relogin is not None
        with self._relogin_lock:
            if self._relogin_after.get(row.id, 0.0) > now:
                return False
            self._relogin_after[row.id] = now + RELOGIN_BACKOFF
        try:
            token = self.relogin(row)
        except Exception as exc:  # a failed sign-in must never break the request
            log.warning("automatic re-login of %s failed: %s", row.id, exc)
            return False
        if not token:
            return False
        self.set_token(row.id, token)
        log.info("account %s logged in again automatically (%s)", row.id, mask(token))
        with self._relogin_lock:  # not again at once, even if Qwen handed back a short-lived token
            self._relogin_after[row.id] = now + RELOGIN_AFTER_SUCCESS
        return True

    # ------------------------------------------------------------------ registry operations

    def accounts(self) -> list[AccountRow]:
        with db.session():
            return list(AccountRow.select().order_by(AccountRow.created_at, AccountRow.id))

    def get(self, account_id: str) -> AccountRow | None:
        with db.session():
            return AccountRow.get_or_none(AccountRow.id == account_id)

    def find_user(self, user_id: str) -> AccountRow | None:
        """The account of a Qwen user (the JWT's ``id`` claim)."""
        with db.session():
            return AccountRow.get_or_none(AccountRow.user_id == user_id)

    def find(self, key: str) -> AccountRow | None:
        """An account by id, by its number in ``list`` (1-based) or by e-mail."""
        rows = self.accounts()
        for row in rows:
            if row.id == key:
                return row
        if key.isdigit() and 1 <= int(key) <= len(rows):
            return rows[int(key) - 1]
        matches = [r for r in rows if r.email and r.email.lower() == key.lower()]
        return matches[0] if len(matches) == 1 else None

    def set_token(self, account_id: str, token: str, **fields: Any) -> None:
        """A new token for an account (a re-login): it is OK again unless it waits for quota."""
        values = {
            "token": token,
            "expires_at": jwt_expiry(token),
            "user_id": jwt_user_id(token),
            "invalid": False,
            "last_error": None,
            **{k: v for k, v in fields.items() if v is not None},
        }
        with db.session():
            AccountRow.update(**values).where(AccountRow.id == account_id).execute()

    def add(
        self,
        token: str,
        *,
        source: str,
        email: str | None = None,
        account_id: str | None = None,
        profile_dir: str | None = None,
    ) -> tuple[AccountRow, bool]:
        """Save a token: a new account, or the existing one of the same Qwen user (JWT ``id``).

        Returns the account and whether it is new.
        """
        user_id = jwt_user_id(token)
        with db.session():
            existing = None
            if user_id:
                existing = AccountRow.get_or_none(AccountRow.user_id == user_id)
            if existing is None:
                existing = AccountRow.get_or_none(AccountRow.token == token)
            if existing is not None:
                self.set_token(existing.id, token, email=email, profile_dir=profile_dir)
                return AccountRow.get_by_id(existing.id), False
            row = AccountRow.create(
                id=account_id or new_account_id(self.clock),
                token=token,
                user_id=user_id,
                email=email,
                expires_at=jwt_expiry(token),
                source=source,
                profile_dir=profile_dir,
                created_at=self.clock(),
            )
            return row, True

    def remove(self, account_id: str, session_dir: str | os.PathLike | None = None) -> bool:
        """Delete the account and its folder (profile, credentials), as the seed's menu does."""
        with db.session():
            deleted = AccountRow.delete().where(AccountRow.id == account_id).execute()
        if session_dir is not None:
            directory = account_dir(session_dir, account_id)
            if directory.exists():
                shutil.rmtree(directory, ignore_errors=True)
        return bool(deleted)

    def set_state(self, account_id: str, *, invalid: bool | None = None, error: str | None = None) -> None:
        values: dict[str, Any] = {"last_error": error}
        if invalid is not None:
            values["invalid"] = invalid
        with db.session():
            AccountRow.update(**values).where(AccountRow.id == account_id).execute()

    def import_seed(self, entries: Any) -> dict[str, int]:
        """The Node proxy's ``session/tokens.json``: ``[{id, token, resetAt, invalid?}, …]``.

        Ids and states are kept as they are; an id already here gets the file's token and
        state; an identical entry is skipped.
        """
        if isinstance(entries, dict) and isinstance(entries.get("accounts"), list):
            entries = entries["accounts"]
        if not isinstance(entries, list):
            raise ValueError("expected a JSON array of {id, token, resetAt, invalid?} objects")
        counts = {"added": 0, "updated": 0, "skipped": 0}
        now = self.clock()
        with db.session(), db.database.atomic():
            for n, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or not entry["token"].strip():
                    raise ValueError(f"entry {n}: an object with a `token` string is expected")
                token = entry["token"].strip()
                account_id = str(entry.get("id") or f"acc_{int(now * 1000) + n}")
                account_dir(".", account_id)  # validates the id
                reset_at = parse_time(entry.get("resetAt"))
                invalid = bool(entry.get("invalid"))
                added = parse_time(entry.get("added_at") or entry.get("addedAt"))
                existing = AccountRow.get_or_none(AccountRow.id == account_id)
                if existing is None:
                    AccountRow.create(
                        id=account_id,
                        token=token,
                        user_id=jwt_user_id(token),
                        expires_at=jwt_expiry(token),
                        reset_at=reset_at,
                        invalid=invalid,
                        last_error="marked invalid in tokens.json" if invalid else None,
                        source="import",
                        created_at=added or _id_time(account_id) or now,
                    )
                    counts["added"] += 1
                elif existing.token == token and existing.reset_at == reset_at and existing.invalid == invalid:
                    counts["skipped"] += 1
                else:
                    AccountRow.update(
                        token=token,
                        user_id=jwt_user_id(token),
                        expires_at=jwt_expiry(token),
                        reset_at=reset_at,
                        invalid=invalid,
                    ).where(AccountRow.id == account_id).execute()
                    counts["updated"] += 1
        return counts

    def ensure_tokens(self, tokens: Iterable[str], source: str = "env") -> list[str]:
        """Import ``QWEN_TOKEN`` at start (idempotent, safe in several processes at once).

        A token already stored is left alone; a newer token of a stored Qwen user replaces
        the old one (the quick-start user updating ``.env``). Returns the ids touched.
        """
        touched: list[str] = []
        with db.session():
            for token in (t.strip() for t in tokens):
                if not token:
                    continue
                if AccountRow.select().where(AccountRow.token == token).exists():
                    continue
                user_id = jwt_user_id(token)
                same_user = AccountRow.get_or_none(AccountRow.user_id == user_id) if user_id else None
                if same_user is not None:
                    new_exp, old_exp = jwt_expiry(token), same_user.expires_at
                    if same_user.invalid or new_exp is None or old_exp is None or new_exp > old_exp:
                        self.set_token(same_user.id, token)
                        touched.append(same_user.id)
                    continue
                account_id = f"{source}_{hashlib.sha256(token.encode()).hexdigest()[:12]}"
                AccountRow.insert(
                    id=account_id,
                    token=token,
                    user_id=user_id,
                    expires_at=jwt_expiry(token),
                    source=source,
                    created_at=self.clock(),
                    last_used_at=0.0,
                    requests_served=0,
                    invalid=False,
                ).on_conflict_ignore().execute()
                touched.append(account_id)
        return touched


def _id_time(account_id: str) -> float | None:
    """The creation time in a seed id ``acc_<epoch-ms>``."""
    _, _, digits = account_id.partition("_")
    return int(digits) / 1000 if digits.isdigit() and len(digits) >= 12 else None


# --------------------------------------------------------------------------- probing


def check_account(pool: DatabasePool, client: Any, row: AccountRow) -> tuple[str, str]:
    """Probe one token upstream (``GET /api/v1/auths/``) and store the verdict.

    Returns ``(state, note)``. A valid token clears INVALID (a WAIT keeps waiting: the probe
    does not consume quota, so it cannot tell); a rejected one becomes INVALID; an upstream
    that cannot be reached changes nothing.
    """
    from ..errors import ApiError, Unauthorized

    now = pool.clock()
    if row.expires_at is not None and row.expires_at <= now:
        note = f"token expired at {iso(row.expires_at)}"
        pool.set_state(row.id, invalid=True, error=f"Token expired at {iso(row.expires_at)}")
        return INVALID, note
    try:
        info = client.session_info(row.token)
    except Unauthorized as exc:
        pool.set_state(row.id, invalid=True, error=exc.message)
        return INVALID, exc.message
    except ApiError as exc:
        return "ERROR", exc.message
    email = info.get("email") if isinstance(info, dict) else None
    with db.session():
        values: dict[str, Any] = {"invalid": False}
        if row.invalid:
            values["last_error"] = None
        if email and not row.email:
            values["email"] = str(email)
        AccountRow.update(**values).where(AccountRow.id == row.id).execute()
        fresh = AccountRow.get_by_id(row.id)
    return state_of(fresh, now), "token accepted"


# --------------------------------------------------------------------------- app wiring


def signin_client(config: Mapping[str, Any]) -> Any:
    """A plain HTTPS Qwen client for sign-in and probes (no browser pool needed)."""
    from ..qwen.client import QwenClient
    from ..qwen.transport import DirectTransport

    transport = DirectTransport(float(config["QWEN_CONNECT_TIMEOUT"]), float(config["QWEN_READ_TIMEOUT"]))
    return QwenClient(transport, config)


def init_app(app: Any) -> DatabasePool:
    """Put the pool at ``app.extensions["account_pool"]`` (before the providers are built),
    import ``QWEN_TOKEN`` into the registry (``accounts/cli.py`` adds ``flask accounts``)."""
    from peewee import DatabaseError

    config = app.config
    client = signin_client(config) if config.get("ACCOUNT_AUTO_RELOGIN") else None
    pool = DatabasePool.from_config(config, client)
    tokens = [t for t in str(config.get("QWEN_TOKEN") or "").split(",") if t.strip()]
    if tokens:
        try:
            pool.ensure_tokens(tokens)
        except DatabaseError as exc:  # e.g. AUTO_MIGRATE=false before `flask db upgrade`
            log.warning("could not import QWEN_TOKEN into the accounts registry: %s", exc)
    app.extensions["account_pool"] = pool
    db.defer_writes("accounts", pool.flush_usage)
    sql_log = logging.getLogger("peewee")  # our own modules only ever log mask(token)
    if not any(isinstance(f, RedactTokens) for f in sql_log.filters):
        sql_log.addFilter(RedactTokens())
    return pool
