"""The typed requests of wire/: checks in field order, OpenAI errors with the same message
and param as the routes always gave, and the OpenAPI schema they generate."""

from __future__ import annotations

import pytest

from qwenproxy.api.openapi import to_openapi
from qwenproxy.errors import BadRequest
from qwenproxy.wire.openai import ChatCompletionRequest, ImageRequest, SimpleChatRequest

USER = [{"role": "user", "content": "hi"}]


def error_of(body: dict, messages: object = USER) -> tuple[str, str | None]:
    with pytest.raises(BadRequest) as caught:
        ChatCompletionRequest.parse(body, messages)
    return caught.value.message, caught.value.param


def test_messages_are_checked_before_the_options() -> None:
    assert error_of({"stream": "yes"}, []) == (
        "`messages` must be a non-empty array (Сообщения не указаны)",
        "messages",
    )
    assert error_of({}, [{"role": "bot"}])[1] == "messages[0].role"
    assert error_of({}, [{"role": "system", "content": "s"}])[1] == "messages"


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"stream": None}, "stream", "`stream` must be a boolean"),
        ({"model": 1, "stream": 1}, "stream", "`stream` must be a boolean"),  # the first bad field wins
        ({"max_completion_tokens": 0}, "max_tokens", "`max_tokens` must be a positive integer"),
        ({"stop": [1]}, "stop", "`stop` must be a string or an array of strings"),
        ({"chat_id": 5, "temperature": 9}, "chat_id", "`chat_id` must be a string"),
        ({"tools": [{"type": "web"}], "temperature": 9}, "tools[0]", "tools[0] must be a function tool"),
        ({"temperature": True}, "temperature", "`temperature` must be a number between 0 and 2"),
        ({"top_p": 1.5}, "top_p", "`top_p` must be a number between 0 and 1"),
        ({"thinking_budget": 0}, "thinking_budget", "`thinking_budget` must be a positive integer"),
        ({"size": "wide"}, "size", "size must look like 1024x1024 or 16:9, not 'wide'"),
    ],
)
def test_a_bad_field_is_openais_400_with_its_param(body, param, message) -> None:
    assert error_of(body) == (message, param)


def test_normalised_fields_legacy_functions_and_modes() -> None:
    req = ChatCompletionRequest.parse(
        {
            "stop": "END",
            "max_completion_tokens": 7,
            "functions": [{"name": "f"}],
            "function_call": {"name": "f"},
            "stream_options": {"include_usage": 1},
            "chat_id": "c1",
            "reasoning_effort": "none",
            "enable_search": True,
            "size": "1792x1024",
        },
        USER,
    )
    assert req.stop == ["END"] and req.max_tokens == 7 and req.include_usage
    assert req.tools == [{"type": "function", "function": {"name": "f"}}]
    assert req.tool_spec.choice == "function" and req.tool_spec.forced == "f"
    assert req.conversation == ("c1", None)
    assert req.mode_options() == {"thinking": False, "search": True, "image_size": "16:9"}


def test_simple_chat_and_image_requests() -> None:
    assert SimpleChatRequest.messages_of({"message": "hi"}) == USER
    assert SimpleChatRequest.messages_of({"messages": USER, "message": 5}) == USER
    with pytest.raises(BadRequest, match="`message` is required"):
        SimpleChatRequest.messages_of({"messages": [{"role": "system", "content": "s"}]})
    image = ImageRequest.model_validate({"prompt": "cat", "response_format": ""})
    assert (image.n, image.response_format, image.ratio) == (1, "url", "1:1")
    with pytest.raises(BadRequest, match="`prompt` must be a non-empty string"):
        ImageRequest.model_validate({"n": 99})


def test_openapi_schema_of_a_request_is_openapi_3_0() -> None:
    schema = to_openapi(ChatCompletionRequest.model_json_schema())
    props = schema["properties"]
    assert schema["required"] == ["messages"]
    assert props["messages"]["items"] == {"$ref": "#/components/schemas/Message"}
    assert props["temperature"] == {"type": "number", "minimum": 0, "maximum": 2, "nullable": True}
    assert "tool_spec" not in props and "max_completion_tokens" not in props
    assert to_openapi({"anyOf": [{"$ref": "#/x"}, {"type": "null"}], "default": None}) == {
        "allOf": [{"$ref": "#/x"}],
        "nullable": True,
    }
