"""Qwen web modes at the protocol level: thinking, search, image phases; suffixes; sizes."""

from __future__ import annotations

import json

import pytest

from qwenproxy.errors import UpstreamError
from qwenproxy.events import Annotation, Finished, ImageResult, ReasoningDelta, TextDelta
from qwenproxy.qwen.catalog import ModelCatalog
from qwenproxy.qwen.modes import Modes, split_model, upstream_mode, variants
from qwenproxy.qwen.protocol import parse_stream
from qwenproxy.wire.openai import ChunkRenderer, aspect_ratio, collect, completion_response
from tests.openai_schema import validate

CREATED = b'data: {"response.created":{"chat_id":"c","parent_id":"p","response_id":"r"}}\n\n'
FINISHED = {"content": "", "role": "assistant", "status": "finished", "phase": "answer"}


def frame(delta: dict) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": delta}]}, ensure_ascii=False).encode() + b"\n\n"


def events_of(*deltas: dict, split: int = 0) -> list:
    raw = CREATED + b"".join(frame(d) for d in deltas)
    chunks = [raw[i : i + split] for i in range(0, len(raw), split)] if split else [raw]
    return list(parse_stream(chunks))


def text(events, kind=TextDelta) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def answer(content: str) -> dict:
    return {"role": "assistant", "content": content, "phase": "answer", "status": "typing"}


@pytest.mark.parametrize("split", [0, 7])
def test_2026_thinking_summary_emits_only_what_is_new(split) -> None:
    def summary(titles, thoughts):
        extra = {"summary_title": {"content": titles}, "summary_thought": {"content": thoughts}}
        return {"role": "assistant", "content": "", "phase": "thinking_summary", "extra": extra, "status": "typing"}

    events = events_of(
        summary(["Plan"], ["First"]),
        summary(["Plan"], ["First idea"]),  # the last item grew
        summary(["Plan"], ["First idea"]),  # repeated: nothing new
        summary(["Plan", "Check"], ["First idea", "Second"]),
        {"role": "assistant", "content": "", "phase": "thinking_summary", "status": "finished"},
        answer("Done"),
        FINISHED,
        split=split,
    )
    assert text(events, ReasoningDelta) == "Plan\n\nFirst idea\n\nCheck\n\nSecond"
    assert text(events) == "Done"
    assert isinstance(events[-1], Finished)


def test_search_sources_become_annotations_and_tool_output_is_not_text() -> None:
    docs = [{"url": "https://a.example/1", "title": "A", "snippet": "s"}, {"url": "https://b.example/2", "title": "B"}]
    events = events_of(
        {
            "role": "assistant",
            "content": "",
            "phase": "web_search",
            "status": "typing",
            "function_call": {"name": "web_search", "arguments": '{"queries": ["q"]}'},
        },
        {
            "role": "function",
            "content": "raw tool text",
            "phase": "web_search",
            "status": "finished",
            "name": "web_search",
            "extra": {"tool_result": {"docs": [*docs, docs[0]]}},
        },
        answer("See [[1]] and [[2]]."),
        FINISHED,
    )
    assert [e for e in events if isinstance(e, Annotation)] == [Annotation(d["url"], d["title"]) for d in docs]
    assert text(events) == "See [[1]] and [[2]]."
    body = completion_response(collect(events), id="x", model="m")
    validate("CreateChatCompletionResponse", body)
    cites = body["choices"][0]["message"]["annotations"]
    assert [(c["url_citation"]["start_index"], c["url_citation"]["end_index"]) for c in cites] == [(4, 9), (14, 19)]


def test_older_web_search_info_without_phase_does_not_end_the_answer() -> None:
    events = events_of(
        {
            "role": "function",
            "name": "web_search",
            "content": "",
            "status": "finished",
            "extra": {"web_search_info": [{"url": "https://old.example", "title": "Old"}]},
        },
        {"role": "assistant", "content": "Hi [[1]]"},
        {"role": "assistant", "content": "", "status": "finished"},
    )
    assert [e for e in events if isinstance(e, Annotation)] == [Annotation("https://old.example", "Old")]
    assert text(events) == "Hi [[1]]"


def test_image_gen_gives_an_image_and_markdown_and_may_end_the_stream() -> None:
    url = "https://cdn.qwenlm.ai/output/u/t2i/r/1.png?key=abc"
    events = events_of(
        {"role": "assistant", "content": url, "phase": "image_gen", "status": "typing"},
        {"role": "assistant", "content": "", "phase": "image_gen", "status": "finished"},
    )
    assert [e.url for e in events if isinstance(e, ImageResult)] == [url]
    assert text(events) == f"![image]({url})"
    assert isinstance(events[-1], Finished)


def test_image_tool_list_and_a_cut_text_stream_still_fails() -> None:
    events = events_of(
        {"role": "function", "phase": "image_gen_tool", "status": "typing", "extra": {"image_list": [{"image": "u1"}]}},
        answer("here"),
        FINISHED,
    )
    assert [e.url for e in events if isinstance(e, ImageResult)] == ["u1"]
    with pytest.raises(UpstreamError) as exc:
        events_of(answer("cut"), {"role": "assistant", "content": "", "phase": "think", "status": "finished"})
    assert exc.value.code == "upstream_truncated"


def test_renderer_annotations_on_the_final_chunk_and_think_tags() -> None:
    renderer = ChunkRenderer(id="x", model="m", reasoning_in_content=True)
    chunks = [renderer.role()]
    for event in [ReasoningDelta("hmm"), ReasoningDelta(" ok"), TextDelta("A [[1]]"), Annotation("https://a.b", "T")]:
        chunks += renderer.render(event)
    chunks += renderer.render(Finished("stop"))
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == "<think>\nhmm ok\n</think>\n\nA [[1]]"
    assert not any("reasoning_content" in c["choices"][0]["delta"] for c in chunks)
    final = chunks[-1]["choices"][0]
    assert final["finish_reason"] == "stop"
    cite = final["delta"]["annotations"][0]["url_citation"]
    assert content[cite["start_index"] : cite["end_index"]] == "[[1]]"
    collected = collect([ReasoningDelta("r"), TextDelta("t")])
    assert collected.message(reasoning_in_content=True)["content"] == "<think>\nr\n</think>\n\nt"


@pytest.mark.parametrize(
    ("name", "base", "modes"),
    [
        ("qwen3-max-thinking", "qwen3-max", Modes(thinking=True)),
        ("qwen3-max-search-thinking", "qwen3-max", Modes(thinking=True, search=True)),
        ("Qwen3-Max-THINKING-search", "Qwen3-Max", Modes(thinking=True, search=True)),
        ("qwen3-max-image", "qwen3-max", Modes(image=True)),
        ("qwen3-max", "qwen3-max", Modes()),
        ("-thinking", "-thinking", Modes()),
    ],
)
def test_suffixes(name, base, modes) -> None:
    assert split_model(name) == (base, modes)


def test_catalog_resolves_suffixes_aliases_and_unknown_bases(tmp_path) -> None:
    catalog = ModelCatalog(tmp_path / "none.txt", "qwen-max-latest", fetch=lambda: [{"id": "qwen3-max"}])
    assert catalog.resolve_modes("qwen-max-thinking") == ("qwen3-max", Modes(thinking=True))
    # the configured default is gone upstream: the first live model is the default (2026 §1)
    assert catalog.resolve_modes("nope-search") == ("qwen3-max", Modes(search=True))
    assert catalog.known("qwen3-max-image") and not catalog.known("nope-image")


@pytest.mark.parametrize(
    ("size", "ratio"),
    [
        ("1024x1024", "1:1"),
        ("1792x1024", "16:9"),
        ("1024x1792", "9:16"),
        ("1536x1024", "4:3"),
        ("1024x1536", "3:4"),
        ("4:3", "4:3"),
        ("512x512", "1:1"),
        (None, None),
        ("auto", None),
    ],
)
def test_aspect_ratios(size, ratio) -> None:
    assert aspect_ratio(size) == ratio


def test_aspect_ratio_rejects_garbage() -> None:
    for bad in ("big", "0x10", "axb"):
        with pytest.raises(ValueError):
            aspect_ratio(bad)


def test_upstream_mode_and_variants() -> None:
    assert upstream_mode({}) == ("t2t", {}, {})
    assert upstream_mode({"thinking": True, "search": True, "thinking_budget": 100}) == (
        "search",
        {"thinking_enabled": True, "thinking_budget": 100},
        {},
    )
    assert upstream_mode({"image": True, "image_size": "16:9", "thinking": True}) == ("t2i", {}, {"size": "16:9"})
    entry = {"id": "m", "info": {"meta": {"capabilities": {"thinking": True}, "chat_type": ["t2t", "search"]}}}
    assert variants(entry) == ["m-thinking", "m-search"]
    assert variants({"id": "m"}) == []


@pytest.mark.parametrize("reasoning_in_content", [False, True])
@pytest.mark.parametrize("model", ["qwen3-max", "\x00qwenproxy-text\x00"])
def test_text_frames_from_the_template_are_the_chunks_sse(model, reasoning_in_content) -> None:
    """The hot path renders a text delta into a frame built once; it must be byte for byte
    the frame of the whole chunk, around reasoning, odd characters and a model name that
    holds the template's own mark."""
    from qwenproxy.wire.openai import sse
    from qwenproxy.wire.render import OpenAIChunks

    def renderer() -> ChunkRenderer:
        extras = {"chatId": "c-1", "parentId": None}
        return ChunkRenderer(
            id="x", model=model, created=1, include_usage=True, extras=extras, reasoning_in_content=reasoning_in_content
        )

    fast, plain = OpenAIChunks(renderer()), renderer()
    events = [TextDelta("a"), ReasoningDelta("hm"), TextDelta('h\u00e9llo "q"\n'), TextDelta("x"), TextDelta("\u2028}")]
    events += [ReasoningDelta("again"), TextDelta("y"), Finished("stop")]
    for event in events:
        assert fast.render(event) == [sse(chunk) for chunk in plain.render(event)]
    assert fast.chunks._text == plain._text
