"""``POST /v1/completions`` (OpenAI's legacy text completion) against the fake, through the
openai SDK's ``client.completions.create`` as LlamaIndex's ``OpenAILike`` calls it."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from openai.types import Completion, CompletionChoice

from tests.helpers import completions


def openai_shape(body: dict, *, chunk: bool = False) -> None:
    """The openai SDK's ``Completion``/``CompletionChoice``: no field they lack, none they need
    missing; a whole body also validates (a chunk's ``finish_reason`` may be null)."""
    assert {"id", "object", "created", "model", "choices"} <= set(body) <= set(Completion.model_fields)
    assert body["object"] == "text_completion"
    for choice in body["choices"]:
        assert set(choice) == set(CompletionChoice.model_fields)
    if not chunk:
        Completion.model_validate(body)


@pytest.fixture
def sdk(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="none", max_retries=0)


def test_a_prompt_is_answered_as_a_text_completion(sdk, fake_qwen) -> None:
    # what OpenAILike(model=..., api_base=...).complete("Say hi") sends: model, temperature, prompt
    done = sdk.completions.create(model="qwen3-max", prompt="Say hi", temperature=0.1, stream=False)
    assert done.object == "text_completion" and done.id.startswith("cmpl-") and done.model == "qwen3-max"
    (choice,) = done.choices
    assert (choice.text, choice.index, choice.finish_reason, choice.logprobs) == ("Echo: Say hi", 0, "stop", None)
    assert done.usage.completion_tokens > 0 and done.usage.total_tokens >= done.usage.prompt_tokens
    (sent,) = completions(fake_qwen)
    assert sent["messages"][0]["content"] == "Say hi" and sent["parent_id"] is None


def test_the_body_has_openais_exact_shape(client) -> None:
    r = client.post("/v1/completions", json={"model": "qwen3-max", "prompt": "x", "max_tokens": 50, "stop": ["\n"]})
    body = r.get_json()
    assert r.status_code == 200 and list(body) == ["id", "object", "created", "model", "choices", "usage"]
    assert list(body["choices"][0]) == ["text", "index", "logprobs", "finish_reason"]
    openai_shape(body)


def test_a_streamed_completion(sdk, fake_qwen) -> None:
    chunks = list(
        sdk.completions.create(
            model="qwen3-max", prompt="stream me", stream=True, stream_options={"include_usage": True}
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == "Echo: stream me" and len(texts) > 2  # as the upstream streamed it
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_stream_chunks_have_openais_exact_shape(live_server) -> None:
    body = {"model": "qwen3-max", "prompt": "raw", "stream": True}
    with requests.post(live_server.url + "/api/v1/completions", json=body, stream=True, timeout=30) as r:
        lines = [line for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    for chunk in chunks:
        assert list(chunk) == ["id", "object", "created", "model", "choices"]
        openai_shape(chunk, chunk=True)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]


def test_several_prompts_and_echo(sdk, fake_qwen) -> None:
    done = sdk.completions.create(model="qwen3-max", prompt=["one", "two"], n=2, echo=True)
    assert [(c.index, c.text) for c in done.choices] == [
        (0, "oneEcho: one"),
        (1, "oneEcho: one"),
        (2, "twoEcho: two"),
        (3, "twoEcho: two"),
    ]
    assert len(completions(fake_qwen)) == 4
    chunks = list(sdk.completions.create(model="qwen3-max", prompt=["a", "b"], stream=True))
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "Echo: a", 1: "Echo: b"}
    assert [c.choices[0].index for c in chunks if c.choices[0].finish_reason] == [0, 1]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "logprobs": 5}, "logprobs"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": ["x"] * 9, "n": 2}, "n"),
    ],
)
def test_bad_requests_are_400s(client, fake_qwen, body, param) -> None:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["param"] == param
    assert completions(fake_qwen) == []
