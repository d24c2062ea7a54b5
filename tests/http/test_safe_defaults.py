"""Safe by default (issue 15), in-process: what a web page, a client without a key and hostile
input can do to a gateway left at its defaults. The same checks through gunicorn and a real
browser are in tests/process/test_safe_gunicorn.py and tests/browser/test_cross_origin.py."""

from __future__ import annotations

import base64
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from qwenproxy import create_app
from qwenproxy.ops.requestlog import recent
from tests.conftest import app_config
from tests.fakes import issued
from tests.http.test_ops import _samples

USER = [{"role": "user", "content": "hello"}]
UPLOAD_ROUTES = {"/api/files/upload", "/api/files"}  # multipart/form-data only; every other POST/PUT reads JSON
ALSO_MULTIPART = {"/api/images/edits", "/api/videos", "/api/videos/generations"}  # JSON, or multipart with files


def _make(tmp_path, fake_qwen, **extra):
    application = create_app(app_config(tmp_path, fake_qwen, **extra))
    return application, application.test_client()


def _with_key(tmp_path, key: str = "sk-safe-defaults-key") -> str:
    key = issued(key)
    (tmp_path / "Authorization.txt").write_text(key + "\n", encoding="utf-8")
    return key


def json_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) that reads a JSON body, with a made-up id for path parameters."""
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods & {"POST", "PUT", "PATCH"}):
            if rule.rule not in UPLOAD_ROUTES:
                out.append((method, re.sub(r"<[^>]+>", "x1", rule.rule)))
    return out


def assert_error(r, code: str, says: str, path: str) -> None:
    """An error in the route's client API shape: OpenAI's (with ``code``) or, on the
    Anthropic Messages routes, Anthropic's ``{"type": "error", "error": {type, message}}``."""
    body = r.json
    error = body["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"], (path, body)
    if body.get("type") == "error":
        assert "messages" in path and set(error) == {"type", "message"}, (path, body)
    else:
        assert error["code"] == code and set(error) == {"message", "type", "param", "code"}, (path, body)


def _completions(fake_qwen) -> int:
    return len([r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"])


# --- 1. cross-site requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
        None,
    ],
)
def test_json_routes_take_only_application_json(app, client, fake_qwen, content_type) -> None:
    """The bodies a browser sends to another origin without a preflight: 415, nothing done."""
    chat = client.post("/api/chat/completions", json={"messages": USER}).json["chatId"]
    routes = json_routes(app)
    assert len(routes) >= 7
    body = b'{"messages": [{"role": "user", "content": "hi"}], "all": true, "name": "x"}'
    for method, path in routes:
        if path in ALSO_MULTIPART and (content_type or "").startswith("multipart/"):
            continue  # read as an upload there (this body is not one: a 400)
        headers = {"Content-Type": content_type} if content_type else {}
        r = client.open(path, method=method, data=body, headers=headers)
        assert r.status_code == 415, (method, path, r.status_code, r.data[:200])
        assert_error(r, "unsupported_media_type", "application/json", path)
    assert _completions(fake_qwen) == 1, "a non-JSON body reached the upstream"
    assert client.get(f"/api/chats/{chat}").status_code == 200, "a text/plain cleanup deleted the chats"
    ok = client.post("/api/chat/completions", data=body, content_type="application/json; charset=utf-8")
    assert ok.status_code == 200


def test_upload_routes_still_take_multipart(app, client) -> None:
    r = client.post("/api/files/upload", json={"file": "x"})
    assert r.status_code == 400 and r.json["error"]["code"] == "missing_file"


def test_a_foreign_page_can_do_nothing_without_keys(client, fake_qwen) -> None:
    """What a page on https://evil.example can send to a gateway without keys: every kind of
    request is refused before it does anything, and no answer carries CORS headers."""
    chat = client.post("/api/chat/completions", json={"messages": USER}).json["chatId"]
    evil = {"Origin": "https://evil.example"}
    attempts = [
        client.post(
            "/api/chat/completions",
            data='{"messages":[{"role":"user","content":"x"}]}',
            content_type="text/plain",
            headers=evil,
        ),
        client.post("/api/chats/cleanup", data='{"all":true}', content_type="text/plain", headers=evil),
        client.post("/api/chats/cleanup", json={"all": True}, headers=evil),
        client.get(f"/api/chats/{chat}", headers=evil),
        client.get("/gigachat?query=hi&session_id=s", headers=evil),
        client.post("/api/files/upload", data={"file": (b"x", "a.txt")}, headers=evil),
    ]
    for r in attempts:
        assert r.status_code == 403 and r.json["error"]["code"] == "cross_origin_forbidden", r.data[:200]
        assert "Access-Control-Allow-Origin" not in r.headers
    pre = client.options(
        "/api/chat/completions",
        headers={**evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert pre.status_code == 204 and "Access-Control-Allow-Origin" not in pre.headers
    assert _completions(fake_qwen) == 1
    assert client.get(f"/api/chats/{chat}").status_code == 200
    # the gateway's own pages, by address or localhost, and the origins named in CORS_ORIGINS
    for own in ("http://localhost", "http://127.0.0.1"):
        same = client.post("/api/chats", json={}, headers={"Origin": own}, base_url=own)
        assert same.status_code == 200, own


def test_dns_rebinding_page_is_not_the_gateways_own_origin(tmp_path, fake_qwen) -> None:
    """A page on a name the attacker re-points at 127.0.0.1 sends Host and Origin of its own
    name: without keys that is refused unless CORS_ORIGINS names it."""
    rebound = {"Origin": "http://rebind.example:3264"}
    _, client = _make(tmp_path, fake_qwen)
    r = client.get("/api/chats", headers=rebound, base_url="http://rebind.example:3264")
    assert r.status_code == 403
    _, named = _make(tmp_path, fake_qwen, CORS_ORIGINS="http://rebind.example:3264")
    r = named.get("/api/chats", headers=rebound, base_url="http://rebind.example:3264")
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "http://rebind.example:3264"


def test_with_keys_any_origin_by_default_but_a_key_is_needed(tmp_path, fake_qwen) -> None:
    key = _with_key(tmp_path)
    app, client = _make(tmp_path, fake_qwen)
    evil = {"Origin": "https://evil.example"}
    refused = client.post("/api/chats/cleanup", json={"all": True}, headers=evil)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
    ok = client.get("/api/chats", headers={**evil, "Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "*"
    _, listed = _make(tmp_path, fake_qwen, CORS_ORIGINS="https://app.example")
    assert listed.get("/api/chats", headers={**evil, "Authorization": f"Bearer {key}"}).status_code == 403


def test_exposure_warning_on_the_status_page(tmp_path, fake_qwen) -> None:
    _, exposed = _make(tmp_path, fake_qwen, HOST="0.0.0.0")
    page = exposed.get("/").get_data(as_text=True)
    assert 'id="exposure"' in page and "WITHOUT API keys" in page
    _, loopback = _make(tmp_path, fake_qwen, HOST="127.0.0.1")
    assert 'id="exposure"' not in loopback.get("/").get_data(as_text=True)
    key = _with_key(tmp_path)
    _, keyed = _make(tmp_path, fake_qwen, HOST="0.0.0.0")
    assert 'id="exposure"' not in keyed.get("/", headers={"Authorization": f"Bearer {key}"}).get_data(as_text=True)


# --- 5. lone surrogates ------------------------------------------------------------------------

SURROGATE_BODIES = [
    b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "message": "x", "name": "x", "all": true}',
    b'{"messages": [{"role": "user", "content": "x"}], "message": "\\udfff", "name": "\\ud800"}',
    b'{"messages": [{"role": "system", "content": "\\udbff"}, {"role": "user", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\uDC00"}]}], "message": "x"}',
    b'{"chatId": "\\ud800", "messages": [{"role": "user", "content": "x"}], "message": "x"}',
    b'{"\\ud800": 1, "messages": [{"role": "user", "content": "x"}], "message": "x"}',
    b'{"filename": "\\ud800.png", "filesize": 5, "filetype": "image", "prompt": "\\ud800", "name": "\\ud800"}',
    b'{"deep": [[[[{"x": ["ok", "\\ud83d"]}]]]], "messages": [{"role": "user", "content": "x"}]}',
]


@pytest.mark.parametrize("body", SURROGATE_BODIES, ids=range(len(SURROGATE_BODIES)))
def test_lone_surrogates_are_a_400_on_every_json_route(app, client, fake_qwen, body) -> None:
    before = _completions(fake_qwen)
    for method, path in json_routes(app):
        r = client.open(path, method=method, data=body, content_type="application/json")
        assert r.status_code == 400, (method, path, r.status_code, r.data[:300])
        assert_error(r, "invalid_unicode", "surrogate", path)
        r.data.decode("utf-8")  # the answer itself is valid UTF-8
    assert _completions(fake_qwen) == before
    assert client.get("/api/chats").status_code == 200 and client.get("/").status_code == 200


def test_a_valid_pair_and_an_escaped_backslash_are_not_surrogates(client) -> None:
    pair = client.post(
        "/api/chat/completions",
        data=b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00 and \\\\ud800"}]}',
        content_type="application/json",
    )
    assert pair.status_code == 200
    assert pair.json["choices"][0]["message"]["content"] == "Echo: \U0001f600 and \\ud800"


# --- 6. the status page ----------------------------------------------------------------------


def test_status_page_needs_a_key_when_keys_are_configured(tmp_path, fake_qwen) -> None:
    key = _with_key(tmp_path)
    app, client = _make(tmp_path, fake_qwen)
    refused = client.get("/")
    assert refused.status_code == 401 and refused.json["error"]["code"] == "invalid_api_key"
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")  # the browser asks for the key
    assert client.get("/", headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    basic = base64.b64encode(f"admin:{key}".encode()).decode()
    assert client.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/api/chats", headers={"Authorization": f"Basic {basic}"}).status_code == 401  # the page only
    assert client.get("/health/live").status_code == 200 and client.get("/metrics").status_code == 200
    _, public = _make(tmp_path, fake_qwen, STATUS_PAGE_PUBLIC=True)
    assert public.get("/").status_code == 200
    assert public.get("/api/chats").status_code == 401


def test_rejected_requests_are_counted_not_logged(tmp_path, fake_qwen) -> None:
    key = _with_key(tmp_path)
    app, client = _make(tmp_path, fake_qwen, RATE_LIMIT_PER_MINUTE=2, CORS_ORIGINS="https://app.example")
    for i in range(40):
        client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": f"spam {i}"}]})
        client.get("/api/nope", headers={"Authorization": "bearer not-a-key"})
    client.get("/api/chats", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {key}"})
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/chats", headers=auth).status_code == 200
    assert client.get("/api/chats", headers=auth).status_code == 200
    assert client.get("/api/chats", headers=auth).status_code == 429
    with app.app_context():
        rows = recent(100)
    assert [r["status"] for r in rows] == [200, 200], rows
    s = _samples(client.get("/metrics").get_data(as_text=True))
    assert s['qwenproxy_rejected_requests_total{reason="unauthenticated"}'] == 80
    assert s['qwenproxy_rejected_requests_total{reason="rate_limited"}'] == 1
    assert s['qwenproxy_rejected_requests_total{reason="cross_origin"}'] == 1


def test_status_page_messages_are_scrubbed_and_cut(client, fake_qwen) -> None:
    """Error messages that echo the client's input: a JWT, a Bearer credential, a long text."""
    jwt = issued(fake_qwen.make_token())
    named = {"type": "function", "function": {"name": jwt}}
    assert (
        jwt
        in client.post("/api/chat/completions", json={"messages": USER, "tool_choice": named}).json["error"]["message"]
    ), "the echo this test relies on is gone: find another one"
    client.post("/api/chat/completions", json={"messages": USER, "size": "Bearer sk-live-1234567890abcdef"})
    client.post("/api/chat/completions", json={"messages": USER, "size": "z" * 2000})
    page = client.get("/").get_data(as_text=True)
    assert "size must look like" in page
    assert jwt[:40] not in page and "sk-live-1234567890abcdef" not in page
    assert "z" * 200 not in page
    with client.application.app_context():
        stored = " ".join(str(r["error_message"]) for r in recent(10))
    assert jwt[:40] not in stored and "sk-live-1234567890abcdef" not in stored


@pytest.mark.parametrize(
    ("query", "expected"),
    [("%C2%B2", 10), ("%D9%A3", 10), ("5", 5), ("0", 0), ("-1", 10), ("99999999", 10), ("7200", 3600), ("x", 10)],
)
def test_status_page_refresh_is_parsed_safely(client, query, expected) -> None:
    r = client.get(f"/?refresh={query}")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    if expected:
        assert f'<meta http-equiv="refresh" content="{expected}">' in page
    else:
        assert 'http-equiv="refresh"' not in page


# --- 8. smaller ones -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(tmp_path, fake_qwen, scheme) -> None:
    key = _with_key(tmp_path)
    _, client = _make(tmp_path, fake_qwen)
    assert client.get("/api/models", headers={"Authorization": f"{scheme} {key}"}).status_code == 200
    assert client.get("/api/models", headers={"Authorization": f"{scheme}  {key} "}).status_code == 200
    assert client.get("/api/models", headers={"Authorization": f"Token {key}"}).status_code == 401


def test_a_multipart_body_with_too_many_parts_says_so(client) -> None:
    boundary = "XyZ"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n' for i in range(80)]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhi\r\n')
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    r = client.post("/api/files/upload", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert r.status_code == 413
    assert r.json["error"]["code"] == "too_many_parts" and "parts" in r.json["error"]["message"]


def test_a_direct_read_timeout_is_a_timeout(tmp_path, fake_qwen) -> None:
    """The fake stops sending after its first event for longer than QWEN_READ_TIMEOUT."""
    _, client = _make(tmp_path, fake_qwen, QWEN_READ_TIMEOUT=0.5)
    fake_qwen.chunk_delay = 3.0
    r = client.post("/api/chat/completions", json={"messages": USER})
    assert r.status_code == 504, r.json
    assert r.json["error"]["code"] == "upstream_timeout" and "0.5 s" in r.json["error"]["message"]
    streamed = client.post("/api/chat/completions", json={"messages": USER, "stream": True})
    text = streamed.get_data(as_text=True)
    assert '"code":"upstream_timeout"' in text and text.endswith("data: [DONE]\n\n")


# --- 4. file modes ---------------------------------------------------------------------------


def test_files_and_folders_are_owner_only_under_umask_022(tmp_path, fake_qwen) -> None:
    session = tmp_path / "session"
    session.mkdir(mode=0o755)
    old_db = session / "qwenproxy.db"
    old_db.touch(mode=0o644)  # what an older version left behind
    os.chmod(old_db, 0o644)
    previous = os.umask(0o022)
    try:
        app, client = _make(tmp_path, fake_qwen, LOG_LEVEL="INFO")
        assert client.post("/api/chat/completions", json={"messages": USER}).status_code == 200
        logging.getLogger("qwenproxy.test").warning("a line for the log file")
        with app.extensions["uploader"].spool() as spool:
            spooled = spool.factory(None, None, None)
            spooled.write(b"x")
            assert _mode(spooled.path) == 0o600
    finally:
        os.umask(previous)
    for folder in ("session", "logs", "uploads"):
        assert _mode(tmp_path / folder) == 0o700, folder
    for name in ("qwenproxy.db", "qwenproxy.db-wal", "qwenproxy.db-shm"):
        assert (session / name).exists() and _mode(session / name) == 0o600, name
    assert _mode(tmp_path / "logs" / "qwenproxy.log") == 0o600


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("ours_first", [True, False])
def test_supervisor_logs_the_signal_that_killed_a_worker_despite_gunicorns_reaper(caplog, ours_first) -> None:
    """gunicorn's master reaps every child with ``waitpid(-1)``; gunicorn.conf.py puts
    ``Supervisor.reap`` in front of it. Run here with gunicorn's own ``reap_workers`` code; the
    watcher thread is held (its lock) while the child dies and is reaped, as it can happen.
    ``ours_first=False`` is the control: gunicorn's reaper alone loses the real status."""
    from types import SimpleNamespace

    from gunicorn.arbiter import Arbiter

    from qwenproxy.runtime.supervisor import Supervisor, WorkerSpec

    sup = Supervisor([WorkerSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])], restart_delay=0)
    sup.start()
    try:
        arbiter = SimpleNamespace(WORKERS={}, reexec_pid=0, dirty_arbiter_pid=0, log=logging.getLogger("gunicorn.x"))
        gunicorn_reaper = lambda: Arbiter.reap_workers(arbiter)  # noqa: E731
        reaper = sup.reap_first(gunicorn_reaper) if ours_first else gunicorn_reaper
        pid = sup.pid("sleeper")
        with caplog.at_level(logging.WARNING, logger="qwenproxy.runtime.supervisor"), sup._lock:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _state(pid) != "Z" and time.monotonic() < deadline:
                time.sleep(0.01)  # waiting for the kernel, not standing in for our condition
            reaper()  # what gunicorn's SIGCHLD handling does
        deadline = time.monotonic() + 10
        while "restarting" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sup.stop(timeout=5)
    expected = "worker sleeper was killed by SIGKILL" if ours_first else "worker sleeper exited with 0"
    assert expected in caplog.text, caplog.text


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# --- 7. a stopping worker's GreenletExit is not a 502 -----------------------------------------


def _answer(then):  # events, then ``then()``: what happens to the upstream read meanwhile
    from qwenproxy.events import ResponseStarted, TextDelta

    yield ResponseStarted("upstream-chat", "parent", "response-1")
    yield TextDelta("a partial answer")
    then()


@pytest.mark.parametrize("stream", [False, True])
def test_greenlet_exit_goes_on_and_the_partial_answer_is_saved(app, stream) -> None:
    """gunicorn stops a worker's handlers with GreenletExit: it must leave the stream loop as
    it is (not become a 502 or an in-band error), after the partial answer is saved. JSON: it
    comes out of the upstream read; SSE: it is thrown into the body while the upstream is slow."""
    import threading

    from gevent import GreenletExit

    from qwenproxy.db.models import Message
    from qwenproxy.events import EventStream
    from qwenproxy.serving.conversations import Turn, open_chat
    from qwenproxy.serving.streaming import serve

    cancelled = threading.Event()

    def then() -> None:
        if not stream:
            raise GreenletExit
        cancelled.wait(10)  # a slow upstream, until the stream loop cancels it

    with app.test_request_context("/api/chat/completions", method="POST"):
        app.preprocess_request()
        chat, _ = open_chat(None, provider="qwen", model="m")
        turn = Turn(chat=chat, provider="qwen", model="m")
        with pytest.raises(GreenletExit):
            response = serve(
                lambda: EventStream(_answer(then), on_cancel=cancelled.set),
                turn,
                stream=stream,
                model="m",
                extras=lambda _c, _i: {},
                shape=lambda _c, _f: {},
            )
            body = iter(response.response)
            assert "assistant" in next(body)  # the role chunk
            assert "a partial answer" in next(body)
            body.throw(GreenletExit)  # what gevent does to a handler the worker kills
        saved = Message.get((Message.chat == chat) & (Message.role == "assistant"))
    assert saved.content == "a partial answer" and saved.status == "partial"
    assert cancelled.is_set()  # and the upstream read was closed
