"""The hot path's statements, with their SQL built once.

Peewee builds a query's SQL again every time it runs: for a message insert that is most of
the statement's cost, and a chat turn runs about eight of them. ``insert``, ``create`` and
``update`` write the same SQL Peewee would (its quoting, its parameter style, its
``RETURNING`` where the database has one), keep it per model, column set and database class,
and run it through ``Database.execute_sql``: inside the caller's transaction, on SQLite and
PostgreSQL alike. Values go through each field's ``db_value``; fields left out take the
model's defaults, as ``Model.create`` does. ``compiled`` keeps any Peewee query whose
parameters never change (a fixed SELECT) for ``Model.raw``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from peewee import Field, Model, Query

from .connection import database

M = TypeVar("M", bound=Model)

# (kind, model, columns, database class) -> (sql, fields in parameter order)
_SQL: dict[tuple[Any, ...], tuple[str, tuple[Field, ...]]] = {}
_COMPILED: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}


def _quote(name: str) -> str:
    marks = database.quote  # '""' on SQLite and PostgreSQL, '``' on MySQL
    return f"{marks[0]}{name}{marks[1]}"


def _insert_sql(model: type[Model], names: tuple[str, ...]) -> tuple[str, tuple[Field, ...]]:
    key = ("insert", model, names, type(database.obj))
    known = _SQL.get(key)
    if known is None:
        fields = tuple(model._meta.fields[name] for name in names)
        param = database.param
        sql = (
            f"INSERT INTO {_quote(model._meta.table_name)} ({', '.join(_quote(f.column_name) for f in fields)}) "
            f"VALUES ({', '.join(param for _ in fields)})"
        )
        if database.returning_clause:
            sql += f" RETURNING {_quote(model._meta.primary_key.column_name)}"
        known = _SQL[key] = (sql, fields)
    return known


def _with_defaults(model: type[Model], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` plus the model's defaults for the fields it leaves out."""
    out = dict(values)
    for field, default in model._meta.defaults.items():
        if field.name not in out:
            out[field.name] = default() if callable(default) else default
    return out


def insert(model: type[Model], /, **values: Any) -> Any:
    """``model.insert(**values).execute()`` with the model's defaults filled in: the new row's
    primary key (the given one for a model whose key is not generated)."""
    return _insert(model, _with_defaults(model, values))


def _insert(model: type[Model], values: dict[str, Any]) -> Any:
    sql, fields = _insert_sql(model, tuple(values))
    cursor = database.execute_sql(sql, [f.db_value(values[f.name]) for f in fields])
    pk = model._meta.primary_key
    if pk.name in values:
        return values[pk.name]
    if database.returning_clause:
        return cursor.fetchone()[0]
    return cursor.lastrowid


def create(model: type[M], /, **values: Any) -> M:
    """``model.create(**values)``: the saved instance, its generated key set. The class is
    positional-only here and in ``insert``/``update``: a field may be called ``model``."""
    values = _with_defaults(model, values)
    values[model._meta.primary_key.name] = _insert(model, values)
    row = model(__no_default__=1, **values)
    row._dirty.clear()
    return row


def update(model: type[Model], pk: Any, /, **values: Any) -> int:
    """``model.update(**values).where(model.<pk> == pk).execute()``: rows changed."""
    key = ("update", model, tuple(values), type(database.obj))
    known = _SQL.get(key)
    if known is None:
        fields = tuple(model._meta.fields[name] for name in values)
        param = database.param
        pk_field = model._meta.primary_key
        sql = (
            f"UPDATE {_quote(model._meta.table_name)} SET "
            f"{', '.join(f'{_quote(f.column_name)} = {param}' for f in fields)} "
            f"WHERE {_quote(pk_field.column_name)} = {param}"
        )
        known = _SQL[key] = (sql, (*fields, pk_field))
    sql, fields = known
    params = [f.db_value(values[f.name]) for f in fields[:-1]]
    params.append(fields[-1].db_value(pk))
    return database.execute_sql(sql, params).rowcount


def compiled(name: str, build: Callable[[], Query]) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters of ``build()``, built once per ``name`` and database class: for
    a query that never changes, run with ``Model.raw(sql, *params)``."""
    key = (name, type(database.obj))
    known = _COMPILED.get(key)
    if known is None:
        sql, params = build().sql()
        known = _COMPILED[key] = (sql, tuple(params))
    return known


def execute(name: str, build: Callable[[Callable[[str], str], str], str], params: list[Any]) -> Any:
    """Run SQL written by hand for a statement Peewee cannot keep (an expression in SET):
    ``build(quote, param)`` is called once per ``name`` and database class."""
    key = ("sql", name, type(database.obj))
    known = _SQL.get(key)
    if known is None:
        known = _SQL[key] = (build(_quote, database.param), ())
    return database.execute_sql(known[0], params)
