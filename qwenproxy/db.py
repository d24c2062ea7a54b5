"""The database: a deferred Peewee proxy bound in ``init_app``, numbered migrations, CLI.

SQLite (WAL, foreign keys) by default; ``DATABASE_URL=postgresql://...`` works too through
``playhouse.db_url``, so several gateway machines can share one database.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import click
from flask import Flask, current_app
from peewee import CharField, DatabaseProxy, DoubleField, IntegrityError, Model, SqliteDatabase
from playhouse.db_url import connect

from .config import ROOT

log = logging.getLogger(__name__)

# Peewee models need their database at class-definition time; the proxy is bound per app.
database = DatabaseProxy()

MIGRATIONS_DIR = ROOT / "migrations"
# per connection; journal_mode=wal is a property of the file, set once in make_database
SQLITE_PRAGMAS = {"foreign_keys": 1, "synchronous": "normal"}


def make_database(url: str):
    """Build (not connect) a Peewee database from a URL."""
    parsed = urlparse(url)
    if parsed.scheme.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else parsed.path
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            import sqlite3

            with contextlib.closing(sqlite3.connect(path, timeout=15)) as conn:
                conn.execute("PRAGMA journal_mode=wal").fetchone()  # persistent: once per file
            return connect(url, pragmas=SQLITE_PRAGMAS, timeout=15, check_same_thread=False)
        return connect(url, pragmas={**SQLITE_PRAGMAS, "journal_mode": "wal"}, timeout=15, check_same_thread=False)
    return connect(url)


def bind(url: str):
    """Point the proxy at the database for ``url`` and return it."""
    db = make_database(url)
    database.initialize(db)
    return db


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Open a connection for a block unless one is open; close only what we opened."""
    opened = database.is_closed()
    if opened:
        database.connect()
    try:
        yield
    finally:
        if opened and not database.is_closed():
            database.close()


class _MigrationRecord(Model):
    name = CharField(primary_key=True, max_length=200)
    applied_at = DoubleField()

    class Meta:
        database = database
        table_name = "migration_history"


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("[0-9][0-9][0-9][0-9]_*.py"))


def upgrade(directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet recorded, in order; safe to run concurrently."""
    applied_now: list[str] = []
    with session():
        database.create_tables([_MigrationRecord], safe=True)
        done = {r.name for r in _MigrationRecord.select()}
        for path in migration_files(directory):
            name = path.stem
            if name in done:
                continue
            spec = importlib.util.spec_from_file_location(f"qwenproxy_migration_{name}", path)
            module = importlib.util.module_from_spec(spec)
            assert spec.loader is not None
            spec.loader.exec_module(module)
            with database.atomic():
                module.upgrade(database)
                try:
                    with database.atomic():
                        _MigrationRecord.create(name=name, applied_at=time.time())
                except IntegrityError:  # another process applied it at the same moment
                    pass
            applied_now.append(name)
            log.info("applied migration %s", name)
    return applied_now


def keep_wal_open(db) -> None:  # noqa: ANN001 - any Peewee database
    """Hold one idle SQLite connection for the life of the process.

    SQLite checkpoints and deletes the WAL whenever the *last* connection closes; with a
    connection per request that is a checkpoint (and an fsync) per request. An idle
    connection that never closes avoids it; checkpoints then run every 1000 pages, as usual.
    """
    import sqlite3

    path = getattr(db, "database", "")
    if not isinstance(db, SqliteDatabase) or not path or path == ":memory:":
        return
    keeper = sqlite3.connect(path, check_same_thread=False, timeout=15)
    keeper.execute("PRAGMA journal_mode=wal").fetchone()  # a new file is not in WAL mode yet
    keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()  # joins the WAL
    db.qwenproxy_keeper = keeper


def init_app(app: Flask) -> None:
    """Bind the database, migrate if asked, and open/close a connection per request."""
    keep_wal_open(bind(app.config["DATABASE_URL"]))
    if app.config.get("AUTO_MIGRATE", True):
        upgrade()

    @app.before_request
    def _connect() -> None:
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(exc: BaseException | None) -> None:
        if not database.is_closed():
            database.close()

    app.cli.add_command(db_cli)


@click.group("db", help="Database schema commands.")
def db_cli() -> None:
    pass


@db_cli.command("upgrade", help="Apply pending migrations from migrations/.")
def upgrade_command() -> None:
    bind(current_app.config["DATABASE_URL"])
    names = upgrade()
    click.echo("Applied: " + ", ".join(names) if names else "Database is up to date.")
