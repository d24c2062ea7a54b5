"""Today's clients against today's chat.qwen.ai, end to end.

The fake runs as the full 2026 site: the live model list, the strict 2.1 body check
(``require_2026_body``), only the ``token`` cookie authenticates (``require_token_cookie``),
summary thinking, ids on every delta, and qwen3.8-max refuses thinking off. Every client goes
through its official SDK over a real socket: ``openai`` (chat completions, structured output,
legacy completions, Responses, images, videos) and ``anthropic`` (Messages with a tool round
trip, as Claude Code sends it). After each test the fake must have refused no body and met no
crash: any upstream call a 2026 front end would not make fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from qwenproxy import create_app
from qwenproxy.qwen.transport import json_bytes
from tests.conftest import app_config
from tests.fakes import sent_token
from tests.fakes.qwen_site2026 import THINKING_LOCKED_DETAILS
from tests.fakes.qwen_web import MODELS_2026, FakeQwen
from tests.helpers import ANTHROPIC_WEATHER as WEATHER
from tests.helpers import PARIS_CALL, completions, weather_script
from tests.http.test_uploads import PNG, USER_ID

# the Sora-era videos API is marked deprecated in SDK 3.54; the calls still work
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DEFAULT = MODELS_2026[0]  # qwen3.7-plus: the first model of the live list
LOCKED = "qwen3.8-max"  # thinking cannot be turned off (2026 §1)


@pytest.fixture
def site(fake_qwen: FakeQwen, fake_oss) -> Iterator[FakeQwen]:
    fake_qwen.use_2026_site()
    fake_qwen.require_token_cookie = True
    fake_qwen.image_base_url = fake_qwen.url  # generated media are served by the fake itself
    fake_qwen.check_documents = True
    yield fake_qwen
    # nothing the gateway sent was refused as a body the 2026 front end would not send
    assert fake_qwen.body_errors == [], fake_qwen.body_errors
    assert fake_qwen.errors == [], fake_qwen.errors[-1:]
    assert fake_qwen.walls == [], fake_qwen.walls


@pytest.fixture
def app(tmp_path: Path, site: FakeQwen):
    config = app_config(
        tmp_path,
        site,
        QWEN_TOKEN=site.make_token(user_id=USER_ID),
        QWEN_OSS_BASE_URL=site.oss.url,
        QWEN_PARSE_POLL_INTERVAL=0.01,
        VIDEO_POLL_INTERVAL=0.0,
    )
    application = create_app(config)
    yield application
    application.extensions["providers"].close()


def assert_cookie_auth(fake: FakeQwen) -> None:
    """Every call to the site authenticated the 2026 way: the token cookie."""
    calls = [r for r in fake.requests if r["path"].startswith("/api/")]
    assert calls
    for call in calls:
        assert "token=" in (call["headers"].get("cookie") or ""), call["path"]
        assert sent_token(call["headers"])


def streamed_chat(oai: openai.OpenAI, messages: list[dict], **kwargs) -> tuple[str, str, str | None]:
    """(content, reasoning, finish_reason) of a streamed chat completion."""
    content = reasoning = ""
    finish = None
    for chunk in oai.chat.completions.create(
        model=kwargs.pop("model", DEFAULT), messages=messages, stream=True, **kwargs
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, reasoning, finish


# --------------------------------------------------------------------------- chat completions


def test_a_stateless_three_turn_conversation_streams_and_stays_in_one_chat(oai, site) -> None:
    site.answer = lambda text: f"Noted: {text}"
    history: list[dict] = [{"role": "system", "content": "Answer briefly."}]
    answers = []
    for question in ("My name is Ann.", "I live in Oslo.", "What do you know about me?"):
        history.append({"role": "user", "content": question})
        content, _reasoning, finish = streamed_chat(oai, history)
        assert content == f"Noted: {question}" and finish == "stop"
        history.append({"role": "assistant", "content": content})
        answers.append(content)
    calls = completions(site)
    assert len(calls) == 3 and len({c["chat_id"] for c in calls}) == 1  # the site's own history
    assert calls[0]["parent_id"] is None and calls[1]["parent_id"] and calls[2]["parent_id"] != calls[1]["parent_id"]
    assert [c["messages"][0]["content"] for c in calls] == [
        "My name is Ann.",
        "I live in Oslo.",
        "What do you know about me?",
    ]
    assert all(c["model"] == DEFAULT for c in calls)
    assert_cookie_auth(site)


def test_structured_output_through_parse(oai, site) -> None:
    class City(BaseModel):
        name: str
        population: int

    site.answer = lambda text: '{"name": "Oslo", "population": 709000}'
    r = oai.chat.completions.parse(
        model=DEFAULT, messages=[{"role": "user", "content": "The capital of Norway?"}], response_format=City
    )
    assert r.choices[0].message.parsed == City(name="Oslo", population=709000)
    assert "population" in json.dumps(completions(site)[-1])  # the schema reached the model


def test_legacy_completions(oai, site) -> None:
    site.answer = lambda text: "a completion"
    r = oai.completions.create(model=DEFAULT, prompt="Once upon a time", max_tokens=20)
    assert r.object == "text_completion" and r.choices[0].text == "a completion"
    text = "".join(c.choices[0].text for c in oai.completions.create(model=DEFAULT, prompt="Twice", stream=True))
    assert text == "a completion"


def test_a_locked_thinking_model_answers_and_hides_its_reasoning(oai, site) -> None:
    content, reasoning, finish = streamed_chat(oai, [{"role": "user", "content": "hi"}], model=LOCKED)
    assert content == "Echo: hi" and reasoning == "" and finish == "stop"
    assert completions(site)[-1]["messages"][0]["feature_config"]["thinking_enabled"] is True


# --------------------------------------------------------------------------- agents


weather = weather_script("Let me check.\n" + PARIS_CALL)  # call the tool, then answer from its result


def test_anthropic_messages_with_a_tool_round_trip_streamed(claude, site) -> None:
    site.answer = weather
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    model = "claude-sonnet-4-5"
    with claude.messages.stream(model=model, max_tokens=512, tools=[WEATHER], messages=messages) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": '{"temp": 21}'}]},
    ]
    with claude.messages.stream(model=model, max_tokens=512, tools=[WEATHER], messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "It is 21 degrees in Paris." and final.stop_reason == "end_turn"
    assert {c["model"] for c in completions(site)} <= set(MODELS_2026)


def test_responses_continue_with_previous_response_id(oai, site) -> None:
    site.answer = lambda text: f"Heard: {text}"
    first = oai.responses.create(model=DEFAULT, input="The code word is tulip.")
    assert first.output_text == "Heard: The code word is tulip."
    second = oai.responses.create(model=DEFAULT, input="And now?", previous_response_id=first.id)
    assert second.output_text == "Heard: And now?" and second.previous_response_id == first.id
    one, two = completions(site)[-2:]
    assert two["chat_id"] == one["chat_id"] and two["parent_id"]  # continued in the site's chat


# --------------------------------------------------------------------------- media


@pytest.mark.parametrize("model", [DEFAULT, LOCKED])
def test_image_generation_as_b64_json(oai, site, model) -> None:
    r = oai.images.generate(model=model, prompt="a red fox", response_format="b64_json", size="1024x1024")
    assert r.data and r.data[0].b64_json
    body = completions(site)[-1]
    assert body["messages"][0]["chat_type"] == "t2i"


@pytest.mark.parametrize("model", [DEFAULT, LOCKED])
def test_image_edit(oai, site, model) -> None:
    r = oai.images.edit(model=model, image=("cat.png", PNG, "image/png"), prompt="make it blue")
    assert r.data and r.data[0].url and r.data[0].url.startswith(site.url + "/output/")
    message = completions(site)[-1]["messages"][0]
    assert message["chat_type"] == "image_edit" and message["files"][0]["type"] == "image"


@pytest.mark.parametrize("model", [DEFAULT, LOCKED])
def test_video_create_and_retrieve(oai, site, model) -> None:
    video = oai.videos.create(model=model, prompt="a cat surfing")
    assert video.status in ("queued", "in_progress")
    for _ in range(10):
        video = oai.videos.retrieve(video.id)
        if video.status in ("completed", "failed"):
            break
    assert video.status == "completed", video
    task_start = next(c for c in completions(site) if c["messages"][0]["chat_type"] == "t2v")
    assert task_start["stream"] is False


@pytest.mark.parametrize("suffix", ["-deep-research", "-image", "-video", "-search"])
def test_media_modes_of_a_locked_thinking_model(oai, site, suffix) -> None:
    r = oai.chat.completions.create(model=LOCKED + suffix, messages=[{"role": "user", "content": "tides"}])
    assert r.choices[0].message.content, r
    body = completions(site)[-1]
    assert body["model"] == LOCKED and body["messages"][0]["feature_config"]["thinking_enabled"] is True
    assert THINKING_LOCKED_DETAILS not in json.dumps(r.model_dump())
    content, _reasoning, finish = streamed_chat(oai, [{"role": "user", "content": "tides"}], model=LOCKED + suffix)
    assert finish == "stop"
    if suffix in ("-image", "-video"):  # a new picture or video each time: the same kind of answer
        assert content.split("/output/")[0] == r.choices[0].message.content.split("/output/")[0]
    else:
        assert content == r.choices[0].message.content


# --------------------------------------------------------------------------- large prompts


def test_a_300_kb_prompt_goes_up_as_a_document(oai, site) -> None:
    words = " ".join(f"word{i}" for i in range(40000))  # ~300 KB
    assert len(words.encode()) > 300_000
    content, _reasoning, finish = streamed_chat(oai, [{"role": "user", "content": words + "\n\nSummarise."}])
    assert finish == "stop" and content
    body = completions(site)[-1]
    assert len(json_bytes(body)) < 128 * 1024
    assert site.documents and "word39999" in (site.documents[-1]["text"] or "")


# --------------------------------------------------------------------------- coding agents at scale


def claude_code_tools(n: int = 40, size: int = 3500) -> list[dict]:
    """Tool definitions as large as a coding agent's (Claude Code sends ~40 with long texts)."""
    return [
        {
            "name": f"tool_{i}",
            "description": f"Tool number {i}. " + ("It does a careful thing with files. " * (size // 40)),
            "input_schema": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "A path."}},
                "required": ["path"],
            },
        }
        for i in range(n)
    ] + [WEATHER]


def test_a_claude_code_session_over_the_body_limit_with_thinking(claude, site) -> None:
    """Claude Code's shape: system blocks with cache_control, ~140 KB of tools, thinking on,
    a tool loop with a <system-reminder> beside the result, every call streamed."""
    site.answer = weather
    tools = claude_code_tools()
    system = [{"type": "text", "text": "You are Claude Code. " * 200, "cache_control": {"type": "ephemeral"}}]
    messages: list = [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}]
    kwargs = dict(
        model="claude-sonnet-4-5",
        max_tokens=4096,
        system=system,
        tools=tools,
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    with claude.messages.stream(messages=messages, **kwargs) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use", first
    assert first.content[0].type == "thinking" and first.content[0].thinking  # the forced reasoning, asked for
    call = next(b for b in first.content if b.type == "tool_use")
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": '{"temp": 19}'},
                {"type": "text", "text": "<system-reminder>Keep it short.</system-reminder>"},
            ],
        },
    ]
    with claude.messages.stream(messages=messages, **kwargs) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.content[-1].text == "It is 19 degrees in Paris."
    calls = completions(site)
    assert all(len(json_bytes(c)) < 128 * 1024 for c in calls)
    assert calls[-1]["model"] == LOCKED  # sonnet → auto:max on today's list
    assert len({c["chat_id"] for c in calls}) == 1  # the loop stays in one upstream chat
    # the tool prompt went up once as a document, attached again; each new turn stayed inline
    files = [[f["name"] for f in c["messages"][0]["files"]] for c in calls]
    tool_docs = {n for names in files for n in names if n.startswith("tools-")}
    assert len(tool_docs) == 1 and all(tool_docs <= set(names) for names in files), files
    assert not [n for names in files for n in names if n.startswith("message-")], files
    assert sum(1 for r in site.requests if r["path"].endswith("getstsToken")) == 1 + 1  # tools + instructions
    assert "Weather in Paris?" in calls[0]["messages"][0]["content"]
    assert '{"temp": 19}' in calls[1]["messages"][0]["content"]


def test_codex_style_responses_stream_with_tools_and_no_store(oai, site) -> None:
    site.answer = weather
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["input_schema"]}
    items: list = [{"role": "user", "content": "Weather in Paris?"}]
    with oai.responses.stream(model=LOCKED, input=items, tools=[tool], store=False) as stream:
        first = stream.get_final_response()
    call = next(o for o in first.output if o.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}
    items += [
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 23}'},
    ]
    with oai.responses.stream(model=LOCKED, input=items, tools=[tool], store=False) as stream:
        second = stream.get_final_response()
    assert second.output_text == "It is 23 degrees in Paris."
    assert not [o for o in second.output if o.type == "reasoning"]  # not asked for


def test_langchain_style_tool_call_with_usage_chunk(oai, site) -> None:
    """What ChatOpenAI sends: stream_options.include_usage, tools, temperature, n=1."""
    site.answer = weather
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
    chunks = list(
        oai.chat.completions.create(
            model=LOCKED,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[tool],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0.7,
            n=1,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert any(c.choices and c.choices[0].finish_reason == "tool_calls" for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


# --------------------------------------------------------------------------- more of what clients do


def test_the_model_lists_are_todays(oai, claude, site) -> None:
    ids = [m.id for m in oai.models.list()]
    assert ids[: len(MODELS_2026)] == MODELS_2026
    claude_ids = [m.id for m in claude.models.list()]
    assert claude_ids[:3] == ["claude-opus", "claude-sonnet", "claude-haiku"]


def test_an_image_in_the_question_goes_up_as_a_file(oai, site) -> None:
    url = "data:image/png;base64," + __import__("base64").b64encode(PNG).decode()
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    r = oai.chat.completions.create(model=DEFAULT, messages=[{"role": "user", "content": parts}])
    assert r.choices[0].message.content
    body = completions(site)[-1]
    assert body["model"] in MODELS_2026
    assert any(f.get("type") == "image" for f in body["messages"][0]["files"])


def test_thinking_on_request_shows_the_summary(oai, site) -> None:
    content, reasoning, _ = streamed_chat(oai, [{"role": "user", "content": "why?"}], model=DEFAULT + "-thinking")
    assert content == "Echo: why?" and reasoning
    for model in (LOCKED, DEFAULT):
        r = oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "why?"}], reasoning_effort="high"
        )
        assert (r.choices[0].message.model_extra or {}).get("reasoning_content")


def test_responses_reasoning_summary_on_the_locked_model(oai, site) -> None:
    r = oai.responses.create(model=LOCKED, input="why?", reasoning={"effort": "high", "summary": "auto"})
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "message"] and r.output[0].summary and r.output_text == "Echo: why?"


def test_anthropic_count_tokens_and_a_plain_message(claude, site) -> None:
    count = claude.messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hello"}], tools=[WEATHER]
    )
    assert count.input_tokens > 0
    message = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.content[0].text == "Echo: hello" and [b.type for b in message.content] == ["text"]
