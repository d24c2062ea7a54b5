"""The accounts registry without a write per pick: states shared at once, usage with the turn.

Two ``DatabasePool`` objects on one database stand for two workers (or machines).
"""

from __future__ import annotations

import pytest

from qwenproxy import db
from qwenproxy.accounts.store import DatabasePool
from qwenproxy.db.models import Account as AccountRow
from qwenproxy.errors import RateLimited


@pytest.fixture
def database_url(tmp_path) -> str:
    """SQLite here; tests/process/test_postgres.py runs these tests on PostgreSQL."""
    return f"sqlite:///{tmp_path / 'q.db'}"


@pytest.fixture
def pools(database_url, fake_qwen):
    db.bind(database_url)
    db.upgrade()
    first, second = DatabasePool(), DatabasePool()
    for n in range(3):
        first.add(fake_qwen.make_token(), source="token", account_id=f"acc_{n}")
    yield first, second
    if not db.database.is_closed():
        db.database.close()


def served(account_id: str) -> tuple[int, float]:
    with db.session():
        row = AccountRow.get_by_id(account_id)
    return row.requests_served, row.last_used_at


def test_one_worker_takes_the_accounts_in_strict_turn_without_writing(pools) -> None:
    first, _ = pools
    picks = [first.acquire().id for _ in range(6)]
    assert picks == ["acc_0", "acc_1", "acc_2"] * 2
    assert [served(f"acc_{n}") for n in range(3)] == [(0, 0.0)] * 3  # nothing written yet
    first.mark_success("acc_0")
    first.flush_usage()  # what the end of a turn does, in the answer's transaction
    count, used = served("acc_0")
    assert count == 1 and used > 0
    assert served("acc_1")[0] == 0 and served("acc_1")[1] > used  # picked later


def test_another_worker_sees_usage_when_a_turn_ends(pools) -> None:
    first, second = pools
    assert first.acquire().id == "acc_0"
    first.flush_usage()
    assert second.acquire().id == "acc_1"  # the other worker's turn is known
    second.flush_usage()
    assert first.acquire().id == "acc_2"
    # before a turn ends the other worker does not know of it: fair within a few requests
    assert second.acquire().id in ("acc_0", "acc_2")


def test_states_are_shared_at_once(pools) -> None:
    first, second = pools
    first.mark_rate_limited("acc_0", 2)
    first.mark_invalid("acc_1", "rejected")
    for _ in range(4):
        assert second.acquire().id == "acc_2"  # no flush needed: states are read every time
    second.mark_rate_limited("acc_2", 1)
    with pytest.raises(RateLimited):
        first.acquire()
    second.set_token("acc_1", "a-new-token-after-relogin")  # OK again, for every worker at once
    assert first.acquire().id == "acc_1"
    with pytest.raises(RateLimited):
        first.acquire(exclude={"acc_1"})  # the others still wait
