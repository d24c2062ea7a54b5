"""Getting a Qwen token through a real Chromium: the browser path of ``flask accounts add``,
and ``flask accounts solve``: an account's profile shown to a person to pass a captcha.

A person signs in on ``QWEN_BASE_URL/auth?action=signin`` (GitHub, Google, e-mail, sliders —
whatever the site asks); we poll until the page holds a token — ``localStorage.token`` on
the Qwen origin, or the ``token`` cookie (§2.1) — and close the browser. The profile stays
in ``SESSION_DIR/accounts/<id>/`` so the browser pool can reuse its cookies.

``autofill`` types an e-mail and password into a plain sign-in form (scripted logins, the
tests); a person does not need it. Asyncio + pyppeteer: run it with ``asyncio.run`` in a
plain process (the CLI), never inside a gevent web worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

from ..jwt import jwt_expiry

TOKEN_SCRIPT = "() => { try { return window.localStorage.getItem('token'); } catch (e) { return null; } }"
EMAIL_INPUT = 'input[type="email"], input[name="email"], input[name="username"], input#email'
PASSWORD_INPUT = 'input[type="password"]'
SUBMIT = 'button[type="submit"], input[type="submit"]'


class LoginError(Exception):
    """The browser login did not produce a token (closed, timed out, could not start)."""


@dataclass
class Autofill:
    email: str
    password: str


def signin_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/auth?action=signin"


def _origin(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    return parsed.scheme, parsed.netloc


def usable_token(value: object, reject: Iterable[str] = (), now: float | None = None) -> str | None:
    """``value`` if it looks like a fresh token (not rejected, not expired), else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value.startswith('"'):  # some front ends JSON-encode what they put in localStorage
        try:
            value = str(json.loads(value))
        except ValueError:
            return None
    if not value or value in set(reject):
        return None
    exp = jwt_expiry(value)
    if exp is not None and exp <= (time.time() if now is None else now) + 30:
        return None
    return value


async def _autofill(page, autofill: Autofill) -> None:
    await page.waitForSelector(EMAIL_INPUT, timeout=30000)
    email = await page.querySelector(EMAIL_INPUT)
    await email.type(autofill.email)
    password = await page.querySelector(PASSWORD_INPUT)
    if password is None:
        raise LoginError("autofill: the sign-in page has no password field")
    await password.type(autofill.password)
    submit = await page.querySelector(SUBMIT)
    if submit is not None:
        await submit.click()
    else:
        await password.press("Enter")


async def _find_token(browser, base_url: str, reject: Iterable[str]) -> str | None:
    origin = _origin(base_url)
    pages = await browser.pages()
    for page in pages:
        if _origin(page.url) != origin:
            continue
        try:
            value = await page.evaluate(TOKEN_SCRIPT)
        except Exception:  # the page is navigating: its context went away
            continue
        token = usable_token(value, reject)
        if token:
            return token
    if pages:
        try:
            cookies = await pages[0].cookies(base_url)
        except Exception:
            cookies = []
        for cookie in cookies:
            if cookie.get("name") == "token":
                token = usable_token(cookie.get("value"), reject)
                if token:
                    return token
    return None


async def browser_login(
    *,
    base_url: str,
    profile_dir: str | os.PathLike,
    headless: bool = False,
    timeout: float = 300.0,
    chrome_path: str | None = None,
    user_agent: str | None = None,
    reject: Iterable[str] = (),
    autofill: Autofill | None = None,
    note: Callable[[str], None] = print,
    poll_interval: float = 0.5,
) -> str:
    """Open Chromium on the sign-in page and return the token once the page holds one.

    ``reject``: tokens not to accept (the expired one a re-login replaces).
    """
    from ..runtime import chromium

    reject = tuple(reject)
    try:
        chrome = await chromium.launch(profile_dir, headless=headless, chrome_path=chrome_path)
    except FileNotFoundError as exc:
        raise LoginError(str(exc)) from exc
    except (RuntimeError, TimeoutError) as exc:
        hint = "" if headless else " (no display? use `--token`, or `--email` and `--password`)"
        raise LoginError(f"Chromium could not start: {exc}{hint}") from exc
    try:
        pages = await chrome.browser.pages()
        page = pages[0] if pages else await chrome.browser.newPage()
        if headless and user_agent:
            await page.setUserAgent(user_agent)  # not "HeadlessChrome"
        url = signin_url(base_url)
        note(f"Sign in to Qwen in the browser window ({url}); waiting up to {timeout:g} s…")
        await page.goto(url, waitUntil="domcontentloaded", timeout=60000)
        if autofill is not None:
            await _autofill(page, autofill)
        deadline = time.monotonic() + timeout
        warned = False
        while True:
            token = await _find_token(chrome.browser, base_url, reject)
            if token:
                return token
            if chrome.process.poll() is not None:
                raise LoginError("The browser was closed before the sign-in finished")
            if not warned:
                try:
                    title = await page.title()
                except Exception:
                    title = ""
                if "verification" in title.lower():
                    note("Qwen shows a verification page: solve it in the browser window")
                    warned = True
            if time.monotonic() >= deadline:
                raise LoginError(f"No sign-in within {timeout:g} s")
            await asyncio.sleep(poll_interval)
    except LoginError:
        raise
    except Exception as exc:
        raise LoginError(f"The browser login failed: {type(exc).__name__}: {exc}") from exc
    finally:
        await chrome.close()


NO_DISPLAY = "No display: run this on a machine with a screen (or over `ssh -X`), with the same SESSION_DIR"


def has_display() -> bool:
    """Whether a window can be shown here (X11 or Wayland)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _watch_enter(loop: asyncio.AbstractEventLoop, pressed: asyncio.Event) -> None:
    """Enter on the terminal sets ``pressed`` (a daemon thread: stdin has no asyncio reader
    that works everywhere). End of input is not Enter: nobody confirmed anything."""
    stdin = sys.stdin

    def read() -> None:
        try:
            line = stdin.readline()
        except (OSError, ValueError):
            return
        if line:
            loop.call_soon_threadsafe(pressed.set)

    threading.Thread(target=read, name="solve-enter", daemon=True).start()


async def solve_in_browser(
    *,
    base_url: str,
    profile_dir: str | os.PathLike,
    token: str | None = None,
    headless: bool = False,
    timeout: float = 300.0,
    chrome_path: str | None = None,
    user_agent: str | None = None,
    note: Callable[[str], None] = print,
    poll_interval: float = 0.25,
) -> None:
    """Open ``profile_dir`` on the chat page for a person to pass Qwen's captcha (2026 §4).

    The account's token goes into the profile first (cookie and ``localStorage``), so the
    page is the account's own. Returns when the person presses Enter or closes the window;
    raises ``LoginError`` when Chromium cannot start or nobody answers within ``timeout``."""
    from ..runtime import chromium

    if not headless and not has_display():
        raise LoginError(NO_DISPLAY)
    try:
        chrome = await chromium.launch(profile_dir, headless=headless, chrome_path=chrome_path)
    except FileNotFoundError as exc:
        raise LoginError(str(exc)) from exc
    except (RuntimeError, TimeoutError) as exc:
        raise LoginError(f"Chromium could not start: {exc}") from exc
    pressed = asyncio.Event()
    try:
        pages = await chrome.browser.pages()
        page = pages[0] if pages else await chrome.browser.newPage()
        if headless and user_agent:
            await page.setUserAgent(user_agent)
        url = base_url.rstrip("/") + "/"
        if token:
            await page.setCookie({"name": "token", "value": token, "url": url, "sameSite": "Lax"})
        await page.goto(url, waitUntil="domcontentloaded", timeout=60000)
        if token:
            await page.evaluate("(t) => { try { localStorage.setItem('token', t); } catch (e) {} }", token)
        note(
            f"Qwen is open in the browser window ({url}). Pass the captcha or slider if one shows "
            "(send a message to make sure), then press Enter here or close the window."
        )
        _watch_enter(asyncio.get_running_loop(), pressed)
        deadline = time.monotonic() + timeout
        while not pressed.is_set():
            if chrome.process.poll() is not None:
                return  # the window was closed
            if time.monotonic() >= deadline:
                raise LoginError(f"Nobody confirmed within {timeout:g} s")
            try:
                await asyncio.wait_for(pressed.wait(), timeout=poll_interval)
            except asyncio.TimeoutError:
                pass
    except LoginError:
        raise
    except Exception as exc:
        raise LoginError(f"The browser failed: {type(exc).__name__}: {exc}") from exc
    finally:
        await chrome.close()
