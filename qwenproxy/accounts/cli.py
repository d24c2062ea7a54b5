"""``flask accounts list | add | relogin ID | remove ID | import FILE | check | solve ID``.

Tokens are never printed in full: every output shows ``mask(token)``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from ..errors import ApiError, Unauthorized
from ..jwt import jwt_expiry, jwt_user_id
from .credentials import account_dir, load_credentials, save_credentials
from .pool import LABELS as STATE_LABELS
from .pool import MARKS, NEEDS_HUMAN, OK, WAIT, mask
from .store import DatabasePool, check_account, iso, new_account_id, refresh_fields, signin_client, state_of

LABELS = {**STATE_LABELS, "ERROR": "ERROR"}


def _pool() -> DatabasePool:
    return current_app.extensions["account_pool"]


def _session_dir() -> str:
    return str(current_app.config["SESSION_DIR"])


def _fail(message: str) -> None:
    raise click.ClickException(message)


def mark(state: str) -> str:
    return f"{MARKS.get(state, '⚠️')} {LABELS.get(state, state)}"


def render_table(statuses: list[dict[str, Any]]) -> str:
    """The seed's account table (N | ID | Status), with reset time, requests, e-mail, token."""
    if not statuses:
        return "No Qwen accounts (Аккаунтов нет): `flask accounts add`"
    head = ("N", "ID", "Status", "Reset at (UTC)", "Requests", "E-mail", "Token", "Quota", "Last error")
    rows = [
        (
            str(i),
            s["id"],
            mark(s["status"]),
            (s["resetAt"] or "")[:19].replace("T", " "),
            str(s["requests"]),
            s.get("email") or "",
            s.get("token") or "",
            ((s.get("quota") or {}).get("text") or "")[:100],
            (s.get("lastError") or "")[:60],
        )
        for i, s in enumerate(statuses, 1)
    ]
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


accounts_cli = AppGroup("accounts", help="Qwen web accounts: list, add, relogin, remove, import, check, solve.")


def init_app(app: Flask) -> None:
    """Register ``flask accounts`` (the pool itself is ``store.init_app``'s)."""
    app.cli.add_command(accounts_cli)


@accounts_cli.command(
    "list", help="Show every account with its state (✅ OK, ⏳ WAIT, ❌ INVALID, 🙋 needs a human) and quota."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the shape of /api/status).")
@click.option("--no-quota", is_flag=True, help="Show the cached quota; do not ask Qwen for a newer one.")
def list_command(as_json: bool, no_quota: bool) -> None:
    if not no_quota:
        _pool().refresh_quotas()  # at most every ACCOUNT_QUOTA_MINUTES per account
    statuses = _pool().status()
    if as_json:
        click.echo(json.dumps(statuses, ensure_ascii=False, indent=2))
    else:
        click.echo(render_table(statuses))


# --------------------------------------------------------------------------- getting a token


def _ask_token(token: str) -> str:
    if token == "-":
        token = click.prompt("Token (JWT from chat.qwen.ai, hidden)", hide_input=True)
    token = token.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if token.count(".") != 2:
        _fail("That does not look like a Qwen token (a JWT: three dot-separated parts)")
    exp = jwt_expiry(token)
    if exp is not None and exp <= _pool().clock():
        _fail(f"That token expired at {iso(exp)}: sign in again (`flask accounts add`)")
    return token


def _signin(email: str, password: str, *, prehashed: bool = False) -> dict[str, Any]:
    """The sign-in API's answer: ``token``, ``email``, and ``refresh_token`` from v2."""
    client = signin_client(current_app.config)
    try:
        payload = client.signin(email, password, prehashed=prehashed)
    except ApiError as exc:
        _fail(f"Sign-in failed: {exc.message}")
    finally:
        client.transport.close()
    return {**payload, "token": str(payload["token"]), "email": str(payload.get("email") or email)}


def _settings_client() -> Any:
    """A client for account settings: direct, and the browser pool when Qwen walls it
    (``QWEN_TRANSPORT=browser|auto`` with the gateway running)."""
    config = current_app.config
    if str(config.get("QWEN_TRANSPORT") or "").lower() not in ("browser", "auto"):
        return signin_client(config)
    from ..qwen.browser_transport import make_browser_transport
    from ..qwen.client import QwenClient

    return QwenClient(make_browser_transport("auto", config), config)


def _keep_private(token: str, account_id: str, keep_memory: bool) -> None:
    """Switch off the account's memory and native tools (2026 §5) unless asked not to."""
    if keep_memory or current_app.config.get("ACCOUNT_KEEP_MEMORY"):
        click.echo("Account memory and native tools left as they are (--keep-memory)")
        return
    client = _settings_client()
    try:
        client.switch_off_memory_and_tools(token, account_id=account_id)
    except ApiError as exc:
        click.echo(
            f"Warning: could not switch off the account's memory and tools ({exc.message}); "
            "run `flask accounts relogin` again later",
            err=True,
        )
    else:
        click.echo(
            "Switched off the account's memory and native tools (every client shares it; --keep-memory keeps them)"
        )
    finally:
        client.transport.close()
        # the call may have opened the account's profile in the browser pool: let it go again,
        # as after the sign-in (the pool reopens it on the next chat)
        _release_profile(account_id)


def _probe(token: str) -> str | None:
    """The e-mail of a token's user, or None when upstream cannot say; a rejected token fails."""
    client = signin_client(current_app.config)
    try:
        info = client.session_info(token)
    except Unauthorized as exc:
        _fail(f"Qwen rejected this token: {exc.message}")
    except ApiError as exc:
        click.echo(f"Warning: could not verify the token upstream ({exc.message}); saving it anyway", err=True)
        return None
    finally:
        client.transport.close()
    return str(info.get("email")) if info.get("email") else None


def _release_profile(account_id: str) -> None:
    """A profile takes one Chromium at a time: the browser pool lets go of this account's."""
    config = current_app.config
    if str(config.get("QWEN_TRANSPORT") or "").lower() in ("browser", "auto"):
        from ..qwen.browser_transport import BrowserTransport, pool_address

        BrowserTransport(pool_address(config)).release_profile(account_id)


def _browser_token(
    profile: Path, *, headless: bool, timeout: float | None, reject: tuple[str, ...], autofill: Any
) -> str:
    from .browser_login import LoginError, browser_login

    config = current_app.config
    _release_profile(profile.name)
    try:
        return asyncio.run(
            browser_login(
                base_url=str(config["QWEN_BASE_URL"]),
                profile_dir=profile,
                headless=headless,
                timeout=float(timeout or config["ACCOUNT_LOGIN_TIMEOUT"]),
                chrome_path=config.get("CHROME_PATH"),
                user_agent=str(config["QWEN_USER_AGENT"]),
                reject=reject,
                autofill=autofill,
                note=lambda text: click.echo(text, err=True),
            )
        )
    except LoginError as exc:
        _fail(str(exc))
    raise AssertionError("unreachable")


def _autofill(email: str | None, password: str | None) -> Any:
    if not email and not password:
        return None
    if not (email and password):
        _fail("--autofill-email and --autofill-password go together")
    from .browser_login import Autofill

    return Autofill(email, password)


def _login_options(func):
    """Options shared by ``add`` and ``relogin``."""
    options = [
        click.option("--token", help="Use this token (JWT); '-' asks for it without echoing."),
        click.option("--email", help="Sign in through the API (no browser); the password is asked for."),
        click.option("--password", help="The password for --email (prefer the prompt: argv is visible to others)."),
        click.option(
            "--remember",
            is_flag=True,
            help="Keep the e-mail and the password's SHA-256 (mode 0600) for ACCOUNT_AUTO_RELOGIN.",
        ),
        click.option("--headless", is_flag=True, help="Run Chromium without a window (scripted logins)."),
        click.option("--timeout", type=float, help="Seconds to wait for the browser sign-in (ACCOUNT_LOGIN_TIMEOUT)."),
        click.option("--autofill-email", hidden=True, help="Type this e-mail into the sign-in form (scripts, tests)."),
        click.option("--autofill-password", hidden=True, help="Type this password into the sign-in form."),
        click.option(
            "--keep-memory",
            is_flag=True,
            help="Leave the account's memory and native tools on (ACCOUNT_KEEP_MEMORY); by default they go off.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _check_remember(remember: bool, email: str | None, password: str | None) -> None:
    if remember and not (email and password):
        _fail("--remember needs an e-mail and a password (--email, or --autofill-email/--autofill-password)")


def _report(account_id: str, verb: str) -> None:
    pool = _pool()
    row = pool.get(account_id)
    assert row is not None
    state = state_of(row, pool.clock())
    click.echo(f"{verb} {row.id} ({mask(row.token)}{', ' + row.email if row.email else ''}): {mark(state)}")


@accounts_cli.command("add", help="Add an account: a browser sign-in by default, or --token, or --email.")
@_login_options
@click.option("--no-check", is_flag=True, help="Do not probe the token upstream before saving it.")
def add_command(
    token: str | None,
    email: str | None,
    password: str | None,
    remember: bool,
    headless: bool,
    timeout: float | None,
    autofill_email: str | None,
    autofill_password: str | None,
    keep_memory: bool,
    no_check: bool,
) -> None:
    pool = _pool()
    session_dir = _session_dir()
    profile: Path | None = None
    refresh: dict[str, Any] = {}
    if token:
        token = _ask_token(token)
        source, found_email = "token", (None if no_check else _probe(token))
        _check_remember(remember, email, password)
    elif email:
        if not password:
            password = click.prompt(f"Password for {email}", hide_input=True)
        answer = _signin(email, password)
        token, found_email, refresh = answer["token"], answer["email"], refresh_fields(answer)
        source = "password"
    else:
        autofill = _autofill(autofill_email, autofill_password)
        email, password = autofill_email, autofill_password
        _check_remember(remember, email, password)
        new_id = new_account_id(pool.clock)
        profile = account_dir(session_dir, new_id)
        try:
            token = _browser_token(profile, headless=headless, timeout=timeout, reject=(), autofill=autofill)
        except BaseException:
            shutil.rmtree(profile, ignore_errors=True)
            raise
        source, found_email = "browser", (None if no_check else _probe(token))
    existing = pool.find_user(jwt_user_id(token)) if jwt_user_id(token) else None
    if profile is not None and existing is not None:
        # the same Qwen user again: its profile is replaced by this fresher one
        target = account_dir(session_dir, existing.id)
        if target != profile:
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(profile), str(target))
            profile = target
    row, created = pool.add(
        token,
        source=source,
        email=found_email or email,
        account_id=profile.name if profile is not None else None,
        profile_dir=str(profile) if profile is not None else None,
        **refresh,
    )
    if remember and email and password:
        path = save_credentials(session_dir, row.id, email, password)
        click.echo(f"Credentials kept for automatic re-login in {path} (mode 0600)")
    _keep_private(token, row.id, keep_memory)
    _report(row.id, "Added" if created else "Updated (same Qwen user)")


@accounts_cli.command("relogin", help="Sign an account in again (ID, number from `list`, or e-mail).")
@click.argument("account")
@_login_options
def relogin_command(
    account: str,
    token: str | None,
    email: str | None,
    password: str | None,
    remember: bool,
    headless: bool,
    timeout: float | None,
    autofill_email: str | None,
    autofill_password: str | None,
    keep_memory: bool,
) -> None:

    pool = _pool()
    session_dir = _session_dir()
    row = pool.find(account)
    if row is None:
        _fail(f"No account {account!r}: see `flask accounts list`")
    fields: dict[str, Any] = {}
    if token:
        token = _ask_token(token)
        _check_remember(remember, email, password)
        fields["email"] = _probe(token)
    elif email:
        if not password:
            password = click.prompt(f"Password for {email}", hide_input=True)
        answer = _signin(email, password)
        token, fields["email"] = answer["token"], answer["email"]
        fields.update(refresh_fields(answer))
    elif (creds := load_credentials(session_dir, row.id)) is not None:
        client = signin_client(current_app.config)
        try:
            answer = client.signin(creds["email"], creds["password_sha256"], prehashed=True)
        except ApiError as exc:
            _fail(f"Sign-in with the stored credentials failed: {exc.message}")
        finally:
            client.transport.close()
        token = str(answer["token"])
        fields.update(refresh_fields(answer))
    else:
        autofill = _autofill(autofill_email, autofill_password)
        email, password = autofill_email, autofill_password
        _check_remember(remember, email, password)
        profile = Path(row.profile_dir) if row.profile_dir else account_dir(session_dir, row.id)
        token = _browser_token(profile, headless=headless, timeout=timeout, reject=(row.token,), autofill=autofill)
        fields["profile_dir"] = str(profile)
        fields["email"] = _probe(token)
    new_user = jwt_user_id(token)
    if row.user_id and new_user and new_user != row.user_id:
        click.echo(f"Warning: this token belongs to another Qwen user than {row.id} had", err=True)
    pool.set_token(row.id, token, **fields)
    if remember and email and password:
        path = save_credentials(session_dir, row.id, email, password)
        click.echo(f"Credentials kept for automatic re-login in {path} (mode 0600)")
    _keep_private(token, row.id, keep_memory)
    _report(row.id, "Logged in again:")


@accounts_cli.command("remove", help="Delete an account, its browser profile and stored credentials.")
@click.argument("account")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def remove_command(account: str, yes: bool) -> None:
    pool = _pool()
    row = pool.find(account)
    if row is None:
        _fail(f"No account {account!r}: see `flask accounts list`")
    if not yes and not click.confirm(f"Delete {row.id} ({mask(row.token)})?", default=False):
        click.echo("Kept.")
        return
    pool.remove(row.id, _session_dir())
    click.echo(f"Removed {row.id}")


@accounts_cli.command("import", help="Import the Node proxy's session/tokens.json (ids and states kept).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_command(file: Path) -> None:
    try:
        entries = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        _fail(f"Cannot read {file}: {exc}")
    try:
        counts = _pool().import_seed(entries)
    except ValueError as exc:
        _fail(f"{file}: {exc}")
    click.echo(f"Imported {file}: {counts['added']} added, {counts['updated']} updated, {counts['skipped']} unchanged")
    click.echo(render_table(_pool().status()))


@accounts_cli.command("check", help="Probe each token upstream and update the states.")
@click.argument("accounts", nargs=-1)
def check_command(accounts: tuple[str, ...]) -> None:
    pool = _pool()
    rows = pool.accounts()
    if accounts:
        wanted = [pool.find(a) for a in accounts]
        missing = [a for a, r in zip(accounts, wanted, strict=True) if r is None]
        if missing:
            _fail(f"No account {', '.join(missing)}: see `flask accounts list`")
        rows = [r for r in wanted if r is not None]
    if not rows:
        click.echo(render_table([]))
        sys.exit(1)
    client = signin_client(current_app.config)
    try:
        for row in rows:
            state, note = check_account(pool, client, row)
            click.echo(f"{row.id} ({mask(row.token)}): {mark(state)} - {note}")
    finally:
        client.transport.close()
    now = pool.clock()
    if not any(state_of(r, now) in (OK, WAIT) for r in pool.accounts()):
        click.echo("No usable account: `flask accounts relogin ID` or `flask accounts add`", err=True)
        sys.exit(1)


@accounts_cli.command("solve", help="Open an account's browser profile in a window to pass Qwen's captcha once.")
@click.argument("account")
@click.option("--headless", is_flag=True, help="No window (scripts and tests: nobody can solve anything).")
@click.option("--timeout", type=float, help="Seconds to wait for you (ACCOUNT_LOGIN_TIMEOUT).")
def solve_command(account: str, headless: bool, timeout: float | None) -> None:
    """The account's own profile (``SESSION_DIR/accounts/<id>/``) in a visible Chromium on
    the chat page; when you press Enter or close the window, it is back in rotation."""
    from .browser_login import NO_DISPLAY, LoginError, has_display, solve_in_browser

    pool = _pool()
    config = current_app.config
    row = pool.find(account)
    if row is None:
        _fail(f"No account {account!r}: see `flask accounts list`")
    if state_of(row, pool.clock()) != NEEDS_HUMAN:
        click.echo(f"{row.id} is {mark(state_of(row, pool.clock()))}: no captcha is known; opening it anyway")
    if not headless and not has_display():
        _fail(f"{NO_DISPLAY} ({row.id} still needs a human)")
    profile = Path(row.profile_dir) if row.profile_dir else account_dir(_session_dir(), row.id)
    _release_profile(profile.name)
    try:
        asyncio.run(
            solve_in_browser(
                base_url=str(config["QWEN_BASE_URL"]),
                profile_dir=profile,
                token=row.token,
                headless=headless,
                timeout=float(timeout or config["ACCOUNT_LOGIN_TIMEOUT"]),
                chrome_path=config.get("CHROME_PATH"),
                user_agent=str(config["QWEN_USER_AGENT"]),
                note=lambda text: click.echo(text, err=True),
            )
        )
    except LoginError as exc:
        _fail(f"{exc} ({row.id} still needs a human)")
    if not row.profile_dir:
        pool.set_profile(row.id, str(profile))
    pool.clear_human(row.id)
    _report(row.id, "Solved:")
