"""Stateless clients: fingerprints of conversations held upstream, and documents by content hash."""

import time

from peewee import AutoField, CharField, DoubleField, ForeignKeyField, IntegerField, Model
from playhouse.migrate import SchemaMigrator, migrate


def upgrade(database) -> None:
    class Chat(Model):
        id = CharField(primary_key=True, max_length=64)

        class Meta:
            table_name = "chat"

    class ConversationPoint(Model):
        id = AutoField()
        fingerprint = CharField(max_length=64, index=True)
        depth = IntegerField()
        upstream_chat_id = CharField(max_length=100)
        response_id = CharField(max_length=100)
        account_id = CharField(max_length=100, null=True)
        chat = ForeignKeyField(Chat, on_delete="CASCADE", null=True, index=True)
        created = DoubleField(default=time.time)

        class Meta:
            table_name = "conversation_point"

    with database.bind_ctx([Chat, ConversationPoint]):
        database.create_tables([ConversationPoint], safe=True)
    columns = {c.name for c in database.get_columns("uploaded_file")}
    if "content_sha256" not in columns:
        migrator = SchemaMigrator.from_database(database)
        migrate(
            migrator.add_column("uploaded_file", "content_sha256", CharField(max_length=64, null=True)),
            migrator.add_index("uploaded_file", ("content_sha256",)),
        )
