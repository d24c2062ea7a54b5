"""Stateless histories: fingerprints, the folded transcript, where the new turn starts, and the
context fitter's plan (no upload needed for what is tested here)."""

from __future__ import annotations

import json

import pytest

from qwenproxy.errors import ContextTooLong
from qwenproxy.serving.history import answer_message, fingerprints, normalise
from qwenproxy.uploads.context import CHAT_ID_PLACEHOLDER, Context, ContextFitter, json_size
from qwenproxy.wire import transcript

CALL = {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def test_an_answer_sent_back_by_a_client_matches_what_was_stored() -> None:
    stored = [{"role": "user", "content": "Hi"}, answer_message("Hello  there!\n", [CALL])]
    resent = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {
            "role": "assistant",
            "content": "<think>\nhmm\n</think>\n\nHello there!",  # REASONING_IN_CONTENT
            "refusal": None,
            "tool_calls": [
                {  # another id, the arguments re-serialised with spaces
                    "id": "call_other",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{ "city": "Paris" }'},
                }
            ],
        },
    ]
    assert fingerprints(stored) == fingerprints(resent)


@pytest.mark.parametrize(
    "changed",
    [
        {"role": "user", "content": "Hi!"},  # an edited turn
        {"role": "system", "content": "Hi"},  # another role
        {"role": "developer", "content": "x"},
    ],
)
def test_a_different_turn_changes_every_later_fingerprint(changed) -> None:
    base = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    other = [changed, base[1]]
    assert fingerprints(base)[0] != fingerprints(other)[0]
    assert fingerprints(base)[1] != fingerprints(other)[1]


def test_tool_arguments_and_names_take_part() -> None:
    a = answer_message("", [CALL])
    b = answer_message("", [{**CALL, "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}])
    assert normalise(a) != normalise(b)
    assert normalise({"role": "developer", "content": "x"})[0] == "system"
    assert normalise({"role": "assistant", "content": None}) == ["assistant", "", []]


HISTORY = [
    {"role": "system", "content": "Be brief"},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "And this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    },
]


def test_turn_start_without_and_with_tools() -> None:
    assert transcript.turn_start(HISTORY, tools_engaged=False) == 5
    assert transcript.turn_start(HISTORY, tools_engaged=True) == 5
    loop = HISTORY[:4]  # the new turn is the tool result after the call
    assert transcript.turn_start(loop, tools_engaged=True) == 3
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert transcript.turn_start(two_users, tools_engaged=False) == 1


def test_the_transcript_marks_roles_calls_and_results() -> None:
    text = transcript.folded(HISTORY, 0, 5)
    assert text.startswith(transcript.HISTORY_OPEN) and text.endswith(transcript.HISTORY_CLOSE)
    assert "Be brief" not in text  # the system message goes as the system message
    assert "### user\nWeather in Paris?" in text
    assert '### assistant\nLet me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert '### tool result of get_weather (call call_abc)\n<tool_response>\n{"temp": 21}\n</tool_response>' in text
    assert text.index("Weather in Paris?") < text.index("Let me look.") < text.index("It is 21 degrees.")
    # a later slice learns the tool's name from the messages before it
    assert "### tool result of get_weather" in transcript.folded(HISTORY, 3, 5)
    assert transcript.folded(HISTORY, 5, 5) == ""


def test_media_in_history_is_a_marker_never_a_data_uri() -> None:
    text = transcript.folded([*HISTORY, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "q"}], 5, 7)
    assert "[image: sha256:" in text and "base64" not in text


def test_with_history_keeps_media_parts() -> None:
    parts = [{"type": "text", "text": "new"}, {"type": "image", "image": "https://x/cat.png"}]
    out = transcript.with_history("<conversation_history>\n### user\nold\n</conversation_history>", parts)
    assert out[1] == parts[1] and out[0]["text"].endswith(transcript.LATEST_HEAD + "\n\nnew")
    assert "### user\nold" in out[0]["text"]
    assert transcript.with_history("", "new") == "new"


def _measure(context: Context) -> dict:
    return {
        "chat_id": CHAT_ID_PLACEHOLDER,
        "system_message": context.system,
        "messages": [{"content": context.content(), "files": context.documents}],
    }


def test_a_context_that_fits_is_sent_unchanged() -> None:
    fitter = ContextFitter(None, 120000)
    context = Context("Be brief", "", "hi")
    assert fitter.fit(context, _measure, account=None) is context  # type: ignore[arg-type]


def test_too_long_without_uploads_is_context_length_exceeded() -> None:
    fitter = ContextFitter(None, 120000)
    context = Context(None, "", "x" * 200_000)
    with pytest.raises(ContextTooLong) as info:
        fitter.fit(context, _measure, account=None)  # type: ignore[arg-type]
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    assert "120000" in info.value.message


def test_too_long_even_with_documents_names_the_limit() -> None:
    fitter = ContextFitter(None, 1500)  # the descriptors alone do not fit in this
    with pytest.raises(ContextTooLong) as info:
        fitter.fit(Context("s" * 5000, "h" * 5000, "t" * 5000), _measure, account=None)  # type: ignore[arg-type]
    assert "over the limit of 1500 bytes" in info.value.message


def test_json_size_counts_utf8_bytes() -> None:
    body = {"content": "привет"}
    assert json_size(body) == len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
    assert json_size(body) == len('{"content":""}') + 12


def test_a_context_puts_the_tool_prompt_before_the_turn_and_after_the_history() -> None:
    plain = Context(None, "old turns", "new", tools="# Tools")
    text = plain.content()
    assert text.index("old turns") < text.index("# Tools\n\nnew")
    assert Context(None, "", "new", tools="# Tools").content() == "# Tools\n\nnew"
    assert Context(None, "", "new").content() == "new"
