"""Uploads to Qwen's storage and files in chat messages (spec §5, docs/UPLOADS.md).

Flask-free. ``Uploader`` validates a file (name, type, size, first bytes), asks chat.qwen.ai
for STS credentials, ``PUT``s the bytes to OSS, has documents parsed, and records the file.
``Spool`` keeps a request's incoming files in the uploads folder under random names and
always removes them. ``Attachments`` turns the media parts of a chat message into the
``files[]`` items of §5.4, uploading ``data:`` URIs on the fly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from io import BytesIO
from pathlib import Path
from typing import IO, Any, TypeVar

from .. import db
from ..accounts.pool import Account, AccountPool, Rotation
from ..db.models import UploadedFile
from ..errors import BadRequest, RateLimited, Unauthorized
from ..jwt import jwt_user_id
from ..qwen import oss
from ..qwen.files import QwenFiles
from .spool import Spool
from .validation import FileKind, FileTooLarge, check_content, classify, clean_name, storage_path

log = logging.getLogger(__name__)

T = TypeVar("T")


# --------------------------------------------------------------------------- validation


# --------------------------------------------------------------------------- temporary files


# --------------------------------------------------------------------------- files[] items


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
        rotation = Rotation(self.pool, attempts=self.max_attempts, prefer=prefer)
        for account in rotation:
            try:
                return fn(account)
            except (RateLimited, Unauthorized) as exc:
                rotation.refused(account, exc)
            finally:
                self.pool.release(account.id)
        raise rotation.exhausted("No Qwen account could take the upload")

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
        v1 = self.signature == "v1"
        headers = oss.sign_put_v1(**signed) if v1 else oss.sign_put(region=creds.region, **signed)
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
