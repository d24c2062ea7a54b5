"""Uploads through the proxy to the fake chat.qwen.ai + fake OSS, and files in chat messages."""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import requests

from qwenproxy import create_app
from tests.conftest import ROOT, Gunicorn, app_config
from tests.openai_schema import sse_events, validate

USER_ID = "0b5c7d3e-1f2a-4b6c-8d9e-0a1b2c3d4e5f"


def png_bytes(width: int = 3, height: int = 2) -> bytes:
    """A real (tiny, red) PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG = png_bytes()


@pytest.fixture
def app(tmp_path: Path, fake_qwen, fake_oss):
    config = app_config(
        tmp_path,
        fake_qwen,
        QWEN_TOKEN=fake_qwen.make_token(user_id=USER_ID),
        QWEN_OSS_BASE_URL=fake_oss.url,
        QWEN_PARSE_POLL_INTERVAL=0.01,
        MAX_UPLOAD_MB=1,
    )
    application = create_app(config)
    yield application
    application.extensions["providers"].close()


def upload(client, data: bytes = PNG, name: str = "cat.png", mime: str = "image/png", path="/api/files/upload", **form):
    return client.post(path, data={"file": (io.BytesIO(data), name, mime), **form}, content_type="multipart/form-data")


def sent_to_qwen(fake_qwen) -> dict:
    return [r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"][-1]["json"]


def leftovers(tmp_path: Path) -> list[Path]:
    uploads = tmp_path / "uploads"
    return sorted(uploads.iterdir()) if uploads.exists() else []


def test_upload_a_png_then_ask_about_it(client, fake_qwen, fake_oss, tmp_path) -> None:
    r = upload(client)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    file = body["file"]
    assert body["success"] is True and body["imageUrl"] == file["url"]
    assert file["name"] == "cat.png" and file["size"] == len(PNG) and file["type"] == "image/png"
    assert file["id"].startswith("file-")
    # the bytes landed in the bucket under <user_id>/<file_id>_<name>, signed V4 with the STS token
    (key,) = fake_oss.objects
    assert key.startswith(f"{USER_ID}/") and key.endswith("_cat.png")
    assert fake_oss.objects[key] == {"data": PNG, "content_type": "image/png"}
    put = next(x for x in fake_oss.requests if x["method"] == "PUT")
    assert put["headers"]["authorization"].startswith("OSS4-HMAC-SHA256 Credential=STS.")
    assert file["url"].startswith(fake_oss.url + "/" + key.replace(" ", "%20"))
    assert leftovers(tmp_path) == []

    r = client.post(
        "/api/chat/completions",
        json={
            "model": "qwen3-max",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "What is this?"}, {"type": "image", "image": file["url"]}],
                }
            ],
        },
    )
    assert r.status_code == 200, r.get_json()
    assert "X-Model-Switched" not in r.headers  # qwen3-max has vision
    message = sent_to_qwen(fake_qwen)["messages"][0]
    assert message["content"] == "What is this?"
    (item,) = message["files"]
    sts = next(x for x in fake_qwen.requests if x["path"].endswith("getstsToken"))
    assert item["url"] == file["url"]
    assert item["id"] == item["file"]["id"] and item["id"] in key
    assert item["file"]["user_id"] == USER_ID
    assert (item["type"], item["showType"], item["file_class"], item["file_type"]) == (
        "image",
        "image",
        "vision",
        "image/png",
    )
    assert item["name"] == "cat.png" and item["size"] == len(PNG) and item["status"] == "uploaded"
    assert sts["json"] == {"filename": "cat.png", "filesize": len(PNG), "filetype": "image"}
    # the presigned URL Qwen gave really serves the picture
    assert requests.get(file["url"], timeout=5).content == PNG


def test_seed_simple_chat_with_an_uploaded_image(client, fake_qwen) -> None:
    url = upload(client).get_json()["file"]["url"]
    r = client.post(
        "/api/chat",
        json={
            "message": [{"type": "text", "text": "Опишите"}, {"type": "image", "image": url}],
            "model": "qwen-vl-max",
        },
    )
    assert r.status_code == 200
    sent = sent_to_qwen(fake_qwen)
    assert sent["model"] == "qwen3-vl-plus"
    assert sent["messages"][0]["content"] == "Опишите" and sent["messages"][0]["files"][0]["url"] == url


def test_openai_data_uri_is_uploaded_on_the_fly_and_vision_switches(client, fake_qwen, fake_oss) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    r = client.post(
        "/api/chat/completions",
        json={
            "model": "qwq-32b",  # no vision in the upstream model list
            "stream": True,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe"},
                        {"type": "image_url", "image_url": {"url": data_uri, "detail": "auto"}},
                    ],
                }
            ],
        },
    )
    assert r.status_code == 200
    assert r.headers["X-Model-Switched"] == "qwq-32b -> qwen3-vl-plus"
    assert sse_events(r.get_data(as_text=True))[-1] == "[DONE]"
    sent = sent_to_qwen(fake_qwen)
    assert sent["model"] == "qwen3-vl-plus"
    new_chat = [x for x in fake_qwen.requests if x["path"] == "/api/v2/chats/new"][-1]["json"]
    assert new_chat["models"] == ["qwen3-vl-plus"]
    (item,) = sent["messages"][0]["files"]
    (key,) = fake_oss.objects
    assert fake_oss.objects[key]["data"] == PNG and item["file"]["meta"]["content_type"] == "image/png"
    assert item["url"].split("?")[0].endswith(key)
    # without an image there is no switch
    r = client.post("/api/chat/completions", json={"model": "qwq-32b", "messages": [{"role": "user", "content": "x"}]})
    assert "X-Model-Switched" not in r.headers and sent_to_qwen(fake_qwen)["model"] == "qwq-32b"


def test_documents_are_parsed_and_referenced_by_file_id(client, fake_qwen, fake_oss) -> None:
    fake_qwen.parse_polls = 2
    r = upload(
        client, "# Заметки\nпривет\n".encode(), "notes.md", "text/markdown", path="/v1/files", purpose="user_data"
    )
    assert r.status_code == 200, r.get_json()
    obj = r.get_json()
    validate("OpenAIFile", obj)
    assert (obj["filename"], obj["purpose"], obj["status"]) == ("notes.md", "user_data", "processed")
    paths = [x["path"] for x in fake_qwen.requests]
    assert paths.count("/api/v2/files/parse") == 1 and paths.count("/api/v2/files/parse/status") == 3
    sts = next(x for x in fake_qwen.requests if x["path"].endswith("getstsToken"))["json"]
    assert sts["filetype"] == "document"

    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "qwen3-max",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Sum up"}, {"type": "file", "file": {"file_id": obj["id"]}}],
                }
            ],
        },
    )
    assert r.status_code == 200, r.get_json()
    (item,) = sent_to_qwen(fake_qwen)["messages"][0]["files"]
    assert (item["type"], item["showType"], item["file_class"]) == ("file", "file", "document")
    assert item["name"] == "notes.md"
    # OpenAI's inline file_data is uploaded (and parsed) on the fly too
    pdf = b"%PDF-1.4\n%fake\n"
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "qwen3-max",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Read"},
                        {
                            "type": "file",
                            "file": {
                                "filename": "report.pdf",
                                "file_data": "data:application/pdf;base64," + base64.b64encode(pdf).decode(),
                            },
                        },
                    ],
                }
            ],
        },
    )
    assert r.status_code == 200, r.get_json()
    (item,) = sent_to_qwen(fake_qwen)["messages"][0]["files"]
    assert item["name"] == "report.pdf" and item["file_type"] == "application/pdf"
    assert any(o["data"] == pdf for o in fake_oss.objects.values())


def test_other_urls_and_unknown_ids(client, fake_qwen) -> None:
    foreign = "https://example.com/cat.png"
    qwen_url = f"https://cdn.qwenlm.ai/{USER_ID}/6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b_dog.jpg?key=abc"
    content = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": foreign}},
        {"type": "image", "image": qwen_url},
    ]
    r = client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.get_json()
    message = sent_to_qwen(fake_qwen)["messages"][0]
    # a URL that is not Qwen storage stays inline, the seed's shape
    assert message["content"] == [{"type": "text", "text": "Compare"}, {"type": "image", "image": foreign}]
    (item,) = message["files"]
    assert item["id"] == "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b" and item["name"] == "dog.jpg"
    assert item["file"]["user_id"] == USER_ID and item["url"] == qwen_url

    bad = [{"type": "text", "text": "x"}, {"type": "file", "file": {"file_id": "file-nope"}}]
    r = client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": bad}]})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "file_not_found"
    big = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * (1024 * 1024)).decode()
    for uri, status in (
        (big, 413),
        ("data:image/png;base64,@@@", 400),
        ("data:application/x-msdownload;base64,AA==", 400),
    ):
        part = {"type": "image_url", "image_url": {"url": uri}}
        r = client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": [part]}]})
        assert r.status_code == status, (uri[:40], r.get_json())
        validate("ErrorResponse", r.get_json())


@pytest.mark.parametrize(
    ("data", "name", "status", "code"),
    [
        (b"MZ\x90\x00", "tool.exe", 400, "unsupported_file_type"),
        (b"not really a png", "cat.png", 400, "unsupported_file_type"),
        (b"\x00\x01binary", "notes.txt", 400, "unsupported_file_type"),
        (b"", "cat.png", 400, "empty_file"),
        (PNG + b"\0" * (1024 * 1024), "big.png", 413, "file_too_large"),  # cut while streaming to disk
        (PNG + b"\0" * (2 * 1024 * 1024), "big.png", 413, "file_too_large"),  # refused by Content-Length
        (PNG, "../../x.png", 400, "invalid_file_name"),
        (PNG, "..\\..\\x.png", 400, "invalid_file_name"),
        (PNG, "/tmp/x.png", 400, "invalid_file_name"),
        (PNG, "..", 400, "invalid_file_name"),
        (PNG, "x\x00.png", 400, "invalid_file_name"),
    ],
)
def test_bad_uploads_are_rejected_leaving_nothing(client, fake_qwen, fake_oss, tmp_path, data, name, status, code):
    for path in ("/api/files/upload", "/v1/files"):
        r = upload(client, data, name, path=path, purpose="vision")
        assert r.status_code == status, r.get_json()
        validate("ErrorResponse", r.get_json())
        assert r.get_json()["error"]["code"] == code
    assert leftovers(tmp_path) == []
    assert not any(p.name == "x.png" for p in tmp_path.parent.rglob("x.png"))
    assert fake_oss.objects == {} and not any(x["path"].endswith("getstsToken") for x in fake_qwen.requests)


def test_missing_field_purpose_and_non_multipart(client, fake_oss, tmp_path) -> None:
    cases = [
        client.post(
            "/api/files/upload", data={"other": (io.BytesIO(PNG), "cat.png")}, content_type="multipart/form-data"
        ),
        client.post("/api/files/upload", data={"file": "just text"}, content_type="multipart/form-data"),
        client.post("/api/files/upload", json={"file": "x"}),
        client.post("/v1/files", data={"file": (io.BytesIO(PNG), "cat.png")}, content_type="multipart/form-data"),
        upload(client, path="/v1/files", purpose="wizardry"),
    ]
    params = [c.get_json()["error"]["param"] for c in cases]
    assert [c.status_code for c in cases] == [400] * 5
    assert params == ["file", "file", "file", "purpose", "purpose"]
    assert leftovers(tmp_path) == [] and fake_oss.objects == {}


def test_storage_failure_is_502_and_cleans_up(client, fake_oss, tmp_path) -> None:
    fake_oss.grant_seconds = -1  # credentials already expired when used
    r = upload(client)
    assert r.status_code == 502
    assert "SecurityTokenExpired" in r.get_json()["error"]["message"]
    assert leftovers(tmp_path) == []


def test_v1_signatures_and_v1_sts(tmp_path, fake_qwen, fake_oss) -> None:
    fake_qwen.sts_versions = {"v1"}
    app = create_app(
        app_config(tmp_path, fake_qwen, QWEN_OSS_BASE_URL=fake_oss.url, QWEN_OSS_SIGNATURE="v1", MAX_UPLOAD_MB=1)
    )
    r = upload(app.test_client())
    assert r.status_code == 200, r.get_json()
    put = next(x for x in fake_oss.requests if x["method"] == "PUT")
    assert put["headers"]["authorization"].startswith("OSS STS.") and len(fake_oss.objects) == 1


def test_seed_sts_route_forwards_upstream_json(client, fake_qwen) -> None:
    r = client.post("/api/files/getstsToken", json={"filename": "a.png", "filesize": 5, "filetype": "image"})
    assert r.status_code == 200
    body = r.get_json()
    assert body["success"] is True and body["data"]["file_path"].endswith("_a.png")
    assert list(body) == ["success", "request_id", "data"]
    r = client.post("/api/files/getstsToken", json={"filename": "a.png"})
    assert r.status_code == 400 and "Некорректные данные о файле" in r.get_json()["error"]["message"]


def test_openai_files_facade(client) -> None:
    ids = []
    for purpose, name in (("vision", "a.png"), ("user_data", "b.png")):
        r = upload(client, name=name, path="/v1/files", purpose=purpose)
        assert r.status_code == 200
        ids.append(r.get_json()["id"])
    listing = client.get("/v1/files").get_json()
    validate("ListFilesResponse", listing)
    assert [f["id"] for f in listing["data"]] == ids[::-1] and listing["has_more"] is False
    assert [f["id"] for f in client.get("/v1/files?purpose=vision&order=asc").get_json()["data"]] == ids[:1]
    page = client.get("/v1/files?limit=1").get_json()
    assert page["has_more"] is True and page["last_id"] == ids[1]
    assert [f["id"] for f in client.get(f"/v1/files?after={ids[1]}").get_json()["data"]] == ids[:1]
    got = client.get(f"/api/v1/files/{ids[0]}").get_json()
    validate("OpenAIFile", got)
    assert got["filename"] == "a.png" and got["bytes"] == len(PNG)
    r = client.delete(f"/v1/files/{ids[0]}")
    validate("DeleteFileResponse", r.get_json())
    assert r.get_json() == {"id": ids[0], "object": "file", "deleted": True}
    for response in (client.get(f"/v1/files/{ids[0]}"), client.delete(f"/v1/files/{ids[0]}")):
        assert response.status_code == 404
        validate("ErrorResponse", response.get_json())


def test_openai_sdk_files(live_server) -> None:
    from openai import OpenAI

    sdk = OpenAI(base_url=live_server.url + "/v1", api_key="none", max_retries=0)
    created = sdk.files.create(file=("cat.png", PNG, "image/png"), purpose="vision")
    assert created.filename == "cat.png" and created.bytes == len(PNG) and created.purpose == "vision"
    assert sdk.files.retrieve(created.id).id == created.id
    assert [f.id for f in sdk.files.list()] == [created.id]
    assert sdk.files.delete(created.id).deleted is True
    data_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    reply = sdk.chat.completions.with_raw_response.create(
        model="qwen3-max",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": data_uri}}],
            }
        ],
    )
    assert json.loads(reply.text)["choices"][0]["message"]["content"] == "Echo: hi"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_under_gunicorn_with_curl_and_a_chunked_body(tmp_path, fake_qwen, fake_oss) -> None:
    """The seed's own example (``curl -F file=@…``) and a body of unknown length, under gevent."""
    image = tmp_path / "my cat.png"
    image.write_bytes(PNG)
    env = {
        "SESSION_DIR": str(tmp_path / "session"),
        "UPLOADS_DIR": str(tmp_path / "uploads"),
        "QWEN_BASE_URL": fake_qwen.url,
        "QWEN_OSS_BASE_URL": fake_oss.url,
        "QWEN_TOKEN": fake_qwen.make_token(),
        "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
        "MAX_UPLOAD_MB": "1",
    }
    server = Gunicorn(env, workers=1)
    try:
        out = subprocess.run(
            ["curl", "-s", "-F", f"file=@{image}", server.url + "/api/files/upload"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        body = json.loads(out.stdout)
        assert body["file"]["name"] == "my cat.png" and body["imageUrl"] == body["file"]["url"]

        boundary = "b0undary"

        def chunked(payload: bytes):
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
            yield head.encode()
            for i in range(0, len(payload), 65536):
                yield payload[i : i + 65536]
            yield f"\r\n--{boundary}--\r\n".encode()

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        ok = requests.post(server.url + "/v1/files?x=1", data=chunked(PNG), headers=headers, timeout=30)
        assert ok.status_code == 400 and ok.json()["error"]["param"] == "purpose"  # no purpose field
        big = requests.post(server.url + "/api/files/upload", data=chunked(PNG + b"\0" * 2**21), headers=headers)
        assert big.status_code == 413 and big.json()["error"]["code"] == "file_too_large"
    finally:
        server.stop()
    assert leftovers(tmp_path) == [] and len(fake_oss.objects) == 1
