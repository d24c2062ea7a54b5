"""Legacy and foreign model names → a live chat.qwen.ai model (2026 spec §1).

The site's list churns (``qwen-max-latest``, ``qwen3-max``, ``qwq-32b`` … are gone in 2026),
and clients keep asking for the names they know, OpenAI's included. A name that is not a
live id is looked up here: ``MODEL_ALIASES`` first (``name=target`` pairs, ``*`` globs,
comma- or newline-separated), then the built-in table below. A target that is not live
either is skipped; when nothing matches, the catalog answers with the default model.
"""

from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatchcase

# (glob, target), first match wins; targets are the 2026 live list (qwen3.7-plus, qwen3.8-max,
# qwen3.7-max, qwen3.6-plus). The max family answers "max" names and the big OpenAI/Anthropic
# models, plus answers the small and fast ones; reasoning names go to the newest max.
LEGACY_ALIASES: tuple[tuple[str, str], ...] = (
    ("qwen-max*", "qwen3.7-max"),
    ("qwen3-max*", "qwen3.7-max"),
    ("qwen2.5-max", "qwen3.7-max"),
    ("qwen3.8-max-preview", "qwen3.8-max"),
    ("qwq*", "qwen3.8-max"),
    ("qvq*", "qwen3.8-max"),
    ("qwen-plus*", "qwen3.7-plus"),
    ("qwen-turbo*", "qwen3.6-plus"),
    ("qwen-flash*", "qwen3.6-plus"),
    ("qwen3-coder*", "qwen3.7-plus"),
    ("qwen3-vl*", "qwen3.7-plus"),
    ("qwen3-omni*", "qwen3.7-plus"),
    ("qwen3-*", "qwen3.7-plus"),
    ("qwen2.5-*", "qwen3.7-plus"),
    ("gpt-3.5*", "qwen3.6-plus"),
    ("gpt-*mini*", "qwen3.7-plus"),
    ("gpt-*nano*", "qwen3.6-plus"),
    ("gpt-*", "qwen3.7-max"),
    ("chatgpt-*", "qwen3.7-max"),
    ("o1*", "qwen3.8-max"),
    ("o3*", "qwen3.8-max"),
    ("o4*", "qwen3.8-max"),
    ("claude-*haiku*", "qwen3.7-plus"),
    ("claude-*", "qwen3.7-max"),
)


def parse_aliases(text: str | None) -> list[tuple[str, str]]:
    """``"gpt-4o=qwen3.7-max, claude-*=qwen3.7-max"`` → ``[(glob, target), …]``; bad pairs skipped."""
    pairs: list[tuple[str, str]] = []
    for item in str(text or "").replace("\n", ",").split(","):
        name, sep, target = item.partition("=")
        if sep and name.strip() and target.strip():
            pairs.append((name.strip(), target.strip()))
    return pairs


class AliasMap:
    """The configured pairs, then the built-in ones; globs match case-insensitively."""

    def __init__(self, configured: str | None = None, builtin: tuple[tuple[str, str], ...] = LEGACY_ALIASES) -> None:
        self.pairs: list[tuple[str, str]] = [
            (glob.lower(), target) for glob, target in [*parse_aliases(configured), *builtin]
        ]
        self.exact: set[str] = {glob for glob, _ in self.pairs if not any(c in glob for c in "*?[")}

    def targets(self, name: str) -> Iterator[str]:
        """Every target whose glob matches ``name``, in order."""
        lowered = name.strip().lower()
        for glob, target in self.pairs:
            if fnmatchcase(lowered, glob):
                yield target
