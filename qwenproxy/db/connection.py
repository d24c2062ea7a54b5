"""The database: a deferred Peewee proxy bound in ``init_app``, numbered migrations, CLI.

SQLite (WAL, foreign keys) by default; ``DATABASE_URL=postgresql://...`` works too through
``playhouse.db_url``, so several gateway machines can share one database.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from peewee import DatabaseProxy, SqliteDatabase
from playhouse.db_url import connect

log = logging.getLogger(__name__)

# Peewee models need their database at class-definition time; the proxy is bound per app.
database = DatabaseProxy()

# per connection; journal_mode=wal is a property of the file, set once in make_database
SQLITE_PRAGMAS = {"foreign_keys": 1, "synchronous": "normal"}


_PATCHED: list[bool] = []  # once patched, a process stays patched


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey patching (a gunicorn web worker)."""
    if _PATCHED:
        return True
    try:
        from gevent import monkey
    except ImportError:
        return False
    if monkey.is_module_patched("threading"):
        _PATCHED.append(True)
        return True
    return False


def make_database(url: str, *, shared: bool | None = None, pool_size: int = 20):
    """Build (not connect) a Peewee database from a URL.

    SQLite: ``shared`` (default: under gevent) gives one connection to the whole process
    instead of one per thread/greenlet. A gevent worker runs one greenlet at a time and
    SQLite calls never yield to the hub, so statements of two requests cannot interleave; it
    saves opening a connection (and its pragmas) three times a request. Without gevent
    (tests, the CLI) threads are real, and each keeps its own connection.
    PostgreSQL: a pool of up to ``pool_size`` connections per process, one per greenlet in use.
    """
    parsed = urlparse(url)
    if parsed.scheme.startswith("sqlite"):
        if shared is None:
            shared = gevent_patched()
        options = {"timeout": 15, "check_same_thread": False, "thread_safe": not shared}
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
            db = connect(url, pragmas=SQLITE_PRAGMAS, **options)
        else:
            db = connect(url, pragmas={**SQLITE_PRAGMAS, "journal_mode": "wal"}, **options)
        db.qwenproxy_shared = shared
        return db
    if parsed.scheme in ("postgres", "postgresql"):
        pooled = url.replace(f"{parsed.scheme}://", f"{parsed.scheme}+pool://", 1)
        return connect(pooled, max_connections=pool_size, stale_timeout=300, timeout=30)
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


def shared_connection() -> bool:
    """Whether the bound database is one connection for the whole process (never closed)."""
    return bool(getattr(database.obj, "qwenproxy_shared", False))


def bind(url: str, *, shared: bool | None = None, pool_size: int = 20):
    """Point the proxy at the database for ``url`` and return it."""
    db = make_database(url, shared=shared, pool_size=pool_size)
    database.initialize(db)
    return db


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Open a connection for a block unless one is open; close only what we opened (a
    shared connection stays open)."""
    opened = database.is_closed()
    if opened:
        database.connect()
    opened = opened and not shared_connection()
    try:
        yield
    finally:
        if opened and not database.is_closed():
            database.close()


def write_transaction():
    """A transaction that will write: on SQLite it takes the write lock at ``BEGIN``
    (``IMMEDIATE``), so a read followed by a write waits for other writers (busy timeout)
    instead of failing with "database is locked" when another process committed between.
    Inside a transaction already, the writes simply join it."""
    if database.in_transaction():
        return contextlib.nullcontext()
    if isinstance(database.obj, SqliteDatabase):
        return database.atomic("IMMEDIATE")
    return database.atomic()


# writes that need not be made at once, flushed inside the next turn's end transaction
_deferred: dict[str, Callable[[], None]] = {}


def defer_writes(name: str, flush: Callable[[], None]) -> None:
    """Register ``flush`` (one per ``name``; the last app built wins) for ``flush_deferred``."""
    _deferred[name] = flush


def flush_deferred() -> None:
    """Run the registered flushes, in the caller's transaction; never raises."""
    for name, flush in list(_deferred.items()):
        try:
            flush()
        except Exception:
            log.exception("deferred %s writes failed", name)


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
