"""The 2026 stream on recorded bytes: walls inside a 200 stream, parallel answers, keep-open."""

from __future__ import annotations

import json

import pytest

from qwenproxy.errors import UpstreamBlocked, UpstreamError
from qwenproxy.events import Finished, ReasoningDelta, ResponseStarted, TextDelta, Usage
from qwenproxy.qwen import walls
from qwenproxy.qwen.protocol import parse_stream

# spacing and trailing space as in the Oct 2025 capture
CREATED = (
    b'data: {"response.created":{"chat_id": "c", "parent_id": "u", "response_id":"r0", "response_index": "0"}} \n\n'
)
CREATED_1 = CREATED.replace(b'"r0"', b'"r1"').replace(b'"0"', b'"1"')


def delta(content: str, rid: str | None = None, phase: str = "answer", status: str = "typing", **extra) -> bytes:
    event: dict = {"choices": [{"delta": {"role": "assistant", "content": content, "phase": phase, "status": status}}]}
    if rid is not None:
        event["response_id"] = rid
        event["timestamp"] = 1761490228
    event.update(extra)
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


def finished(rid: str | None = None) -> bytes:
    return delta("", rid, status="finished")


def texts(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def collect(raw: bytes, split: int | None = None) -> tuple[list, BaseException | None]:
    chunks = [raw] if split is None else [raw[i : i + split] for i in range(0, len(raw), split)]
    seen: list = []
    try:
        for event in parse_stream(iter(chunks)):
            seen.append(event)
    except Exception as exc:  # the test inspects it
        return seen, exc
    return seen, None


# --------------------------------------------------------------------------- walls (2026 §4)

CAPTCHA_FRAME = (
    'data: {"ret":["FAIL_SYS_USER_VALIDATE::哎哟喂,被挤爆啦,请稍后重试"],'
    '"data":{"url":"https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish?x5secdata=ab&x5step=2"}}\n\n'
).encode()
HTML_LINE = (
    b'<!doctypehtml><html><head><meta charset="utf-8"><meta name="aliyun_waf_aa" content="0a1b">'
    b'<title>captcha</title></head><body><script>location.href="https://chat.qwen.ai/punish"</script></body></html>\n\n'
)


@pytest.mark.parametrize("split", [None, 1, 7])
@pytest.mark.parametrize(
    "wall",
    [
        CAPTCHA_FRAME,
        b"data: " + HTML_LINE,  # a data: line that is not JSON
        HTML_LINE,  # a bare line without data:
        b'data: {"success":false,"code":404,"message":"Not Found"}\n\n',
        b'{"ret":["RGV587_ERROR::SM::busy"]}\n\n',  # a bare JSON line
    ],
)
def test_a_wall_inside_a_200_stream_is_blocked_not_truncated(wall: bytes, split: int | None) -> None:
    for prefix in (b"", CREATED, CREATED + delta("Hello")):
        seen, exc = collect(prefix + wall, split)
        assert isinstance(exc, UpstreamBlocked), (prefix, wall, exc)
        assert exc.code == "upstream_blocked" and "truncated" not in exc.message
        assert "QWEN_TRANSPORT=browser" in exc.message
        assert not any(isinstance(e, Finished) for e in seen)


def test_answers_that_talk_about_captchas_are_no_wall() -> None:
    raw = CREATED + delta("To pass a captcha or a punish page, see x5sec and baxia docs.") + finished()
    seen, exc = collect(raw)
    assert exc is None and "captcha" in texts(seen) and seen[-1] == Finished("stop")


def test_an_error_frame_is_typed_and_a_cut_stream_is_still_truncated() -> None:
    error = b'data: {"error": {"code": "Bad_Request", "details": "internal error"}}\n\n'
    _, exc = collect(CREATED + delta("a") + error)
    assert type(exc) is UpstreamError and exc.code == "upstream_bad_request"
    _, exc = collect(CREATED + delta("a"))
    assert type(exc) is UpstreamError and exc.code == "upstream_truncated"


def test_advice_depends_on_the_transport_and_the_body_size() -> None:
    err = walls.blocked("captcha frame")
    direct = walls.advise(err, served_by="direct")
    assert "QWEN_TRANSPORT=browser" in direct.message and direct.code == "upstream_blocked"
    browser = walls.advise(err, served_by="browser", account_id="a1", body_bytes=200 * 1024)
    assert "flask accounts solve a1" in browser.message and "200 KB" in browser.message
    assert "QWEN_TRANSPORT" not in browser.message


# --------------------------------------------------------------------------- parallel answers (2026 §3)


def interleaved(zero: list[str], one: list[str]) -> bytes:
    """As captured in Rfym21 #149: both created frames, branch "1" speaks first and ends first."""
    raw = CREATED + CREATED_1
    for i in range(max(len(zero), len(one))):
        if i < len(one):
            raw += delta(one[i], "r1", usage={"input_tokens": 5, "output_tokens": i + 1})
        if i < len(zero):
            raw += delta(zero[i], "r0", usage={"input_tokens": 5, "output_tokens": 10 + i})
    return raw + finished("r1") + finished("r0")


def test_two_interleaved_answers_follow_branch_zero_only() -> None:
    seen, exc = collect(interleaved(["Zero ", "speaks"], ["One ", "talks ", "more"]))
    assert exc is None
    assert texts(seen) == "Zero speaks"
    assert [e.response_id for e in seen if isinstance(e, ResponseStarted)] == ["r0"]
    (usage,) = [e for e in seen if isinstance(e, Usage)]
    assert usage.completion_tokens == 11  # branch 0's own count, not branch 1's
    assert seen[-1] == Finished("stop")


def test_an_empty_branch_zero_answers_with_the_other() -> None:
    seen, exc = collect(interleaved([], ["One ", "talks"]))
    assert exc is None
    assert texts(seen) == "One talks"
    assert [e.response_id for e in seen if isinstance(e, ResponseStarted)] == ["r0", "r1"]
    assert seen[-1] == Finished("stop")


def test_an_empty_branch_zero_waits_for_the_other_to_finish() -> None:
    raw = CREATED + CREATED_1 + delta("One ", "r1") + finished("r0") + delta("later", "r1") + finished("r1")
    seen, exc = collect(raw)
    assert exc is None and texts(seen) == "One later" and seen[-1] == Finished("stop")


def test_both_empty_is_an_empty_answer_and_reasoning_is_never_doubled() -> None:
    seen, exc = collect(CREATED + CREATED_1 + finished("r1") + finished("r0"))
    assert exc is None and texts(seen) == "" and seen[-1] == Finished("stop")
    raw = (
        CREATED
        + CREATED_1
        + delta("thinking zero", "r0", phase="think")
        + delta("thinking one", "r1", phase="think")
        + delta("One", "r1")
        + finished("r1")
        + finished("r0")
    )
    seen, _ = collect(raw)
    assert [e.text for e in seen if isinstance(e, ReasoningDelta)] == ["thinking zero"]
    assert texts(seen) == "One"


def test_reading_stops_at_finished_even_if_the_connection_stays_open() -> None:
    raw = CREATED + delta("done") + finished()

    def chunks():
        yield raw
        raise AssertionError("read past the finished delta")

    assert texts(list(parse_stream(chunks()))) == "done"


# --------------------------------------------------------------------------- browser jobs (2026 §2)


def test_browser_jobs_leave_version_and_bx_headers_to_the_page() -> None:
    from qwenproxy.qwen.browser_transport import job_headers
    from qwenproxy.qwen.transport import browser_headers

    config = {
        "QWEN_BASE_URL": "https://chat.qwen.ai",
        "QWEN_USER_AGENT": "UA",
        "QWEN_FRONTEND_VERSION": "0.2.87",
        "QWEN_BX_V": "2.5.36",
    }
    headers = browser_headers(config, token="tok")
    assert headers["Cookie"] == "token=tok" and "Authorization" not in headers and headers["bx-v"] == "2.5.36"
    job = job_headers(headers)
    sent = {k.lower(): v for k, v in job["headers"].items()}
    assert "version" not in sent and not any(k.startswith("bx-") for k in sent) and "cookie" not in sent
    assert job["page_headers"] == {"version": "0.2.87"}  # a fallback, for a page without its own
    assert job["token"] == "tok" and "authorization" not in sent  # the pool sets the token cookie
    explicit = job_headers(browser_headers({**config, "QWEN_AUTH_HEADER": True}, token="tok"))
    assert explicit["headers"]["Authorization"] == "Bearer tok"  # asked for: it goes along
    assert sent["source"] == "web" and "x-request-id" in sent
