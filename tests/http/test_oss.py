"""OSS signing (spec §5.2), the STS answer shapes (§5.1) and document parsing (§5.3)."""

from __future__ import annotations

import pytest

from qwenproxy.errors import ApiError, UpstreamError
from qwenproxy.qwen import oss
from qwenproxy.qwen.client import QwenClient
from qwenproxy.qwen.files import QwenFiles, StsCredentials
from qwenproxy.qwen.transport import DirectTransport
from tests.fakes.oss import FakeOSS, running_fake_oss

VECTOR = dict(
    access_key_id="AKID",
    access_key_secret="secret",
    security_token="sts-token",
    bucket="qwen-webui-prod",
    key="uploads/cat.png",
    content_type="image/png",
    region="ap-southeast-1",
    date="20260712T123456Z",
)


def test_v4_signature_reproduces_the_spec_test_vector() -> None:
    headers = oss.sign_put(**VECTOR)
    assert headers == {
        "Content-Type": "image/png",
        "x-oss-content-sha256": "UNSIGNED-PAYLOAD",
        "x-oss-date": "20260712T123456Z",
        "x-oss-security-token": "sts-token",
        "x-oss-user-agent": "aliyun-sdk-js/6.23.0 Chrome 132.0.0.0 on Windows 10 64-bit",
        "authorization": "OSS4-HMAC-SHA256 Credential=AKID/20260712/ap-southeast-1/oss/aliyun_v4_request,"
        "Signature=b1ca75bf242f3351c09ee3a8dd0a7fb450930f0f2e6252e683f09d3b4acdfa91",
    }
    # the older "oss-" region prefix names the same region
    assert oss.sign_put(**{**VECTOR, "region": "oss-ap-southeast-1"}) == headers


def test_object_urls() -> None:
    key = "u1/f1_my cat ü.png"
    assert oss.object_url(key, bucket="b", endpoint="oss-accelerate.aliyuncs.com") == (
        "https://b.oss-accelerate.aliyuncs.com/u1/f1_my%20cat%20%C3%BC.png"
    )
    assert oss.object_url("k", bucket="b", region="oss-ap-southeast-1") == "https://b.oss-ap-southeast-1.aliyuncs.com/k"
    assert oss.object_url("k", bucket="b", endpoint="https://b.example.com/") == "https://b.example.com/k"
    assert oss.object_url("a/b", bucket="b", endpoint="x", base_url="http://127.0.0.1:9/") == "http://127.0.0.1:9/a/b"


@pytest.mark.parametrize("scheme", ["v4", "v1"])
def test_fake_oss_accepts_good_signatures_and_rejects_bad_ones(scheme) -> None:
    with running_fake_oss() as fake:
        key = "user/file_cat ü.png"
        grant = fake.grant(key)
        sign = oss.sign_put if scheme == "v4" else oss.sign_put_v1
        args = dict(
            access_key_id=grant.access_key_id,
            security_token=grant.token,
            bucket=fake.bucket,
            key=key,
            content_type="image/png",
        )
        url = oss.object_url(key, bucket=fake.bucket, base_url=fake.url)
        oss.put_object(url, b"data", sign(access_key_secret=grant.secret, **args))
        assert fake.objects[key] == {"data": b"data", "content_type": "image/png"}

        for bad, code in (
            ({"access_key_secret": "wrong"}, "SignatureDoesNotMatch"),
            ({"security_token": "CAISwrong"}, "InvalidSecurityToken"),
            ({"key": "user/other.png"}, "AccessDenied"),
            ({"access_key_id": "STS.unknown"}, "InvalidAccessKeyId"),
        ):
            signed = sign(**{**args, "access_key_secret": grant.secret, **bad})
            with pytest.raises(UpstreamError) as info:
                oss.put_object(oss.object_url(bad.get("key", key), bucket=fake.bucket, base_url=fake.url), b"x", signed)
            assert code in info.value.message and info.value.code == "upload_rejected"
        # a body signed for one content type and sent as another
        signed = sign(access_key_secret=grant.secret, **args)
        with pytest.raises(UpstreamError, match="SignatureDoesNotMatch"):
            oss.put_object(url, b"x", {**signed, "Content-Type": "text/plain"})
        assert fake.objects[key]["data"] == b"data"


def test_sts_answers_flat_and_enveloped() -> None:
    flat = {
        "access_key_id": "STS.a",
        "access_key_secret": "s",
        "security_token": "CAIS",
        "bucketname": "qwen-webui-prod",
        "region": "oss-ap-southeast-1",
        "file_path": "u/f_cat.png",
        "file_url": "https://x/u/f_cat.png?k",
    }
    a = StsCredentials.from_payload(flat)
    b = StsCredentials.from_payload({"success": True, "request_id": "r", "data": {**flat, "file_id": "f"}})
    assert a == b and a.file_id == "f" and a.bucket == "qwen-webui-prod"
    with pytest.raises(UpstreamError, match="missing access_key_id, security_token"):
        StsCredentials.from_payload({"success": True, "data": {**flat, "access_key_id": "", "security_token": None}})


@pytest.fixture
def files_api(fake_qwen):
    client = QwenClient(
        DirectTransport(2.0, 5.0),
        {
            "QWEN_BASE_URL": fake_qwen.url,
            "QWEN_USER_AGENT": "t",
            "QWEN_BX_V": "2.5.31",
            "QWEN_FRONTEND_VERSION": "0.2.63",
        },
    )
    sleeps: list[float] = []
    api = QwenFiles(client, sleep=sleeps.append)
    api.sleeps = sleeps  # type: ignore[attr-defined]
    yield api
    client.transport.close()


@pytest.mark.parametrize(("versions", "enveloped"), [({"v1", "v2"}, False), ({"v1"}, False), ({"v1"}, True)])
def test_sts_v2_first_then_v1(files_api, fake_qwen, versions, enveloped) -> None:
    fake_qwen.sts_versions = versions
    fake_qwen.sts_v1_enveloped = enveloped
    fake_qwen.oss = FakeOSS()
    token = fake_qwen.make_token(user_id="11111111-2222-3333-4444-555555555555")
    creds = files_api.credentials(token, "cat.png", 10, "image")
    assert creds.file_path == f"11111111-2222-3333-4444-555555555555/{creds.file_id}_cat.png"
    paths = [r["path"] for r in fake_qwen.requests]
    assert paths[0] == "/api/v2/files/getstsToken"
    assert paths[-1] == ("/api/v2/files/getstsToken" if "v2" in versions else "/api/v1/files/getstsToken")
    assert fake_qwen.requests[-1]["json"] == {"filename": "cat.png", "filesize": 10, "filetype": "image"}


def test_sts_errors_are_typed(files_api, fake_qwen) -> None:
    fake_qwen.sts_versions = set()
    with pytest.raises(ApiError):
        files_api.sts_token(fake_qwen.make_token(), "cat.png", 1, "image")
    fake_qwen.sts_versions = {"v2"}
    token = fake_qwen.make_token()
    fake_qwen.revoked.add(token)
    with pytest.raises(ApiError) as info:
        files_api.sts_token(token, "cat.png", 1, "image")
    assert info.value.code == "upstream_unauthorized"


def test_parse_document_polls_until_success_or_failure(files_api, fake_qwen) -> None:
    token = fake_qwen.make_token()
    fake_qwen.parse_polls = 3
    creds = files_api.credentials(token, "a.txt", 5, "document")
    assert files_api.parse_document(token, creds.file_id, interval=0.25) == "success"
    assert files_api.sleeps == [0.25, 0.25, 0.25]
    fake_qwen.parse_result = "failed"
    fake_qwen.parse_polls = 0
    creds = files_api.credentials(token, "b.txt", 5, "document")
    with pytest.raises(UpstreamError, match="could not parse"):
        files_api.parse_document(token, creds.file_id)
    # never finishing: bounded by the timeout, measured on the injected clock
    fake_qwen.parse_polls = 10**6
    now = [0.0]
    files_api.clock = lambda: now[0]
    files_api.sleep = lambda s: now.__setitem__(0, now[0] + s)
    creds = files_api.credentials(token, "c.txt", 5, "document")
    with pytest.raises(ApiError) as info:
        files_api.parse_document(token, creds.file_id, timeout=5, interval=1)
    assert info.value.status == 504 and info.value.code == "parse_timeout"
