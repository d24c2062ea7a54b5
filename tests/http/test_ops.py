"""Operations surface in-process: probes, metrics, status page, CORS, rate limit, request ids
and log files, the supervisor's worker list."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from qwenproxy import create_app
from qwenproxy.api.health import provider_usable
from qwenproxy.ops.cors import Cors
from qwenproxy.ops.lifecycle import start_draining
from qwenproxy.ops.logs import redact
from qwenproxy.runtime.supervisor import Supervisor, WorkerSpec, configured_specs
from tests.conftest import app_config
from tests.fakes import issued

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def _make(tmp_path, fake_qwen, **extra):
    application = create_app(app_config(tmp_path, fake_qwen, **extra))
    return application, application.test_client()


# --- probes -----------------------------------------------------------------------------


def test_live_and_ready(client) -> None:
    live = client.get("/health/live")
    assert live.status_code == 200 and live.json["status"] == "ok"
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json["database"] == "ok" and ready.json["providers"]["qwen"] is True
    assert client.get("/health").status_code == 200


def test_ready_is_503_without_a_usable_provider(tmp_path, fake_qwen) -> None:
    _, c = _make(tmp_path, fake_qwen, QWEN_TOKEN="")
    ready = c.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json["providers"]["qwen"] is False and not any(ready.json["providers"].values())
    assert "no provider is usable" in ready.json["reasons"][0]
    assert c.get("/health/live").status_code == 200  # alive all the same


def test_ready_is_503_while_draining_and_probes_need_no_key(app, client, tmp_path) -> None:
    (tmp_path / "Authorization.txt").write_text(issued("sk-ops-test-key-1") + "\n", encoding="utf-8")
    assert client.get("/api/models").status_code == 401
    assert client.get("/health/ready").status_code == 200
    start_draining(app)
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json["draining"] is True
    assert client.get("/health/live").status_code == 200


def test_provider_usable_reads_each_status_shape() -> None:
    assert provider_usable({"accounts": [{"status": "WAIT"}, {"status": "OK"}]})
    assert not provider_usable({"accounts": [{"status": "INVALID"}]})
    assert not provider_usable({"accounts": []})
    assert provider_usable({"model_loaded": True}) and not provider_usable({"available": True, "model_loaded": False})
    assert not provider_usable({"configured": False})
    assert provider_usable({"name": "other"})


# --- metrics ----------------------------------------------------------------------------


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_count_requests_tokens_ttft_errors_and_accounts(client, fake_qwen) -> None:
    assert client.post("/api/chat/completions", json=CHAT).status_code == 200
    streamed = client.post("/api/chat/completions", json={**CHAT, "stream": True})
    assert streamed.data.endswith(b"data: [DONE]\n\n")
    fake_qwen.hostile, fake_qwen.hostile_times = "captcha", 1
    assert client.post("/api/chat/completions", json=CHAT).status_code == 502
    body = client.get("/metrics")
    assert body.status_code == 200 and body.content_type.startswith("text/plain")
    s = _samples(body.get_data(as_text=True))
    assert s['qwenproxy_http_requests_total{method="POST",route="/api/chat/completions",status="200"}'] == 2
    assert s['qwenproxy_http_requests_total{method="POST",route="/api/chat/completions",status="502"}'] == 1
    assert s['qwenproxy_completions_total{outcome="complete",provider="qwen"}'] == 2
    assert s['qwenproxy_errors_total{code="upstream_blocked",provider="qwen",stage="early"}'] == 1
    assert s['qwenproxy_tokens_total{kind="completion",provider="qwen"}'] > 0
    assert s['qwenproxy_tokens_total{kind="prompt",provider="qwen"}'] > 0
    default = fake_qwen.models[0]  # no model asked: the first of the live list
    assert s[f'qwenproxy_time_to_first_token_seconds_count{{model="{default}",provider="qwen"}}'] == 2
    assert s['qwenproxy_upstream_latency_seconds_count{provider="qwen"}'] == 3
    assert s['qwenproxy_accounts{provider="qwen",state="OK"}'] == 1
    assert s['qwenproxy_provider_usable{provider="qwen"}'] == 1
    assert s["qwenproxy_streams_in_progress"] == 0
    assert s["qwenproxy_draining"] == 0


def test_in_stream_errors_are_counted_and_logged(client, fake_qwen) -> None:
    fake_qwen.hostile, fake_qwen.hostile_after = "stream_error", 2
    raw = client.post("/api/chat/completions", json={**CHAT, "stream": True}).get_data(as_text=True)
    assert '"error"' in raw and raw.rstrip().endswith("data: [DONE]")
    s = _samples(client.get("/metrics").get_data(as_text=True))
    assert any(k.startswith("qwenproxy_errors_total{") and 'stage="in_stream"' in k for k in s)
    page = client.get("/").get_data(as_text=True)
    assert "Recent errors" in page and "No errors recorded" not in page


# --- status page ------------------------------------------------------------------------


def test_status_page_shows_accounts_models_requests_and_errors(client, fake_qwen) -> None:
    client.post("/api/chat/completions", json=CHAT)
    client.post("/api/chat/completions", data=b"{broken", content_type="application/json")
    page = client.get("/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assert "READY" in html and 'http-equiv="refresh"' in html
    assert "…" in html and 'id="accounts"' in html and "qwen3-max" in html  # a masked token
    assert "POST /api/chat/completions" in html and fake_qwen.models[0] in html  # the live default model
    assert "400" in html  # the malformed body, among the recent errors
    assert 'http-equiv="refresh"' not in client.get("/?refresh=0").get_data(as_text=True)


def test_openapi_document_is_served_and_lists_the_routes(client, app) -> None:
    doc = client.get("/api/openapi.json")
    assert doc.status_code == 200
    paths = doc.json["paths"]
    served = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    documented = {re.sub(r"\{(\w+)\}", r"<\1>", p).replace("<chatId>", "<chat_id>") for p in paths}
    assert served <= documented, f"routes missing from the OpenAPI document: {served - documented}"


# --- CORS -------------------------------------------------------------------------------


def test_cors_any_origin_by_default_with_keys_and_preflight(tmp_path, fake_qwen) -> None:
    key = issued("sk-cors-default-key")
    (tmp_path / "Authorization.txt").write_text(key + "\n", encoding="utf-8")
    _, client = _make(tmp_path, fake_qwen)
    auth = {"Authorization": f"Bearer {key}"}
    r = client.get("/api/models", headers={"Origin": "https://app.example", **auth})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
    pre = client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
    )
    assert pre.status_code == 204
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "authorization, content-type, x-stainless-os"


def test_cors_configured_origins_only(tmp_path, fake_qwen) -> None:
    _, c = _make(tmp_path, fake_qwen, CORS_ORIGINS="https://a.example, http://localhost:5173/")
    ok = c.get("/api/models", headers={"Origin": "http://localhost:5173"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "Origin" in ok.headers.get_all("Vary")
    other = c.get("/api/models", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = c.options("/api/chat", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and "Access-Control-Allow-Methods" not in pre.headers
    assert Cors("").allowed("https://a.example") is None


# --- rate limit -------------------------------------------------------------------------


def test_rate_limit_per_key_in_openai_shape_shared_by_processes(tmp_path, fake_qwen) -> None:
    keys = tmp_path / "Authorization.txt"
    key_a, key_b = issued("sk-ratelimit-key-a"), issued("sk-ratelimit-key-b")
    keys.write_text(f"{key_a}\n{key_b}\n", encoding="utf-8")
    _, first = _make(tmp_path, fake_qwen, RATE_LIMIT_PER_MINUTE=3)
    _, second = _make(tmp_path, fake_qwen, RATE_LIMIT_PER_MINUTE=3)  # another worker, same database
    a = {"Authorization": f"Bearer {key_a}"}
    assert first.get("/api/models", headers=a).headers["X-RateLimit-Remaining-Requests"] == "2"
    assert second.get("/api/models", headers=a).status_code == 200
    assert first.get("/api/models", headers=a).status_code == 200
    over = second.get("/api/models", headers=a)
    assert over.status_code == 429
    assert over.json["error"]["type"] == "rate_limit_error" and over.json["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert first.get("/api/models", headers={"Authorization": f"Bearer {key_b}"}).status_code == 200
    assert first.get("/health/ready").status_code == 200  # probes are never limited
    assert first.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_rate_limit_is_off_by_default(client) -> None:
    for _ in range(5):
        r = client.get("/api/models")
        assert r.status_code == 200 and "X-RateLimit-Limit-Requests" not in r.headers


def test_rate_limit_window_rolls_over(app) -> None:
    from qwenproxy.ops.ratelimit import RateLimiter

    now = [1_000_000 * 60 + 59.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    with app.app_context():
        assert limiter.hit("k") == (1, 1)
        assert limiter.hit("k")[0] == 2
        now[0] += 1
        assert limiter.hit("k") == (1, 60)


# --- request ids and logs ---------------------------------------------------------------


def test_request_id_header_and_log_lines(tmp_path, fake_qwen) -> None:
    app, c = _make(tmp_path, fake_qwen, LOG_LEVEL="INFO")
    r = c.get("/api/models", headers={"X-Request-Id": "trace-123"})
    assert r.headers["X-Request-Id"] == "trace-123"
    generated = c.get("/api/models", headers={"X-Request-Id": "bad id with spaces"}).headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    with app.test_request_context("/x", headers={"X-Request-Id": "inside-1"}):
        app.preprocess_request()
        logging.getLogger("qwenproxy.test").warning("a line inside a request")
    logging.getLogger("qwenproxy.test").warning("a line outside")
    text = (tmp_path / "logs" / "qwenproxy.log").read_text(encoding="utf-8")
    assert "[inside-1] qwenproxy.test: a line inside a request" in text
    assert "[-] qwenproxy.test: a line outside" in text


def test_logs_scrub_credentials(tmp_path, fake_qwen) -> None:
    token = fake_qwen.make_token()
    line = f'Authorization: Bearer {token} cookie token={token}; body {{"password": "hunter2-secret"}}'
    clean = redact(line)
    assert token not in clean and "hunter2-secret" not in clean
    assert "Bearer ***" in clean and "token=***" in clean
    assert redact("Basic ZmFrZS1pZDpmYWtlLXNlY3JldA==") == "Basic ***"
    app, _ = _make(tmp_path, fake_qwen)
    logging.getLogger("qwenproxy.test").error("leaked %s", token)
    assert token not in (tmp_path / "logs" / "qwenproxy.log").read_text(encoding="utf-8")


# --- supervised workers -----------------------------------------------------------------


def test_configured_specs_skip_missing_modules_and_none(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "fakeworkers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "on.py").write_text(
        "from qwenproxy.runtime.supervisor import WorkerSpec\n"
        "def worker_spec(config):\n"
        "    return WorkerSpec(name='on', argv=['python', '-c', 'pass']) if config.get('X') else None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = ("fakeworkers.missing", "fakeworkers.on")
    assert configured_specs({"X": False}, modules) == []
    assert [s.name for s in configured_specs({"X": True}, modules)] == ["on"]


def test_supervisor_writes_its_status_file(tmp_path) -> None:
    status = tmp_path / "workers.json"
    sup = Supervisor([WorkerSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"])], status_file=status)
    sup.start()
    try:
        sup.write_status()
        data = json.loads(status.read_text())
        assert data["sleeper"]["running"] is True and data["sleeper"]["pid"]
    finally:
        sup.stop(timeout=5)
    assert json.loads(status.read_text())["sleeper"]["running"] is False


def test_status_page_and_metrics_show_supervised_workers(app, client) -> None:
    path = Path(app.config["SESSION_DIR"]) / "workers.json"
    path.write_text(json.dumps({"browser-pool": {"pid": 42, "running": True, "restarts": 2, "last_exit": 1}}))
    html = client.get("/").get_data(as_text=True)
    assert "browser-pool" in html and "running" in html
    s = _samples(client.get("/metrics").get_data(as_text=True))
    assert s['qwenproxy_worker_up{worker="browser-pool"}'] == 1
    assert s['qwenproxy_worker_restarts{worker="browser-pool"}'] == 2


@pytest.mark.parametrize("path", ["/metrics", "/health/ready", "/"])
def test_operational_routes_are_not_in_the_request_log(client, path) -> None:
    client.get(path)
    from qwenproxy.ops.requestlog import recent

    with client.application.app_context():
        assert recent() == []
