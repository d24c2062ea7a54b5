"""Tool calling by prompting: the spec, the folded turn, the incremental call parser."""

from __future__ import annotations

import json

import pytest

from qwenproxy.errors import BadRequest
from qwenproxy.events import Finished, ResponseStarted, TextDelta, ToolCallDelta, Usage
from qwenproxy.wire.openai import collect
from qwenproxy.wire.tools import (
    CallParser,
    ToolCallFilter,
    ToolSpec,
    engaged,
    fold_turn,
    fold_turn_parts,
    with_tool_prompt,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SPEC = ToolSpec.parse([WEATHER])
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
PARIS = {"get_weather": '{"city": "Paris"}'}


def parse(text: str, step: int, spec: ToolSpec = SPEC) -> tuple[str, dict[str, str]]:
    parser = CallParser(spec)
    events = []
    for i in range(0, len(text), step):
        events += parser.feed(text[i : i + step])
    events += parser.finish()
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            entry = calls.setdefault(e.index, [e.name or "", ""])
            entry[1] += e.arguments
    return content, {name: args for name, args in calls.values()}


@pytest.mark.parametrize(
    ("answer", "content", "calls"),
    [
        (f"<tool_call>\n{CALL}\n</tool_call>", "", PARIS),
        (f"  \n<tool_call>{CALL}</tool_call>\n", "", PARIS),
        (f"Let me check.\n<tool_call>{CALL}</tool_call>", "Let me check.\n", PARIS),
        (f"Sure:\n```json\n{CALL}\n```", "Sure:\n", PARIS),
        (f"```\n<tool_call>\n{CALL}\n</tool_call>\n```", "", PARIS),
        (CALL, "", PARIS),
        (f"[{CALL}]", "", PARIS),
        (f"<tool_call>{CALL}", "", PARIS),  # never closed: the end of the answer closes it
        ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>', "", PARIS),
        ('<tool_call>{"function": {"name": "GET_WEATHER", "parameters": {"city": "Paris"}}}</tool_call>', "", PARIS),
        (
            f'<tool_call>{CALL}</tool_call>\n<tool_response>{{"t": 1}}</tool_response>\nIt is warm.',
            "",
            PARIS,
        ),  # an invented result is cut off
    ],
)
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_calls_are_found(answer, content, calls, step) -> None:
    assert parse(answer, step) == (content, calls)


@pytest.mark.parametrize(
    "answer",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": }</tool_call>',
        '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": "not json"}</tool_call> after',
        "Here:\n```python\nprint('<tool_call>')\n```\nbye",
        '{"city": "Paris"}',
        "[1] first, [2] second",
        "a < b, and <tool is a word; ``inline``",
        "```json\n{broken\n```",
        "",
    ],
)
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_anything_else_is_content_unchanged(answer, step) -> None:
    assert parse(answer, step) == (answer, {})


def test_several_calls_and_parallel_off() -> None:
    two = f"<tool_call>{CALL}</tool_call>\n<tool_call>{CALL.replace('Paris', 'Oslo')}</tool_call>"
    parser = CallParser(SPEC)
    events = parser.feed(two) + parser.finish()
    starts = [e for e in events if isinstance(e, ToolCallDelta) and e.id]
    assert [e.index for e in starts] == [0, 1] and len({e.id for e in starts}) == 2
    assert all(e.id.startswith("call_") for e in starts)
    assert parse(two, 5, ToolSpec.parse([WEATHER], parallel=False)) == ("", PARIS)


def test_long_arguments_stream_in_pieces() -> None:
    big = json.dumps({"name": "get_weather", "arguments": {"city": "x" * 500}})
    parser = CallParser(SPEC)
    pieces = [e for e in parser.feed(f"<tool_call>{big}</tool_call>") if isinstance(e, ToolCallDelta)]
    assert len(pieces) > 5 and "".join(p.arguments for p in pieces) == json.dumps({"city": "x" * 500})


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ("x", None, "tools"),
        ([{"type": "function"}], None, "tools[0]"),
        ([{"type": "function", "function": {"name": "bad name!"}}], None, "tools[0].function.name"),
        ([WEATHER], "sometimes", "tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "other"}}, "tool_choice"),
        (None, "required", "tool_choice"),
    ],
)
def test_bad_tool_specs(tools, choice, param) -> None:
    with pytest.raises(BadRequest) as exc:
        ToolSpec.parse(tools, choice)
    assert exc.value.param == param


def test_spec_choices_and_instructions() -> None:
    assert not ToolSpec.parse([WEATHER], "none").active
    forced = ToolSpec.parse([WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    assert forced.required and "must call the function `get_weather`" in forced.instructions()
    text = SPEC.instructions()
    assert "<tool_call>" in text and '"name": "get_weather"' in text and '"required": ["city"]' in text


def test_fold_a_new_chat_writes_out_the_tool_loop() -> None:
    messages = [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    assert engaged(messages, ToolSpec())
    content, system = fold_turn(messages, SPEC, continuing=False)
    assert system == "Be brief"
    assert content.startswith("# Tools") and "old question" not in content
    body = content[content.index("[user]") :]
    assert (
        body.index("Weather in Paris?") < body.index(CALL.replace("Paris", "Paris")[:20]) < body.index('{"temp": 21}')
    )
    assert 'Result of get_weather (call call_1):\n<tool_response>\n{"temp": 21}\n</tool_response>' in body
    # the upstream keeps the conversation: only the results go up
    content, _ = fold_turn(messages, SPEC, continuing=True)
    assert "Weather in Paris?" not in content and content.count("<tool_response>\n") == 1


def test_fold_a_user_note_beside_tool_results_stays_in_the_task() -> None:
    """Claude Code sends reminders (or the user a note) with the results: still the same task."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"},
        {"role": "user", "content": "<system-reminder>be brief</system-reminder>"},
    ]
    content, _ = fold_turn(messages, SPEC, continuing=False)
    order = ["Weather in Paris?", "Result of get_weather", "<system-reminder>"]
    assert [content.index(t) for t in order] == sorted(content.index(t) for t in order)


def test_fold_keeps_images_and_plain_first_turn() -> None:
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://i/x.png"}}]
    content, _ = fold_turn([{"role": "user", "content": parts}], SPEC, continuing=False)
    assert content[0]["type"] == "text" and content[0]["text"].endswith("\n\nWhat is this?")
    assert content[1] == parts[1]
    plain, _ = fold_turn([{"role": "user", "content": "hi"}], ToolSpec.parse([WEATHER], "none"), continuing=False)
    assert plain == "hi"


def test_fold_parts_keep_the_tool_prompt_apart_and_join_as_fold_turn() -> None:
    """The prompt is the same on every turn of a loop (it may go up once as a document)."""
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://i/x.png"}}]
    for content in ("Weather?", parts):
        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": content}]
        prompt, turn, system = fold_turn_parts(messages, SPEC, continuing=False)
        assert prompt == SPEC.instructions() and system == "s"
        assert "# Tools" not in json.dumps(turn)
        assert (with_tool_prompt(turn, prompt), system) == fold_turn(messages, SPEC, continuing=False)
    assert with_tool_prompt("hi", "") == "hi"


def _answer(text: str, rid: str) -> list:
    return [ResponseStarted("c", "p", rid), TextDelta(text), Usage(1, 2, 3), Finished("stop")]


def test_filter_finishes_with_tool_calls() -> None:
    events = list(ToolCallFilter(iter(_answer(f"<tool_call>{CALL}</tool_call>", "r1")), SPEC))
    assert isinstance(events[-1], Finished) and events[-1].reason == "tool_calls"
    collected = collect(events)
    assert collected.message()["content"] is None and collected.usage.total_tokens == 3


def test_required_retries_once_in_the_same_conversation() -> None:
    asked: list = []

    def retry(started):
        asked.append(started.response_id)
        return iter(_answer(f"<tool_call>{CALL}</tool_call>", "r2"))

    spec = ToolSpec.parse([WEATHER], "required")
    events = list(ToolCallFilter(iter(_answer("I would rather chat.", "r1")), spec, retry=retry))
    assert asked == ["r1"]
    collected = collect(events)
    assert collected.text == "" and collected.finish_reason == "tool_calls"
    assert collected.started.response_id == "r2"
    # a second refusal is returned as it is
    events = list(ToolCallFilter(iter(_answer("No.", "r1")), spec, retry=lambda s: iter(_answer("Still no.", "r2"))))
    assert collect(events).text == "Still no." and collect(events).finish_reason == "stop"
