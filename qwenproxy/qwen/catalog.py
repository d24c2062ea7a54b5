"""Qwen model names: the live list (2026 §1), the seed's alias table (§6.2), legacy aliases
(``aliases.py``) and the editable models file as the offline fallback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .aliases import AliasMap
from .modes import Modes, split_model

log = logging.getLogger(__name__)

# canonical id -> aliases (spec §6.2, the seed's modelMapping.js)
ALIASES: dict[str, list[str]] = {
    "qwen3-max": ["qwen-max", "Qwen3-Max", "Qwen3-Maximum", "qwen3-max-preview", "Qwen3-Max-Preview"],
    "qwen3-vl-plus": [
        "qwen-vl",
        "qwen-vl-plus",
        "qwen-vl-plus-latest",
        "qwen-vl-max",
        "qwen-vl-max-latest",
        "Qwen3-VL-235B-A22B",
        "qwen3-vl-235b-a22b",
    ],
    "qwen3-coder-plus": [
        "qwen3-coder",
        "qwen-coder-plus",
        "qwen-coder-plus-latest",
        "Qwen3-Coder-Plus",
        "qwen2.5-coder-3b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "Qwen3-Coder",
    ],
    "qwen3-omni-flash": ["qwen3-omni", "qwen3-omni-latest", "Qwen3-omni-flash", "Qwen3-Omni-Flash", "Qwen3-Omni"],
    "qwen-plus-2025-09-11": [
        "qwen-plus",
        "qwen-plus-latest",
        "Qwen3-Next",
        "Qwen3-Next-80B-A3B",
        "Qwen3-Next-80B-A3Bб",
        "qwen3-next",
        "qwen3-next-80b-a3b",
    ],
    "qwen3-235b-a22b": [
        "qwen3",
        "qwen-3",
        "qwen3-235b",
        "Qwen3-235B-A22B",
        "Qwen3-235B-A22B-2507",
        "qwen3-235b-a22b-2507",
    ],
    "qwen3-30b-a3b": ["qwen3-plus", "qwen3-30b", "Qwen3-30B-A3B", "Qwen3-30B-A3B-2507", "qwen3-30b-a3b-2507"],
    "qwen3-coder-30b-a3b-instruct": [
        "qwen3-coder-flash",
        "Qwen3-Coder-Flash",
        "qwen3-coder-30b",
        "Qwen3-Coder-30B-A3B-Instruct",
    ],
    "qwen-max-latest": ["Qwen2.5-Max", "qwen2.5-max"],
    "qwen-plus-2025-01-25": ["Qwen2.5-Plus", "qwen2.5-plus"],
    "qwq-32b": ["qwq", "QwQ-32B", "qwq-32b-preview"],
    "qwen-turbo-2025-02-11": ["qwen-turbo", "qwen-turbo-latest", "Qwen2.5-Turbo"],
    "qwen2.5-omni-7b": ["qwen2.5-omni", "Qwen2.5-Omni-7B", "qwen-omni-7b"],
    "qvq-72b-preview-0310": ["qvq", "QVQ-Max", "qvq-72b"],
    "qwen2.5-vl-32b-instruct": ["qwen2.5-vl", "Qwen2.5-VL-32B-Instruct"],
    "qwen2.5-14b-instruct-1m": ["qwen2.5-14b", "qwen2.5-coder-14b-instruct", "Qwen2.5-14B-Instruct-1M"],
    "qwen2.5-coder-32b-instruct": ["qwen2.5-coder", "qwen2.5-coder-plus", "Qwen2.5-Coder-32B-Instruct"],
    "qwen2.5-72b-instruct": ["qwen2.5-72b", "Qwen2.5-72B-Instruct"],
}
ALIAS_TO_CANONICAL: dict[str, str] = {
    alias: canonical for canonical, aliases in ALIASES.items() for alias in [canonical, *aliases]
}


def read_models_file(path: str | Path) -> list[str]:
    """One id per line; blank lines and ``#`` comments skipped; file order kept (§6.1)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    seen: list[str] = []
    for raw in lines:
        line = raw.strip()
        if line and not line.startswith("#") and line not in seen:
            seen.append(line)
    return seen


def _meta(entry: dict[str, Any]) -> dict[str, Any]:
    info = entry.get("info")
    meta = info.get("meta") if isinstance(info, dict) else None
    return meta if isinstance(meta, dict) else {}


def usable(entry: dict[str, Any]) -> bool:
    """A model that can answer a plain chat: active, and ``t2t`` among its chat types."""
    info = entry.get("info") if isinstance(entry.get("info"), dict) else {}
    if info.get("is_active") is False:
        return False
    chat_types = _meta(entry).get("chat_type")
    return not isinstance(chat_types, list) or not chat_types or "t2t" in chat_types


def thinking_locked_entry(entry: dict[str, Any]) -> bool:
    """``info.meta.think_skip.enable`` false (2026 §1): thinking cannot be turned off."""
    meta = _meta(entry)
    skip = meta.get("think_skip")
    if isinstance(skip, dict) and "enable" in skip:
        return skip["enable"] is False
    abilities = meta.get("abilities")
    return isinstance(abilities, dict) and abilities.get("thinking") == 4  # "active, uncancellable"


class ModelCatalog:
    """Which Qwen ids exist: upstream ``/api/v2/models/`` or ``/api/models`` when reachable
    (cached), else the models file; the default model and legacy names follow the live list."""

    def __init__(
        self,
        models_file: str | Path,
        default_model: str | None,
        fetch: Callable[[], list[dict[str, Any]]] | None = None,
        ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        aliases: AliasMap | None = None,
        locked_models: str = "qwen3.8-*",
    ) -> None:
        self.models_file = Path(models_file)
        self.configured_default = str(default_model or "").strip() or None
        self.aliases = aliases or AliasMap()
        self.locked_globs = [g.strip().lower() for g in str(locked_models or "").split(",") if g.strip()]
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._upstream: list[dict[str, Any]] | None = None
        self._fetched_at = -1e18
        self._failed_at = -1e18

    def upstream_models(self) -> list[dict[str, Any]] | None:
        """The cached upstream list; refreshed after ``ttl``; ``None`` when never reachable."""
        if self._fetch is None:
            return None
        now = self._clock()
        with self._lock:
            fresh = now - self._fetched_at < self._ttl
            recently_failed = now - self._failed_at < min(60.0, self._ttl)
            if fresh or recently_failed:
                return self._upstream
        try:
            models = self._fetch()
        except Exception as exc:  # unreachable upstream must not break listing
            log.info("upstream model list unavailable: %s", exc)
            with self._lock:
                self._failed_at = now
                return self._upstream
        with self._lock:
            if models:
                self._upstream = models
                self._fetched_at = now
            else:
                self._failed_at = now
            return self._upstream

    def ids(self) -> list[str]:
        upstream = self.upstream_models()
        if upstream:
            return [str(m["id"]) for m in upstream]
        return self._offline_ids()

    @property
    def default_model(self) -> str:
        """``DEFAULT_MODEL`` when it is in the live list (or nothing is known), else the first
        usable model of that list (2026 §1: a fixed default points at a dead id)."""
        return self._default(self.upstream_models())

    def cached_default_model(self) -> str:
        """``default_model`` from what is already known, without asking upstream (status pages)."""
        with self._lock:
            upstream = self._upstream
        return self._default(upstream)

    def _default(self, upstream: list[dict[str, Any]] | None) -> str:
        ids = [str(m["id"]) for m in upstream] if upstream else self._offline_ids()
        if self.configured_default and (self.configured_default in ids or not ids):
            return self.configured_default
        first = next((str(m["id"]) for m in upstream or [] if usable(m)), None)
        return first or (ids[0] if ids else "")

    def _offline_ids(self) -> list[str]:
        return read_models_file(self.models_file) or ([self.configured_default] if self.configured_default else [])

    def cached_ids(self) -> list[str]:
        """``ids()`` without asking upstream: the last list fetched, else the models file."""
        with self._lock:
            upstream = self._upstream
        if upstream:
            return [str(m["id"]) for m in upstream]
        return self._offline_ids()

    def known(self, model: str, *, fetch: bool = True) -> bool:
        """Whether ``model`` (an alias or id, maybe with mode suffixes) is a Qwen model.
        ``fetch=False`` never asks upstream (routing a request to a provider must not)."""
        ids = self.ids() if fetch else self.cached_ids()
        if model in ALIAS_TO_CANONICAL or model in ids or model.strip().lower() in self.aliases.exact:
            return True
        base, modes = split_model(model)
        return modes != Modes() and base is not None and (base in ALIAS_TO_CANONICAL or base in ids)

    def _live(self, name: str, ids: list[str]) -> str | None:
        """``name`` as a live id (case-insensitively), else ``None``."""
        if name in ids:
            return name
        lowered = name.lower()
        return next((i for i in ids if i.lower() == lowered), None)

    def resolve(self, model: str | None) -> str:
        """A live id for a requested name: the id itself, the seed's alias table (§6.2), the
        configured and built-in legacy aliases (``aliases.py``); anything else, or nothing,
        → the default model."""
        if not model or not model.strip():
            return self.default_model
        ids = self.ids()
        name = model.strip()
        candidates = [name]
        canonical = ALIAS_TO_CANONICAL.get(name)
        if canonical:
            candidates.append(canonical)
        for candidate in candidates:
            live = self._live(candidate, ids)
            if live:
                return live
        for candidate in candidates:
            for target in self.aliases.targets(candidate):
                live = self._live(target, ids)
                if live:
                    return live
        return self.default_model

    def resolve_modes(self, model: str | None) -> tuple[str, Modes]:
        """Like ``resolve``, after taking the mode suffixes off (``qwen3-max-thinking`` →
        ``qwen3-max`` + thinking). A name that is itself a live id is never split."""
        if not model or model.strip() in ALIAS_TO_CANONICAL or self._live(model.strip(), self.ids()):
            return self.resolve(model), Modes()
        base, modes = split_model(model)
        return self.resolve(base), modes

    def thinking_locked(self, model: str) -> bool:
        """Whether ``model`` cannot think off (2026 §1): from the live list's ``think_skip``,
        else ``QWEN_THINKING_LOCKED_MODELS`` globs (offline, or a model the list lacks)."""
        for entry in self.upstream_models() or []:
            if entry.get("id") == model:
                return thinking_locked_entry(entry)
        lowered = model.lower()
        return any(fnmatchcase(lowered, glob) for glob in self.locked_globs)
