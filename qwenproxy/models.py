"""Peewee models: the current shape of the tables that ``migrations/`` create.

Keep these in step with the migrations; a migration never imports this module (it carries
its own frozen copy), so old migrations keep working when a model changes.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from peewee import (
    AutoField,
    BigIntegerField,
    CharField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from .db import database


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return str(uuid.uuid4())


class BaseModel(Model):
    class Meta:
        database = database


class Chat(BaseModel):
    """A conversation kept locally, whichever provider answered it."""

    id = CharField(primary_key=True, max_length=64, default=new_id)
    name = CharField(max_length=500)
    created = BigIntegerField(default=now_ms, index=True)  # epoch ms, as the seed
    updated = BigIntegerField(default=now_ms)
    model = CharField(max_length=200, null=True)
    provider = CharField(max_length=50, null=True)
    upstream_chat_id = CharField(max_length=100, null=True, index=True)
    last_response_id = CharField(max_length=100, null=True)  # next turn's parent_id
    account_id = CharField(max_length=100, null=True)  # account the upstream chat lives in
    session_id = CharField(max_length=200, null=True, unique=True)  # Dual AI Chat session

    class Meta:
        table_name = "chat"


class Message(BaseModel):
    id = AutoField()
    uid = CharField(max_length=64, unique=True, default=new_id)
    chat = ForeignKeyField(Chat, backref="messages", on_delete="CASCADE", index=True)
    role = CharField(max_length=20)
    content = TextField()  # plain text, or JSON when ``content_is_json``
    content_is_json = IntegerField(default=0)
    reasoning = TextField(null=True)
    model = CharField(max_length=200, null=True)
    provider = CharField(max_length=50, null=True)
    upstream_chat_id = CharField(max_length=100, null=True)
    response_id = CharField(max_length=100, null=True)
    parent_id = CharField(max_length=100, null=True)
    prompt_tokens = IntegerField(null=True)
    completion_tokens = IntegerField(null=True)
    total_tokens = IntegerField(null=True)
    usage_raw = TextField(null=True)
    finish_reason = CharField(max_length=30, null=True)
    status = CharField(max_length=20, default="complete")  # complete | partial | error
    bot = CharField(max_length=20, null=True)  # Dual AI Chat: "gigachat" | "qwen"
    created = DoubleField(default=time.time)  # unix seconds

    class Meta:
        table_name = "message"

    @property
    def content_value(self) -> Any:
        return json.loads(self.content) if self.content_is_json else self.content

    @staticmethod
    def encode_content(content: Any) -> tuple[str, int]:
        if isinstance(content, str):
            return content, 0
        return json.dumps(content, ensure_ascii=False), 1
