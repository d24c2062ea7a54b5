"""Offline fake of the Aliyun OSS bucket chat.qwen.ai uploads into (spec §5.2), over real HTTP.

- ``grant(key)`` issues STS-style credentials for exactly one object key (the fake
  ``getstsToken`` of ``tests.fakes.qwen_web`` calls it); ``presign(key)`` gives the
  short-lived GET URL that STS answers carry as ``file_url``.
- ``PUT /<key>`` verifies, with its own implementation, signature V4
  (``OSS4-HMAC-SHA256``, §5.2(b)) or V1 (``OSS id:sig``, §5.2(a)), the
  ``x-oss-security-token``, the grant's key and expiry and the date skew (15 min); then
  stores the object and answers 200 with an empty body and an ``ETag``. Failures answer OSS's
  XML error with 403: ``SignatureDoesNotMatch``, ``InvalidAccessKeyId``,
  ``InvalidSecurityToken`` *[choice: code name]*, ``SecurityTokenExpired``, ``AccessDenied``
  (key outside the grant), ``RequestTimeTooSkewed``.
- ``GET /<key>?x-oss-date=…&x-oss-expires=…&x-oss-signature=…`` serves a stored object when
  the presigned query is valid and unexpired; ``NoSuchKey`` (404) otherwise.
Records: ``requests``, ``objects`` (key → data, content type), ``rejections`` (codes).
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

from werkzeug.wrappers import Request, Response

from tests.fakes.server import BackgroundServer

SKEW_SECONDS = 15 * 60
MESSAGES = {
    "SignatureDoesNotMatch": "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method.",
    "InvalidAccessKeyId": "The OSS Access Key Id you provided does not exist in our records.",
    "InvalidSecurityToken": "The security token you provided is invalid.",
    "SecurityTokenExpired": "The security token you provided has expired.",
    "AccessDenied": "You have no right to access this object because of bucket acl.",
    "RequestTimeTooSkewed": "The difference between the request time and the current time is too large.",
    "NoSuchKey": "The specified key does not exist.",
    "InvalidArgument": "Authorization header is invalid.",
}


@dataclass
class Grant:
    access_key_id: str
    secret: str
    token: str
    key: str
    expires: float


def _h(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class FakeOSS:
    def __init__(self, *, bucket: str = "qwen-webui-prod", region: str = "ap-southeast-1") -> None:
        self.bucket = bucket
        self.region = region
        self.grant_seconds = 3600
        self.grants: dict[str, Grant] = {}
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.rejections: list[str] = []
        self.url = ""
        self._presign_key = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._server: BackgroundServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> FakeOSS:
        self._server = BackgroundServer(self._wsgi, port=port, name="fake-oss")
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    # ------------------------------------------------------------------ credentials
    def grant(self, key: str) -> Grant:
        grant = Grant(
            access_key_id="STS." + secrets.token_urlsafe(18),
            secret=secrets.token_urlsafe(30),
            token="CAIS" + secrets.token_urlsafe(90),
            key=key,
            expires=time.time() + self.grant_seconds,
        )
        with self._lock:
            self.grants[grant.access_key_id] = grant
        return grant

    def _presign_signature(self, key: str, date: str, expires: str) -> str:
        return hmac.new(self._presign_key, f"{key}\n{date}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def presign(self, key: str, expires: int = 300) -> str:
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        query = urlencode(
            {
                "x-oss-date": date,
                "x-oss-expires": str(expires),
                "x-oss-signature": self._presign_signature(key, date, str(expires)),
            }
        )
        return f"{self.url}/{quote(key, safe='/')}?{query}"

    # ------------------------------------------------------------------ WSGI
    def _error(self, code: str, status: int = 403, **extra: str) -> Response:
        with self._lock:
            self.rejections.append(code)
        fields = "".join(f"  <{k}>{v}</{k}>\n" for k, v in extra.items())
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
            f"  <Code>{code}</Code>\n  <Message>{MESSAGES.get(code, code)}</Message>\n"
            f"  <RequestId>{uuid.uuid4().hex[:24].upper()}</RequestId>\n"
            f"  <HostId>{self.bucket}.oss-accelerate.aliyuncs.com</HostId>\n{fields}</Error>\n"
        )
        return Response(xml, status=status, content_type="application/xml", headers={"x-oss-request-id": "fake"})

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        request = Request(environ)
        raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.path
        key = unquote(raw_path.split("?", 1)[0]).lstrip("/")
        data = request.get_data()
        with self._lock:
            self.requests.append(
                {
                    "method": request.method,
                    "key": key,
                    "headers": {k.lower(): v for k, v in request.headers.items()},
                    "size": len(data),
                }
            )
        if request.method == "PUT":
            response = self._put(request, key, data)
        elif request.method == "GET":
            response = self._get(request, key)
        else:
            response = self._error("MethodNotAllowed", 405)
        return response(environ, start_response)

    def _get(self, request: Request, key: str) -> Response:
        args = request.args
        date, expires = args.get("x-oss-date", ""), args.get("x-oss-expires", "")
        signature = args.get("x-oss-signature", "")
        if not signature or not hmac.compare_digest(signature, self._presign_signature(key, date, expires)):
            return self._error("SignatureDoesNotMatch")
        try:
            issued = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return self._error("AccessDenied")
        if time.time() > issued + int(expires or 0):
            return self._error("AccessDenied")
        with self._lock:
            obj = self.objects.get(key)
        if obj is None:
            return self._error("NoSuchKey", 404)
        return Response(obj["data"], content_type=obj["content_type"])

    def _put(self, request: Request, key: str, data: bytes) -> Response:
        headers = {k.lower(): v.strip() for k, v in request.headers.items()}
        auth = headers.get("authorization", "")
        if auth.startswith("OSS4-HMAC-SHA256 "):
            failure = self._check_v4(auth, headers, key)
        elif auth.startswith("OSS "):
            failure = self._check_v1(auth, headers, key)
        else:
            failure = ("InvalidArgument", {})
        if failure is not None:
            code, extra = failure
            return self._error(code, **extra)
        with self._lock:
            self.objects[key] = {"data": data, "content_type": headers.get("content-type", "")}
        etag = hashlib.md5(data).hexdigest().upper()
        return Response(b"", status=200, headers={"ETag": f'"{etag}"', "x-oss-request-id": "fake"})

    def _check_grant(self, access_key_id: str, headers: dict[str, str], key: str) -> tuple[Grant | None, Any]:
        with self._lock:
            grant = self.grants.get(access_key_id)
        if grant is None:
            return None, ("InvalidAccessKeyId", {"OSSAccessKeyId": access_key_id})
        if not hmac.compare_digest(headers.get("x-oss-security-token", ""), grant.token):
            return None, ("InvalidSecurityToken", {})
        if time.time() > grant.expires:
            return None, ("SecurityTokenExpired", {})
        if key != grant.key:
            return None, ("AccessDenied", {})
        return grant, None

    def _check_v4(self, auth: str, headers: dict[str, str], key: str) -> Any:
        fields = dict(part.strip().split("=", 1) for part in auth[len("OSS4-HMAC-SHA256 ") :].split(",") if "=" in part)
        credential = fields.get("Credential", "").split("/")
        if len(credential) != 5 or credential[3:] != ["oss", "aliyun_v4_request"] or "Signature" not in fields:
            return "InvalidArgument", {}
        access_key_id, day, region = credential[:3]
        grant, failure = self._check_grant(access_key_id, headers, key)
        if failure:
            return failure
        date = headers.get("x-oss-date", "")
        try:
            stamp = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return "InvalidArgument", {}
        if abs(time.time() - stamp) > SKEW_SECONDS:
            return "RequestTimeTooSkewed", {}
        if day != date[:8] or region != self.region or "x-oss-content-sha256" not in headers:
            return "SignatureDoesNotMatch", {}
        additional = [h.strip().lower() for h in fields.get("AdditionalHeaders", "").split(";") if h.strip()]
        signed = sorted(
            {h for h in headers if h in ("content-type", "content-md5") or h.startswith("x-oss-")} | set(additional)
        )
        canonical = "\n".join(
            [
                "PUT",
                "/" + self.bucket + "/" + quote(key, safe="/"),
                "",
                "".join(f"{h}:{headers.get(h, '')}\n" for h in signed),
                ";".join(additional),
                headers["x-oss-content-sha256"],
            ]
        )
        scope = f"{day}/{region}/oss/aliyun_v4_request"
        to_sign = f"OSS4-HMAC-SHA256\n{date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signing_key = _h(_h(_h(_h(("aliyun_v4" + grant.secret).encode(), day), region), "oss"), "aliyun_v4_request")
        expected = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields["Signature"]):
            return "SignatureDoesNotMatch", {"StringToSign": to_sign}
        return None

    def _check_v1(self, auth: str, headers: dict[str, str], key: str) -> Any:
        match = re.fullmatch(r"OSS ([^:]+):(.+)", auth)
        if match is None:
            return "InvalidArgument", {}
        grant, failure = self._check_grant(match.group(1), headers, key)
        if failure:
            return failure
        date = headers.get("x-oss-date") or headers.get("date", "")
        try:
            stamp = calendar.timegm(time.strptime(date, "%a, %d %b %Y %H:%M:%S GMT"))
        except ValueError:
            return "InvalidArgument", {}
        if abs(time.time() - stamp) > SKEW_SECONDS:
            return "RequestTimeTooSkewed", {}
        oss_lines = [f"{h}:{headers[h]}" for h in sorted(h for h in headers if h.startswith("x-oss-"))]
        lines = ["PUT", headers.get("content-md5", ""), headers.get("content-type", ""), date]
        to_sign = "\n".join([*lines, *oss_lines, f"/{self.bucket}/{key}"])
        expected = base64.b64encode(hmac.new(grant.secret.encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(expected, match.group(2)):
            return "SignatureDoesNotMatch", {"StringToSign": to_sign}
        return None


@contextmanager
def running_fake_oss(**kwargs: Any) -> Iterator[FakeOSS]:
    fake = FakeOSS(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
