"""The seed's start-up menu (list, add, re-login, start, delete) for ``python app.py``/start.bat.

Shown only when the service is started from an interactive terminal and neither
``SKIP_ACCOUNT_MENU`` nor ``NON_INTERACTIVE`` is set; gunicorn and Docker never reach it.
Adding and re-login run ``flask accounts …`` in a child process: the browser login is
asyncio + pyppeteer, which must not run inside this gevent-patched process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any, TextIO

from ..config import ROOT
from .cli import render_table


def should_show(config: Any, stdin: TextIO | None = None) -> bool:
    if config.get("SKIP_ACCOUNT_MENU") or config.get("NON_INTERACTIVE") or config.get("TESTING"):
        return False
    stream = sys.stdin if stdin is None else stdin
    try:
        return bool(stream and stream.isatty())
    except (AttributeError, ValueError):
        return False


def flask_accounts(*args: str) -> list[str]:
    """The command line of ``flask accounts ARGS`` for this checkout."""
    return [sys.executable, "-m", "flask", "--app", str(ROOT / "app.py"), "accounts", *args]


def _yes(answer: str) -> bool:
    return answer.strip().lower() in ("y", "yes", "д", "да")


def _add(ask: Callable[[str], str], run: Callable[[list[str]], Any]) -> None:
    """Menu item 1: add an account by browser, e-mail and password, or a pasted token."""
    how = ask(
        "Как войти / How to sign in: 1 - браузер / browser (Enter), "
        "2 - e-mail + пароль / password, 3 - вставить токен / paste a token: "
    ).strip()
    if how in ("", "1"):
        run(flask_accounts("add"))
    elif how == "2":
        email = ask("E-mail: ").strip()
        if email:
            args = ["add", "--email", email]
            if _yes(ask("Запомнить для автоматического входа? / Remember for automatic re-login? [y/N] ")):
                args.append("--remember")
            run(flask_accounts(*args))
    elif how == "3":
        run(flask_accounts("add", "--token", "-"))


def run_menu(
    app: Any,
    *,
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
    run: Callable[[list[str]], Any] = subprocess.call,
) -> bool:
    """Loop until the user starts the proxy (Enter or 3); returns True then."""
    pool = app.extensions["account_pool"]
    while True:
        say("")
        say("Список аккаунтов / Accounts:")
        say(render_table(pool.status()))
        say("")
        say("=== Меню / Menu ===")
        say("1 - Добавить новый аккаунт / Add an account")
        say("2 - Перелогинить аккаунт с истекшим токеном / Log an expired account in again")
        say("3 - Запустить прокси (Enter по умолчанию) / Start the proxy (Enter)")
        say("4 - Удалить аккаунт / Delete an account")
        choice = ask("> ").strip()
        if choice in ("", "3"):
            if not any(s["status"] in ("OK", "WAIT") for s in pool.status()):
                say(
                    "Нет рабочих аккаунтов: запросы получат 503, пока вы не добавите аккаунт.\n"
                    "No usable account: requests get HTTP 503 until you add one (`flask accounts add`)."
                )
            return True
        if choice == "1":
            _add(ask, run)
        elif choice == "2":
            statuses = pool.status()
            if not statuses:
                say("Аккаунтов нет / No accounts")
                continue
            invalid = [s["id"] for s in statuses if s["status"] == "INVALID"]
            if invalid:
                say("Недействительные / Invalid: " + ", ".join(invalid))
            key = ask("Номер или ID аккаунта / Account number or ID: ").strip()
            if key:
                run(flask_accounts("relogin", key))
        elif choice == "4":
            key = ask("Номер или ID аккаунта для удаления / Account number or ID to delete: ").strip()
            if key:
                run(flask_accounts("remove", key))
        else:
            say("Неизвестный пункт / Unknown choice")
