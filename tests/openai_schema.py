"""Validation against OpenAI's published schemas (a pinned subset, see tests/data)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).parent / "data" / "openai-schemas.json"


@cache
def _document() -> dict:
    return json.loads(SCHEMAS.read_text(encoding="utf-8"))


def validate(name: str, instance: object) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` is a valid ``name``."""
    doc = _document()
    schema = {"$schema": doc["$schema"], "$defs": doc["$defs"], "$ref": f"#/$defs/{name}"}
    Draft202012Validator(schema).validate(instance)


def sse_events(raw: str) -> list[str]:
    """The data payloads of an SSE body; comments (pings) dropped."""
    out = []
    for block in raw.split("\n\n"):
        data = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            out.append("\n".join(data))
    return out
