"""Files uploaded to Qwen's storage (the OpenAI ``/v1/files`` facade and the seed upload route)."""

import time

from peewee import BigIntegerField, CharField, DoubleField, Model, TextField


def upgrade(database) -> None:
    class UploadedFile(Model):
        id = CharField(primary_key=True, max_length=64)
        filename = CharField(max_length=255)
        bytes = BigIntegerField()
        purpose = CharField(max_length=50)
        mime = CharField(max_length=150)
        kind = CharField(max_length=20)
        qwen_file_id = CharField(max_length=100, index=True)
        file_path = CharField(max_length=1000, index=True)
        url = TextField()
        user_id = CharField(max_length=100, null=True)
        account_id = CharField(max_length=100, null=True)
        created_at = DoubleField(default=time.time)
        status = CharField(max_length=20, default="processed")

        class Meta:
            table_name = "uploaded_file"

    with database.bind_ctx([UploadedFile]):
        database.create_tables([UploadedFile], safe=True)
