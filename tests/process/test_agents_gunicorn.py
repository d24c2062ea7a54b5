"""The agent APIs under gunicorn's gevent workers: a streamed Claude Code-style tool loop, and
a Responses conversation continued through a second server on the same database."""

from __future__ import annotations

import anthropic
import openai

from tests.conftest import ROOT, Gunicorn


def _env(tmp_path, fake_qwen) -> dict[str, str]:
    return {
        "SESSION_DIR": str(tmp_path / "session"),
        "QWEN_BASE_URL": fake_qwen.url,
        "QWEN_TOKEN": fake_qwen.make_token(),
        "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
    }


def test_messages_stream_and_responses_continue_on_another_server(tmp_path, fake_qwen) -> None:
    fake_qwen.answer = lambda text: (
        "Done: 42."
        if "</tool_response>" in text
        else '<tool_call>{"name": "Bash", "arguments": {"command": "echo 42"}}</tool_call>'
    )
    first = Gunicorn(_env(tmp_path, fake_qwen), workers=2)
    second = None
    try:
        claude = anthropic.Anthropic(base_url=first.url, auth_token="any", max_retries=0, timeout=30)
        tool = {"name": "Bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}
        messages: list = [{"role": "user", "content": "Run it"}]
        with claude.messages.stream(model="claude-sonnet-5-5", max_tokens=1000, tools=[tool], messages=messages) as s:
            call = s.get_final_message().content[-1]
        assert call.type == "tool_use" and call.input == {"command": "echo 42"}
        messages += [
            {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "42"}]},
        ]
        with claude.messages.stream(model="claude-sonnet-5-5", max_tokens=1000, tools=[tool], messages=messages) as s:
            assert "".join(s.text_stream) == "Done: 42."

        fake_qwen.answer = lambda text: "Noted, Bob." if "Bob" in text else "Your name is Bob."
        on_first = openai.OpenAI(base_url=first.url + "/v1", api_key="x", max_retries=0, timeout=30)
        started = on_first.responses.create(model="qwen3-max", input="My name is Bob")
        second = Gunicorn(_env(tmp_path, fake_qwen), workers=1)  # the same database, another server
        on_second = openai.OpenAI(base_url=second.url + "/v1", api_key="x", max_retries=0, timeout=30)
        events = list(
            on_second.responses.create(
                model="qwen3-max", input="What is my name?", previous_response_id=started.id, stream=True
            )
        )
        assert events[-1].type == "response.completed" and events[-1].response.output_text == "Your name is Bob."
        sent = [r["json"] for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]
        assert sent[-1]["chat_id"] == sent[-2]["chat_id"] and sent[-1]["parent_id"]
        assert on_first.responses.retrieve(events[-1].response.id).previous_response_id == started.id
    finally:
        first.stop()
        if second is not None:
            second.stop()
