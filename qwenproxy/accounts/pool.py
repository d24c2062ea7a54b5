"""Qwen web accounts: who a request is sent as.

The provider only sees the ``AccountPool`` interface: acquire an account for the whole life
of a request, report what upstream said about it. ``TokenPool`` serves the quick start
(one ``QWEN_TOKEN``); the accounts registry replaces it with the database-backed pool.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import RateLimited, UpstreamUnavailable
from ..jwt import jwt_expiry

OK, WAIT, INVALID = "OK", "WAIT", "INVALID"
NEEDS_HUMAN = "NEEDS_HUMAN"  # the site keeps walling this account: `flask accounts solve ID`
MARKS = {OK: "✅", WAIT: "⏳", INVALID: "❌", NEEDS_HUMAN: "🙋"}
LABELS = {OK: "OK", WAIT: "WAIT", INVALID: "INVALID", NEEDS_HUMAN: "needs a human"}

GUEST_ID = "_guest"  # the guest "account": no token; its own browser profile (2026 §5)
GUEST_MODES = ("auto", "off")
# the errors that mean "no account can serve now": guest mode (auto) steps in for them
NO_ACCOUNT_CODES = frozenset(
    {"no_accounts", "accounts_invalid", "accounts_need_human", "accounts_rate_limited", "rate_limited"}
)


@dataclass
class Account:
    id: str
    token: str
    email: str | None = None
    profile_dir: str | None = None  # the account's Chromium profile, when it has one
    guest: bool = False  # a guest chat (chat_mode "guest", no token)


def guest_account() -> Account:
    return Account(id=GUEST_ID, token="", guest=True)


def guest_mode(config: Any) -> str:
    """``QWEN_GUEST``: ``auto`` (default: guest when no account is usable) or ``off``."""
    value = str(config.get("QWEN_GUEST") or "auto").strip().lower()
    return value if value in GUEST_MODES else "auto"


def mask(secret: str | None) -> str:
    """A form of a token or key that is safe to print or log."""
    if not secret:
        return ""
    if len(secret) <= 12:
        return "***"
    return f"{secret[:4]}…{secret[-4:]}"


class AccountPool(ABC):
    guest_mode: str = "off"  # QWEN_GUEST; the pools built from configuration set it

    @abstractmethod
    def acquire(self, *, prefer: str | None = None, exclude: set[str] | frozenset = frozenset()) -> Account:
        """An OK account (``prefer`` if it is usable). Raises ``RateLimited`` when every
        account waits, ``UpstreamUnavailable`` when none is usable."""

    @abstractmethod
    def mark_rate_limited(self, account_id: str, hours: float | None) -> None: ...

    @abstractmethod
    def mark_invalid(self, account_id: str, reason: str) -> None: ...

    def acquire_or_guest(self, *, prefer: str | None = None, exclude: set[str] | frozenset = frozenset()) -> Account:
        """``acquire``; when no account can serve and ``QWEN_GUEST=auto``, the guest (2026 §5).

        Only chats take a guest (uploads and sign-ins need an account)."""
        try:
            return self.acquire(prefer=prefer, exclude=exclude)
        except (RateLimited, UpstreamUnavailable) as exc:
            if self.guest_mode != "auto" or GUEST_ID in exclude or exc.code not in NO_ACCOUNT_CODES:
                raise
            return guest_account()

    def serves_guests(self, statuses: list[dict[str, Any]]) -> bool:
        """Whether chats go out as a guest now: no account OK (from ``status()``), guest on."""
        return self.guest_mode == "auto" and not any(s.get("status") == OK for s in statuses)

    def use_client(self, client: Any) -> None:
        """The Qwen client (and so the transport) for token refresh and quota calls."""

    def note_wall(self, account_id: str) -> None:
        """The site answered this account with a captcha/WAF wall (counts walls in a row)."""

    def mark_success(self, account_id: str) -> None:
        """Called once a request was served; counts requests."""

    def release(self, account_id: str) -> None:
        """Called when a request is over, whatever its outcome."""

    @abstractmethod
    def status(self) -> list[dict[str, Any]]: ...

    def any_token(self) -> str | None:
        """A token for background calls (model list); never raises."""
        try:
            return self.acquire().token
        except Exception:
            return None

    def any_account(self) -> Account | None:
        """Like ``any_token``, with the account's id (the browser pool runs the call in that
        account's profile); never raises."""
        try:
            return self.acquire()
        except Exception:
            return None


class TokenPool(AccountPool):
    """One or more tokens from configuration, state kept in memory (quick start only)."""

    DEFAULT_WAIT_HOURS = 24.0

    def __init__(self, tokens: list[str], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts = [Account(id=f"env_{i + 1}", token=t) for i, t in enumerate(tokens) if t]
        self._reset_at: dict[str, float] = {}
        self._invalid: dict[str, str] = {}
        self._served: dict[str, int] = {}
        self._next = 0

    def _state(self, account: Account) -> str:
        if account.id in self._invalid:
            return INVALID
        exp = jwt_expiry(account.token)
        if exp is not None and exp <= self._clock():
            return INVALID
        if self._reset_at.get(account.id, 0) > self._clock():
            return WAIT
        return OK

    def acquire(self, *, prefer: str | None = None, exclude: set[str] | frozenset = frozenset()) -> Account:
        with self._lock:
            candidates = [a for a in self._accounts if a.id not in exclude]
            usable = [a for a in candidates if self._state(a) == OK]
            for account in usable:
                if account.id == prefer:
                    return account
            if usable:
                account = usable[self._next % len(usable)]
                self._next += 1
                return account
            waiting = [self._reset_at[a.id] for a in self._accounts if self._state(a) == WAIT]
        if waiting:
            retry = max(1.0, min(waiting) - self._clock())
            raise RateLimited(
                "Every Qwen account has reached its quota; try again later or add accounts with `flask accounts add`",
                retry_after=retry,
            )
        if not self._accounts:
            raise UpstreamUnavailable(
                "No Qwen account is configured: set QWEN_TOKEN or run `flask accounts add`",
                code="no_accounts",
            )
        raise UpstreamUnavailable(
            "No usable Qwen account: tokens are expired or rejected; run `flask accounts relogin ID`",
            code="accounts_invalid",
        )

    def mark_rate_limited(self, account_id: str, hours: float | None) -> None:
        with self._lock:
            self._reset_at[account_id] = self._clock() + 3600 * (hours or self.DEFAULT_WAIT_HOURS)

    def mark_invalid(self, account_id: str, reason: str) -> None:
        with self._lock:
            self._invalid[account_id] = reason

    def mark_success(self, account_id: str) -> None:
        with self._lock:
            self._served[account_id] = self._served.get(account_id, 0) + 1

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for a in self._accounts:
                state = self._state(a)
                reset = self._reset_at.get(a.id) if state == WAIT else None
                out.append(
                    {
                        "id": a.id,
                        "token": mask(a.token),
                        "status": state,
                        "mark": MARKS[state],
                        "resetAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset)) if reset else None,
                        "lastError": self._invalid.get(a.id),
                        "requests": self._served.get(a.id, 0),
                    }
                )
            return out
