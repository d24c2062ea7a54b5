"""The database: a deferred Peewee proxy bound in ``init_app``, numbered migrations, CLI.

SQLite (WAL, foreign keys) by default; ``DATABASE_URL=postgresql://...`` works too through
``playhouse.db_url``, so several gateway machines can share one database.
"""

from __future__ import annotations

from flask import Flask, request

from .connection import bind, database, keep_wal_open, make_database, session
from .migrations import db_cli, migration_files, upgrade

__all__ = [
    "bind",
    "database",
    "db_cli",
    "init_app",
    "keep_wal_open",
    "make_database",
    "migration_files",
    "session",
    "upgrade",
]


def init_app(app: Flask) -> None:
    """Bind the database, migrate if asked, and open/close a connection per request."""
    keep_wal_open(bind(app.config["DATABASE_URL"]))
    if app.config.get("AUTO_MIGRATE", True):
        upgrade()

    @app.before_request
    def _connect() -> None:
        if request.path == "/health/live":  # liveness never depends on the database
            return
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        if not database.is_closed():
            database.close()

    app.cli.add_command(db_cli)
