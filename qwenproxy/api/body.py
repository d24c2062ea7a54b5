"""Checks on a JSON request body (``api.common.json_body``, which every JSON route uses).

Only ``application/json`` is read (415 otherwise). A browser can send ``text/plain``, a form
or a body without any Content-Type to another origin without asking first (no CORS
preflight); ``application/json`` always needs the preflight, which a foreign page fails. So
a web page the user visits cannot make the gateway act by posting to it.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``), which Python keeps in a ``str`` that
cannot be encoded (SQLite, logs and upstream requests then fail with a 500): refused here
with a 400 that names the field.
"""

from __future__ import annotations

import re
from typing import Any

from flask import request

from ..errors import BadRequest, UnsupportedMediaType

JSON_MIMETYPE = "application/json"

# a \uD800-\uDFFF escape somewhere in the raw body: only then can a parsed string hold one
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def require_json_type() -> None:
    """415 unless the request says its body is JSON."""
    if request.mimetype != JSON_MIMETYPE:
        got = request.mimetype or "no Content-Type"
        raise UnsupportedMediaType(
            f"Send the body as JSON with `Content-Type: application/json` (got {got})",
        )


def check_unicode(raw: bytes, data: Any) -> None:
    """400 when the parsed body holds a lone surrogate (only a ``\\uD8xx`` escape makes one)."""
    if not _SURROGATE_ESCAPE.search(raw):
        return
    where = lone_surrogate(data)
    if where is not None:
        raise BadRequest(
            f"Invalid Unicode in `{where or 'body'}`: a lone UTF-16 surrogate (\\ud800-\\udfff)",
            param=where or None,
            code="invalid_unicode",
        )


def lone_surrogate(value: Any) -> str | None:
    """The path (``messages[0].content``) of the first key or string holding a lone
    surrogate, ``""`` for the top level, or None when there is none. Iterative: no depth limit."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{path}.{key}" if path else str(key)
                if _SURROGATE.search(key):
                    return name.encode("utf-8", "backslashreplace").decode("utf-8")  # never echo one
                stack.append((name, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None
