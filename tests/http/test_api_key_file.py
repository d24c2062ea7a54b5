"""``Authorization.txt``: created with a commented template on first start, never overwritten,
"no keys" (authentication off) until a key line is added (seed 000 §2)."""

from __future__ import annotations

from qwenproxy import create_app
from qwenproxy.ops.apikeys import ensure_template
from tests.conftest import app_config


def test_a_missing_file_is_created_with_the_template_and_keys_stay_off(tmp_path, fake_qwen) -> None:
    keys = tmp_path / "deeper" / "Authorization.txt"
    app = create_app(app_config(tmp_path, fake_qwen, API_KEYS_FILE=str(keys)))
    client = app.test_client()
    text = keys.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines and all(line.startswith("#") for line in lines)  # a template: comments only
    assert "One key per line" in text and "Authorization: Bearer <key>" in text and "Один ключ на строку" in text
    assert client.get("/api/models").status_code == 200  # no key line: no authentication
    example = lines[-1].removeprefix("# ")
    assert example.startswith("sk-") and len(example) > 40  # a fresh key, ready to be uncommented

    keys.write_text(text.replace(f"# {example}", example), encoding="utf-8")
    assert client.get("/api/models").status_code == 401
    assert client.get("/api/models", headers={"Authorization": f"Bearer {example}"}).status_code == 200
    app.extensions["providers"].close()

    again = create_app(app_config(tmp_path, fake_qwen, API_KEYS_FILE=str(keys)))  # the next start
    assert keys.read_text(encoding="utf-8") == text.replace(f"# {example}", example)
    assert again.test_client().get("/api/models").status_code == 401
    again.extensions["providers"].close()


def test_an_existing_file_is_never_touched(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert ensure_template(empty) is False and empty.read_text(encoding="utf-8") == ""
    own = tmp_path / "own.txt"
    own.write_text("key-one\n", encoding="utf-8")
    assert ensure_template(own) is False and own.read_text(encoding="utf-8") == "key-one\n"
    fresh = tmp_path / "fresh.txt"
    assert ensure_template(fresh) is True and ensure_template(fresh) is False
    first = fresh.read_text(encoding="utf-8")
    assert ensure_template(fresh) is False and fresh.read_text(encoding="utf-8") == first
