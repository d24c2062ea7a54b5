"""The 2026 additions to the fake chat.qwen.ai that live outside the chat pipeline.

Mixed into :class:`tests.fakes.qwen_web.FakeQwen`: ``GET /api/v2/models/``, the v2 account
endpoints (sign-in, refresh, settings, entitlement quota) and video tasks. The switch table
is in the docstring of ``tests/fakes/qwen_web.py`` and in ``docs/QWEN_2026.md``; shapes
follow ``/work/shared/specs/qwen-web-2026.md`` (§1, §5, §6) and the peers cited there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes import issued

# §1: the live list, 2026-07/08, in the order the site lists it
MODELS_2026: list[str] = ["qwen3.7-plus", "qwen3.8-max", "qwen3.7-max", "qwen3.6-plus"]
# §5 guest mode: "a smaller model list" [choice: which ones]
GUEST_MODELS_2026: list[str] = ["qwen3.7-plus", "qwen3.6-plus"]
# §1: think_skip.enable is false for the qwen3.8 family (abilities.thinking = 4)
THINKING_LOCKED: frozenset[str] = frozenset({"qwen3.8-max", "qwen3.8-max-preview"})
# [choice] the envelope code is from Rfym21/indicatorspro; the text is DashScope's wording
THINKING_LOCKED_DETAILS = "The value of the enable_thinking parameter is restricted to True."
# qwengate 0552292 (quotaService.ts): the feature list the SPA sends
QUOTA_FEATURES: list[str] = [
    "model",
    "thinking",
    "search",
    "t2v",
    "t2i",
    "deep_research_deep_research",
    "artifacts_deploy_artifacts",
    "artifacts_deploy_web_dev",
    "artifacts_deploy_deep_research",
    "audio_chat_AudioOnly",
    "audio_chat_AudioAndVideo",
    "deep_research_aipodcast",
    "code",
    "image_edit",
    "deep_research_deep_research_advanced",
]
# [choice] limited features; everything else (and every model) is unlimited (-1)
DEFAULT_FEATURE_QUOTA: dict[str, int] = {"t2v": 3, "t2i": 50, "image_edit": 50, "deep_research_deep_research": 5}
TASK_STATES = ("queued", "running", "success", "failed")
TASK_FAILED_MESSAGE = "Video generation failed: the content did not pass review."
INVALID_REFRESH = "Refresh token is invalid or expired, please log in again."
# the smallest ISO-BMFF header a player recognises as MP4 (served for generated videos)
TINY_MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom\x00\x00\x00\x08free\x00\x00\x00\x08mdat"


def _json(obj: Any, status: int = 200) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status=status, content_type="application/json")


class Site2026Mixin:
    """Endpoints and knobs of the 2026 site; ``FakeQwen.__init__`` calls ``_init_2026``."""

    def _init_2026(self) -> None:
        # models (§1)
        self.models_v2: bool = True  # False: GET /api/v2/models/ answers 404
        self.thinking_locked_models: set[str] = set(THINKING_LOCKED)
        # guest mode (§5)
        self.guest_mode: bool = False
        self.guest_models: list[str] | None = None  # None: GUEST_MODELS_2026 ∩ models, else models[:2]
        # accounts (§5)
        self.signin_v1_status: int | None = None  # e.g. 405: v1 sign-in answers that status
        self.signin_v2: bool = True  # False: POST /api/v2/auths/signin answers 404
        self.token_lifetime: int = 7 * 86400  # seconds, for tokens from sign-in and refresh
        self.refresh_token_lifetime: int = 30 * 86400
        self.refresh_rotates: bool = True  # a refresh answers a new refresh token; the old one dies
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.signin_calls: list[str] = []  # "v1" / "v2", one per call
        self.refresh_calls: list[str] = []  # "ok" / "invalid", one per call
        self.settings_updates: list[dict[str, Any]] = []  # {"user_id", "body"}
        self.user_settings: dict[str, dict[str, Any]] = {}
        self.entitlement_quota: dict[str, dict[str, Any]] = {}  # model id or feature -> quota override
        self.user_tier: str = "free"
        self.quota_calls: list[list[str]] = []  # the features asked, one list per call
        # video tasks (§6)
        self.tasks: dict[str, dict[str, Any]] = {}
        self.task_queued_polls: int = 1
        self.task_running_polls: int = 2
        self.task_outcome: str = "success"  # or "failed"; read when a t2v turn starts its task

    # ------------------------------------------------------------------ models (§1)

    def _guest_model_list(self) -> list[str]:
        if self.guest_models is not None:
            return list(self.guest_models)
        preferred = [m for m in GUEST_MODELS_2026 if m in self.models]
        return preferred or list(self.models[:2])

    def _visible_models(self, request: Request) -> list[str]:
        """Guests (no valid token while guest mode is on) see the guest list."""
        if self.guest_mode and self._authenticate(request) is None:
            return self._guest_model_list()
        return list(self.models)

    def _ep_models_v2(self, request: Request, body: Any) -> Response:
        if not self.models_v2:
            return _json({"detail": "Not Found"}, status=404)
        entries = [self._model_entry(m, v2=True) for m in self._visible_models(request)]
        return self._ok({"data": entries})

    # ------------------------------------------------------------------ accounts (§5)

    def _issue_refresh(self, user_id: str) -> str:
        token = issued("rt_" + secrets.token_urlsafe(32))
        with self._lock:
            self.refresh_tokens[token] = {"user_id": user_id, "exp": self.clock() + self.refresh_token_lifetime}
        return token

    def _token_pair(self, user_id: str) -> tuple[str, dict[str, Any], str]:
        token = self.make_token(user_id=user_id, expires_in=self.token_lifetime)
        payload = self._decode_token(token)
        assert payload is not None
        return token, payload, self._issue_refresh(user_id)

    @staticmethod
    def _set_auth_cookies(response: Response, token: str, exp: int, refresh: str, refresh_exp: float) -> None:
        response.set_cookie("token", token, expires=exp, httponly=True, samesite="Lax", path="/")
        response.set_cookie("refresh_token", refresh, expires=int(refresh_exp), httponly=True, samesite="Lax", path="/")

    def _ep_signin_v2(self, request: Request, body: Any) -> Response:
        with self._lock:
            self.signin_calls.append("v2")
        if not self.signin_v2:
            return _json({"detail": "Not Found"}, status=404)
        if not (
            isinstance(body, dict) and isinstance(body.get("email"), str) and isinstance(body.get("password"), str)
        ):
            return self._fail("Bad_Request", "Invalid input")
        with self._lock:
            user = self.users.get(body["email"].lower())
        if user is None or not hmac.compare_digest(body["password"].lower(), user["password_sha256"]):
            return self._fail("Unauthorized", self.INVALID_CREDENTIALS)
        token, payload, refresh = self._token_pair(user["id"])
        refresh_exp = self.refresh_tokens[refresh]["exp"]
        data = {**self._session_info(token, payload), "refresh_token": refresh, "refresh_expires_at": int(refresh_exp)}
        response = self._ok(data)
        self._set_auth_cookies(response, token, payload["exp"], refresh, refresh_exp)
        return response

    def _ep_refresh(self, request: Request, body: Any) -> Response:
        presented = body.get("refresh_token") if isinstance(body, dict) else None
        if not isinstance(presented, str) or not presented:
            presented = request.cookies.get("refresh_token") or ""
        with self._lock:
            entry = self.refresh_tokens.get(presented)
            valid = entry is not None and entry["exp"] > self.clock()
            self.refresh_calls.append("ok" if valid else "invalid")
            if valid and self.refresh_rotates:
                del self.refresh_tokens[presented]
        if not valid:
            return self._fail("unauthorized", INVALID_REFRESH)
        assert entry is not None
        token, payload, refresh = self._token_pair(entry["user_id"])
        if not self.refresh_rotates:
            with self._lock:
                del self.refresh_tokens[refresh]
            refresh = presented
        refresh_exp = self.refresh_tokens[refresh]["exp"]
        data = {
            "token": token,
            "token_type": "Bearer",
            "expires_at": payload["exp"],
            "refresh_token": refresh,
            "refresh_expires_at": int(refresh_exp),
        }
        response = self._ok(data)
        self._set_auth_cookies(response, token, payload["exp"], refresh, refresh_exp)
        return response

    @staticmethod
    def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                Site2026Mixin._merge(into[key], value)
            else:
                into[key] = value

    def _ep_settings_update(self, request: Request, body: Any) -> Response:
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        if not isinstance(body, dict) or not body:
            return self._fail("Bad_Request", "Invalid input")
        user_id = auth[1]["id"]
        with self._lock:
            self.settings_updates.append({"user_id": user_id, "body": json.loads(json.dumps(body))})
            settings = self.user_settings.setdefault(user_id, {})
            self._merge(settings, body)
            snapshot = json.loads(json.dumps(settings))
        return self._ok(snapshot)

    def _quota_for(self, key: str, *, model: bool) -> dict[str, Any]:
        default = -1 if model else DEFAULT_FEATURE_QUOTA.get(key, -1)
        quota = {"times_left": default, "time_unit": "day", "time_amount": 1}
        quota.update(self.entitlement_quota.get(key, {}))
        return quota

    def _ep_entitlement_quota(self, request: Request, body: Any) -> Response:
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        features = body.get("features") if isinstance(body, dict) else None
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            return self._fail("Bad_Request", "Invalid input: features")
        with self._lock:
            self.quota_calls.append(list(features))
        data: dict[str, Any] = {"user_tier": self.user_tier}
        for feature in features:
            if feature == "model":
                data["model"] = {m: self._quota_for(m, model=True) for m in self.models}
            else:
                data[feature] = self._quota_for(feature, model=False)
        return self._ok(data)

    # ------------------------------------------------------------------ video tasks (§6)

    def _start_task(self, user_id: str, turn: Any, prompt: str) -> str:
        task_id = str(uuid.uuid4())
        key = secrets.token_urlsafe(36)
        url = f"{self.image_base_url}/output/{user_id}/t2v/{task_id}/{int(time.time())}.mp4?key={key}"
        with self._lock:
            self.tasks[task_id] = {
                "owner": user_id,
                "chat_id": turn.chat_id,
                "response_id": turn.response_id,
                "prompt": prompt,
                "polls": 0,
                "queued": self.task_queued_polls,
                "running": self.task_running_polls,
                "outcome": self.task_outcome,
                "url": url,
                "status": "queued",
            }
        return task_id

    def _ep_task_status(self, request: Request, body: Any, task_id: str) -> Response:
        auth = self._authenticate(request)
        if auth is None and not self.guest_mode:
            return self._unauthorized()
        user_id = auth[1]["id"] if auth is not None else self._guest_id(request)
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None or task["owner"] != user_id:
                return self._fail("Not_Found", "Task not found")
            task["polls"] += 1
            polls, queued, running = task["polls"], task["queued"], task["running"]
            out: dict[str, Any] = {"task_id": task_id}
            if polls <= queued:
                out.update(task_status="queued", progress=0)
            elif polls <= queued + running:
                out.update(task_status="running", progress=int(100 * (polls - queued) / (running + 1)))
            elif task["outcome"] == "success":
                out.update(task_status="success", progress=100, content=task["url"])
                chat = self.chats.get(task["chat_id"])
                for msg in chat["messages"] if chat else []:
                    if msg["id"] == task["response_id"]:
                        msg["content"] = task["url"]
            else:
                out.update(task_status="failed", progress=0, message=TASK_FAILED_MESSAGE)
            task["status"] = out["task_status"]
        return _json(out)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def sha256_hex(password: str) -> str:
        """What the front end sends as ``password`` (§2.2, §5)."""
        return hashlib.sha256(password.encode("utf-8")).hexdigest()
