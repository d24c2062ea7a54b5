"""Video tasks of chat.qwen.ai (2026 spec §6): the task id of a ``t2v`` turn and the answers
of ``GET /api/v1/tasks/status/<task_id>``. Flask-free, transport-free.

A ``t2v`` completion is sent with ``stream:false`` and answers JSON at once; the task id is in
``data.messages[0].extra.wanx.task_id`` [V Rfym21, FreeQwenApi]. The status answer is flat:
``task_status`` (``success``/``completed`` when done, ``failed``/``error`` when not
[V FreeQwenApi]; the in-progress names are not documented, so anything else counts as still
running), ``progress``, the video URL in ``content`` and a failure's ``message``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import UpstreamError
from ..events import TaskState

DONE = ("success", "succeeded", "completed", "complete", "done", "finished")
FAILED = ("failed", "fail", "error", "cancelled", "canceled")
QUEUED = ("queued", "pending", "waiting", "submitted", "init", "created")


def task_reference(payload: Any) -> tuple[str, str | None, str | None]:
    """``(task id, user message id, response id)`` of a ``t2v`` answer (the envelope's
    ``data``); ``UpstreamError`` when it holds no task id."""
    data = payload if isinstance(payload, Mapping) else {}
    messages = data.get("messages") if isinstance(data.get("messages"), list) else []
    for message in messages:
        extra = message.get("extra") if isinstance(message, Mapping) else None
        wanx = extra.get("wanx") if isinstance(extra, Mapping) else None
        task_id = wanx.get("task_id") if isinstance(wanx, Mapping) else None
        if task_id:
            response_id = message.get("id") or data.get("message_id")
            return str(task_id), _str(data.get("parent_id")), _str(response_id)
    if data.get("task_id"):
        return str(data["task_id"]), _str(data.get("parent_id")), _str(data.get("message_id"))
    raise UpstreamError("Qwen started no video task (no task id in its answer)", code="upstream_no_task")


def _str(value: Any) -> str | None:
    return str(value) if value else None


def task_state(payload: Any) -> TaskState:
    """A status answer as a ``TaskState`` (OpenAI's video statuses)."""
    data = payload if isinstance(payload, Mapping) else {}
    if isinstance(data.get("data"), Mapping) and "task_status" not in data:
        data = data["data"]  # an enveloped answer
    raw = str(data.get("task_status") or data.get("status") or "").strip().lower()
    progress = _progress(data.get("progress"))
    message = data.get("message") or data.get("error") or data.get("details")
    if raw in DONE:
        url = _video_url(data)
        if not url:
            return TaskState("failed", progress, error="The video task finished without a video URL", raw=raw)
        return TaskState("completed", 100, url=url, raw=raw)
    if raw in FAILED:
        text = str(message) if message else "The video task failed upstream"
        return TaskState("failed", progress, error=text, raw=raw)
    return TaskState("queued" if raw in QUEUED or not raw else "in_progress", progress, raw=raw)


def _progress(value: Any) -> int:
    try:
        return max(0, min(100, int(float(value))))
    except (TypeError, ValueError):
        return 0


def _video_url(data: Mapping[str, Any]) -> str | None:
    for key in ("content", "video_url", "url", "result"):
        value = data.get(key)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value.strip()
    return None
