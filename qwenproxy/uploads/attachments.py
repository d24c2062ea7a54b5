"""The media parts of a chat message as the ``files[]`` items of spec §5.4; ``data:`` URIs are uploaded on the fly."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..accounts.pool import Account
from ..db.models import UploadedFile
from ..errors import BadRequest, NotFound
from .uploader import Uploader
from .validation import IMAGE_TYPES, MIME_EXTENSIONS, decode_data_uri, mime_for_name, storage_path

# §5.4: MIME major type → (type, showType, file_class)
SHOW_TYPES = {
    "image": ("image", "image", "vision"),
    "video": ("video", "video", "video"),
    "audio": ("audio", "audio", "audio"),
}


_STORAGE_PATH = re.compile(r"(?:^|/)(?P<user>[0-9a-fA-F-]{32,36})/(?P<file>[0-9a-fA-F-]{32,36})_(?P<name>[^/]+)$")


def files_item(
    *,
    file_id: str,
    url: str,
    name: str,
    size: int,
    mime: str,
    user_id: str | None,
    created_at_ms: int | None = None,
) -> dict[str, Any]:
    """One element of ``messages[0].files`` in the web front end's shape (§5.4)."""
    stamp = created_at_ms or int(time.time() * 1000)
    kind, show, file_class = SHOW_TYPES.get(mime.split("/", 1)[0], ("file", "file", "document"))
    return {
        "type": kind,
        "file": {
            "created_at": stamp,
            "data": {},
            "filename": name,
            "hash": None,
            "id": file_id,
            "user_id": user_id or "",
            "meta": {"name": name, "size": size, "content_type": mime},
            "update_at": stamp,
        },
        "id": file_id,
        "url": url,
        "name": name,
        "collection_name": "",
        "progress": 0,
        "status": "uploaded",
        "greenNet": "success",
        "size": size,
        "error": "",
        "itemId": str(uuid.uuid4()),
        "file_type": mime,
        "showType": show,
        "file_class": file_class,
        "uploadTaskId": str(uuid.uuid4()),
    }


def item_for_record(record: UploadedFile) -> dict[str, Any]:
    return files_item(
        file_id=record.qwen_file_id,
        url=record.url,
        name=record.filename,
        size=int(record.bytes),
        mime=record.mime,
        user_id=record.user_id,
        created_at_ms=int(record.created_at * 1000),
    )


class Attachments:
    """Media parts of a chat message → ``files[]`` items (§5.4); used by the Qwen provider.

    - ``data:`` URIs and OpenAI ``file.file_data`` are uploaded as the turn's account;
    - URLs and ids of files uploaded through this proxy are looked up in the database;
    - other Qwen storage URLs (``…/<user_id>/<file_id>_<name>``) are referenced as they are;
    - any other URL returns ``None``: the caller keeps it inline (the seed's shape).
    """

    def __init__(self, uploader: Uploader) -> None:
        self.uploader = uploader

    def owner_hint(self, content: Any) -> str | None:
        """The account that uploaded the first referenced file: the turn should use it."""
        if not isinstance(content, list):
            return None
        for part in content:
            media = media_part(part)
            if media is None:
                continue
            ref = media[1]
            record = None
            if isinstance(ref, dict) and isinstance(ref.get("file_id"), str):
                record = self.uploader.find(ref["file_id"])
            elif isinstance(ref, str) and ref.startswith(("http://", "https://")):
                record = self.uploader.find_by_url(ref)
            elif isinstance(ref, str) and ref.startswith("file-"):
                record = self.uploader.find(ref)
            if record is not None and record.account_id:
                return str(record.account_id)
        return None

    def resolver(self, account: Account) -> Callable[[str, Any], dict[str, Any] | None]:
        return lambda kind, ref: self.resolve(kind, ref, account)

    def resolve(self, kind: str, ref: Any, account: Account) -> dict[str, Any] | None:
        if isinstance(ref, dict):
            return self._openai_file(ref, account)
        if not isinstance(ref, str) or not ref.strip():
            raise BadRequest(f"A `{kind}` part needs a URL or a data: URI", code="invalid_content_part")
        ref = ref.strip()
        if ref.startswith("data:"):
            return self._inline(ref, None, account)
        if ref.startswith("file-"):
            return self._known(ref)
        if ref.startswith(("http://", "https://")):
            record = self.uploader.find_by_url(ref)
            if record is not None:
                item = item_for_record(record)
                item["url"] = ref  # the client may hold a fresher presigned URL
                return item
            match = _STORAGE_PATH.search(storage_path(ref))
            if match:
                name = match.group("name")
                return files_item(
                    file_id=match.group("file"),
                    url=ref,
                    name=name,
                    size=0,
                    mime=mime_for_name(name),
                    user_id=match.group("user"),
                )
            return None
        raise BadRequest(
            f"A `{kind}` part must hold an http(s) URL, a data: URI or a file id", code="invalid_content_part"
        )

    def _known(self, file_id: str) -> dict[str, Any]:
        record = self.uploader.find(file_id)
        if record is None:
            raise NotFound(f"No file with id {file_id!r}", code="file_not_found", param="file_id")
        return item_for_record(record)

    def _openai_file(self, ref: dict[str, Any], account: Account) -> dict[str, Any]:
        """OpenAI's ``{"file_id"}`` or ``{"file_data", "filename"}`` file part."""
        if isinstance(ref.get("file_id"), str) and ref["file_id"]:
            return self._known(ref["file_id"])
        data = ref.get("file_data")
        if isinstance(data, str) and data:
            uri = data if data.startswith("data:") else f"data:;base64,{data}"
            return self._inline(uri, ref.get("filename"), account)
        url = ref.get("url")
        if isinstance(url, str) and url:
            item = self.resolve("file", url, account)
            if item is not None:
                return item
        raise BadRequest("A `file` part needs `file_id` or `file_data` (with `filename`)", code="invalid_content_part")

    def _inline(self, uri: str, filename: Any, account: Account) -> dict[str, Any]:
        mime, data = decode_data_uri(uri, self.uploader.limit)
        if isinstance(filename, str) and filename.strip():
            name = filename
        else:
            ext = MIME_EXTENSIONS.get(mime)
            if ext is None:
                raise BadRequest(
                    f"Unsupported inline file type {mime or '(none)'}; give a `filename`",
                    code="unsupported_file_type",
                )
            name = f"{'image' if ext in IMAGE_TYPES else 'file'}-{secrets.token_hex(4)}.{ext}"
        record = self.uploader.upload_bytes(data, name=name, account=account)
        return item_for_record(record)


def media_part(part: Any) -> tuple[str, Any] | None:
    """``(kind, reference)`` of a media content part: seed ``image``/``file``/``video``,
    OpenAI ``image_url`` (URL or data: URI) and ``file`` (an object); ``None`` otherwise."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return ("image", url) if url else None
    if kind in ("image", "video", "audio", "file") and part.get(kind):
        return str(kind), part[kind]
    return None
