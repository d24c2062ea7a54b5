"""The recent-request log behind the status page: one row per API request, in the database.

In the database (not in a worker's memory) so that every gunicorn worker, and every gateway
machine on one PostgreSQL, shows the same list. Rows hold no message content, no key and no
token: route, status, model, timings, token counts and the error code and message. Only the
newest ``REQUEST_LOG_KEEP`` rows are kept. Flask-free.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from peewee import CharField, DoubleField, IntegerField, TextField

from .. import db
from ..db import statements
from ..db.models import BaseModel
from .logs import redact

log = logging.getLogger(__name__)

PRUNE_EVERY = 100  # rows between two prunes


class RequestLog(BaseModel):
    created = DoubleField(default=time.time, index=True)
    request_id = CharField(max_length=64, null=True)
    method = CharField(max_length=10)
    route = CharField(max_length=200)
    status = IntegerField()
    model = CharField(max_length=200, null=True)
    provider = CharField(max_length=50, null=True)
    duration_ms = DoubleField(null=True)
    ttft_ms = DoubleField(null=True)
    prompt_tokens = IntegerField(null=True)
    completion_tokens = IntegerField(null=True)
    error_code = CharField(max_length=100, null=True)
    error_message = TextField(null=True)

    class Meta:
        table_name = "request_log"


def record(keep: int = 1000, **fields: Any) -> None:
    """Add one row (never raises: the log must not fail a request)."""
    if fields.get("error_message"):  # it may echo the client's input: no credential is kept
        fields["error_message"] = redact(str(fields["error_message"]))[:500]
    if fields.get("route"):
        fields["route"] = str(fields["route"])[:200]
    try:
        with db.session():
            row_id = statements.insert(RequestLog, **fields)
            if keep > 0 and isinstance(row_id, int) and row_id % PRUNE_EVERY == 0:
                RequestLog.delete().where(RequestLog.id <= row_id - keep).execute()
    except Exception as exc:
        log.warning("could not record the request: %s", exc)


def recent(limit: int = 50, errors_only: bool = False) -> list[dict[str, Any]]:
    """The newest rows, newest first."""
    query = RequestLog.select().order_by(RequestLog.id.desc()).limit(limit)
    if errors_only:
        query = query.where((RequestLog.status >= 400) | RequestLog.error_code.is_null(False))
    with db.session():
        return [row.__data__ for row in query]
