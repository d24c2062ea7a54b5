"""``response_format`` without an upstream: parsing the format, finding the JSON in an answer,
validating it, and the filter's repair round (wire/structured.py)."""

from __future__ import annotations

import json

import pytest

from qwenproxy.errors import BadRequest
from qwenproxy.events import Finished, ReasoningDelta, ResponseStarted, TextDelta, ToolCallDelta, Usage
from qwenproxy.wire.openai import ChatCompletionRequest
from qwenproxy.wire.structured import (
    Checked,
    InvalidStructuredOutput,
    ResponseFormat,
    StructuredFilter,
    json_candidates,
)

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def fmt(schema: dict | None = PERSON, strict: bool = True) -> ResponseFormat:
    spec: dict = {"name": "Person", "strict": strict}
    if schema is not None:
        spec["schema"] = schema
    parsed = ResponseFormat.parse({"type": "json_schema", "json_schema": spec})
    assert parsed is not None
    return parsed


def test_text_and_absent_formats_are_plain_text() -> None:
    assert ResponseFormat.parse(None) is None
    assert ResponseFormat.parse({"type": "text"}) is None
    assert ResponseFormat.parse({"type": "json_object"}) == ResponseFormat("json_object")


@pytest.mark.parametrize(
    ("value", "param", "words"),
    [
        ("json", "response_format", "must be an object"),
        ({"type": "xml"}, "response_format.type", "must be one of"),
        ({}, "response_format.type", "must be one of"),
        ({"type": "json_schema"}, "response_format.json_schema", "must be an object"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "response_format.json_schema.name", "letters"),
        ({"type": "json_schema", "json_schema": {"name": "a b"}}, "response_format.json_schema.name", "letters"),
        (
            {"type": "json_schema", "json_schema": {"name": "P", "strict": "yes"}},
            "response_format.json_schema.strict",
            "boolean",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "P", "schema": "object"}},
            "response_format.json_schema.schema",
            "JSON Schema object",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "P", "schema": {"type": "objekt"}}},
            "response_format.json_schema.schema",
            "not a valid JSON Schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "P", "schema": {"properties": {"a": {"minimum": "0"}}}}},
            "response_format.json_schema.schema",
            "not a valid JSON Schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "P", "schema": {"$ref": "#/$defs/Missing"}}},
            "response_format.json_schema.schema",
            "points nowhere",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "P", "schema": {"$ref": "https://example.com/s.json"}}},
            "response_format.json_schema.schema",
            "inside the schema",
        ),
    ],
)
def test_a_malformed_format_is_a_400_naming_the_field(value, param, words) -> None:
    with pytest.raises(BadRequest) as caught:
        ResponseFormat.parse(value)
    assert caught.value.param == param and words in caught.value.message


def test_the_request_model_checks_response_format_in_openai_shape() -> None:
    with pytest.raises(BadRequest) as caught:
        ChatCompletionRequest.parse({"response_format": {"type": "yaml"}}, [{"role": "user", "content": "hi"}])
    assert caught.value.status == 400 and caught.value.param == "response_format.type"
    ok = ChatCompletionRequest.parse({"response_format": {"type": "json_object"}}, [{"role": "user", "content": "hi"}])
    assert ok.response_format == {"type": "json_object"}


def test_the_json_is_found_inside_fences_and_prose() -> None:
    person = '{"name": "Ann", "age": 3}'
    for answer in (
        person,
        f"```json\n{person}\n```",
        f"Sure! Here it is:\n```\n{person}\n```\nAnything else?",
        f"The person is {person}.",
        f"<think>\nI think {{ maybe }}\n</think>\n\n{person}",
    ):
        checked = fmt().check(answer)
        assert checked.ok and json.loads(checked.json_text) == {"name": "Ann", "age": 3}, answer


def test_a_valid_candidate_wins_over_an_earlier_invalid_one() -> None:
    answer = 'Example: {"name": 1}. The answer: {"name": "Bo", "age": 40}'
    assert json.loads(fmt().check(answer).json_text) == {"name": "Bo", "age": 40}
    assert [raw for raw, _ in json_candidates("no json [here")] == []


def test_validation_errors_say_where() -> None:
    checked = fmt().check('{"name": "Ann", "age": -1, "extra": true}')
    assert not checked.ok and checked.json_text is not None
    assert checked.errors == (
        "Additional properties are not allowed ('extra' was unexpected)",
        "$.age: -1 is less than the minimum of 0",
    )
    assert fmt().check("I cannot do that").errors == ("the answer has no JSON value",)
    assert ResponseFormat("json_object").check("[1, 2]").errors == ("the answer must be a JSON object, not an array",)


def test_instructions_go_into_the_system_message_without_touching_the_input() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ann is 3"}]
    out = fmt().instructed(messages)
    assert messages[0]["content"] == "Be brief."  # the client's messages are not changed
    assert out[0]["content"].startswith("Be brief.\n\n# Response format")
    assert json.dumps(PERSON) in out[0]["content"] and out[1] is messages[1]
    bare = ResponseFormat("json_object").instructed([{"role": "user", "content": "x"}])
    assert bare[0]["role"] == "system" and "single JSON object" in bare[0]["content"]


def events(text: str, *, started: str = "r1", usage: int = 5) -> list:
    return [
        ResponseStarted("c", "p", started),
        ReasoningDelta("hmm"),
        *[TextDelta(text[i : i + 4]) for i in range(0, len(text), 4)],
        Usage(10, usage, 10 + usage),
        Finished("stop"),
    ]


def run(filter_: StructuredFilter) -> tuple[list, str]:
    out = list(filter_)
    return out, "".join(e.text for e in out if isinstance(e, TextDelta))


def test_a_valid_answer_goes_out_as_its_json_only_after_the_checks() -> None:
    out, text = run(StructuredFilter(events('Here: ```json\n{"name": "Ann", "age": 3}\n```'), fmt()))
    assert text == '{"name": "Ann", "age": 3}'
    kinds = [type(e).__name__ for e in out]
    assert kinds == ["ResponseStarted", "ReasoningDelta", "TextDelta", "Usage", "Finished"]


def test_an_invalid_answer_gets_one_repair_round() -> None:
    asked: list[tuple] = []

    def retry(started, answer, checked: Checked):
        asked.append((started.response_id, answer, checked.summary()))
        return events('{"name": "Ann", "age": 3}', started="r2", usage=7)

    filt = StructuredFilter(events('{"name": "Ann"}'), fmt(), retry)
    out, text = run(filt)
    assert text == '{"name": "Ann", "age": 3}' and filt.rounds == 2
    assert asked == [("r1", '{"name": "Ann"}', "'age' is a required property")]
    assert [e.response_id for e in out if isinstance(e, ResponseStarted)] == ["r1", "r2"]
    (usage,) = [e for e in out if isinstance(e, Usage)]
    assert (usage.prompt_tokens, usage.completion_tokens) == (20, 12)  # both rounds counted


def test_strict_fails_after_the_repair_round_and_lax_returns_the_best_answer() -> None:
    def retry(started, answer, checked):
        return events("Sorry, no JSON today.", started="r2")

    with pytest.raises(InvalidStructuredOutput) as caught:
        run(StructuredFilter(events('{"name": 5}'), fmt(strict=True), retry))
    assert caught.value.status == 502 and caught.value.code == "invalid_structured_output"
    assert "`Person`" in caught.value.message and "required property" in caught.value.message
    _, text = run(StructuredFilter(events('{"name": 5}'), fmt(strict=False), retry))
    assert text == '{"name": 5}'  # parsed JSON beats no JSON at all


def test_tool_calls_pass_unchecked() -> None:
    calls = [ResponseStarted(), ToolCallDelta(0, "call_1", "f", "{}"), Finished("tool_calls")]
    out, text = run(StructuredFilter(calls, fmt(), lambda *a: pytest.fail("no repair for a tool call")))
    assert text == "" and isinstance(out[1], ToolCallDelta) and out[-1] == Finished("tool_calls")


def test_an_upstream_that_fails_at_once_fails_before_anything_is_yielded() -> None:
    def broken():
        raise RuntimeError("refused")
        yield  # pragma: no cover

    with pytest.raises(RuntimeError):
        next(StructuredFilter(broken(), fmt()))
    first = next(StructuredFilter([TextDelta("{}"), Finished()], ResponseFormat("json_object")))
    assert first == ResponseStarted()  # a provider without ResponseStarted still gets one first
