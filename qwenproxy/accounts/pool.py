"""Qwen web accounts: who a request is sent as.

The provider only sees the ``AccountPool`` interface: acquire an account for the whole life
of a request, report what upstream said about it (``accounts/store.py`` keeps them in the
database). ``Rotation`` is the one loop that moves on to another account on quota or expiry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ApiError, RateLimited, Unauthorized, UpstreamError, UpstreamUnavailable

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

    def lookup(self, account_id: str) -> Account | None:  # noqa: ARG002 - pools without ids know none
        """The account with this id, whatever its state, without a turn in the rotation: a
        task started upstream is asked about as the account that owns it."""
        return None

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


class Rotation:
    """Accounts tried one after another for one request: quota (``RateLimited``) or a dead
    token (``Unauthorized``) marks the account and moves on; any other error is the caller's.

    ``reuse_tried``: once every account was tried, take one of them again (the pool may have
    re-logged it in) instead of giving up with the last refusal. ``guest``: when no account can
    serve, the guest (``QWEN_GUEST=auto``; chats only).
    """

    def __init__(
        self,
        pool: AccountPool,
        *,
        attempts: int,
        prefer: str | None = None,
        reuse_tried: bool = False,
        guest: bool = False,
    ) -> None:
        self.pool = pool
        self.attempts = attempts
        self.prefer = prefer
        self.reuse_tried = reuse_tried
        self.guest = guest
        self.tried: set[str] = set()
        self.last: ApiError | None = None

    def __iter__(self) -> Iterator[Account]:
        for _ in range(self.attempts):
            yield self._acquire()

    def _acquire(self) -> Account:
        try:
            if self.guest:
                return self.pool.acquire_or_guest(prefer=self.prefer, exclude=self.tried)
            return self.pool.acquire(prefer=self.prefer, exclude=self.tried)
        except ApiError:
            if not self.tried:
                raise
            if self.reuse_tried:  # nothing untried is left; one tried before may be usable again
                return self.pool.acquire(prefer=self.prefer)
            assert self.last is not None
            raise self.last from None

    def refused(self, account: Account, exc: RateLimited | Unauthorized) -> None:
        """Upstream refused this account: mark it in the pool and try another."""
        if isinstance(exc, RateLimited):  # the envelope's data.num (hours) is on the error
            self.pool.mark_rate_limited(account.id, getattr(exc, "hours", None))
        else:
            self.pool.mark_invalid(account.id, exc.message)
        self.tried.add(account.id)
        self.last = exc

    def exhausted(self, message: str) -> ApiError:
        """The error once every attempt was refused."""
        return self.last or UpstreamError(message)
