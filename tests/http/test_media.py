"""Media and research modes end to end (docs/MODES.md): image edits, images as base64, video
tasks, deep research; the ``openai`` client → the app (a real socket) → the fake chat.qwen.ai
(+ fake OSS for uploads)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import openai
import pytest
import requests
from openai.types import ImagesResponse, Video

from qwenproxy import create_app
from qwenproxy.db.models import VideoTask
from tests.conftest import app_config
from tests.fakes.qwen_site2026 import TASK_FAILED_MESSAGE, TINY_MP4
from tests.fakes.qwen_web import TINY_PNG
from tests.helpers import completions
from tests.http.test_uploads import PNG, USER_ID
from tests.openai_schema import sse_events, validate

# the Sora-era videos API is marked deprecated in SDK 3.54; the calls still work
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def media_config(tmp_path: Path, fake_qwen, fake_oss, **extra) -> dict:
    settings = {
        "QWEN_TOKEN": fake_qwen.make_token(user_id=USER_ID),
        "QWEN_OSS_BASE_URL": fake_oss.url,
        "QWEN_PARSE_POLL_INTERVAL": 0.01,
        "VIDEO_POLL_INTERVAL": 0.0,  # every GET /v1/videos/{id} asks the upstream once
    }
    return app_config(tmp_path, fake_qwen, **{**settings, **extra})


@pytest.fixture
def app(tmp_path: Path, fake_qwen, fake_oss):
    fake_qwen.image_base_url = fake_qwen.url  # generated media are served by the fake itself
    application = create_app(media_config(tmp_path, fake_qwen, fake_oss))
    yield application
    application.extensions["providers"].close()


def error_of(response) -> dict:
    validate("ErrorResponse", response.get_json())
    return response.get_json()["error"]


def outputs(fake) -> list[dict]:
    return [r for r in fake.requests if r["path"].startswith("/output/")]


def data_uri(data: bytes = PNG, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


# --------------------------------------------------------------------------- image edits


def test_image_edit_through_the_sdk_uploads_the_image_and_edits_it(oai, fake_qwen, fake_oss) -> None:
    r = oai.images.edit(image=("cat.png", PNG, "image/png"), prompt="make it blue", size="1792x1024")
    validate("ImagesResponse", r.model_dump(exclude_unset=True))
    assert "/image_edit/" in r.data[0].url and "key=" in r.data[0].url
    sent = completions(fake_qwen)[-1]
    message = sent["messages"][0]
    assert message["chat_type"] == "image_edit" and message["content"] == "make it blue" and sent["size"] == "16:9"
    assert [f["type"] for f in message["files"]] == ["image"] and message["files"][0]["file_class"] == "vision"
    edit = fake_qwen.image_edits[-1]
    assert edit["prompt"] == "make it blue" and edit["images"] == [message["files"][0]["url"]]
    assert edit["images"][0].startswith(fake_oss.url)  # the bytes went to storage first


def test_image_edit_several_images_and_b64_json(oai, fake_qwen) -> None:
    r = oai.images.edit(
        image=[("a.png", PNG, "image/png"), ("b.png", PNG, "image/png")],  # the SDK sends image[]
        prompt="merge them",
        n=2,
        response_format="b64_json",
    )
    ImagesResponse.model_validate(r.model_dump())
    assert [base64.b64decode(d.b64_json) for d in r.data] == [TINY_PNG, TINY_PNG]
    edits = fake_qwen.image_edits[-2:]
    assert len(edits) == 2 and all(len(e["images"]) == 2 for e in edits)


def test_image_edit_as_json_with_image_urls(client, fake_qwen) -> None:
    r = client.post("/v1/images/edits", json={"prompt": "sepia", "images": [{"image_url": data_uri()}]})
    assert r.status_code == 200, r.get_json()
    validate("ImagesResponse", r.get_json())
    assert completions(fake_qwen)[-1]["messages"][0]["chat_type"] == "image_edit"


def test_image_edit_bad_input_is_a_clear_400(client, fake_qwen) -> None:
    def multipart(**fields):
        return client.post("/v1/images/edits", data=fields, content_type="multipart/form-data")

    no_image = multipart(prompt="x")
    assert no_image.status_code == 400 and error_of(no_image)["param"] == "image"
    assert error_of(no_image)["code"] == "missing_image"
    assert error_of(client.post("/v1/images/edits", json={"prompt": "x"}))["code"] == "missing_image"
    png = (io.BytesIO(PNG), "cat.png", "image/png")
    assert error_of(multipart(image=png))["param"] == "prompt"
    bad_size = multipart(image=(io.BytesIO(PNG), "cat.png", "image/png"), prompt="x", size="huge")
    assert bad_size.status_code == 400 and error_of(bad_size)["param"] == "size"
    text = multipart(image=(io.BytesIO(b"just some text"), "notes", "text/plain"), prompt="x")
    assert text.status_code == 400 and error_of(text)["code"] == "invalid_image"
    too_many = multipart(image=(io.BytesIO(PNG), "cat.png", "image/png"), prompt="x", n="9")
    assert error_of(too_many)["param"] == "n"
    assert completions(fake_qwen) == []


def test_an_image_without_a_name_is_recognised_by_its_bytes(client, fake_qwen) -> None:
    r = client.post(
        "/v1/images/edits",
        data={"image": (io.BytesIO(PNG), "blob", "application/octet-stream"), "prompt": "x"},
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.get_json()
    assert fake_qwen.image_edits[-1]["images"][0].split("?")[0].endswith("blob.png")


# --------------------------------------------------------------------------- b64_json downloads


def test_b64_json_downloads_only_from_the_upstreams_hosts(app, oai, client, fake_qwen) -> None:
    r = oai.images.generate(prompt="p", response_format="b64_json", size="1024x1792")
    validate("ImagesResponse", r.model_dump(exclude_unset=True))
    assert base64.b64decode(r.data[0].b64_json) == TINY_PNG and completions(fake_qwen)[-1]["size"] == "9:16"
    body = {"prompt": "p", "response_format": "b64_json"}
    # the same server under another name is not the upstream's host (QWEN_BASE_URL says 127.0.0.1)
    fake_qwen.image_base_url = fake_qwen.url.replace("127.0.0.1", "localhost")
    fetched = len(outputs(fake_qwen))
    refused = client.post("/v1/images/generations", json=body)
    assert refused.status_code == 502 and error_of(refused)["code"] == "media_host_not_allowed"
    assert len(outputs(fake_qwen)) == fetched  # never asked
    app.config["MEDIA_HOSTS"] = "localhost"
    assert client.post("/v1/images/generations", json=body).status_code == 200
    app.config["MEDIA_MAX_MB"] = 16 / 1048576  # 16 bytes: smaller than the fake's PNG
    too_big = client.post("/v1/images/generations", json=body)
    assert too_big.status_code == 502 and error_of(too_big)["code"] == "media_too_large"


# --------------------------------------------------------------------------- images in chat


def test_chat_image_model_edits_an_attached_image_and_draws_without_one(oai, fake_qwen) -> None:
    parts = [{"type": "text", "text": "make it blue"}, {"type": "image_url", "image_url": {"url": data_uri()}}]
    r = oai.chat.completions.create(model="qwen3-max-image", messages=[{"role": "user", "content": parts}])
    assert r.choices[0].message.content.startswith(f"![image]({fake_qwen.url}/output/")
    assert "/image_edit/" in r.choices[0].message.content
    message = completions(fake_qwen)[-1]["messages"][0]
    assert message["chat_type"] == "image_edit" and message["files"][0]["type"] == "image"

    oai.chat.completions.create(model="qwen3-max-image", messages=[{"role": "user", "content": "a fox"}])
    assert completions(fake_qwen)[-1]["messages"][0]["chat_type"] == "t2i"


@pytest.mark.parametrize("flag", [{"modalities": ["image", "text"]}, {"chat_type": "image_edit"}])
def test_chat_image_edit_by_request_field(oai, fake_qwen, flag) -> None:
    parts = [{"type": "text", "text": "crop"}, {"type": "image_url", "image_url": {"url": data_uri()}}]
    content, _, _ = streamed(
        oai.chat.completions.create(
            model="qwen3-max", messages=[{"role": "user", "content": parts}], stream=True, extra_body=flag
        )
    )
    assert "/image_edit/" in content
    assert completions(fake_qwen)[-1]["messages"][0]["chat_type"] == "image_edit"


def streamed(stream) -> tuple[str, str, list]:
    chunks = list(stream)
    content = reasoning = ""
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            reasoning += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
    return content, reasoning, chunks


# --------------------------------------------------------------------------- videos


def test_video_task_queued_running_completed_through_the_sdk(oai, fake_qwen) -> None:
    v = oai.videos.create(prompt="a cat surfing", size="1280x720", seconds="4")
    Video.model_validate(v.model_dump())
    assert (v.object, v.status, v.progress, v.size, v.seconds, v.prompt) == (
        "video",
        "queued",
        0,
        "1280x720",
        "4",
        "a cat surfing",
    )
    assert v.id.startswith("video_")
    sent = completions(fake_qwen)[-1]
    message = sent["messages"][0]
    assert message["chat_type"] == "t2v" and sent["stream"] is False and sent["size"] == "16:9"
    assert message["feature_config"]["thinking_enabled"] is True
    task_id = next(iter(fake_qwen.tasks))

    seen = [(v.status, v.progress)]
    while v.status not in ("completed", "failed"):
        v = oai.videos.retrieve(v.id)
        Video.model_validate(v.model_dump())
        seen.append((v.status, v.progress))
    assert seen == [("queued", 0), ("queued", 0), ("in_progress", 33), ("in_progress", 66), ("completed", 100)]
    assert v.completed_at is not None and v.error is None
    assert fake_qwen.tasks[task_id]["polls"] == 4  # one upstream poll per retrieve
    assert oai.videos.download_content(v.id).content == TINY_MP4


def test_create_and_poll_follows_the_poll_after_header(oai, fake_qwen) -> None:
    v = oai.videos.create_and_poll(prompt="waves", size="720x1280")
    assert v.status == "completed" and v.size == "720x1280"
    assert completions(fake_qwen)[-1]["size"] == "9:16"


def test_a_video_that_fails_upstream_is_failed_with_an_error(oai, client, fake_qwen) -> None:
    fake_qwen.task_outcome = "failed"
    v = oai.videos.create_and_poll(prompt="forbidden")
    assert v.status == "failed" and v.error.code == "video_generation_failed"
    assert v.error.message == TASK_FAILED_MESSAGE
    with pytest.raises(openai.ConflictError):
        oai.videos.download_content(v.id)
    assert error_of(client.get(f"/v1/videos/{v.id}/content"))["code"] == "video_failed"


def test_unknown_video_and_bad_video_input(oai, client, fake_qwen) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.videos.retrieve("video_nope")
    missing = client.get("/v1/videos/video_nope")
    assert missing.status_code == 404 and error_of(missing)["code"] == "video_not_found"
    assert client.get("/v1/videos/video_nope/content").status_code == 404
    assert client.delete("/v1/videos/video_nope").status_code == 404
    for body, param in (
        ({"prompt": "x", "size": "huge"}, "size"),
        ({"prompt": "x", "size": "0x720"}, "size"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "seconds": "forever"}, "seconds"),
        ({"prompt": "x", "input_reference": 5}, "input_reference"),
    ):
        r = client.post("/v1/videos", json=body)
        assert r.status_code == 400 and error_of(r)["param"] == param, body
    assert completions(fake_qwen) == []


def test_content_before_the_video_is_done_is_409(app, client, fake_qwen) -> None:
    fake_qwen.task_queued_polls = 5
    video = client.post("/v1/videos", json={"prompt": "slow"}).get_json()
    r = client.get(f"/v1/videos/{video['id']}/content")
    assert r.status_code == 409 and error_of(r)["code"] == "video_not_ready"


def test_image_to_video_sends_the_image(oai, client, fake_qwen) -> None:
    oai.videos.create(prompt="make it move", input_reference=("cat.png", PNG, "image/png"))
    files = completions(fake_qwen)[-1]["messages"][0]["files"]
    assert [f["type"] for f in files] == ["image"] and files[0]["file_class"] == "vision"
    r = client.post("/v1/videos", json={"prompt": "again", "input_reference": {"image_url": data_uri()}})
    assert r.status_code == 200, r.get_json()
    assert completions(fake_qwen)[-1]["messages"][0]["files"][0]["type"] == "image"


@pytest.fixture
def database_url(tmp_path) -> str:
    """The database the two-worker test shares (tests/process/test_postgres.py: PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'shared.db'}"


def test_polls_back_off_and_any_worker_answers(tmp_path, fake_qwen, fake_oss, database_url) -> None:
    """Two apps on one database (two workers): one starts, the other answers; polls are spaced."""
    fake_qwen.image_base_url = fake_qwen.url
    timing = {"VIDEO_POLL_INTERVAL": 60.0, "VIDEO_POLL_MAX_INTERVAL": 600.0}
    config = media_config(tmp_path, fake_qwen, fake_oss, DATABASE_URL=database_url, **timing)
    first, second = create_app(config), create_app(config)
    try:
        video = first.test_client().post("/v1/videos", json={"prompt": "slow"}).get_json()
        task = next(iter(fake_qwen.tasks.values()))
        other = second.test_client()
        r = other.get(f"/v1/videos/{video['id']}")
        assert r.get_json()["status"] == "queued" and task["polls"] == 0  # not due yet
        assert 55_000 < int(r.headers["openai-poll-after-ms"]) <= 60_000
        with second.app_context():
            VideoTask.update(next_poll_at=0).where(VideoTask.id == video["id"]).execute()  # the minute passed
        assert other.get(f"/v1/videos/{video['id']}").status_code == 200 and task["polls"] == 1
        again = first.test_client().get(f"/v1/videos/{video['id']}")
        assert task["polls"] == 1 and int(again.headers["openai-poll-after-ms"]) > 85_000  # 60 s x 1.5
        listed = other.get("/v1/videos").get_json()
        assert [v["id"] for v in listed["data"]] == [video["id"]] and listed["has_more"] is False
        while again.get_json()["status"] != "completed":  # each poll made due at once
            with first.app_context():
                VideoTask.update(next_poll_at=0).where(VideoTask.id == video["id"]).execute()
            again = other.get(f"/v1/videos/{video['id']}")
        assert task["polls"] == 4
        assert first.test_client().get(f"/v1/videos/{video['id']}/content").data == TINY_MP4
    finally:
        for application in (first, second):
            application.extensions["providers"].close()


def test_seed_style_video_aliases(client, fake_qwen) -> None:
    started = client.post("/api/videos/generations", json={"prompt": "a dog", "size": "16:9"})
    assert started.status_code == 200, started.get_json()
    task_id = started.get_json()["task_id"]
    states = []
    while not states or states[-1]["task_status"] not in ("success", "failed"):
        states.append(client.get(f"/api/v1/tasks/status/{task_id}").get_json())
    assert [s["task_status"] for s in states] == ["queued", "running", "running", "success"]
    assert states[-1]["content"].startswith(f"{fake_qwen.url}/output/") and states[-1]["video"]["status"] == "completed"
    assert client.delete(f"/v1/videos/{task_id}").get_json() == {
        "id": task_id,
        "object": "video.deleted",
        "deleted": True,
    }
    assert client.get(f"/api/tasks/status/{task_id}").status_code == 404


def test_video_content_redirect_mode(app, client, fake_qwen) -> None:
    app.config["VIDEO_CONTENT"] = "redirect"
    video = client.post("/v1/videos", json={"prompt": "p"}).get_json()
    while client.get(f"/v1/videos/{video['id']}").get_json()["status"] != "completed":
        pass
    r = client.get(f"/v1/videos/{video['id']}/content")
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{fake_qwen.url}/output/")
    assert requests.get(r.headers["Location"], timeout=5).content == TINY_MP4


# --------------------------------------------------------------------------- videos in chat


def test_chat_video_model_waits_for_the_task_and_answers_with_the_url(oai, client, fake_qwen) -> None:
    r = oai.chat.completions.create(model="qwen3-max-video", messages=[{"role": "user", "content": "a cat surfing"}])
    message = r.choices[0].message
    assert message.content.startswith(f"{fake_qwen.url}/output/") and message.content.split("?")[0].endswith(".mp4")
    reasoning = message.model_extra["reasoning_content"]
    assert "queued" in reasoning and "in progress: 33%" in reasoning and "in progress: 66%" in reasoning
    assert r.model == "qwen3-max-video"
    assert completions(fake_qwen)[-1]["messages"][0]["chat_type"] == "t2v"
    stored = client.get("/v1/videos").get_json()["data"]
    assert stored[0]["status"] == "completed" and stored[0]["model"] == "qwen3-max-video"


def test_chat_video_streams_pings_and_progress(app, client, fake_qwen) -> None:
    app.config.update(VIDEO_POLL_INTERVAL=0.3, PING_INTERVAL=0.05)
    body = {"model": "qwen3-max-video", "messages": [{"role": "user", "content": "rain"}], "stream": True}
    raw = client.post("/v1/chat/completions", json=body).get_data(as_text=True)
    assert ": ping" in raw
    chunks = [json.loads(e) for e in sse_events(raw)[:-1]]
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "in progress: 66%" in reasoning and content.startswith(f"{fake_qwen.url}/output/")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_video_that_fails_is_an_error(client, fake_qwen) -> None:
    fake_qwen.task_outcome = "failed"
    body = {"model": "qwen3-max", "chat_type": "t2v", "messages": [{"role": "user", "content": "x"}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 502 and error_of(r)["code"] == "video_generation_failed"
    assert error_of(r)["message"] == TASK_FAILED_MESSAGE
    raw = client.post("/v1/chat/completions", json={**body, "stream": True}).get_data(as_text=True)
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "video_generation_failed"


# --------------------------------------------------------------------------- deep research


def test_deep_research_progress_and_sources_then_the_report(oai, fake_qwen) -> None:
    r = oai.chat.completions.create(model="qwen3-max-deep-research", messages=[{"role": "user", "content": "tides"}])
    message = r.choices[0].message
    assert message.content == "Research report: Echo: tides [[1]] [[2]]"
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning.startswith("Planning the research") and "Writing the report." in reasoning
    assert "Source [1]: Result 1 about tides (https://example.com/1" in reasoning
    assert [a.url_citation.title for a in message.annotations] == ["Result 1 about tides", "Result 2 about tides"]
    assert completions(fake_qwen)[-1]["messages"][0]["chat_type"] == "deep_research"

    content, reasoning, chunks = streamed(
        oai.chat.completions.create(
            model="qwen3-max",
            messages=[{"role": "user", "content": "moon"}],
            stream=True,
            extra_body={"chat_type": "deep_research"},
        )
    )
    assert content == "Research report: Echo: moon [[1]] [[2]]" and "Source [2]: Result 2 about moon" in reasoning
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert len(final.choices[0].delta.model_extra["annotations"]) == 2
    assert completions(fake_qwen)[-1]["messages"][0]["chat_type"] == "deep_research"


def test_bad_chat_type_is_400(client, fake_qwen) -> None:
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "chat_type": "tv"})
    assert r.status_code == 400 and error_of(r)["param"] == "chat_type"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "modalities": "x"})
    assert r.status_code == 400 and error_of(r)["param"] == "modalities"
    assert completions(fake_qwen) == []


def test_models_list_the_media_variants(client) -> None:
    ids = {m["id"] for m in client.get("/v1/models").get_json()["data"]}
    assert {"qwen3-max-video", "qwen3-max-deep-research", "qwen3-max-image"} <= ids


def test_openapi_documents_the_media_routes(client) -> None:
    doc = client.get("/api/openapi.json").get_json()
    create = doc["paths"]["/api/videos"]["post"]
    assert set(create["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert create["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Video"}
    assert "VideoRequest" in doc["components"]["schemas"] and "ImageEditRequest" in doc["components"]["schemas"]
    assert "video/mp4" in doc["paths"]["/api/videos/{video_id}/content"]["get"]["responses"]["200"]["content"]
