"""Aliyun OSS: signing the object ``PUT`` the Qwen web front end sends (spec §5.2), and sending it.

Flask-free and transport-free: the PUT goes to the bucket's own host (not chat.qwen.ai), so
it uses plain ``requests``. Signature V4 (``OSS4-HMAC-SHA256``, what the 2026 front end and
gpt4free send) is the default; V1 (``OSS <id>:<sig>``, what the seed's ali-oss sent) is kept
for mirrors that want it. Both take the date as an argument so tests can pin it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import quote

import requests

from ..errors import UpstreamError, UpstreamUnavailable

OSS_USER_AGENT = "aliyun-sdk-js/6.23.0 Chrome 132.0.0.0 on Windows 10 64-bit"
DEFAULT_REGION = "ap-southeast-1"
DEFAULT_ENDPOINT = "oss-accelerate.aliyuncs.com"
V4_ALGORITHM = "OSS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def standard_region(region: str | None) -> str:
    """``oss-ap-southeast-1`` → ``ap-southeast-1`` (V4 scopes use the bare region)."""
    region = (region or "").strip()
    if region.startswith("oss-"):
        region = region[4:]
    return region or DEFAULT_REGION


def v4_date(now: float | None = None) -> str:
    """``YYYYMMDD'T'HHMMSS'Z'`` in UTC."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def rfc1123_date(now: float | None = None) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() if now is None else now))


def encode_key(key: str) -> str:
    """The object key URL-encoded as ali-oss does (``encodeURIComponent``, ``/`` kept)."""
    return quote(key, safe="/")


def _hmac256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def v4_signing_key(secret: str, day: str, region: str) -> bytes:
    """``aliyun_v4`` + secret → day → region → ``oss`` → ``aliyun_v4_request`` (§5.2(b))."""
    key = _hmac256(("aliyun_v4" + secret).encode("utf-8"), day)
    key = _hmac256(key, region)
    key = _hmac256(key, "oss")
    return _hmac256(key, "aliyun_v4_request")


def v4_canonical_request(method: str, bucket: str, key: str, headers: Mapping[str, str]) -> str:
    """Method, ``/<bucket>/<encoded key>``, empty query, signed headers, empty additional
    headers, ``UNSIGNED-PAYLOAD``. Signed: ``content-md5``, ``content-type`` and ``x-oss-*``."""
    lowered = {k.lower().strip(): str(v).strip() for k, v in headers.items()}
    signed = sorted(k for k in lowered if k in ("content-md5", "content-type") or k.startswith("x-oss-"))
    canonical_headers = "".join(f"{k}:{lowered[k]}\n" for k in signed)
    uri = f"/{bucket}/{encode_key(key)}" if bucket else f"/{encode_key(key)}"
    return "\n".join([method.upper(), uri, "", canonical_headers, "", UNSIGNED_PAYLOAD])


def v4_signature(
    *,
    secret: str,
    date: str,
    region: str,
    method: str,
    bucket: str,
    key: str,
    headers: Mapping[str, str],
) -> str:
    """Hex ``HMAC-SHA256`` of the V4 string to sign."""
    day = date[:8]
    scope = f"{day}/{region}/oss/aliyun_v4_request"
    canonical = v4_canonical_request(method, bucket, key, headers)
    string_to_sign = "\n".join([V4_ALGORITHM, date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    return hmac.new(v4_signing_key(secret, day, region), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_put(
    *,
    access_key_id: str,
    access_key_secret: str,
    security_token: str,
    bucket: str,
    key: str,
    content_type: str,
    region: str | None = DEFAULT_REGION,
    date: str | None = None,
    user_agent: str = OSS_USER_AGENT,
    content_md5: str | None = None,
) -> dict[str, str]:
    """The headers of a V4-signed ``PUT /<key>`` (§5.2(b)); ``date`` is ``YYYYMMDDTHHMMSSZ``."""
    date = date or v4_date()
    region = standard_region(region)
    headers = {
        "Content-Type": content_type,
        "x-oss-content-sha256": UNSIGNED_PAYLOAD,
        "x-oss-date": date,
        "x-oss-security-token": security_token,
        "x-oss-user-agent": user_agent,
    }
    if content_md5:
        headers["Content-MD5"] = content_md5
    signature = v4_signature(
        secret=access_key_secret, date=date, region=region, method="PUT", bucket=bucket, key=key, headers=headers
    )
    headers["authorization"] = (
        f"{V4_ALGORITHM} Credential={access_key_id}/{date[:8]}/{region}/oss/aliyun_v4_request,Signature={signature}"
    )
    return headers


def v1_signature(*, secret: str, method: str, bucket: str, key: str, headers: Mapping[str, str], date: str) -> str:
    """Base64 ``HMAC-SHA1`` of the V1 string to sign (§5.2(a))."""
    lowered = {k.lower().strip(): str(v).strip() for k, v in headers.items()}
    oss_headers = [f"{k}:{lowered[k]}" for k in sorted(k for k in lowered if k.startswith("x-oss-"))]
    resource = f"/{bucket}/{key}" if bucket else f"/{key}"
    lines = [method.upper(), lowered.get("content-md5", ""), lowered.get("content-type", ""), date]
    string_to_sign = "\n".join(lines + oss_headers + [resource])
    digest = hmac.new(secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def sign_put_v1(
    *,
    access_key_id: str,
    access_key_secret: str,
    security_token: str,
    bucket: str,
    key: str,
    content_type: str,
    date: str | None = None,
    user_agent: str = OSS_USER_AGENT,
) -> dict[str, str]:
    """The headers of a V1-signed ``PUT`` (what the seed's ali-oss sends); ``date`` RFC 1123."""
    date = date or rfc1123_date()
    headers = {
        "Content-Type": content_type,
        "x-oss-date": date,
        "x-oss-security-token": security_token,
        "x-oss-user-agent": user_agent,
    }
    signature = v1_signature(secret=access_key_secret, method="PUT", bucket=bucket, key=key, headers=headers, date=date)
    headers["Authorization"] = f"OSS {access_key_id}:{signature}"
    return headers


def object_url(
    key: str,
    *,
    bucket: str,
    endpoint: str | None = None,
    region: str | None = None,
    base_url: str | None = None,
) -> str:
    """Where to ``PUT`` the object: ``base_url`` (``QWEN_OSS_BASE_URL``, tests and mirrors) or
    ``https://<bucket>.<endpoint>`` from the STS answer (``oss-<region>.aliyuncs.com`` if none)."""
    if base_url:
        return f"{base_url.rstrip('/')}/{encode_key(key)}"
    host = (endpoint or "").strip()
    host = re.sub(r"^https?://", "", host).rstrip("/")
    if not host:
        host = f"oss-{standard_region(region)}.aliyuncs.com"
    if not host.startswith(bucket + "."):
        host = f"{bucket}.{host}"
    return f"https://{host}/{encode_key(key)}"


def error_from_oss(status: int, body: bytes) -> UpstreamError:
    """OSS's XML error (``<Code>``, ``<Message>``) as a typed error."""
    text = body.decode("utf-8", "replace")
    code = re.search(r"<Code>(.*?)</Code>", text, re.S)
    message = re.search(r"<Message>(.*?)</Message>", text, re.S)
    detail = f"{code.group(1)}: {message.group(1)}" if code and message else f"HTTP {status}"
    return UpstreamError(f"Qwen's file storage rejected the upload ({detail})", code="upload_rejected")


def put_object(
    url: str,
    body: IO[bytes] | bytes,
    headers: Mapping[str, str],
    *,
    timeout: tuple[float, float] = (10.0, 120.0),
    session: Any = None,
) -> None:
    """Send the signed ``PUT``; OSS answers 200 (or 204) with an empty body on success."""
    sender = session or requests
    try:
        response = sender.put(url, data=body, headers=dict(headers), timeout=timeout)
    except requests.RequestException as exc:
        raise UpstreamUnavailable(f"Cannot reach Qwen's file storage ({type(exc).__name__})") from exc
    try:
        if response.status_code not in (200, 201, 204):
            raise error_from_oss(response.status_code, response.content)
    finally:
        response.close()
