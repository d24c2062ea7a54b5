"""Small pieces of the 2026 accounts work that need no server: quota view, the refresh
cookie, when a token is renewed, state precedence, redaction of SQL debug logs."""

from __future__ import annotations

import logging

from qwenproxy.accounts.pool import INVALID, NEEDS_HUMAN, OK, WAIT
from qwenproxy.accounts.store import DatabasePool, RedactTokens, quota_view, state_of
from qwenproxy.db.models import Account as AccountRow
from qwenproxy.qwen.client import _with_refresh_cookie

HOUR = 3600.0


def test_quota_view_lists_what_is_limited() -> None:
    raw = {
        "user_tier": "free",
        "model": {"qwen3.7-plus": {"times_left": -1, "time_unit": "day", "time_amount": 1}},
        "t2v": {"times_left": 3, "time_unit": "day", "time_amount": 1},
        "search": {"times_left": 10, "time_unit": "hour", "time_amount": 3},
        "thinking": {"times_left": -1},
    }
    view = quota_view(raw)
    assert view == {
        "tier": "free",
        "limited": {"t2v": "3/day", "search": "10/3 hour"},
        "text": "free: t2v 3/day, search 10/3 hour",
    }
    assert quota_view({"user_tier": "pro", "t2i": {"times_left": -1}})["text"] == "pro: unlimited"
    assert quota_view("not a dict") is None


def test_refresh_token_from_the_cookie_when_the_body_has_none() -> None:
    headers = {"Set-Cookie": "token=eyJ.a.b; Path=/; HttpOnly, refresh_token=rt_abc123; Path=/; HttpOnly"}
    assert _with_refresh_cookie({"token": "eyJ.a.b"}, headers)["refresh_token"] == "rt_abc123"
    assert _with_refresh_cookie({"token": "t", "refresh_token": "body"}, headers)["refresh_token"] == "body"
    assert "refresh_token" not in _with_refresh_cookie({"token": "t"}, {"set-cookie": "token=x"})


def _row(**fields) -> AccountRow:
    base = {"id": "acc_1", "token": "t", "invalid": False, "needs_human": False, "walls": 0}
    return AccountRow(**{**base, **fields})


def test_renewal_window_is_six_hours_or_half_a_short_life() -> None:
    pool = DatabasePool(refresh_ahead_hours=6)
    now = 1_000_000.0
    week = _row(refresh_token="rt", token_at=now, expires_at=now + 7 * 24 * HOUR)
    assert not pool._refresh_due(week, now + 6 * 24 * HOUR)  # 24 h left
    assert pool._refresh_due(week, now + 7 * 24 * HOUR - 5 * HOUR)  # 5 h left
    short = _row(refresh_token="rt", token_at=now, expires_at=now + 4 * HOUR)
    assert not pool._refresh_due(short, now + HOUR)  # not at every request
    assert pool._refresh_due(short, now + 2.5 * HOUR)
    assert not pool._refresh_due(_row(token_at=now, expires_at=now + HOUR), now)  # no refresh token
    leased = _row(refresh_token="rt", expires_at=now + HOUR, refresh_lease_until=now + 10)
    assert not pool._refresh_due(leased, now) and pool._refresh_due(leased, now + 11)
    dead = _row(refresh_token="rt", expires_at=now + HOUR, refresh_expires_at=now - 1)
    assert not pool._refresh_due(dead, now)


def test_state_precedence() -> None:
    now = 1_000_000.0
    assert state_of(_row(), now) == OK
    assert state_of(_row(reset_at=now + 60), now) == WAIT
    assert state_of(_row(reset_at=now + 60, needs_human=True), now) == NEEDS_HUMAN
    assert state_of(_row(needs_human=True, expires_at=now - 1), now) == INVALID


def test_sql_debug_records_of_the_account_table_hide_long_values() -> None:
    record = logging.LogRecord(
        "peewee",
        logging.DEBUG,
        __file__,
        1,
        ('UPDATE "account" SET "refresh_token" = ? WHERE ("id" = ?)', ["rt_" + "x" * 40, "acc_1"]),
        None,
        None,
    )
    RedactTokens().filter(record)
    text = record.getMessage()
    assert "x" * 40 not in text and "acc_1" in text
