"""File uploads: the seed's ``/api/files/upload`` and ``/api/files/getstsToken`` (§7.6–7.7),
and OpenAI's ``/v1/files`` (reached as ``/api/files``) over the same uploads."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from .. import db
from ..db.models import UploadedFile
from ..errors import BadRequest, NotFound, UpstreamUnavailable
from ..uploads.context import CONTEXT_PURPOSE
from ..uploads.multipart import PartCounter
from ..uploads.spool import Spool
from ..uploads.uploader import Uploader, file_object
from ..uploads.validation import FileTooLarge
from ..wire.openai import OPENAI_PURPOSES
from .common import json_body

bp = Blueprint("files", __name__)

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
MAX_PARTS = 50  # the file and a few fields; more is refused as too_many_parts
MAX_FIELD_BYTES = 1024 * 1024  # a text field (purpose, ...) held in memory


def uploader() -> Uploader:
    found = current_app.extensions.get("uploader")
    if found is None:
        raise UpstreamUnavailable("Uploads need the Qwen web provider, which is not configured")
    return found


def _too_large(up: Uploader) -> FileTooLarge:
    return FileTooLarge(f"The file is larger than the limit of {up.limit / 1048576:g} MB (MAX_UPLOAD_MB)")


def receive(up: Uploader, spool: Spool) -> tuple[FileStorage, MultiDict]:
    """Parse the multipart body straight into the spool; the field ``file`` is required."""
    if request.mimetype != "multipart/form-data":
        raise BadRequest(
            "Send the file as multipart/form-data in the field `file` (Файл не был загружен)",
            param="file",
            code="missing_file",
        )
    if request.content_length is not None and request.content_length > up.limit + MULTIPART_OVERHEAD:
        raise _too_large(up)
    form, files = parse_multipart(up, spool)
    storage = files.get("file")
    if storage is None:
        raise BadRequest("No file in the field `file` (Файл не был загружен)", param="file", code="missing_file")
    return storage, form


def parse_multipart(up: Uploader, spool: Spool) -> tuple[MultiDict, MultiDict]:
    """``(form fields, files)`` of a multipart body, the files written straight into the spool
    (each one bounded by ``MAX_UPLOAD_MB`` there, the whole body by ``MAX_CONTENT_LENGTH``)."""
    parser = FormDataParser(
        stream_factory=spool.factory,
        max_form_memory_size=MAX_FIELD_BYTES,
        max_content_length=current_app.config.get("MAX_CONTENT_LENGTH"),
        silent=False,
        max_form_parts=MAX_PARTS + 1,  # PartCounter refuses first, with the right message
    )
    boundary = request.mimetype_params.get("boundary", "").encode("latin-1", "replace")
    stream = PartCounter(request.stream, boundary, MAX_PARTS) if boundary else request.stream
    try:
        _, form, files = parser.parse(stream, request.mimetype, request.content_length, request.mimetype_params)
    except RequestEntityTooLarge:
        if request.content_length is not None and request.content_length <= up.limit:
            raise BadRequest(  # werkzeug's other "too large": a text field, not the file
                f"A form field is larger than {MAX_FIELD_BYTES // 1024} KiB", code="field_too_large"
            ) from None
        raise _too_large(up) from None
    except ValueError:
        raise BadRequest("Malformed multipart/form-data body", code="invalid_multipart") from None
    return form, files


def _upload(purpose: str | None = None, *, require_purpose: bool = False) -> UploadedFile:
    up = uploader()
    with up.spool() as spool:
        storage, form = receive(up, spool)
        if not storage.filename and not getattr(storage.stream, "size", 0):
            raise BadRequest("No file in the field `file` (Файл не был загружен)", param="file", code="missing_file")
        purpose = form.get("purpose") or purpose
        if require_purpose:
            if not purpose:
                raise BadRequest("`purpose` is required", param="purpose")
            if purpose not in OPENAI_PURPOSES:
                raise BadRequest(f"`purpose` must be one of {', '.join(OPENAI_PURPOSES)}", param="purpose")
        stream = storage.stream
        size = getattr(stream, "size", None)
        return up.upload(getattr(stream, "raw", stream), name=storage.filename, size=size, purpose=purpose)


# --------------------------------------------------------------------------- seed routes


@bp.post("/api/files/upload")
def upload() -> Response:
    """Seed §7.6 (+ seed 000's ``imageUrl``)."""
    record = _upload()
    return jsonify(
        {
            "success": True,
            "file": {
                "url": record.url,
                "name": record.filename,
                "size": int(record.bytes),
                "type": record.mime,
                "id": record.id,
            },
            "imageUrl": record.url,
        }
    )


@bp.post("/api/files/getstsToken")
def sts_token() -> Response:
    """Seed §7.7: upstream's STS answer, unchanged."""
    body = json_body()
    filename, filesize, filetype = body.get("filename"), body.get("filesize"), body.get("filetype")
    if not (filename and filesize and filetype):
        raise BadRequest("`filename`, `filesize` and `filetype` are required (Некорректные данные о файле)")
    if not (isinstance(filename, str) and isinstance(filetype, str)):
        raise BadRequest("`filename` and `filetype` must be strings (Некорректные данные о файле)")
    if "/" in filename or "\\" in filename:  # the upstream keeps it as the last part of an object path
        raise BadRequest("`filename` must be a file name, not a path", param="filename")
    if isinstance(filesize, str) and filesize.strip().isdigit():
        filesize = int(filesize)
    if isinstance(filesize, bool) or not isinstance(filesize, int) or filesize <= 0:
        raise BadRequest("`filesize` must be a positive integer (bytes)", param="filesize")
    return jsonify(uploader().raw_sts(filename, filesize, filetype))


# --------------------------------------------------------------------------- OpenAI /v1/files


@bp.post("/api/files")
def create_file() -> Response:
    return jsonify(file_object(_upload(require_purpose=True)))


@bp.get("/api/files")
def list_files() -> Response:
    # long contexts the gateway moved into documents itself (uploads/context.py) are not the client's
    query = UploadedFile.select().where(UploadedFile.purpose != CONTEXT_PURPOSE)
    purpose = request.args.get("purpose")
    if purpose:
        query = query.where(UploadedFile.purpose == purpose)
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("`order` must be asc or desc", param="order")
    try:
        limit = int(request.args.get("limit", 10000))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 10000:
        raise BadRequest("`limit` must be between 1 and 10000", param="limit")
    keys = (UploadedFile.created_at, UploadedFile.id)
    query = query.order_by(*(k.asc() if order == "asc" else k.desc() for k in keys))
    rows = list(query)
    after = request.args.get("after")
    if after:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    page = rows[:limit]
    data: dict[str, Any] = {
        "object": "list",
        "data": [file_object(r) for r in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(rows) > limit,
    }
    return jsonify(data)


def _record(file_id: str) -> UploadedFile:
    with db.session():
        record = UploadedFile.get_or_none(UploadedFile.id == file_id)
    if record is None:
        raise NotFound(f"No such file: {file_id}", param="file_id", code="file_not_found")
    return record


@bp.get("/api/files/<file_id>")
def retrieve_file(file_id: str) -> Response:
    return jsonify(file_object(_record(file_id)))


@bp.delete("/api/files/<file_id>")
def delete_file(file_id: str) -> Response:
    """Forgets the file here; Qwen's copy expires on its own (no delete endpoint is known)."""
    record = _record(file_id)
    record.delete_instance()
    return jsonify({"id": file_id, "object": "file", "deleted": True})
