"""The hot path's statements (``db/statements.py``) write what Peewee's ``create``/``update``
would, on SQLite here and on PostgreSQL in tests/process/test_postgres.py."""

from __future__ import annotations

import pytest

from qwenproxy import db
from qwenproxy.db import statements
from qwenproxy.db.models import Chat, ConversationPoint, Message


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'q.db'}"


@pytest.fixture
def bound(database_url):
    db.bind(database_url)
    db.upgrade()
    with db.session():
        yield
    if not db.database.is_closed():
        db.database.close()


def test_create_fills_the_defaults_and_reads_back_as_peewee_wrote_it(bound) -> None:
    ours = statements.create(Chat, name="ours", provider="qwen", model="qwen3-max")  # a field called model
    theirs = Chat.create(name="theirs", provider="qwen", model="qwen3-max")
    stored = Chat.get_by_id(ours.id)
    assert len(ours.id) == 36 and ours.id != theirs.id
    assert stored.created == ours.created and abs(stored.created - theirs.created) < 60_000
    assert (stored.name, stored.provider, stored.model, stored.upstream_chat_id) == ("ours", "qwen", "qwen3-max", None)
    assert not ours.is_dirty()


def test_insert_returns_the_generated_key_and_converts_values(bound) -> None:
    chat = statements.create(Chat, name="c")
    first = statements.insert(Message, chat=chat, role="user", content="hi")  # a model instance
    second = statements.insert(Message, chat=chat.id, role="assistant", content="yo", status="partial")
    assert isinstance(first, int) and second == first + 1
    rows = list(Message.select().where(Message.chat == chat.id).order_by(Message.id))
    assert [(r.id, r.role, r.content, r.status) for r in rows] == [
        (first, "user", "hi", "complete"),
        (second, "assistant", "yo", "partial"),
    ]
    assert rows[0].uid != rows[1].uid and rows[0].created > 0
    point = statements.create(ConversationPoint, fingerprint="f", depth=2, upstream_chat_id="u", response_id="r")
    assert ConversationPoint.get_by_id(point.id).chat_id is None


def test_update_by_key_counts_rows_and_keeps_one_statement_per_column_set(bound) -> None:
    chat = statements.create(Chat, name="c")
    assert statements.update(Chat, chat.id, model="m1", upstream_chat_id="u1") == 1
    known = len(statements._SQL)
    assert statements.update(Chat, chat.id, model="m2", upstream_chat_id="u2") == 1
    assert statements.update(Chat, "no-such-chat", model="m3", upstream_chat_id="u3") == 0
    assert len(statements._SQL) == known  # built once, run again
    stored = Chat.get_by_id(chat.id)
    assert (stored.model, stored.upstream_chat_id) == ("m2", "u2")


def test_writes_join_the_callers_transaction(bound) -> None:
    chat = statements.create(Chat, name="c")
    with pytest.raises(RuntimeError), db.write_transaction():
        statements.insert(Message, chat=chat.id, role="user", content="lost")
        raise RuntimeError("rolled back")
    assert Message.select().where(Message.chat == chat.id).count() == 0
