"""What an upload may be: its name, type, size and first bytes; ``data:`` URIs (docs/UPLOADS.md)."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from ..errors import ApiError, BadRequest

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


def sniff_image(head: bytes) -> str | None:
    """The image extension the first bytes spell (a file sent without a usable name)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for ext in ("png", "jpg", "gif", "bmp"):
        if head.startswith(MAGIC[ext]):
            return ext
    return None


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
