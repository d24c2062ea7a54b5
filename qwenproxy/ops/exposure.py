"""The loud warning for a gateway that anyone on the network can use: listening on a
non-loopback address without API keys (logged at start-up and shown on the status page)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name.startswith("unix:") or name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_warning(hosts: Iterable[str], keys_configured: bool) -> str | None:
    """The warning to show, or None when the gateway has keys or listens on loopback only."""
    if keys_configured:
        return None
    exposed = sorted({h for h in hosts if not is_loopback(h)})
    if not exposed:
        return None
    return (
        f"qwenproxy listens on {', '.join(exposed)} WITHOUT API keys: anyone who can reach this address can "
        "use your accounts, read every chat and delete them. Put keys in the API_KEYS_FILE "
        "(Authorization.txt) or set HOST=127.0.0.1 (docs/OPERATIONS.md)."
    )


def banner(message: str) -> str:
    """A message framed so that it stands out in a console full of log lines."""
    line = "!" * 78
    return f"\n{line}\n!! {message}\n{line}"
