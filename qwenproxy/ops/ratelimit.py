"""Per-key request rate limit (``RATE_LIMIT_PER_MINUTE``; 0 = off), counted in the database.

Fixed one-minute windows, counted with one upsert, so every gunicorn worker and every gateway
machine on the same database agree. The key is the client's API key (its SHA-256: the key
itself is never stored), or its address when the gateway runs without keys. Over the limit:
429 in OpenAI's shape with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from flask import Flask, Response, g, request
from peewee import CharField, IntegerField

from .. import db
from ..db.models import BaseModel
from ..errors import RateLimited
from .apikeys import bearer, presented_key

EXEMPT_PREFIXES = ("/health", "/metrics", "/static")


class RateLimitWindow(BaseModel):
    key = CharField(max_length=64)
    window = IntegerField()
    count = IntegerField(default=0)

    class Meta:
        table_name = "rate_limit"
        primary_key = False
        indexes = ((("key", "window"), True),)


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self.clock = clock

    def hit(self, identity: str) -> tuple[int, int]:
        """Count one request for ``identity``; returns (requests in this window, seconds left)."""
        now = self.clock()
        window = int(now // 60)
        key = hashlib.sha256(identity.encode("utf-8", "replace")).hexdigest()
        with db.session(), db.database.atomic():
            RateLimitWindow.insert(key=key, window=window, count=1).on_conflict(
                conflict_target=[RateLimitWindow.key, RateLimitWindow.window],
                update={RateLimitWindow.count: RateLimitWindow.count + 1},
            ).execute()
            count = (
                RateLimitWindow.select(RateLimitWindow.count)
                .where((RateLimitWindow.key == key) & (RateLimitWindow.window == window))
                .scalar()
            )
            if count == 1:  # a key's first request in a window clears its old ones
                stale = (RateLimitWindow.key == key) & (RateLimitWindow.window < window)
                RateLimitWindow.delete().where(stale).execute()
        return int(count or 0), max(1, 60 * (window + 1) - int(now))


def client_identity() -> str:
    key = presented_key(bearer())
    if key:
        return "key:" + key.decode("utf-8", "replace")
    return "addr:" + (request.remote_addr or "-")


def init_app(app: Flask) -> None:
    per_minute = int(app.config.get("RATE_LIMIT_PER_MINUTE") or 0)
    if per_minute <= 0:
        return
    limiter = RateLimiter(per_minute)
    app.extensions["rate_limiter"] = limiter

    @app.before_request
    def _limit() -> None:
        if request.method == "OPTIONS" or request.path == "/" or request.path.startswith(EXEMPT_PREFIXES):
            return
        count, reset_in = limiter.hit(client_identity())
        request.environ["qwenproxy.rate_limit"] = (max(0, per_minute - count), reset_in)
        if count > per_minute:
            g.rejected = "rate_limited"
            raise RateLimited(
                f"Rate limit reached: {per_minute} requests a minute for this key; retry in {reset_in} s",
                retry_after=reset_in,
                code="rate_limit_exceeded",
            )

    @app.after_request
    def _headers(response: Response) -> Response:
        left = request.environ.get("qwenproxy.rate_limit")
        if left is not None:
            response.headers["X-RateLimit-Limit-Requests"] = str(per_minute)
            response.headers["X-RateLimit-Remaining-Requests"] = str(left[0])
            response.headers["X-RateLimit-Reset-Requests"] = f"{left[1]}s"
        return response
