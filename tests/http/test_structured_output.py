"""``response_format`` end to end against the fakes, with the openai SDK: the model is told the
schema, its answer is cleaned and validated, an invalid one is repaired once, strict fails
(README "Structured output")."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
import requests
from pydantic import BaseModel, Field

from qwenproxy import create_app
from tests.conftest import LiveServer, app_config
from tests.fakes.gigachat import FakeGigaChat, count_tokens
from tests.helpers import completions

REPAIR = "Your previous answer cannot be used."


class Person(BaseModel):
    name: str
    age: int = Field(ge=0)


def user_text(body: dict) -> str:
    return body["messages"][0]["content"]


@pytest.fixture
def sdk(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="none", max_retries=0)


def scripted(first: str, repaired: str | None = None):
    """The model: ``first`` to the question, ``repaired`` to the repair prompt."""

    def answer(text: str) -> str:
        return repaired if repaired is not None and text.startswith(REPAIR) else first

    return answer


def test_parse_with_a_pydantic_model_gets_the_json_out_of_a_fenced_answer(sdk, fake_qwen) -> None:
    fake_qwen.answer = scripted('Sure! Here it is:\n```json\n{"name": "Ann", "age": 31}\n```\nAnything else?')
    done = sdk.chat.completions.parse(
        model="qwen3-max",
        messages=[{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Ann is 31."}],
        response_format=Person,
    )
    message = done.choices[0].message
    assert message.parsed == Person(name="Ann", age=31)
    assert message.content == '{"name": "Ann", "age": 31}'  # the JSON alone, as the model wrote it
    (sent,) = completions(fake_qwen)  # valid at once: one upstream turn
    system = sent["system_message"]
    assert system.startswith("Be exact.\n\n# Response format") and "`Person`" in system
    schema = openai.lib._pydantic.to_strict_json_schema(Person)
    assert json.dumps(schema, ensure_ascii=False) in system  # the schema the SDK sent, word for word
    assert user_text(sent) == "Ann is 31."  # the user's text is left as it was


def test_an_invalid_answer_gets_one_repair_round_in_the_same_upstream_chat(sdk, fake_qwen) -> None:
    fake_qwen.answer = scripted('{"name": "Ann", "age": -4}', '{"name": "Ann", "age": 4}')
    done = sdk.chat.completions.parse(
        model="qwen3-max", messages=[{"role": "user", "content": "Ann is four."}], response_format=Person
    )
    assert done.choices[0].message.parsed == Person(name="Ann", age=4)
    first, repair = completions(fake_qwen)
    assert repair["chat_id"] == first["chat_id"] and repair["parent_id"] is not None
    assert user_text(repair).startswith(REPAIR) and "$.age: -4 is less than the minimum of 0" in user_text(repair)
    assert "# Response format" in repair["system_message"]
    assert done.id == fake_qwen.completed[-1]  # the answer is the repaired one
    # the client's next turn continues after the repaired answer (stateless history)
    fake_qwen.answer = None
    follow = sdk.chat.completions.create(
        model="qwen3-max",
        messages=[
            {"role": "user", "content": "Ann is four."},
            {"role": "assistant", "content": done.choices[0].message.content},
            {"role": "user", "content": "thanks"},
        ],
    )
    assert follow.choices[0].message.content == "Echo: thanks"
    third = completions(fake_qwen)[2]
    assert third["chat_id"] == first["chat_id"] and third["parent_id"] == done.id and user_text(third) == "thanks"


def test_strict_answers_invalid_twice_are_an_openai_error(sdk, fake_qwen) -> None:
    fake_qwen.answer = scripted("I'd rather not.", '{"name": "Ann"}')
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.parse(
            model="qwen3-max", messages=[{"role": "user", "content": "x"}], response_format=Person
        )
    error = caught.value.body
    assert caught.value.status_code == 502 and error["code"] == "invalid_structured_output"
    assert "does not match response_format json_schema `Person`" in error["message"]
    assert "'age' is a required property" in error["message"]
    assert len(completions(fake_qwen)) == 2


def test_without_strict_the_best_answer_is_returned(sdk, fake_qwen) -> None:
    fake_qwen.answer = scripted("I'd rather not.", 'Here: {"name": "Ann"}')
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    schema["required"] = ["name", "age"]
    done = sdk.chat.completions.create(
        model="qwen3-max",
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "P", "schema": schema, "strict": False}},
    )
    assert done.choices[0].message.content == '{"name": "Ann"}'


def test_json_object_mode(sdk, fake_qwen) -> None:
    fake_qwen.answer = scripted('Of course. {"colors": ["red", "green"]} Hope that helps!')
    done = sdk.chat.completions.create(
        model="qwen3-max",
        messages=[{"role": "user", "content": "Two colors as JSON"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(done.choices[0].message.content) == {"colors": ["red", "green"]}
    (sent,) = completions(fake_qwen)
    assert sent["system_message"].startswith("# Response format") and "single JSON object" in sent["system_message"]


def test_langchain_with_structured_output_default_method(sdk, fake_qwen) -> None:
    """What langchain-openai 1.x's ``ChatOpenAI.with_structured_output(schema)`` sends by default
    (method ``json_schema``): a Pydantic class goes through ``chat.completions.parse`` (as above);
    a JSON Schema dict becomes this response_format, non-strict, and its content is parsed with
    ``json.loads``. Not installed here: it pins websockets above what pyppeteer allows."""
    fake_qwen.answer = scripted('```\n{"setup": "Why?", "punchline": "Because."}\n```')
    joke = {
        "title": "Joke",
        "description": "Joke to tell user.",
        "type": "object",
        "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
        "required": ["setup", "punchline"],
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {
            "name": "Joke",
            "description": "Joke to tell user.",
            "schema": {k: v for k, v in joke.items() if k not in ("title", "description")},
            "strict": False,
        },
    }
    raw = sdk.chat.completions.with_raw_response.parse(
        model="qwen3-max",
        messages=[{"role": "user", "content": "Tell me a joke"}],
        response_format=response_format,
    )
    done = raw.parse()
    assert json.loads(done.choices[0].message.content) == {"setup": "Why?", "punchline": "Because."}
    assert "`Joke` (Joke to tell user.)" in completions(fake_qwen)[0]["system_message"]


def test_streamed_structured_output_is_sent_once_checked(tmp_path, fake_qwen) -> None:
    """The content waits for the checks (pings meanwhile), then comes as the clean JSON; the
    SDK's ``chat.completions.stream`` parses it."""
    app = create_app(app_config(tmp_path, fake_qwen, PING_INTERVAL=0.05))
    server = LiveServer(app)
    try:
        fake_qwen.chunk_delay = 0.03
        fake_qwen.answer = scripted('{"name": "Ann", "age": -1}', '```json\n{"name": "Ann", "age": 1}\n```')
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        with sdk.chat.completions.stream(
            model="qwen3-max", messages=[{"role": "user", "content": "Ann is one."}], response_format=Person
        ) as stream:
            final = stream.get_final_completion()
        assert final.choices[0].message.parsed == Person(name="Ann", age=1)

        body = {
            "model": "qwen3-max",
            "stream": True,
            "messages": [{"role": "user", "content": "Ann is one."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "Person", "schema": Person.model_json_schema(), "strict": True},
            },
        }
        with requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=30) as r:
            lines = [line for line in r.iter_lines(decode_unicode=True) if line]
        contents = [
            json.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines if line.startswith("data: {")
        ]
        texts = [c for c in contents if c]
        assert texts == ['{"name": "Ann", "age": 1}']  # one piece, after the checks
        first_text = next(i for i, line in enumerate(lines) if '"content":"{' in line)
        assert ": ping" in lines[:first_text]  # the client heard from us while the answer was checked
        assert lines[-1] == "data: [DONE]"
    finally:
        server.stop()
        app.extensions["providers"].close()


def test_a_streamed_strict_failure_is_an_in_band_error(sdk, fake_qwen) -> None:
    fake_qwen.answer = scripted("no", "still no")
    with (
        pytest.raises(openai.APIError) as caught,
        sdk.chat.completions.stream(
            model="qwen3-max", messages=[{"role": "user", "content": "x"}], response_format=Person
        ) as stream,
    ):
        for _ in stream:
            pass
    assert "does not match response_format" in str(caught.value.message)


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "yaml"}, "response_format.type"),
        ("json_object", "response_format"),
        (
            {"type": "json_schema", "json_schema": {"name": "P", "schema": {"type": "objekt"}}},
            "response_format.json_schema.schema",
        ),
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": [1, 2]}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "response_format.json_schema.name"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_malformed_response_format_is_a_400(client, fake_qwen, response_format, param, path) -> None:
    r = client.post(
        path, json={"messages": [{"role": "user", "content": "x"}], "response_format": response_format, "stream": True}
    )
    assert r.status_code == 400 and r.mimetype == "application/json"
    error = r.get_json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert completions(fake_qwen) == []  # nothing went upstream


@pytest.fixture
def giga() -> Iterator[FakeGigaChat]:
    with FakeGigaChat() as fake:
        yield fake


def test_a_stateless_provider_repairs_with_the_whole_conversation(tmp_path, fake_qwen, giga) -> None:
    """GigaChat keeps no conversation: the repair round re-sends it with the invalid answer."""

    def reply(messages: list[dict], model: str) -> str:
        return '{"name": "Bo", "age": 7}' if messages[-1]["content"].startswith(REPAIR) else "Bo, 7 years"

    giga.reply = reply
    app = create_app(
        app_config(
            tmp_path,
            fake_qwen,
            **giga.settings(),
        )
    )
    try:
        r = app.test_client().post(
            "/v1/chat/completions",
            json={
                "model": "GigaChat",
                "messages": [{"role": "user", "content": "Bo is 7"}],
                "response_format": {"type": "json_object"},
            },
        )
        assert r.status_code == 200, r.get_json()
        assert json.loads(r.get_json()["choices"][0]["message"]["content"]) == {"name": "Bo", "age": 7}
        first, repair = giga.chat_requests
        assert [m["role"] for m in first["messages"]] == ["system", "user"]
        assert [m["role"] for m in repair["messages"]] == ["system", "user", "assistant", "user"]
        assert repair["messages"][2]["content"] == "Bo, 7 years"
        assert "did not contain a JSON value" in repair["messages"][3]["content"]
        prompts = [sum(count_tokens(m["content"]) + 3 for m in sent["messages"]) for sent in (first, repair)]
        assert r.get_json()["usage"]["prompt_tokens"] == sum(prompts)  # both rounds counted
    finally:
        app.extensions["providers"].close()


def test_responses_api_text_format_takes_the_same_path(sdk, fake_qwen) -> None:
    """The Responses API's ``text.format`` reaches ``serving/structured.py`` as the same dict."""
    fake_qwen.answer = scripted('```json\n{"name": "Ann", "age": 5}\n```')
    parsed = sdk.responses.parse(model="qwen3-max", input="Ann is five.", text_format=Person)
    assert parsed.output_parsed == Person(name="Ann", age=5)
    assert parsed.output_text == '{"name": "Ann", "age": 5}'
    assert "`Person`" in completions(fake_qwen)[0]["system_message"]


def test_reasoning_never_mixes_into_the_json(app, sdk, fake_qwen) -> None:
    app.config["REASONING_IN_CONTENT"] = True  # would put <think>…</think> in front of the content
    fake_qwen.answer = scripted('{"name": "Ann", "age": 2}')
    done = sdk.chat.completions.parse(
        model="qwen3-max-thinking", messages=[{"role": "user", "content": "Ann is two."}], response_format=Person
    )
    message = done.choices[0].message
    assert message.parsed == Person(name="Ann", age=2) and message.content == '{"name": "Ann", "age": 2}'
    assert "I will answer it." in message.model_extra["reasoning_content"]
