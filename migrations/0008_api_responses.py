"""Stored answers of the Responses API (``store: true``), so ``previous_response_id`` works
from any worker and ``GET /v1/responses/{id}`` finds them."""

from peewee import CharField, DoubleField, ForeignKeyField, Model, TextField


def upgrade(database) -> None:
    class Chat(Model):
        id = CharField(primary_key=True, max_length=64)

        class Meta:
            table_name = "chat"

    class ApiResponse(Model):
        id = CharField(primary_key=True, max_length=64)
        chat = ForeignKeyField(Chat, on_delete="CASCADE", null=True, index=True)
        created = DoubleField(index=True)
        model = CharField(max_length=200, null=True)
        status = CharField(max_length=20)
        previous_response_id = CharField(max_length=64, null=True)
        upstream_response_id = CharField(max_length=100, null=True)
        body = TextField()
        input_items = TextField()
        history = TextField()

        class Meta:
            table_name = "api_response"

    with database.bind_ctx([Chat, ApiResponse]):
        database.create_tables([ApiResponse], safe=True)
