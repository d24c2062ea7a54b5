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

from ..errors import ApiError, RateLimited, Unauthorized, UpstreamError

OK, WAIT, INVALID = "OK", "WAIT", "INVALID"
MARKS = {OK: "✅", WAIT: "⏳", INVALID: "❌"}


@dataclass
class Account:
    id: str
    token: str
    email: str | None = None
    profile_dir: str | None = None  # the account's Chromium profile, when it has one


def mask(secret: str | None) -> str:
    """A form of a token or key that is safe to print or log."""
    if not secret:
        return ""
    if len(secret) <= 12:
        return "***"
    return f"{secret[:4]}…{secret[-4:]}"


class AccountPool(ABC):
    @abstractmethod
    def acquire(self, *, prefer: str | None = None, exclude: set[str] | frozenset = frozenset()) -> Account:
        """An OK account (``prefer`` if it is usable). Raises ``RateLimited`` when every
        account waits, ``UpstreamUnavailable`` when none is usable."""

    @abstractmethod
    def mark_rate_limited(self, account_id: str, hours: float | None) -> None: ...

    @abstractmethod
    def mark_invalid(self, account_id: str, reason: str) -> None: ...

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


class Rotation:
    """Accounts tried one after another for one request: quota (``RateLimited``) or a dead
    token (``Unauthorized``) marks the account and moves on; any other error is the caller's.

    ``reuse_tried``: once every account was tried, take one of them again (the pool may have
    re-logged it in) instead of giving up with the last refusal.
    """

    def __init__(
        self, pool: AccountPool, *, attempts: int, prefer: str | None = None, reuse_tried: bool = False
    ) -> None:
        self.pool = pool
        self.attempts = attempts
        self.prefer = prefer
        self.reuse_tried = reuse_tried
        self.tried: set[str] = set()
        self.last: ApiError | None = None

    def __iter__(self) -> Iterator[Account]:
        for _ in range(self.attempts):
            yield self._acquire()

    def _acquire(self) -> Account:
        try:
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
