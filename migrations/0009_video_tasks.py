"""Video tasks started upstream (``/v1/videos``): any worker answers and polls from this table."""

import time

from peewee import CharField, DoubleField, IntegerField, Model, TextField


def upgrade(database) -> None:
    class VideoTask(Model):
        id = CharField(primary_key=True, max_length=64)
        provider = CharField(max_length=50)
        task_id = CharField(max_length=100, index=True)
        account_id = CharField(max_length=100, null=True)
        upstream_chat_id = CharField(max_length=100, null=True)
        parent_id = CharField(max_length=100, null=True)
        response_id = CharField(max_length=100, null=True)
        model = CharField(max_length=200)
        prompt = TextField()
        size = CharField(max_length=50)
        seconds = CharField(max_length=10)
        status = CharField(max_length=20, default="queued")
        progress = IntegerField(default=0)
        url = TextField(null=True)
        error_code = CharField(max_length=100, null=True)
        error_message = TextField(null=True)
        polls = IntegerField(default=0)
        next_poll_at = DoubleField(default=0.0)
        created_at = DoubleField(default=time.time)
        completed_at = DoubleField(null=True)

        class Meta:
            table_name = "video_task"

    with database.bind_ctx([VideoTask]):
        database.create_tables([VideoTask], safe=True)
