"""Media modes at the protocol level: suffixes and chat types, video task answers, the media
host allow-list, video request checks."""

from __future__ import annotations

import pytest

from qwenproxy.errors import BadRequest, UpstreamError
from qwenproxy.qwen.modes import Modes, split_model, upstream_mode, variants
from qwenproxy.qwen.tasks import task_reference, task_state
from qwenproxy.serving.fetch import host_allowed, host_patterns
from qwenproxy.serving.videos import Polling
from qwenproxy.wire.media import VideoRequest, task_status_object, video_object, video_ratio


def test_media_suffixes_exclude_the_text_modes() -> None:
    assert split_model("qwen3-max-video") == ("qwen3-max", Modes(video=True))
    assert split_model("qwen3-max-Deep-Research") == ("qwen3-max", Modes(research=True))
    assert split_model("qwen3-max-thinking-video") == ("qwen3-max", Modes(video=True))
    assert Modes(research=True).suffix() == "-deep-research" and Modes(video=True).options() == {"video": True}


def test_chat_types_for_the_media_modes() -> None:
    assert upstream_mode({"image": True})[0] == "t2i"
    assert upstream_mode({"image": True}, has_image=True)[0] == "image_edit"
    assert upstream_mode({"chat_type": "image_edit"})[0] == "t2i"  # the site refuses an edit without an image
    assert upstream_mode({"research": True})[0] == "deep_research"
    chat_type, features, extra = upstream_mode({"video": True, "image_size": "9:16", "thinking": False})
    assert chat_type == "t2v" and extra == {"size": "9:16"}
    assert features == {
        "thinking_enabled": True,
        "research_mode": "normal",
        "auto_thinking": True,
        "thinking_format": "summary",
    }
    entry = {"id": "m", "info": {"meta": {"chat_type": ["t2t", "t2v", "deep_research"]}}}
    assert variants(entry) == ["m-video", "m-deep-research"]


def test_task_reference_from_the_t2v_answer() -> None:
    data = {
        "chat_id": "",
        "parent_id": "u1",
        "message_id": "r1",
        "messages": [{"id": "r1", "role": "assistant", "extra": {"wanx": {"task_id": "t-9"}}}],
    }
    assert task_reference(data) == ("t-9", "u1", "r1")
    with pytest.raises(UpstreamError):
        task_reference({"messages": [{"extra": {}}]})


@pytest.mark.parametrize(
    ("answer", "status", "progress"),
    [
        ({"task_status": "queued", "progress": 0}, "queued", 0),
        ({"task_status": "running", "progress": "33"}, "in_progress", 33),
        ({"task_status": "processing"}, "in_progress", 0),
        ({"task_status": "success", "content": "https://cdn.qwenlm.ai/v.mp4"}, "completed", 100),
        ({"task_status": "completed", "content": "https://cdn.qwenlm.ai/v.mp4"}, "completed", 100),
        ({"task_status": "failed", "message": "nope"}, "failed", 0),
        ({"task_status": "success"}, "failed", 0),  # done without a video is no success
        ({"success": True, "data": {"task_status": "error"}}, "failed", 0),
    ],
)
def test_task_status_answers(answer, status, progress) -> None:
    state = task_state(answer)
    assert (state.status, state.progress) == (status, progress)
    assert state.done == (status in ("completed", "failed"))
    if status == "completed":
        assert state.url == "https://cdn.qwenlm.ai/v.mp4"
    if status == "failed":
        assert state.error


def test_media_hosts_allow_list() -> None:
    patterns = host_patterns({"MEDIA_HOSTS": "*.qwenlm.ai, files.example", "QWEN_BASE_URL": "https://chat.qwen.ai"})
    assert host_allowed("https://cdn.qwenlm.ai/output/x.png?key=1", patterns)
    assert host_allowed("https://chat.qwen.ai/x", patterns) and host_allowed("http://files.example/a", patterns)
    for url in (
        "https://qwenlm.ai.evil.example/x",
        "https://evilqwenlm.ai/x",
        "file:///etc/passwd",
        "https://127.0.0.1/x",
        "https://files.example.evil/a",
    ):
        assert not host_allowed(url, patterns), url


def test_video_sizes_and_seconds() -> None:
    assert [video_ratio(s) for s in ("720x1280", "1280x720", "16:9", "1000x1000", "4:3")] == [
        "9:16",
        "16:9",
        "16:9",
        "1:1",
        "4:3",
    ]
    for bad in ("huge", "0x5", "auto", "16x"):
        with pytest.raises(BadRequest):
            video_ratio(bad)
    req = VideoRequest.from_form({"prompt": "p", "seconds": "8"})
    assert (req.seconds, req.size, req.ratio) == ("8", "1280x720", "16:9")
    assert VideoRequest.model_validate({"prompt": "p", "input_reference": {"file_id": "file-1"}}).image_reference() == (
        "file-1"
    )
    with pytest.raises(BadRequest):
        VideoRequest.model_validate({"prompt": "p", "seconds": 0})


def test_video_object_and_task_status_shapes() -> None:
    common = {"id": "video_1", "model": "m", "created_at": 1.5, "size": "1280x720", "seconds": "5"}
    failed = video_object(**common, status="failed", progress=0, error_message="boom", error_code="x")
    assert failed["error"] == {"code": "x", "message": "boom"} and failed["created_at"] == 1
    done = video_object(**common, status="completed", progress=100, completed_at=9.0)
    assert done["error"] is None and done["completed_at"] == 9
    status = task_status_object(done, "https://cdn.qwenlm.ai/v.mp4")
    assert (status["task_status"], status["content"]) == ("success", "https://cdn.qwenlm.ai/v.mp4")
    assert task_status_object(failed, None)["message"] == "boom"


def test_polling_backs_off_to_a_ceiling() -> None:
    polling = Polling(first=2.0, most=10.0)
    assert [polling.interval(n) for n in range(6)] == [2.0, 3.0, 4.5, 6.75, 10.0, 10.0]
