"""Qwen web accounts: token, state and history of each, shared by every worker process."""

import time

from peewee import BooleanField, CharField, DoubleField, IntegerField, Model, TextField


def upgrade(database) -> None:
    class Account(Model):
        id = CharField(primary_key=True, max_length=100)
        token = TextField()
        user_id = CharField(max_length=100, null=True, index=True)
        email = CharField(max_length=320, null=True)
        expires_at = DoubleField(null=True)
        reset_at = DoubleField(null=True)
        invalid = BooleanField(default=False)
        last_error = TextField(null=True)
        requests_served = IntegerField(default=0)
        last_used_at = DoubleField(default=0.0, index=True)
        created_at = DoubleField(default=time.time)
        source = CharField(max_length=20, null=True)
        profile_dir = TextField(null=True)

        class Meta:
            table_name = "account"

    with database.bind_ctx([Account]):
        database.create_tables([Account], safe=True)
