"""Accounts registry, rotation, states and ``flask accounts`` against the fake chat.qwen.ai.

Real SQLite, the real CLI (``app.test_cli_runner()``), an injected clock (no sleeping).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from qwenproxy.accounts.credentials import account_dir
from qwenproxy.accounts.store import RELOGIN_BACKOFF, iso
from qwenproxy.db.models import Account as AccountRow
from tests.fakes import sent_token
from tests.fakes.qwen_web import FakeQwen
from tests.helpers import AppMaker, Clock
from tests.openai_schema import sse_events


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())  # starts now: the fake's tokens are checked against real time


@pytest.fixture
def make_app(tmp_path, fake_qwen, clock):
    apps = AppMaker(tmp_path, fake_qwen, clock, QWEN_TOKEN="")
    yield apps
    apps.close()


def import_tokens(application, tmp_path: Path, entries: list[dict]) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(entries, indent=2), encoding="utf-8")
    result = application.test_cli_runner().invoke(args=["accounts", "import", str(path)])
    assert result.exit_code == 0, result.output


@pytest.fixture
def three(make_app, fake_qwen, tmp_path):
    """An app with three OK accounts (acc_1, acc_2, acc_3) and their tokens."""
    application = make_app()
    tokens = [fake_qwen.make_token() for _ in range(3)]
    import_tokens(
        application,
        tmp_path,
        [{"id": f"acc_{i + 1}", "token": t, "resetAt": None} for i, t in enumerate(tokens)],
    )
    return application, tokens


def ask(client, content="hi", **extra):
    body = {"model": "qwen3-max", "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/api/chat/completions", json=body)


def completion_tokens(fake: FakeQwen) -> list[str]:
    """The token of each completion request the fake received, in order."""
    return [sent_token(r["headers"]) for r in fake.requests if r["path"] == "/api/v2/chat/completions"]


def states(application) -> dict[str, dict]:
    return {s["id"]: s for s in application.extensions["account_pool"].status()}


# --------------------------------------------------------------------------- import, list


def test_import_seed_tokens_json_keeps_ids_and_states(make_app, fake_qwen, tmp_path, clock) -> None:
    application = make_app()
    reset = "2099-07-18T02:11:30.000Z"
    ok, wait, bad = (fake_qwen.make_token() for _ in range(3))
    old = fake_qwen.make_token(expired=True)
    seed = [
        {"id": "acc_1752745840684", "token": ok, "resetAt": None},
        {"id": "acc_1752745890062", "token": wait, "resetAt": reset},
        {"id": "acc_1752745999999", "token": bad, "resetAt": None, "invalid": True},
        {"id": "acc_1752746000000", "token": old, "resetAt": None},
    ]
    path = tmp_path / "session" / "tokens.json"
    path.write_text(json.dumps(seed, indent=2), encoding="utf-8")
    runner = application.test_cli_runner()
    result = runner.invoke(args=["accounts", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert "4 added" in result.output
    got = states(application)
    assert {k: v["status"] for k, v in got.items()} == {
        "acc_1752745840684": "OK",
        "acc_1752745890062": "WAIT",
        "acc_1752745999999": "INVALID",
        "acc_1752746000000": "INVALID",
    }
    assert got["acc_1752745890062"]["resetAt"] == reset
    assert got["acc_1752746000000"]["lastError"].startswith("Token expired")
    listing = runner.invoke(args=["accounts", "list"]).output
    assert "✅ OK" in listing and "⏳ WAIT" in listing and "❌ INVALID" in listing
    for token in (ok, wait, bad, old):
        assert token not in listing and token not in result.output
    # importing the same file again changes nothing
    again = runner.invoke(args=["accounts", "import", str(path)])
    assert "0 added, 0 updated, 4 unchanged" in again.output
    # the only usable account serves the request
    r = ask(application.test_client())
    assert r.status_code == 200, r.get_json()
    assert completion_tokens(fake_qwen) == [ok]


def test_import_rejects_a_file_that_is_not_tokens_json(make_app, tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"token": 1}', encoding="utf-8")
    result = make_app().test_cli_runner().invoke(args=["accounts", "import", str(path)])
    assert result.exit_code != 0 and "JSON array" in result.output


def test_quick_start_token_is_imported_once_and_a_newer_one_replaces_it(tmp_path, fake_qwen, make_app) -> None:
    user = "11111111-2222-3333-4444-555555555555"
    first = fake_qwen.make_token(user_id=user, expires_in=3600)
    make_app(QWEN_TOKEN=first)
    application = make_app(QWEN_TOKEN=first)  # a second worker, same database
    assert [s["status"] for s in states(application).values()] == ["OK"]
    newer = fake_qwen.make_token(user_id=user, expires_in=7200)
    application = make_app(QWEN_TOKEN=newer)
    rows = list(AccountRow.select())
    assert len(rows) == 1 and rows[0].token == newer and rows[0].source == "env"


# --------------------------------------------------------------------------- rotation


def test_round_robin_and_one_account_per_request(three, fake_qwen) -> None:
    application, tokens = three
    client = application.test_client()
    for i in range(6):
        assert ask(client, f"q{i}").status_code == 200
    used = completion_tokens(fake_qwen)
    assert sorted(used[:3]) == sorted(tokens) and used[3:6] == used[:3]
    # chat creation and the message of one request go out with the same account
    pairs = [r for r in fake_qwen.requests if r["path"] in ("/api/v2/chats/new", "/api/v2/chat/completions")]
    for new, completion in zip(pairs[::2], pairs[1::2], strict=True):
        assert new["path"] == "/api/v2/chats/new"
        assert sent_token(new["headers"]) == sent_token(completion["headers"])
    assert [s["requests"] for s in states(application).values()] == [2, 2, 2]


def test_a_chat_stays_with_its_account_while_usable(three, fake_qwen, clock) -> None:
    application, tokens = three
    client = application.test_client()
    first = ask(client, "one").get_json()
    owner = completion_tokens(fake_qwen)[0]
    ask(client, "other 1")
    ask(client, "other 2")
    second = ask(client, "two", chatId=first["chatId"])
    assert second.status_code == 200
    assert completion_tokens(fake_qwen)[-1] == owner
    chat_ids = [r["json"]["chat_id"] for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]
    assert chat_ids[-1] == chat_ids[0]
    # the owner runs out of quota: the next turn goes to another account, in a new upstream chat
    fake_qwen.quota[owner] = 0
    third = ask(client, "three", chatId=first["chatId"])
    assert third.status_code == 200 and third.get_json()["chatId"] == first["chatId"]
    assert completion_tokens(fake_qwen)[-1] != owner
    new_chats = [r for r in fake_qwen.requests if r["path"] == "/api/v2/chats/new"]
    assert len(new_chats) == 4  # one, other 1, other 2, and the move of "three"
    fake_qwen.quota.pop(owner)
    fourth = ask(client, "four", chatId=first["chatId"])
    assert fourth.status_code == 200
    assert completion_tokens(fake_qwen)[-1] == completion_tokens(fake_qwen)[-2]  # now pinned to the new one


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize("stream", [False, True])
def test_rate_limited_goes_wait_for_num_hours_and_another_account_answers(three, fake_qwen, clock, stream) -> None:
    application, tokens = three
    fake_qwen.rate_limit_hours = 3
    fake_qwen.quota[tokens[0]] = 0
    fake_qwen.quota[tokens[1]] = 0
    r = ask(application.test_client(), "quota", stream=stream)
    assert r.status_code == 200
    if stream:
        chunks = [json.loads(e) for e in sse_events(r.get_data(as_text=True))[:-1]]
        assert not [c for c in chunks if "error" in c]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    else:
        text = r.get_json()["choices"][0]["message"]["content"]
    assert text == "Echo: quota"
    assert completion_tokens(fake_qwen) == tokens  # acc_1 and acc_2 refused, acc_3 answered
    got = states(application)
    for name in ("acc_1", "acc_2"):
        assert got[name]["status"] == "WAIT" and got[name]["mark"] == "⏳"
        assert got[name]["resetAt"] == iso(clock.now + 3 * 3600)
        assert "RateLimited" in got[name]["lastError"]
    assert got["acc_3"]["status"] == "OK" and got["acc_3"]["requests"] == 1


@pytest.mark.parametrize("how", ["envelope", "http_401", "http_403"])
def test_unauthorized_goes_invalid_and_another_account_answers(three, fake_qwen, how) -> None:
    application, tokens = three
    if how == "envelope":
        fake_qwen.revoked.add(tokens[0])  # HTTP 200 {"data": {"code": "unauthorized"}}
    else:
        fake_qwen.inject = lambda token, path: how if token == tokens[0] else None
    r = ask(application.test_client())
    assert r.status_code == 200, r.get_json()
    got = states(application)
    assert got["acc_1"]["status"] == "INVALID" and got["acc_1"]["mark"] == "❌"
    assert got["acc_1"]["lastError"]
    assert got["acc_2"]["requests"] == 1


def test_all_wait_is_429_with_retry_after_and_no_wasted_requests(three, fake_qwen, clock) -> None:
    application, tokens = three
    client = application.test_client()
    fake_qwen.rate_limit_hours = 2
    for token in tokens:
        fake_qwen.quota[token] = 0
    r = ask(client)
    assert r.status_code == 429
    assert abs(int(r.headers["Retry-After"]) - 7200) <= 2
    error = r.get_json()["error"]
    assert error["type"] == "rate_limit_error" and "flask accounts add" in error["message"]
    sent = len(fake_qwen.requests)
    clock.now += 1800
    r = ask(client)
    assert r.status_code == 429 and abs(int(r.headers["Retry-After"]) - 5400) <= 2
    assert len(fake_qwen.requests) == sent  # nothing was sent upstream
    status = client.get("/api/status").get_json()
    assert status["status"] == "degraded" and not status["authenticated"]
    assert "quota" in status["message"] and {a["status"] for a in status["accounts"]} == {"WAIT"}


def test_all_invalid_is_503_and_the_server_keeps_answering(three, fake_qwen) -> None:
    application, tokens = three
    client = application.test_client()
    fake_qwen.revoked.update(tokens)
    r = ask(client)
    assert r.status_code == 503
    error = r.get_json()["error"]
    assert error["code"] == "accounts_invalid" and "flask accounts relogin" in error["message"]
    assert "acc_1" in error["message"]
    sent = len(fake_qwen.requests)
    assert ask(client, stream=True).status_code == 503
    assert len(fake_qwen.requests) == sent
    status = client.get("/api/status")
    assert status.status_code == 200
    body = status.get_json()
    assert body["status"] == "degraded" and "relogin" in body["message"]
    assert [a["status"] for a in body["accounts"]] == ["INVALID"] * 3
    assert client.get("/api/models").status_code == 200


def test_no_accounts_is_503_naming_the_command(make_app) -> None:
    r = ask(make_app().test_client())
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "no_accounts"
    assert "flask accounts add" in r.get_json()["error"]["message"]


def test_wait_returns_to_ok_when_its_time_has_passed(three, fake_qwen, clock) -> None:
    application, tokens = three
    client = application.test_client()
    fake_qwen.rate_limit_hours = 1
    fake_qwen.quota[tokens[0]] = 0
    assert ask(client).status_code == 200
    assert states(application)["acc_1"]["status"] == "WAIT"
    fake_qwen.quota.pop(tokens[0])
    clock.now += 3600 - 1
    assert states(application)["acc_1"]["status"] == "WAIT"
    clock.now += 2
    got = states(application)["acc_1"]
    assert got["status"] == "OK" and got["resetAt"] is None
    for _ in range(3):
        assert ask(client).status_code == 200
    assert tokens[0] in completion_tokens(fake_qwen)[-3:]


def test_an_expired_jwt_is_invalid_before_any_request(make_app, fake_qwen, tmp_path, clock) -> None:
    application = make_app()
    soon = fake_qwen.make_token(expires_in=600)
    fresh = fake_qwen.make_token()
    import_tokens(application, tmp_path, [{"id": "acc_1", "token": soon}, {"id": "acc_2", "token": fresh}])
    clock.now += 601  # acc_1's exp has passed on our clock
    client = application.test_client()
    for _ in range(3):
        assert ask(client).status_code == 200
    assert set(completion_tokens(fake_qwen)) == {fresh}
    got = states(application)["acc_1"]
    assert got["status"] == "INVALID" and got["lastError"].startswith("Token expired")


def test_tokens_never_appear_in_logs_or_status(make_app, fake_qwen, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    application = make_app(LOG_LEVEL="DEBUG")
    tokens = [fake_qwen.make_token() for _ in range(3)]
    import_tokens(application, tmp_path, [{"id": f"acc_{i}", "token": t} for i, t in enumerate(tokens)])
    assert "INSERT INTO" in caplog.text  # peewee logged the SQL, parameters masked
    fake_qwen.quota[tokens[0]] = 0
    fake_qwen.revoked.add(tokens[1])
    client = application.test_client()
    ask(client)
    status = client.get("/api/status").get_data(as_text=True)
    listing = application.test_cli_runner().invoke(args=["accounts", "list", "--json"]).output
    for token in tokens:
        assert token not in caplog.text and token not in status and token not in listing
        assert token[:4] + "…" + token[-4:] in listing


# --------------------------------------------------------------------------- the CLI


def test_add_with_email_and_password_through_the_signin_api(make_app, fake_qwen, tmp_path) -> None:
    application = make_app()
    runner = application.test_cli_runner()
    fake_qwen.add_user("alice@example.com", "s3cret")
    bad = runner.invoke(args=["accounts", "add", "--email", "alice@example.com", "--password", "wrong"])
    assert bad.exit_code != 0 and "Sign-in failed" in bad.output
    result = runner.invoke(
        args=["accounts", "add", "--email", "alice@example.com", "--password", "s3cret", "--remember"]
    )
    assert result.exit_code == 0, result.output
    assert "Added acc_" in result.output and "✅ OK" in result.output
    signin = [r for r in fake_qwen.requests if r["path"] == "/api/v2/auths/signin"][-1]  # 2026 §5: v2 first
    assert signin["json"]["password"] == __import__("hashlib").sha256(b"s3cret").hexdigest()
    assert fake_qwen.signin_calls == ["v2", "v2"]  # the wrong password, then the right one: never v1
    row = AccountRow.get()
    assert row.email == "alice@example.com" and row.source == "password" and row.token not in result.output
    creds = account_dir(application.config["SESSION_DIR"], row.id) / "credentials.json"
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    assert "s3cret" not in creds.read_text()
    # the same user again updates the account instead of adding a second one
    again = runner.invoke(args=["accounts", "add", "--email", "alice@example.com"], input="s3cret\n")
    assert again.exit_code == 0 and "Updated" in again.output
    assert AccountRow.select().count() == 1
    assert ask(application.test_client()).status_code == 200


def test_add_token_is_checked_before_it_is_saved(make_app, fake_qwen) -> None:
    runner = make_app().test_cli_runner()
    expired = runner.invoke(args=["accounts", "add", "--token", fake_qwen.make_token(expired=True)])
    assert expired.exit_code != 0 and "expired" in expired.output
    revoked = fake_qwen.make_token()
    fake_qwen.revoked.add(revoked)
    rejected = runner.invoke(args=["accounts", "add", "--token", revoked])
    assert rejected.exit_code != 0 and "rejected" in rejected.output
    assert runner.invoke(args=["accounts", "add", "--token", "not-a-jwt"]).exit_code != 0
    good = fake_qwen.make_token()
    result = runner.invoke(args=["accounts", "add", "--token", "-"], input=good + "\n")
    assert result.exit_code == 0, result.output
    assert good not in result.output and AccountRow.get().token == good


def test_relogin_remove_and_check(make_app, fake_qwen, tmp_path) -> None:
    application = make_app()
    runner = application.test_cli_runner()
    fake_qwen.add_user("bob@example.com", "pw")
    assert (
        runner.invoke(
            args=["accounts", "add", "--email", "bob@example.com", "--password", "pw", "--remember"]
        ).exit_code
        == 0
    )
    other = fake_qwen.make_token()
    assert runner.invoke(args=["accounts", "add", "--token", other]).exit_code == 0
    bob = AccountRow.get(AccountRow.email == "bob@example.com")
    checked = runner.invoke(args=["accounts", "check"])
    assert checked.exit_code == 0 and checked.output.count("✅ OK") == 2, checked.output
    # bob's token expires, the other one is rejected upstream
    bob_user = fake_qwen.users["bob@example.com"]["id"]
    application.extensions["account_pool"].set_token(bob.id, fake_qwen.make_token(user_id=bob_user, expired=True))
    fake_qwen.revoked.add(other)
    checked = runner.invoke(args=["accounts", "check"])
    assert checked.exit_code == 1, checked.output  # nothing usable left
    assert checked.output.count("❌ INVALID") == 2 and "expired" in checked.output
    assert {s["status"] for s in states(application).values()} == {"INVALID"}
    bob = AccountRow.get_by_id(bob.id)
    # stored credentials: no browser, no questions
    relogged = runner.invoke(args=["accounts", "relogin", bob.id])
    assert relogged.exit_code == 0, relogged.output
    assert "✅ OK" in relogged.output
    assert AccountRow.get_by_id(bob.id).token != bob.token
    # by list number, with an explicit token
    fresh = fake_qwen.make_token()
    assert runner.invoke(args=["accounts", "relogin", "2", "--token", fresh]).exit_code == 0
    assert {s["status"] for s in states(application).values()} == {"OK"}
    # check clears INVALID once the token is accepted again (e.g. a false alarm)
    AccountRow.update(invalid=True, last_error="x").where(AccountRow.token == fresh).execute()
    assert "✅ OK" in runner.invoke(args=["accounts", "check", "2"]).output
    # remove: the row and the account's folder
    folder = account_dir(application.config["SESSION_DIR"], bob.id)
    assert folder.exists()
    assert runner.invoke(args=["accounts", "remove", bob.id], input="n\n").output.strip().endswith("Kept.")
    removed = runner.invoke(args=["accounts", "remove", bob.id, "--yes"])
    assert removed.exit_code == 0 and not folder.exists() and AccountRow.get_or_none(AccountRow.id == bob.id) is None
    assert runner.invoke(args=["accounts", "relogin", "nope"]).exit_code != 0
    # nothing usable left: check says so with its exit status
    fake_qwen.revoked.add(fresh)
    assert runner.invoke(args=["accounts", "check"]).exit_code == 1


def test_automatic_relogin_with_stored_credentials(make_app, fake_qwen, clock) -> None:
    application = make_app(ACCOUNT_AUTO_RELOGIN=True)
    runner = application.test_cli_runner()
    fake_qwen.add_user("carol@example.com", "pw")
    assert (
        runner.invoke(
            args=["accounts", "add", "--email", "carol@example.com", "--password", "pw", "--remember"]
        ).exit_code
        == 0
    )
    pool = application.extensions["account_pool"]
    account_id = AccountRow.get().id
    user = fake_qwen.users["carol@example.com"]["id"]
    # upstream rejects the token: the account signs in again by itself and the request is served
    rejected = fake_qwen.make_token(user_id=user, expires_in=3600)
    pool.set_token(account_id, rejected)
    fake_qwen.revoked.add(rejected)
    r = ask(application.test_client())
    assert r.status_code == 200, r.get_json()
    fresh = AccountRow.get()
    assert fresh.token != rejected and not fresh.invalid
    creations = [sent_token(r["headers"]) for r in fake_qwen.requests if r["path"] == "/api/v2/chats/new"]
    assert creations == [rejected, fresh.token]
    assert completion_tokens(fake_qwen) == [fresh.token]
    # an expired JWT is renewed before any request is sent with it (a while later: no sign-in storms)
    clock.now += RELOGIN_BACKOFF + 1
    expired = fake_qwen.make_token(user_id=user, expired=True)
    pool.set_token(account_id, expired)
    r = ask(application.test_client())
    assert r.status_code == 200, r.get_json()
    assert expired not in completion_tokens(fake_qwen)
    assert AccountRow.get().token == completion_tokens(fake_qwen)[-1] != expired


def test_without_auto_relogin_stored_credentials_are_not_used(make_app, fake_qwen) -> None:
    application = make_app()
    fake_qwen.add_user("dan@example.com", "pw")
    runner = application.test_cli_runner()
    assert (
        runner.invoke(
            args=["accounts", "add", "--email", "dan@example.com", "--password", "pw", "--remember"]
        ).exit_code
        == 0
    )
    user = fake_qwen.users["dan@example.com"]["id"]
    application.extensions["account_pool"].set_token(
        AccountRow.get().id, fake_qwen.make_token(user_id=user, expired=True)
    )
    fake_qwen.refresh_tokens.clear()  # the site dropped the refresh token too
    assert ask(application.test_client()).status_code == 503
    assert fake_qwen.refresh_calls == ["invalid"] and fake_qwen.signin_calls == ["v2"]
    assert AccountRow.get().refresh_token is None  # refused once, not asked again


# --------------------------------------------------------------------------- the start-up menu


def test_menu_lists_deletes_and_starts_on_enter(three) -> None:
    from qwenproxy.accounts.menu import flask_accounts, run_menu, should_show

    application, _ = three
    answers = iter(["4", "2", "1", "2", "bob@example.com", "y", "9", ""])
    said: list[str] = []
    ran: list[list[str]] = []
    assert run_menu(application, ask=lambda _: next(answers), say=said.append, run=ran.append) is True
    assert ran == [
        flask_accounts("remove", "2"),
        flask_accounts("add", "--email", "bob@example.com", "--remember"),
    ]
    text = "\n".join(said)
    assert "3 - Запустить прокси (Enter по умолчанию)" in text and "acc_1" in text and "✅ OK" in text
    assert "Неизвестный пункт" in text

    class Tty:
        def isatty(self) -> bool:
            return True

    assert should_show({}, Tty()) is True
    assert should_show({"SKIP_ACCOUNT_MENU": True}, Tty()) is False
    assert should_show({"NON_INTERACTIVE": True}, Tty()) is False
    assert should_show({}, open(os.devnull)) is False


def test_non_interactive_alias_and_the_menu_command_line() -> None:
    from qwenproxy.accounts.menu import flask_accounts
    from qwenproxy.config import load_config

    config = load_config(environ={"NON_INTERACTIVE": "yes"}, env_file="")
    assert config["SKIP_ACCOUNT_MENU"] is True
    argv = flask_accounts("list")
    assert argv[1:3] == ["-m", "flask"] and argv[-2:] == ["accounts", "list"] and argv[4].endswith("app.py")
