"""Numbered migrations in ``migrations/``: the runner and ``flask db upgrade``."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import click
from flask import current_app
from peewee import CharField, DoubleField, IntegrityError, Model

from ..config import ROOT
from .connection import bind, database, session

log = logging.getLogger(__name__)

MIGRATIONS_DIR = ROOT / "migrations"


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


@click.group("db", help="Database schema commands.")
def db_cli() -> None:
    pass


@db_cli.command("upgrade", help="Apply pending migrations from migrations/.")
def upgrade_command() -> None:
    bind(current_app.config["DATABASE_URL"])
    names = upgrade()
    click.echo("Applied: " + ", ".join(names) if names else "Database is up to date.")
