"""Chats and their messages."""

import time
import uuid

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


def upgrade(database) -> None:
    class Base(Model):
        class Meta:
            pass

    class Chat(Base):
        id = CharField(primary_key=True, max_length=64, default=lambda: str(uuid.uuid4()))
        name = CharField(max_length=500)
        created = BigIntegerField(index=True)
        updated = BigIntegerField()
        model = CharField(max_length=200, null=True)
        provider = CharField(max_length=50, null=True)
        upstream_chat_id = CharField(max_length=100, null=True, index=True)
        last_response_id = CharField(max_length=100, null=True)
        account_id = CharField(max_length=100, null=True)

        class Meta:
            table_name = "chat"

    class Message(Base):
        id = AutoField()
        uid = CharField(max_length=64, unique=True)
        chat = ForeignKeyField(Chat, on_delete="CASCADE", index=True)
        role = CharField(max_length=20)
        content = TextField()
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
        status = CharField(max_length=20, default="complete")
        created = DoubleField(default=time.time)

        class Meta:
            table_name = "message"

    with database.bind_ctx([Chat, Message]):
        database.create_tables([Chat, Message], safe=True)
