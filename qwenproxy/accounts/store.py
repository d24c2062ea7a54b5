"""The accounts registry in the database: ``DatabasePool`` and what ``flask accounts`` needs.

The database is the source of truth, not process memory, so every gunicorn worker (and every
gateway machine sharing a PostgreSQL database) sees the same states and the same rotation.

Rotation: each request reads the accounts (one SELECT: a WAIT, INVALID or NEEDS_HUMAN set
anywhere counts at once) and takes the OK one used least recently, by the database's
``last_used_at`` and this process's own picks. The pick itself writes nothing:
``last_used_at``, ``requests_served`` and the reset of ``walls`` are written with the turn's
answer, in its transaction (``flush_usage``). One process uses the accounts in strict turn;
several processes or machines are fair within a few requests (a turn's use is seen by the
others when it ends). State changes (WAIT, INVALID, a new token) are written at once.

States (seed §7.10): OK, WAIT (``reset_at`` in the future), INVALID (``invalid`` set, or the
JWT's ``exp`` has passed — computed, so no request is wasted on an expired token), and
NEEDS_HUMAN (the site kept walling the account with its captcha: ``flask accounts solve ID``).

Token renewal (2026 §5): an account signed in through the v2 API has a refresh token. When its
token has less than ``ACCOUNT_REFRESH_AHEAD_HOURS`` left, the request that takes it renews it
first (``POST /api/v2/auths/refresh``). A lease taken by compare-and-swap
(``refresh_lease_until``) lets one process refresh while the others go on with the current,
still valid token; a refresh token is often single-use, so two refreshes would break it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from .. import db
from ..db import statements
from ..db.models import Account as AccountRow
from ..errors import RateLimited, UpstreamUnavailable
from ..jwt import jwt_expiry, jwt_user_id
from .credentials import account_dir, load_credentials
from .pool import INVALID, LABELS, MARKS, NEEDS_HUMAN, OK, WAIT, Account, AccountPool, guest_mode, mask

log = logging.getLogger(__name__)

RELOGIN_AHEAD = 600.0  # with auto re-login, renew a token this many seconds before it expires
RELOGIN_BACKOFF = 300.0  # a failed automatic re-login is not retried sooner than this
RELOGIN_AFTER_SUCCESS = 60.0  # nor a successful one repeated sooner than this
REFRESH_LEASE = 30.0  # seconds one process may take to refresh a token before another may try
REFRESH_RETRY = 300.0  # after a refresh that failed for a passing reason (network, wall)
REFRESH_WAIT = 4.0  # a request whose only accounts are being refreshed waits this long at most
QUOTA_TIMEOUT = 5.0  # seconds an entitlement_quota call may take
# the SPA's feature list for entitlement_quota (qwengate quotaService.ts), QWEN_QUOTA_FEATURES
QUOTA_FEATURES = "model,thinking,search,t2i,t2v,image_edit,deep_research_deep_research"

# A re-login hook returns the new token, or the sign-in answer ({token, refresh_token, …}).
Relogin = Callable[[AccountRow], "str | dict[str, Any] | None"]


# --------------------------------------------------------------------------- small helpers

_JWT = re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]{4,}")


class RedactTokens(logging.Filter):
    """Masks anything JWT-shaped in a record: peewee logs SQL parameters at DEBUG level.

    Refresh tokens have no fixed shape: every long word among the parameters of a statement
    on the ``account`` table is masked too."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], str) and '"account"' in msg[0]:
            sql, params = msg
            hidden = [mask(p) if isinstance(p, str) and len(p) >= 24 and " " not in p else p for p in params or ()]
            record.msg, record.args = (sql, hidden), None
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
    if row.needs_human:
        return NEEDS_HUMAN
    if row.reset_at is not None and row.reset_at > now:
        return WAIT
    return OK


def _usable(now: float):
    """The SQL condition for OK (kept portable: SQLite and PostgreSQL)."""
    return (
        (AccountRow.invalid == False)  # noqa: E712 - a SQL expression, not a Python comparison
        & (AccountRow.needs_human == False)  # noqa: E712
        & (AccountRow.expires_at.is_null() | (AccountRow.expires_at > now))
        & (AccountRow.reset_at.is_null() | (AccountRow.reset_at <= now))
    )


def quota_view(raw: Any) -> dict[str, Any] | None:
    """An ``entitlement_quota`` answer as shown on the status page: the tier and every limited
    feature or model (``times_left`` -1 is unlimited and left out)."""
    if not isinstance(raw, dict):
        return None
    limited: dict[str, str] = {}

    def add(name: str, quota: Any) -> None:
        if not isinstance(quota, dict) or not isinstance(quota.get("times_left"), (int, float)):
            return
        if quota["times_left"] < 0:
            return
        amount, unit = quota.get("time_amount") or 1, quota.get("time_unit") or "day"
        limited[name] = (
            f"{int(quota['times_left'])}/{unit}" if amount == 1 else f"{int(quota['times_left'])}/{amount} {unit}"
        )

    for key, value in raw.items():
        if key == "model" and isinstance(value, dict):
            for model, quota in value.items():
                add(str(model), quota)
        else:
            add(str(key), value)
    tier = raw.get("user_tier")
    text = ", ".join(f"{k} {v}" for k, v in limited.items()) or "unlimited"
    return {"tier": tier, "limited": limited, "text": f"{tier}: {text}" if tier else text}


# --------------------------------------------------------------------------- credentials


def signin_relogin(client: Any, session_dir: str | os.PathLike) -> Relogin:
    """A re-login hook for ``DatabasePool``: the sign-in API with the stored credentials."""

    def relogin(row: AccountRow) -> dict[str, Any] | None:
        creds = load_credentials(session_dir, row.id)
        if creds is None:
            return None
        return client.signin(creds["email"], creds["password_sha256"], prehashed=True)

    return relogin


def refresh_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The columns a sign-in or refresh answer fills besides the token."""
    refresh = payload.get("refresh_token")
    expires = payload.get("refresh_expires_at")
    return {
        "refresh_token": str(refresh) if refresh else None,
        "refresh_expires_at": float(expires) if isinstance(expires, (int, float)) else None,
    }


# --------------------------------------------------------------------------- the pool


def _rotation_order():
    """Every account, least recently used first (the rotation's one read per request)."""
    return AccountRow.select().order_by(AccountRow.last_used_at, AccountRow.id)


def _usage_sql(quote: Callable[[str], str], param: str) -> str:
    """The usage a turn flushes (``flush_usage``): served count, walls reset on a success,
    last use moved forward only."""
    served, walls, used, key = (quote(n) for n in ("requests_served", "walls", "last_used_at", "id"))
    return (
        f"UPDATE {quote('account')} SET {served} = {served} + {param}, "
        f"{walls} = CASE WHEN {param} > 0 THEN 0 ELSE {walls} END, "
        f"{used} = CASE WHEN {used} < {param} THEN {param} ELSE {used} END WHERE {key} = {param}"
    )


class DatabasePool(AccountPool):
    """Accounts in the ``account`` table; ``clock`` is injectable (tests move time)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        default_wait_hours: float = 1.0,
        relogin: Relogin | None = None,
        client: Any = None,
        client_factory: Callable[[], Any] | None = None,
        refresh_ahead_hours: float = 6.0,
        walls_for_human: int = 3,
        quota_minutes: float = 30.0,
        quota_features: Iterable[str] = QUOTA_FEATURES.split(","),
        guest: str = "off",
    ) -> None:
        self.clock = clock
        self.default_wait_hours = default_wait_hours
        self.relogin = relogin
        self._client = client  # a QwenClient for refresh and quota (the provider's, once built)
        self._client_factory = client_factory
        self.refresh_ahead = 3600.0 * refresh_ahead_hours
        self.walls_for_human = max(1, int(walls_for_human))
        self.quota_seconds = 60.0 * quota_minutes
        self.quota_features = [f.strip() for f in quota_features if f.strip()]
        self.guest_mode = guest
        self._relogin_after: dict[str, float] = {}  # account id -> earliest next automatic try
        self._relogin_lock = threading.Lock()
        self._quota_lock = threading.Lock()
        self._quota_running = False
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
        return cls(
            default_wait_hours=float(config.get("ACCOUNT_DEFAULT_WAIT_HOURS") or 1.0),
            relogin=relogin,
            client=client,
            client_factory=lambda: signin_client(config),
            refresh_ahead_hours=float(config.get("ACCOUNT_REFRESH_AHEAD_HOURS", 6.0)),
            walls_for_human=int(config.get("ACCOUNT_WALLS_FOR_HUMAN") or 3),
            quota_minutes=float(config.get("ACCOUNT_QUOTA_MINUTES", 30.0)),
            quota_features=str(config.get("QWEN_QUOTA_FEATURES") or QUOTA_FEATURES).split(","),
            guest=guest_mode(config),
        )

    @property
    def client(self) -> Any:
        """The Qwen client for token refresh and quota; a plain HTTPS one until the Qwen
        provider hands over its own (browser pool in production)."""
        if self._client is None and self._client_factory is not None:
            self._client = self._client_factory()
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value

    def use_client(self, client: Any) -> None:
        self._client = client

    # ------------------------------------------------------------------ AccountPool

    def acquire(self, *, prefer: str | None = None, exclude: set[str] | frozenset = frozenset()) -> Account:
        """The usable account used least recently (``prefer`` if usable); the pick writes
        nothing (module docstring: usage is written with the turn's answer)."""
        with db.session():
            waited_since: float | None = None
            for _ in range(50):
                now = self.clock()
                sql, params = statements.compiled("accounts.rotation", _rotation_order)
                rows = list(AccountRow.raw(sql, *params))
                if self._renew_expired(rows, now):
                    continue  # tokens changed: read again
                if self.relogin is not None and self._auto_relogin(rows, now):
                    continue  # tokens changed: read again
                usable = [r for r in rows if r.id not in exclude and state_of(r, now) == OK]
                if not usable:
                    # an expired token another process is renewing right now: wait for it, briefly
                    renewing = [r for r in rows if r.id not in exclude and self._being_renewed(r, now)]
                    waited_since = time.monotonic() if waited_since is None else waited_since
                    if renewing and time.monotonic() - waited_since < REFRESH_WAIT:
                        time.sleep(0.1)
                        continue
                    raise self.unavailable(rows, now)
                choice = self._pick(rows, usable, prefer, now)
                token = choice.token
                if self._refresh_due(choice, now):  # renewed before it expires (2026 §5)
                    token = self.renew(choice, now) or token
                return Account(id=choice.id, token=token, email=choice.email, profile_dir=choice.profile_dir)
        raise UpstreamUnavailable("The accounts registry is too busy; try again", code="accounts_busy")

    def lookup(self, account_id: str) -> Account | None:
        with db.session():
            row = AccountRow.get_or_none(AccountRow.id == account_id)
        if row is None:
            return None
        return Account(id=row.id, token=row.token, email=row.email, profile_dir=row.profile_dir)

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
        human = [r.id for r in rows if state_of(r, now) == NEEDS_HUMAN]
        hint = ""
        if invalid:
            shown = ", ".join(invalid[:3]) + (" …" if len(invalid) > 3 else "")
            hint = f" Invalid accounts ({shown}): run `flask accounts relogin ID`."
        if human:
            shown = ", ".join(human[:3]) + (" …" if len(human) > 3 else "")
            hint += (
                f" Qwen shows a captcha to {shown}: run `flask accounts solve ID` on a machine with a screen"
                " and pass it once."
            )
        if waiting:
            first = min(waiting)
            return RateLimited(
                f"Every usable Qwen account has reached its quota; the first is free again at {iso(first)}."
                f" Add accounts with `flask accounts add`.{hint}",
                retry_after=max(1.0, first - now),
                code="accounts_rate_limited",
            )
        if human:
            return UpstreamUnavailable(f"No usable Qwen account.{hint}", code="accounts_need_human")
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

    def _pick(self, rows: list[AccountRow], usable: list[AccountRow], prefer: str | None, now: float) -> AccountRow:
        """``prefer`` if usable, else the least recently used by the database's ``last_used_at``
        and this process's own picks, which are noted (``flush_usage`` writes them)."""
        with self._usage_lock:
            picked = self._picked

            def last_use(row: AccountRow) -> float:
                return max(row.last_used_at or 0.0, picked.get(row.id, 0.0))

            choice = next((r for r in usable if r.id == prefer), None) or min(usable, key=last_use)
            latest = max(self._stamp, *(last_use(r) for r in rows))
            self._stamp = stamp = max(now, latest + 0.001)
            picked[choice.id] = stamp
            self._used[choice.id] = stamp
        return choice

    def mark_success(self, account_id: str) -> None:
        """Counted in memory; written with the turn's answer (``flush_usage``)."""
        with self._usage_lock:
            self._served[account_id] = self._served.get(account_id, 0) + 1

    def flush_usage(self) -> None:
        """Write this process's picks (``last_used_at``), served counts and wall resets since
        the last flush. Runs inside the transaction that saves a turn's answer
        (``db.flush_deferred``), so the rotation costs no write of its own."""
        with self._usage_lock:
            used, self._used = self._used, {}
            served, self._served = self._served, {}
        if not used and not served:
            return
        with db.session():
            for account_id in used.keys() | served.keys():
                # a success ends a run of captcha walls; last use only moves forward
                count, stamp = served.get(account_id, 0), used.get(account_id, 0.0)
                statements.execute("accounts.usage", _usage_sql, [count, count, stamp, stamp, account_id])

    def note_wall(self, account_id: str) -> None:
        """One more captcha/WAF wall in a row; ``ACCOUNT_WALLS_FOR_HUMAN`` of them and the
        account needs a human (skipped by rotation until ``flask accounts solve ID``)."""
        with db.session():
            AccountRow.update(walls=AccountRow.walls + 1).where(AccountRow.id == account_id).execute()
            flagged = (
                AccountRow.update(
                    needs_human=True,
                    last_error=(
                        f"Qwen keeps answering with a captcha ({self.walls_for_human} times in a row): "
                        f"run `flask accounts solve {account_id}` and pass it once"
                    ),
                )
                .where(
                    (AccountRow.id == account_id)
                    & (AccountRow.walls >= self.walls_for_human)
                    & (AccountRow.needs_human == False)  # noqa: E712
                )
                .execute()
            )
        if flagged:
            log.warning("account %s needs a human: the site keeps answering with a captcha", account_id)

    def clear_human(self, account_id: str) -> None:
        """A person passed the captcha (``flask accounts solve``): back in rotation."""
        with db.session():
            AccountRow.update(needs_human=False, walls=0, last_error=None).where(AccountRow.id == account_id).execute()

    def status(self) -> list[dict[str, Any]]:
        self.flush_usage()
        now = self.clock()
        with db.session():
            rows = list(AccountRow.select().order_by(AccountRow.created_at, AccountRow.id))
        if any(self._quota_due(r, now) for r in rows):
            self._refresh_quotas_in_background()
        return [self.describe(r, now) for r in rows]

    @staticmethod
    def describe(row: AccountRow, now: float) -> dict[str, Any]:
        state = state_of(row, now)
        error = row.last_error
        if state == INVALID and not row.invalid:
            error = f"Token expired at {iso(row.expires_at)}"
        quota = None
        if row.quota:
            try:
                quota = quota_view(json.loads(row.quota))
            except ValueError:
                quota = None
        return {
            "id": row.id,
            "status": state,
            "label": LABELS[state],
            "mark": MARKS[state],
            "resetAt": iso(row.reset_at) if state == WAIT else None,
            "lastError": error,
            "requests": row.requests_served,
            "token": mask(row.token),
            "email": mask_email(row.email),
            "expiresAt": iso(row.expires_at),
            "lastUsedAt": iso(row.last_used_at) if row.last_used_at else None,
            "source": row.source,
            "renewable": bool(row.refresh_token),
            "walls": row.walls or 0,
            "quota": quota,
            "quotaAt": iso(row.quota_at) if quota else None,
        }

    # ------------------------------------------------------------------ token renewal (2026 §5)

    def _ahead(self, row: AccountRow) -> float:
        """How long before expiry a token is renewed: ``refresh_ahead``, or half the token's
        life when tokens live shorter than that (no refresh at every request)."""
        if row.token_at is not None and row.expires_at is not None and row.expires_at > row.token_at:
            return min(self.refresh_ahead, (row.expires_at - row.token_at) / 2)
        return self.refresh_ahead

    def _refresh_due(self, row: AccountRow, now: float) -> bool:
        if not row.refresh_token or row.invalid or row.expires_at is None:
            return False
        if row.refresh_expires_at is not None and row.refresh_expires_at <= now:
            return False
        if row.refresh_lease_until is not None and row.refresh_lease_until > now:
            return False  # another process is at it (or a recent try failed)
        return row.expires_at - now < self._ahead(row)

    def _being_renewed(self, row: AccountRow, now: float) -> bool:
        """Expired, but a process holds the refresh lease: it may be OK in a moment."""
        return (
            bool(row.refresh_token)
            and not row.invalid
            and row.expires_at is not None
            and row.expires_at <= now
            and row.refresh_lease_until is not None
            and row.refresh_lease_until > now
        )

    def _renew_expired(self, rows: list[AccountRow], now: float) -> bool:
        """Renew tokens that already expired (the gateway was off); True if one changed."""
        changed = False
        for row in rows:
            if row.expires_at is not None and row.expires_at <= now and self._refresh_due(row, now):
                changed |= self.renew(row, now) is not None
        return changed

    def renew(self, row: AccountRow, now: float) -> str | None:
        """Renew an account's token with its refresh token; the new token, or None.

        Only the process that wins the lease (one ``UPDATE … WHERE``) calls Qwen; the others
        keep using the current token. A refused refresh token is dropped and the stored
        password (``ACCOUNT_AUTO_RELOGIN``) is tried; with neither, the account turns INVALID
        when its token expires, as before."""
        from ..errors import ApiError, Unauthorized

        lease = (AccountRow.refresh_lease_until.is_null()) | (AccountRow.refresh_lease_until <= now)
        with db.session():
            won = (
                AccountRow.update(refresh_lease_until=now + REFRESH_LEASE)
                .where((AccountRow.id == row.id) & (AccountRow.token == row.token) & lease)
                .execute()
            )
        if won != 1:
            return None
        try:
            client = self.client
            if client is None:
                raise RuntimeError("no Qwen client")
            # bounded well inside the lease: no second process may start on the same refresh token
            payload = client.refresh(row.refresh_token, account_id=row.id, timeout=REFRESH_LEASE / 2)
        except Unauthorized as exc:
            log.warning("account %s: Qwen refused its refresh token (%s)", row.id, exc.message)
            with db.session():
                AccountRow.update(
                    refresh_token=None,
                    refresh_expires_at=None,
                    refresh_lease_until=None,
                    last_error=f"Token refresh refused: {exc.message}"[:500],
                ).where((AccountRow.id == row.id) & (AccountRow.refresh_token == row.refresh_token)).execute()
            if self.relogin is not None and self._try_relogin(row, now):
                fresh = self.get(row.id)
                return fresh.token if fresh is not None else None
            return None
        except (ApiError, RuntimeError, OSError) as exc:  # passing trouble: try again later
            log.warning("account %s: token refresh failed (%s); next try in %g s", row.id, exc, REFRESH_RETRY)
            with db.session():
                AccountRow.update(refresh_lease_until=now + REFRESH_RETRY).where(AccountRow.id == row.id).execute()
            return None
        token = str(payload["token"])
        fields = refresh_fields(payload)
        fields["refresh_token"] = fields["refresh_token"] or row.refresh_token
        with db.session():
            AccountRow.update(
                token=token,
                expires_at=jwt_expiry(token),
                user_id=jwt_user_id(token) or row.user_id,
                token_at=now,
                refresh_lease_until=None,
                invalid=False,
                last_error=None,
                **fields,
            ).where((AccountRow.id == row.id) & (AccountRow.token == row.token)).execute()
        log.info("account %s: token renewed (%s, expires %s)", row.id, mask(token), iso(jwt_expiry(token)))
        return token

    # ------------------------------------------------------------------ quota (2026 §5)

    def _quota_due(self, row: AccountRow, now: float) -> bool:
        """Never asked, or asked over ``quota_seconds`` ago and used since (an idle account's
        quota does not move, and asking would open its browser in the pool just for this)."""
        if not self.quota_features or self.quota_seconds <= 0 or state_of(row, now) == INVALID:
            return False
        if row.quota_at is None:
            return True
        return row.quota_at + self.quota_seconds <= now and (row.last_used_at or 0.0) > row.quota_at

    def refresh_quotas(self) -> int:
        """Ask ``entitlement_quota`` for every account whose cached answer is older than
        ``ACCOUNT_QUOTA_MINUTES`` (one process per account and period: compare-and-swap on
        ``quota_at``). Returns how many answers were stored."""
        from ..errors import ApiError

        stored = 0
        now = self.clock()
        with db.session():
            rows = [r for r in AccountRow.select().order_by(AccountRow.created_at) if self._quota_due(r, now)]
        for row in rows:
            old = AccountRow.quota_at.is_null() if row.quota_at is None else (AccountRow.quota_at == row.quota_at)
            with db.session():
                won = AccountRow.update(quota_at=now).where((AccountRow.id == row.id) & old).execute()
            if won != 1:
                continue
            try:
                client = self.client
                if client is None:
                    return stored
                answer = client.entitlement_quota(
                    row.token, self.quota_features, account_id=row.id, timeout=QUOTA_TIMEOUT
                )
            except UpstreamUnavailable as exc:  # not reached at all (pool down): not an answer
                log.info("account %s: quota not asked (%s)", row.id, exc.message)
                with db.session():
                    AccountRow.update(quota_at=row.quota_at).where(AccountRow.id == row.id).execute()
                continue
            except (ApiError, OSError) as exc:  # the site may not answer it: try again next period
                log.info("account %s: no quota from Qwen (%s)", row.id, getattr(exc, "message", exc))
                continue
            with db.session():
                AccountRow.update(quota=json.dumps(answer, ensure_ascii=False)).where(AccountRow.id == row.id).execute()
            stored += 1
        return stored

    def _refresh_quotas_in_background(self) -> None:
        """``refresh_quotas`` off the caller's path (status pages must answer at once)."""
        with self._quota_lock:
            if self._quota_running:
                return
            self._quota_running = True

        def run() -> None:
            try:
                self.refresh_quotas()
            except Exception as exc:  # a status page must never break on this
                log.info("quota refresh failed: %s", exc)
            finally:
                with self._quota_lock:
                    self._quota_running = False

        threading.Thread(target=run, name="account-quota", daemon=True).start()

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
            answer = self.relogin(row)
        except Exception as exc:  # a failed sign-in must never break the request
            log.warning("automatic re-login of %s failed: %s", row.id, exc)
            return False
        if not answer:
            return False
        if isinstance(answer, dict):
            token = str(answer["token"])
            self.set_token(row.id, token, **refresh_fields(answer))
        else:
            token = str(answer)
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
        """A new token for an account (a re-login): it is OK again unless it waits for quota.

        ``refresh_token`` (from a v2 sign-in) is kept with it; a token of another Qwen user
        drops the old refresh token, which would renew the other user's token."""
        values = {
            "token": token,
            "expires_at": jwt_expiry(token),
            "user_id": jwt_user_id(token),
            "token_at": self.clock(),
            "refresh_lease_until": None,
            "invalid": False,
            "last_error": None,
            **{k: v for k, v in fields.items() if v is not None},
        }
        with db.session():
            if not fields.get("refresh_token"):
                row = AccountRow.get_or_none(AccountRow.id == account_id)
                if row is not None and row.user_id and values["user_id"] and row.user_id != values["user_id"]:
                    values.update(refresh_token=None, refresh_expires_at=None)
            AccountRow.update(**values).where(AccountRow.id == account_id).execute()

    def add(
        self,
        token: str,
        *,
        source: str,
        email: str | None = None,
        account_id: str | None = None,
        profile_dir: str | None = None,
        refresh_token: str | None = None,
        refresh_expires_at: float | None = None,
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
            refresh = {"refresh_token": refresh_token, "refresh_expires_at": refresh_expires_at}
            if existing is not None:
                self.set_token(existing.id, token, email=email, profile_dir=profile_dir, **refresh)
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
                token_at=self.clock(),
                **refresh,
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

    def set_profile(self, account_id: str, profile_dir: str) -> None:
        with db.session():
            AccountRow.update(profile_dir=profile_dir).where(AccountRow.id == account_id).execute()

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
    pool = DatabasePool.from_config(config, client)  # the Qwen provider hands over its client later
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
