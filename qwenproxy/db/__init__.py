"""The database: a deferred Peewee proxy bound in ``init_app``, numbered migrations, CLI.

SQLite (WAL, foreign keys) by default; ``DATABASE_URL=postgresql://...`` works too through
``playhouse.db_url``, so several gateway machines can share one database.
"""

from __future__ import annotations

from flask import Flask, request

from .connection import (
    bind,
    database,
    defer_writes,
    flush_deferred,
    keep_wal_open,
    make_database,
    session,
    shared_connection,
    write_transaction,
)
from .migrations import db_cli, migration_files, upgrade

__all__ = [
    "bind",
    "database",
    "db_cli",
    "defer_writes",
    "flush_deferred",
    "init_app",
    "keep_wal_open",
    "make_database",
    "migration_files",
    "session",
    "shared_connection",
    "upgrade",
    "write_transaction",
]


def init_app(app: Flask) -> None:
    """Bind the database, migrate if asked, and open/close a connection per request (a
    shared SQLite connection under gevent stays open: ``connection.make_database``)."""
    shared = str(app.config.get("DATABASE_SHARED_CONNECTION", "auto")).strip().lower()
    keep_wal_open(
        bind(
            app.config["DATABASE_URL"],
            shared=None if shared in ("", "auto") else shared in ("1", "true", "yes", "on"),
            pool_size=int(app.config.get("DATABASE_POOL_SIZE") or 20),
        )
    )
    if app.config.get("AUTO_MIGRATE", True):
        upgrade()

    @app.before_request
    def _connect() -> None:
        if request.path == "/health/live":  # liveness never depends on the database
            return
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        if not database.is_closed() and not shared_connection():
            database.close()

    app.cli.add_command(db_cli)
