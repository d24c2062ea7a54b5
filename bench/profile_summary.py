"""Where a gateway worker's CPU goes: ``py-spy`` collapsed stacks summed by concern.

    python -m bench.profile_summary STACKS.txt

``bench.overhead --py-spy STACKS.txt`` records them (py-spy installed into
``~/.cache/qwenproxy-bench/tools`` when asked; never a project dependency). Each sample goes to
the concern of its innermost recognised frame, so a row is the CPU spent in that concern's own
code and in the libraries only it calls.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.litellm_side import CACHE

# innermost match wins; the order only breaks ties inside one frame
CONCERNS = (
    ("logging", ("logging/", "gunicorn/glogging.py")),
    ("SQLite / Peewee", ("peewee.py", "playhouse/", "sqlite3", "qwenproxy/db/")),
    ("account rotation", ("accounts/store.py", "accounts/pool.py")),
    ("chat and message writes", ("serving/conversations.py", "ops/requestlog.py")),
    ("upstream HTTP client", ("qwen/http.py", "http/client.py", "requests/", "urllib3/", "ssl.py")),
    ("upstream SSE parsing", ("qwen/protocol.py",)),
    ("OpenAI rendering", ("wire/openai.py", "json/")),
    ("stream loop and pump", ("serving/streaming.py", "queue.py", "threading.py")),
    ("Qwen provider and client", ("providers/", "qwen/client.py", "qwen/transport.py")),
    ("metrics", ("prometheus_client/", "ops/metrics.py")),
    ("Flask / Werkzeug", ("flask/", "werkzeug/", "api/", "ops/")),
    ("gunicorn", ("gunicorn/",)),
    ("gevent hub and sockets", ("gevent/", "socket.py", "selectors.py")),
)


def py_spy() -> Path:
    """The ``py-spy`` executable of the bench's tools virtualenv (installed when missing)."""
    venv = CACHE / "tools"
    exe = venv / "bin" / "py-spy"
    if not exe.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return exe


def concern(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for label, needles in CONCERNS:
            if any(n in frame for n in needles):
                return label
    return "other"


def summarize(path: Path) -> list[tuple[str, float]]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[concern(stack)] += int(n)
    total = sum(counts.values()) or 1
    return [(label, 100.0 * n / total) for label, n in counts.most_common()]


def main() -> None:
    path = Path(sys.argv[1])
    rows = summarize(path)
    print("| concern | share of the worker's CPU samples |")
    print("|---|---:|")
    for label, share in rows:
        print(f"| {label} | {share:.1f} % |")


if __name__ == "__main__":
    main()
