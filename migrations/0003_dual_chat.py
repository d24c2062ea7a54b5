"""Dual AI Chat: a chat can belong to a seed ``session_id``; a message records its bot."""

from peewee import CharField
from playhouse.migrate import SchemaMigrator, migrate


def upgrade(database) -> None:
    migrator = SchemaMigrator.from_database(database)
    chat_columns = {c.name for c in database.get_columns("chat")}
    message_columns = {c.name for c in database.get_columns("message")}
    operations = []
    if "session_id" not in chat_columns:
        operations.append(migrator.add_column("chat", "session_id", CharField(max_length=200, null=True)))
        operations.append(migrator.add_index("chat", ("session_id",), unique=True))
    if "bot" not in message_columns:
        operations.append(migrator.add_column("message", "bot", CharField(max_length=20, null=True)))
    migrate(*operations)
