"""The browser path of ``flask accounts add``/``relogin``: real headless Chromium, the fake's sign-in page.

The test plays the person: ``--autofill-email/--autofill-password`` type into the page's
form, the page's own script signs in and stores the token; the command waits for it.
"""

from __future__ import annotations

import pytest

from qwenproxy import create_app
from qwenproxy.accounts.credentials import account_dir
from qwenproxy.db.models import Account as AccountRow
from tests.conftest import app_config
from tests.helpers import chromium_available

pytest.importorskip("pyppeteer")
pytestmark = pytest.mark.filterwarnings("ignore:remove loop argument:DeprecationWarning")  # pyppeteer's websockets


@pytest.fixture
def app(tmp_path, fake_qwen):
    if not chromium_available():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    application = create_app(app_config(tmp_path, fake_qwen, QWEN_TOKEN=""))
    yield application
    application.extensions["providers"].close()


def _browser_args(*extra: str) -> list[str]:
    return [
        "--headless",
        "--timeout",
        "30",
        "--autofill-email",
        "erin@example.com",
        "--autofill-password",
        "pw!",
        *extra,
    ]


def test_add_through_headless_chromium_and_the_signin_page(app, fake_qwen) -> None:
    fake_qwen.add_user("erin@example.com", "pw!")
    result = app.test_cli_runner().invoke(args=["accounts", "add", *_browser_args("--remember")])
    assert result.exit_code == 0, result.output
    assert "Added acc_" in result.output and "✅ OK" in result.output
    row = AccountRow.get()
    assert row.source == "browser" and row.email == "erin@example.com"
    assert row.token not in result.output
    assert fake_qwen._decode_token(row.token)["id"] == fake_qwen.users["erin@example.com"]["id"]
    # the page hashed the password before posting it (§2.2)
    signin = [r for r in fake_qwen.requests if r["path"] == "/api/v1/auths/signin"]
    assert len(signin) == 1 and len(signin[0]["json"]["password"]) == 64
    # the Chromium profile stays with the account, for the browser pool
    profile = account_dir(app.config["SESSION_DIR"], row.id)
    assert row.profile_dir == str(profile) and (profile / "Local State").exists()
    assert (profile / "credentials.json").exists()
    r = app.test_client().post(
        "/api/chat/completions", json={"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 200


def test_relogin_through_the_browser_reads_the_token_cookie(app, fake_qwen) -> None:
    fake_qwen.add_user("erin@example.com", "pw!")
    user = fake_qwen.users["erin@example.com"]["id"]
    expired = fake_qwen.make_token(user_id=user, expired=True)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["accounts", "add", "--token", expired]).exit_code != 0  # refused as expired
    pool = app.extensions["account_pool"]
    row, _ = pool.add(expired, source="import")
    assert pool.status()[0]["status"] == "INVALID"
    fake_qwen.signin_page_local_storage = False  # only the HttpOnly `token` cookie holds it now
    result = runner.invoke(args=["accounts", "relogin", row.id, *_browser_args()])
    assert result.exit_code == 0, result.output
    fresh = AccountRow.get_by_id(row.id)
    assert fresh.token != expired and not fresh.invalid and fresh.email == "erin@example.com"
    assert fresh.profile_dir == str(account_dir(app.config["SESSION_DIR"], row.id))
    assert pool.status()[0]["status"] == "OK"


def _needs_a_human(app, fake_qwen) -> str:
    """An account the site walled ACCOUNT_WALLS_FOR_HUMAN times in a row."""
    pool = app.extensions["account_pool"]
    row, _ = pool.add(fake_qwen.make_token(), source="token")
    for _ in range(pool.walls_for_human):
        pool.note_wall(row.id)
    assert pool.status()[0]["status"] == "NEEDS_HUMAN"
    return row.id


def test_solve_opens_the_accounts_profile_on_the_site_and_clears_the_state(app, fake_qwen) -> None:
    account_id = _needs_a_human(app, fake_qwen)
    token = AccountRow.get_by_id(account_id).token
    result = app.test_cli_runner().invoke(args=["accounts", "solve", account_id, "--headless"], input="\n")
    assert result.exit_code == 0, result.output
    assert "Solved:" in result.output and "✅ OK" in result.output and token not in result.output
    # the chat page was opened as the account (its token cookie), in its own profile
    pages = [r for r in fake_qwen.requests if r["path"] == "/"]
    assert len(pages) == 1 and f"token={token}" in pages[0]["headers"].get("cookie", "")
    profile = account_dir(app.config["SESSION_DIR"], account_id)
    row = AccountRow.get_by_id(account_id)
    assert row.profile_dir == str(profile) and (profile / "Local State").exists()
    assert not row.needs_human and row.walls == 0 and row.last_error is None
    r = app.test_client().post(
        "/api/chat/completions", json={"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 200


def test_solve_without_an_answer_keeps_the_state(app, fake_qwen) -> None:
    account_id = _needs_a_human(app, fake_qwen)
    # end of input is nobody pressing Enter; the wait ends at --timeout
    result = app.test_cli_runner().invoke(args=["accounts", "solve", account_id, "--headless", "--timeout", "1"])
    assert result.exit_code != 0 and "Nobody confirmed" in result.output and "still needs a human" in result.output
    assert AccountRow.get_by_id(account_id).needs_human
