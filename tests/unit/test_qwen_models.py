"""Model names against the 2026 live list (2026 spec §1): default, legacy aliases, thinking lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwenproxy.qwen.aliases import AliasMap, parse_aliases
from qwenproxy.qwen.catalog import ModelCatalog
from qwenproxy.qwen.modes import Modes

ROOT = Path(__file__).resolve().parents[2]


def entry(model_id: str, *, locked: bool | None = None, chat_type: list[str] | None = None, active: bool = True):
    """An entry of GET /api/v2/models/ (data.data[]), the fields the catalog reads."""
    meta: dict = {"capabilities": {"thinking": True, "vision": True}, "chat_type": chat_type or ["t2t", "search"]}
    if locked is not None:
        meta["think_skip"] = {"enable": not locked}
        meta["abilities"] = {"thinking": 4 if locked else 1}
    return {"id": model_id, "info": {"id": model_id, "is_active": active, "meta": meta}}


LIVE_2026 = [entry("qwen3.7-plus"), entry("qwen3.8-max", locked=True), entry("qwen3.7-max"), entry("qwen3.6-plus")]


def catalog(tmp_path, default=None, live=LIVE_2026, aliases=None, file=None) -> ModelCatalog:
    return ModelCatalog(
        file or tmp_path / "none.txt",
        default,
        fetch=(lambda: live) if live is not None else None,
        aliases=AliasMap(aliases),
    )


def test_default_comes_from_the_live_list(tmp_path) -> None:
    assert catalog(tmp_path).default_model == "qwen3.7-plus"
    assert catalog(tmp_path, "qwen3.7-max").default_model == "qwen3.7-max"  # configured and present
    assert catalog(tmp_path, "qwen-max-latest").default_model == "qwen3.7-plus"  # configured but gone
    inactive = [entry("old", active=False), entry("t2i-only", chat_type=["t2i"]), *LIVE_2026]
    assert catalog(tmp_path, live=inactive).default_model == "qwen3.7-plus"  # the first usable one


def test_offline_the_models_file_is_the_2026_list(tmp_path) -> None:
    offline = catalog(tmp_path, live=None, file=ROOT / "AvailableModels.txt")
    assert offline.ids() == ["qwen3.7-plus", "qwen3.8-max", "qwen3.7-max", "qwen3.6-plus"]
    assert offline.default_model == "qwen3.7-plus"
    assert catalog(tmp_path, "qwen3.7-max", live=None).default_model == "qwen3.7-max"


@pytest.mark.parametrize(
    ("asked", "live"),
    [
        ("qwen-max-latest", "qwen3.7-max"),
        ("qwen3-max", "qwen3.7-max"),
        ("qwen-max", "qwen3.7-max"),  # seed alias → qwen3-max → legacy alias
        ("Qwen2.5-Max", "qwen3.7-max"),
        ("qwen-plus-latest", "qwen3.7-plus"),
        ("qwq-32b", "qwen3.8-max"),
        ("gpt-4o", "qwen3.7-max"),
        ("gpt-4o-mini", "qwen3.7-plus"),
        ("claude-sonnet-4-5", "qwen3.7-max"),
        ("QWEN3.7-MAX", "qwen3.7-max"),  # case does not matter
        ("qwen3.8-max", "qwen3.8-max"),
        ("no-such-model", "qwen3.7-plus"),  # the default
        ("", "qwen3.7-plus"),
    ],
)
def test_legacy_and_foreign_names_resolve_to_a_live_model(tmp_path, asked, live) -> None:
    assert catalog(tmp_path).resolve(asked) == live


def test_suffixes_come_off_before_the_alias_globs(tmp_path) -> None:
    cat = catalog(tmp_path)
    assert cat.resolve_modes("qwen3-max-thinking") == ("qwen3.7-max", Modes(thinking=True))
    assert cat.resolve_modes("gpt-4o-search") == ("qwen3.7-max", Modes(search=True))
    assert cat.resolve_modes("qwen3.7-plus-thinking-search") == ("qwen3.7-plus", Modes(thinking=True, search=True))


def test_configured_aliases_win_and_dead_targets_fall_through(tmp_path) -> None:
    cat = catalog(tmp_path, aliases="gpt-4o=qwen3.6-plus, my-*=qwen3.8-max, bad, x=qwen9")
    assert cat.resolve("gpt-4o") == "qwen3.6-plus"
    assert cat.resolve("my-model") == "qwen3.8-max"
    assert cat.resolve("x") == "qwen3.7-plus"  # the target is not live: the default
    assert parse_aliases("a=b,\nc = d,bad,=e") == [("a", "b"), ("c", "d")]
    old_site = catalog(tmp_path, live=[entry("qwen3-max"), entry("qwen-max-latest")])
    assert old_site.resolve("qwen-max-latest") == "qwen-max-latest"  # a live id is never aliased away


def test_thinking_lock_from_think_skip_then_the_setting(tmp_path) -> None:
    cat = catalog(tmp_path)
    assert cat.thinking_locked("qwen3.8-max") and not cat.thinking_locked("qwen3.7-max")
    offline = catalog(tmp_path, live=None)
    assert offline.thinking_locked("qwen3.8-max-preview") and not offline.thinking_locked("qwen3.7-max")
    by_abilities = catalog(tmp_path, live=[{"id": "m", "info": {"meta": {"abilities": {"thinking": 4}}}}])
    assert by_abilities.thinking_locked("m")
