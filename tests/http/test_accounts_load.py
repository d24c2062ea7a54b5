"""Load: 1,000 requests over 3 accounts while the fake injects random 429/401 failures.

Bounded and loopback only: the Flask test client in 4 threads, the fake chat.qwen.ai on
127.0.0.1 with no delay between events. The requests run in batches; inside a batch the
pool's clock stands still, so account states only get worse (OK → WAIT/INVALID). A request
that fails while an account is still OK at that moment is therefore a gateway fault (it
should have been retried on that account): the goal is zero. Between batches the clock
moves on (WAITs expire) and ``flask accounts check`` revives the accounts whose tokens
upstream still accepts (the injected 401s were transient), like an operator would.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from qwenproxy import create_app
from tests.conftest import app_config
from tests.openai_schema import sse_events

REQUESTS = 1000
BATCH = 25
THREADS = 4
FAILURES = (  # cumulative probability per upstream call -> injected failure
    (0.030, "rate_limited"),  # HTTP 200 envelope, data.num hours
    (0.045, "unauthorized"),  # HTTP 200 envelope
    (0.055, "http_401"),
    (0.065, "http_429"),
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_thousand_requests_with_random_429_and_401_on_three_accounts(tmp_path, fake_qwen) -> None:
    rng = random.Random(20251122)
    lock = threading.Lock()
    injected: Counter[str] = Counter()

    def inject(token: str, path: str) -> str | None:
        with lock:
            x = rng.random()
            for limit, kind in FAILURES:
                if x < limit:
                    injected[kind] += 1
                    return kind
        return None

    fake_qwen.rate_limit_hours = 1
    app = create_app(app_config(tmp_path, fake_qwen, QWEN_TOKEN="", LOG_LEVEL="ERROR"))
    pool = app.extensions["account_pool"]
    clock = Clock()
    pool.clock = clock
    runner = app.test_cli_runner()
    tokens = [fake_qwen.make_token() for _ in range(3)]
    seed = tmp_path / "tokens.json"
    seed.write_text(json.dumps([{"id": f"acc_{i}", "token": t, "resetAt": None} for i, t in enumerate(tokens)]))
    assert runner.invoke(args=["accounts", "import", str(seed)]).exit_code == 0
    fake_qwen.inject = inject

    def one(i: int) -> tuple[int, list[str]]:
        stream = i % 4 == 0
        r = app.test_client().post(
            "/api/chat/completions",
            json={"model": "qwen3-max", "messages": [{"role": "user", "content": f"n{i}"}], "stream": stream},
        )
        good = r.status_code == 200
        if good and stream:
            events = sse_events(r.get_data(as_text=True))
            good = events[-1] == "[DONE]" and not any('"error"' in e for e in events[:-1])
        elif good:
            good = r.get_json()["choices"][0]["message"]["content"] == f"Echo: n{i}"
        if good:
            return 200, []
        # states only get worse inside a batch: an account OK now was OK during the request
        return r.status_code or -1, [s["id"] for s in pool.status() if s["status"] == "OK"]

    statuses: Counter[int] = Counter()
    while_ok: list[tuple[int, int, list[str]]] = []
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as executor:
        for first in range(0, REQUESTS, BATCH):
            for i, (status, usable) in zip(
                range(first, first + BATCH), executor.map(one, range(first, first + BATCH)), strict=True
            ):
                statuses[status] += 1
                if status != 200 and usable:
                    while_ok.append((i, status, usable))
            clock.now += 3601  # every WAIT (num = 1 h) is over
            runner.invoke(args=["accounts", "check"])  # transient 401s: the tokens are still good
    elapsed = time.monotonic() - started
    served = {s["id"]: s["requests"] for s in pool.status()}
    report = (
        f"{REQUESTS} requests in {elapsed:.1f} s: {dict(statuses)}; injected {dict(injected)}; "
        f"served per account {served}; failed while some account was OK: {len(while_ok)} {while_ok[:5]}"
    )
    print("\n" + report)
    assert sum(statuses.values()) == REQUESTS
    assert not while_ok, report
    assert sum(injected.values()) >= 50, report  # the failures really happened
    assert statuses[200] == sum(served.values()), report
    assert statuses[200] >= REQUESTS * 0.5, report  # the rest: every account was down at once
    assert set(statuses) <= {200, 429, 503}, report
