"""What a generation request is, independent of torch: sampling settings, the tokenized prompt,
the errors a request can meet, and the incremental detokenizer that applies stop strings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# seed 002 (chat.py): the sampling the gateway uses for Qwen
DEFAULT_SAMPLING = {"temperature": 0.4, "top_p": 0.9, "top_k": 60, "repetition_penalty": 1.1}


class GenerationError(Exception):
    """A request the model cannot serve; ``code`` travels to the gateway."""

    code = "generation_error"
    status = 500


class ContextTooLongError(GenerationError):
    code = "context_length_exceeded"
    status = 400


class BadParams(GenerationError):
    code = "invalid_request"
    status = 400


@dataclass
class SamplingParams:
    """Per-request generation settings; ``temperature`` 0 means greedy."""

    max_tokens: int = 4096
    temperature: float = DEFAULT_SAMPLING["temperature"]
    top_p: float = DEFAULT_SAMPLING["top_p"]
    top_k: int = DEFAULT_SAMPLING["top_k"]
    repetition_penalty: float = DEFAULT_SAMPLING["repetition_penalty"]
    stop: list[str] = field(default_factory=list)
    min_tokens: int = 0  # vLLM's name; forces a length (the bench and tests use it)

    @classmethod
    def from_dict(cls, body: dict[str, Any], defaults: dict[str, Any] | None = None) -> SamplingParams:
        """Build from a request body, falling back to ``defaults`` then to the class defaults."""
        merged: dict[str, Any] = {}
        for source in (defaults or {}, body):
            for key in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "min_tokens"):
                if source.get(key) is not None:
                    merged[key] = source[key]
        stop = merged.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        try:
            params = cls(
                max_tokens=int(merged.get("max_tokens", cls.max_tokens)),
                temperature=float(merged.get("temperature", cls.temperature)),
                top_p=float(merged.get("top_p", cls.top_p)),
                top_k=int(merged.get("top_k", cls.top_k)),
                repetition_penalty=float(merged.get("repetition_penalty", cls.repetition_penalty)),
                stop=[str(s) for s in stop if s],
                min_tokens=int(merged.get("min_tokens", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise BadParams(f"Invalid sampling parameter: {exc}") from exc
        if params.max_tokens < 1:
            raise BadParams("max_tokens must be at least 1")
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.top_k < 0:
            raise BadParams("temperature must be >= 0, top_p in (0, 1], top_k >= 0")
        if params.repetition_penalty <= 0:
            raise BadParams("repetition_penalty must be > 0")
        return params


@dataclass
class Prompt:
    """A tokenized chat prompt, after truncation to the context window."""

    ids: list[int]
    max_new_tokens: int
    dropped_messages: int = 0


def message_text(content: Any) -> str:
    """OpenAI content may be a list of parts; the model only reads the text ones."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def normalize_messages(messages: Any, system: str | None = None) -> list[dict[str, str]]:
    """Validate ``[{role, content}]`` and add ``system`` in front when none is present."""
    if not isinstance(messages, list) or not messages:
        raise BadParams("messages must be a non-empty list")
    out = []
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise BadParams("each message needs a role and a content")
        out.append({"role": msg["role"], "content": message_text(msg.get("content"))})
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


class IncrementalDecoder:
    """Token ids in, text pieces out, one call per token, with stop strings applied.

    Detokenizes a sliding window (prefix/read offsets, as TGI and vLLM do), holds back text that
    ends in an incomplete UTF-8 sequence, and holds back a tail that may be the start of a stop
    string. ``push`` returns True on the token that completed a stop string: the text before it
    has been emitted and generation should end there.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str], emit: Callable[[str], None]) -> None:
        self.decode = decode
        self.stop = stop
        self.emit = emit
        self.stop_hit = False
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._pending = ""  # text held back because it may be the start of a stop string

    def push(self, token: int) -> bool:
        if self.stop_hit:
            return True
        self._ids.append(token)
        prefix_text = self.decode(self._ids[self._prefix : self._read])
        new_text = self.decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            self._text(delta)
        return self.stop_hit

    def finish(self) -> None:
        """Flush what was held back (the generation ended without a stop string)."""
        if self.stop_hit:
            return
        prefix_text = self.decode(self._ids[self._prefix : self._read])
        new_text = self.decode(self._ids[self._prefix :])
        self._pending += new_text[len(prefix_text) :]
        if self._pending:
            self.emit(self._pending)
            self._pending = ""

    def _text(self, delta: str) -> None:
        if not self.stop:
            self.emit(delta)
            return
        text = self._pending + delta
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stop_hit = True
            self._pending = ""
            if min(hits):
                self.emit(text[: min(hits)])
            return
        hold = 0  # the longest suffix of text that may begin a stop string
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self._pending = text[len(text) - hold :] if hold else ""
        if len(text) > hold:
            self.emit(text[: len(text) - hold])
