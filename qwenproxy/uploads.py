"""Uploads to Qwen's storage and files in chat messages (spec §5, docs/UPLOADS.md).

Flask-free. ``Uploader`` validates a file (name, type, size, first bytes), asks chat.qwen.ai
for STS credentials, ``PUT``s the bytes to OSS, has documents parsed, and records the file.
``Spool`` keeps a request's incoming files in the uploads folder under random names and
always removes them. ``Attachments`` turns the media parts of a chat message into the
``files[]`` items of §5.4, uploading ``data:`` URIs on the fly.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import logging
import os
import re
import secrets
import time
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from . import db
from .accounts import Account, AccountPool
from .errors import ApiError, BadRequest, NotFound, RateLimited, Unauthorized, UpstreamError
from .models import UploadedFile
from .qwen import oss
from .qwen.files import QwenFiles

log = logging.getLogger(__name__)

T = TypeVar("T")

IMAGE_TYPES: dict[str, str] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
}
BINARY_DOCUMENTS: dict[str, str] = {
    "pdf": "application/pdf",
    "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
TEXT_DOCUMENTS: dict[str, str] = {
    "txt": "text/plain",
    "md": "text/markdown",
    "markdown": "text/markdown",
    "csv": "text/csv",
    "tsv": "text/tab-separated-values",
    "json": "application/json",
    "jsonl": "application/jsonl",
    "xml": "application/xml",
    "html": "text/html",
    "htm": "text/html",
    "yaml": "application/yaml",
    "yml": "application/yaml",
    "toml": "application/toml",
    "ini": "text/plain",
    "log": "text/plain",
    "rtf": "application/rtf",
    "tex": "text/x-tex",
    "py": "text/x-python",
    "js": "text/javascript",
    "ts": "text/plain",
    "java": "text/x-java",
    "c": "text/x-c",
    "h": "text/x-c",
    "cpp": "text/x-c++",
    "hpp": "text/x-c++",
    "cs": "text/plain",
    "go": "text/plain",
    "rs": "text/plain",
    "rb": "text/plain",
    "php": "text/plain",
    "sh": "text/x-shellscript",
    "sql": "application/sql",
    "css": "text/css",
}
# What the first bytes of a file of each binary type look like.
MAGIC: dict[str, tuple[bytes, ...]] = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpg": (b"\xff\xd8\xff",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "bmp": (b"BM",),
    "pdf": (b"%PDF-",),
    "doc": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",),
    "docx": (b"PK\x03\x04",),
}
# MIME type → extension, for data: URIs (the first extension of each type wins)
MIME_EXTENSIONS: dict[str, str] = {}
for _ext, _mime in (*IMAGE_TYPES.items(), *BINARY_DOCUMENTS.items(), *TEXT_DOCUMENTS.items()):
    MIME_EXTENSIONS.setdefault(_mime, _ext)
MIME_EXTENSIONS["image/jpg"] = "jpg"

OPENAI_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# §5.4: MIME major type → (type, showType, file_class)
SHOW_TYPES = {
    "image": ("image", "image", "vision"),
    "video": ("video", "video", "video"),
    "audio": ("audio", "audio", "audio"),
}
_STORAGE_PATH = re.compile(r"(?:^|/)(?P<user>[0-9a-fA-F-]{32,36})/(?P<file>[0-9a-fA-F-]{32,36})_(?P<name>[^/]+)$")


class FileTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "file_too_large"


@dataclass(frozen=True)
class FileKind:
    ext: str
    mime: str
    category: str  # image | document

    @property
    def sts_type(self) -> str:
        """``filetype`` of the STS request, as the seed sends it (§5.1)."""
        return "image" if self.category == "image" else "document"


# --------------------------------------------------------------------------- validation


def clean_name(name: str | None) -> str:
    """A file name (never a path): no separators, control characters or leading dots."""
    name = unicodedata.normalize("NFC", (name or "").strip())
    if not name:
        raise BadRequest("The uploaded file has no name", param="file", code="invalid_file_name")
    if (
        "/" in name
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or name.startswith(".")  # "..", hidden names, and "..\\x" after header unescaping
        or len(name.encode("utf-8")) > 255
    ):
        raise BadRequest(
            "The file name must be a plain name, not a path (no '/', '\\', leading '.' or control characters)",
            param="file",
            code="invalid_file_name",
        )
    return name


def classify(name: str) -> FileKind:
    """The kind of a file from its extension; anything not listed is refused."""
    stem, dot, ext = name.rpartition(".")
    ext = ext.lower()
    if not dot or not stem.strip("."):
        ext = ""
    if ext in IMAGE_TYPES:
        return FileKind(ext, IMAGE_TYPES[ext], "image")
    if ext in BINARY_DOCUMENTS:
        return FileKind(ext, BINARY_DOCUMENTS[ext], "document")
    if ext in TEXT_DOCUMENTS:
        return FileKind(ext, TEXT_DOCUMENTS[ext], "document")
    allowed = ", ".join([*IMAGE_TYPES, *BINARY_DOCUMENTS, "txt", "md", "csv", "json", "…"])
    raise BadRequest(
        f"Unsupported file type {('.' + ext) if ext else '(no extension)'}; allowed: {allowed}",
        param="file",
        code="unsupported_file_type",
    )


def check_content(kind: FileKind, head: bytes) -> None:
    """The first bytes must fit the type the name claims (an .exe renamed .png is refused)."""
    ok = True
    if kind.ext == "webp":
        ok = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    elif kind.ext in MAGIC:
        ok = head.startswith(MAGIC[kind.ext])
    elif kind.ext in TEXT_DOCUMENTS:
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            ok = True
        else:
            try:
                codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
                ok = b"\x00" not in head
            except UnicodeDecodeError:
                ok = False
    if not ok:
        raise BadRequest(f"The file's content is not a .{kind.ext} file", param="file", code="unsupported_file_type")


def jwt_user_id(token: str) -> str | None:
    """The ``id`` claim of a Qwen JWT (§2.3): the owner of uploaded files."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return str(claims["id"]) if isinstance(claims, dict) and claims.get("id") else None
    except (IndexError, ValueError, TypeError, KeyError, binascii.Error):
        return None


# --------------------------------------------------------------------------- temporary files


class _CappedFile:
    """A temporary file that refuses to grow past the size limit."""

    def __init__(self, path: Path, handle: IO[bytes], limit: int) -> None:
        self.path = path
        self.raw = handle
        self.limit = limit
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise FileTooLarge(f"The file is larger than the limit of {self.limit / 1048576:g} MB")
        return self.raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class Spool:
    """A request's incoming files: in the uploads folder, random names, removed by ``close``.

    ``factory`` is a werkzeug ``stream_factory``: the client's file name never reaches the
    disk, and the multipart parser writes into these files instead of the system temp dir.
    """

    def __init__(self, directory: str | Path, limit: int) -> None:
        self.directory = Path(directory)
        self.limit = limit
        self.files: list[_CappedFile] = []

    def factory(
        self, total_content_length: int | None, content_type: str | None, filename: str | None, content_length=None
    ) -> _CappedFile:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"upload-{secrets.token_hex(16)}.part"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        capped = _CappedFile(path, os.fdopen(fd, "w+b"), self.limit)
        self.files.append(capped)
        return capped

    def close(self) -> None:
        for capped in self.files:
            try:
                capped.raw.close()
            except OSError:
                pass
            try:
                capped.path.unlink(missing_ok=True)
            except OSError:
                log.warning("could not remove the temporary upload %s", capped.path)
        self.files.clear()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- files[] items


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


def mime_for_name(name: str) -> str:
    ext = name.rpartition(".")[2].lower()
    return IMAGE_TYPES.get(ext) or BINARY_DOCUMENTS.get(ext) or TEXT_DOCUMENTS.get(ext) or "application/octet-stream"


def decode_data_uri(uri: str, limit: int) -> tuple[str, bytes]:
    """``data:<mime>[;base64],<data>`` → (MIME type, bytes), refusing more than ``limit``."""
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise BadRequest("Malformed data: URI (no ',')", code="invalid_data_uri")
    params = [p.strip().lower() for p in header.split(";")]
    mime = params[0] or "text/plain"
    if "base64" in params[1:]:
        payload = re.sub(r"\s+", "", payload)
        if len(payload) // 4 * 3 > limit + 3:
            raise FileTooLarge(f"The inline file is larger than the limit of {limit / 1048576:g} MB")
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("Malformed data: URI (bad base64)", code="invalid_data_uri") from None
    else:
        data = unquote_to_bytes(payload)
    if len(data) > limit:
        raise FileTooLarge(f"The inline file is larger than the limit of {limit / 1048576:g} MB")
    return mime, data


def storage_path(url: str) -> str:
    """The object key a storage URL points at (its path, decoded, without the leading '/')."""
    try:
        return unquote(urlsplit(url).path).lstrip("/")
    except ValueError:
        return ""


# --------------------------------------------------------------------------- the uploader


class Uploader:
    def __init__(
        self,
        files: QwenFiles,
        pool: AccountPool,
        config: Mapping[str, Any],
        *,
        put: Callable[..., None] = oss.put_object,
        max_attempts: int = 3,
    ) -> None:
        self.files = files
        self.pool = pool
        self.uploads_dir = Path(str(config.get("UPLOADS_DIR") or "./uploads"))
        self.limit = int(float(config.get("MAX_UPLOAD_MB") or 20) * 1024 * 1024)
        self.oss_base_url = str(config.get("QWEN_OSS_BASE_URL") or "") or None
        self.signature = str(config.get("QWEN_OSS_SIGNATURE") or "v4").lower()
        self.parse_timeout = float(config.get("QWEN_PARSE_TIMEOUT") or 60.0)
        self.parse_interval = float(config.get("QWEN_PARSE_POLL_INTERVAL") or 1.0)
        self.timeout = (
            float(config.get("QWEN_CONNECT_TIMEOUT") or 10.0),
            float(config.get("QWEN_READ_TIMEOUT") or 120.0),
        )
        self.user_agent = str(config.get("QWEN_USER_AGENT") or "")
        self.origin = str(config.get("QWEN_BASE_URL") or "https://chat.qwen.ai").rstrip("/")
        self.put = put
        self.max_attempts = max_attempts

    def spool(self) -> Spool:
        return Spool(self.uploads_dir, self.limit)

    # --- accounts
    def with_account(self, fn: Callable[[Account], T], *, prefer: str | None = None) -> T:
        """Run ``fn`` as an account, moving on to another on quota or expiry (like chats)."""
        tried: set[str] = set()
        last: Exception | None = None
        for _ in range(self.max_attempts):
            try:
                account = self.pool.acquire(prefer=prefer, exclude=tried)
            except Exception:
                if last is not None:
                    raise last from None
                raise
            try:
                return fn(account)
            except RateLimited as exc:
                self.pool.mark_rate_limited(account.id, getattr(exc, "hours", None))
                tried.add(account.id)
                last = exc
            except Unauthorized as exc:
                self.pool.mark_invalid(account.id, exc.message)
                tried.add(account.id)
                last = exc
            finally:
                self.pool.release(account.id)
        raise last or UpstreamError("No Qwen account could take the upload")

    def raw_sts(self, filename: str, filesize: Any, filetype: str) -> Any:
        """The seed's ``/api/files/getstsToken``: upstream's answer, unchanged (§7.7)."""
        return self.with_account(lambda a: self.files.sts_token(a.token, filename, filesize, filetype, account_id=a.id))

    # --- uploads
    def upload(
        self,
        stream: IO[bytes],
        *,
        name: str | None,
        size: int | None = None,
        purpose: str | None = None,
        account: Account | None = None,
    ) -> UploadedFile:
        """Validate, upload and record one file; ``account`` pins it (chat turns)."""
        name = clean_name(name)
        kind = classify(name)
        if size is None:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
        if size <= 0:
            raise BadRequest("The uploaded file is empty", param="file", code="empty_file")
        if size > self.limit:
            raise FileTooLarge(f"The file is larger than the limit of {self.limit / 1048576:g} MB")
        stream.seek(0)
        check_content(kind, stream.read(4096))
        purpose = purpose or ("vision" if kind.category == "image" else "user_data")

        def send(acc: Account) -> UploadedFile:
            return self._send(stream, name, size, kind, purpose, acc)

        if account is not None:
            return send(account)
        return self.with_account(send)

    def upload_bytes(self, data: bytes, *, name: str, account: Account | None = None) -> UploadedFile:
        return self.upload(BytesIO(data), name=name, size=len(data), account=account)

    def _send(
        self, stream: IO[bytes], name: str, size: int, kind: FileKind, purpose: str, account: Account
    ) -> UploadedFile:
        creds = self.files.credentials(account.token, name, size, kind.sts_type, account_id=account.id)
        url = oss.object_url(
            creds.file_path,
            bucket=creds.bucket,
            endpoint=creds.endpoint,
            region=creds.region,
            base_url=self.oss_base_url,
        )
        signed = dict(
            access_key_id=creds.access_key_id,
            access_key_secret=creds.access_key_secret,
            security_token=creds.security_token,
            bucket=creds.bucket,
            key=creds.file_path,
            content_type=kind.mime,
        )
        if self.signature == "v1":
            headers = oss.sign_put_v1(**signed)
        else:
            headers = oss.sign_put(region=creds.region, **signed)
        headers.update({"Origin": self.origin, "Referer": self.origin + "/"})
        if self.user_agent:
            headers["User-Agent"] = self.user_agent
        stream.seek(0)
        self.put(url, stream, headers, timeout=self.timeout)
        if kind.category == "document":
            self.files.parse_document(
                account.token,
                creds.file_id,
                account_id=account.id,
                timeout=self.parse_timeout,
                interval=self.parse_interval,
            )
        user_id = jwt_user_id(account.token) or creds.file_path.split("/", 1)[0]
        with db.session():
            record = UploadedFile.create(
                filename=name,
                bytes=size,
                purpose=purpose,
                mime=kind.mime,
                kind=kind.category,
                qwen_file_id=creds.file_id,
                file_path=creds.file_path,
                url=creds.file_url,
                user_id=user_id,
                account_id=account.id,
                status="processed",
            )
        log.info("uploaded %s (%d bytes) as %s for account %s", name, size, creds.file_id, account.id)
        return record

    # --- records
    @staticmethod
    def find(file_id: str) -> UploadedFile | None:
        """A record by our id (``file-…``) or Qwen's file id."""
        with db.session():
            return UploadedFile.get_or_none(UploadedFile.id == file_id) or UploadedFile.get_or_none(
                UploadedFile.qwen_file_id == file_id
            )

    @staticmethod
    def find_by_url(url: str) -> UploadedFile | None:
        path = storage_path(url)
        with db.session():
            record = UploadedFile.get_or_none(UploadedFile.file_path == path) if path else None
            return record or UploadedFile.select().where(UploadedFile.url == url).first()


# --------------------------------------------------------------------------- chat messages


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
            return self._inline(ref, None, kind, account)
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
            return self._inline(uri, ref.get("filename"), "file", account)
        url = ref.get("url")
        if isinstance(url, str) and url:
            item = self.resolve("file", url, account)
            if item is not None:
                return item
        raise BadRequest("A `file` part needs `file_id` or `file_data` (with `filename`)", code="invalid_content_part")

    def _inline(self, uri: str, filename: Any, kind: str, account: Account) -> dict[str, Any]:
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


def file_object(record: UploadedFile) -> dict[str, Any]:
    """A record as OpenAI's ``File`` object."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": int(record.bytes),
        "created_at": int(record.created_at),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": record.status,
    }
