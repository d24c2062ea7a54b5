"""The database: a deferred Peewee proxy bound in ``init_app``, numbered migrations, CLI.

SQLite (WAL, foreign keys) by default; ``DATABASE_URL=postgresql://...`` works too through
``playhouse.db_url``, so several gateway machines can share one database.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from peewee import DatabaseProxy, SqliteDatabase
from playhouse.db_url import connect

# Peewee models need their database at class-definition time; the proxy is bound per app.
database = DatabaseProxy()

# per connection; journal_mode=wal is a property of the file, set once in make_database
SQLITE_PRAGMAS = {"foreign_keys": 1, "synchronous": "normal"}


def make_database(url: str):
    """Build (not connect) a Peewee database from a URL."""
    parsed = urlparse(url)
    if parsed.scheme.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else parsed.path
        if path and path != ":memory:":
            from ..private import private_dir, private_file, restrict

            if not Path(path).parent.exists():
                private_dir(Path(path).parent)
            private_file(path)  # SQLite gives its -wal and -shm files the database's mode
            for suffix in ("-wal", "-shm", "-journal"):
                restrict(path + suffix)
            import sqlite3

            with contextlib.closing(sqlite3.connect(path, timeout=15)) as conn:
                conn.execute("PRAGMA journal_mode=wal").fetchone()  # persistent: once per file
            return connect(url, pragmas=SQLITE_PRAGMAS, timeout=15, check_same_thread=False)
        return connect(url, pragmas={**SQLITE_PRAGMAS, "journal_mode": "wal"}, timeout=15, check_same_thread=False)
    return connect(url)


def owner_only(path: str | os.PathLike) -> None:
    """The database holds account tokens and refresh tokens: readable by its owner only
    (mode 0600, as ``credentials.json``). SQLite gives its -wal and -shm files the same mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError:  # a read-only mount, someone else's file: SQLite will say what is wrong
        pass


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


def keep_wal_open(db) -> None:
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
