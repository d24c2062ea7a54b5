"""Video tasks (2026 spec §6): start one, answer where it stands from the database, poll the
upstream with backoff; a ``-video`` chat waits for its task.

Every worker answers from the ``video_task`` table. A poll is due at ``next_poll_at``; the
worker whose update moves that time forward first (a compare-and-swap) asks the upstream,
so clients polling through several workers cost at most one upstream call per interval. The
interval grows 1.5x per poll from ``VIDEO_POLL_INTERVAL`` up to ``VIDEO_POLL_MAX_INTERVAL``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .. import db
from ..content import text_of
from ..db.models import VideoTask
from ..errors import ApiError, NotFound, UpstreamError
from ..events import Event, EventStream, Finished, ReasoningDelta, ResponseStarted, TaskState, TextDelta
from ..providers import ChatRequest, MediaTask, Provider, ProviderRegistry
from ..wire.media import DEFAULT_SECONDS, video_object

log = logging.getLogger(__name__)

DONE = ("completed", "failed")
FAILED_CODE = "video_generation_failed"


@dataclass(frozen=True)
class Polling:
    """How often the upstream is asked about a task, and how long a chat waits for one."""

    first: float = 2.0
    most: float = 15.0
    chat_timeout: float = 900.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Polling:
        return cls(
            float(config.get("VIDEO_POLL_INTERVAL", 2.0)),
            float(config.get("VIDEO_POLL_MAX_INTERVAL", 15.0)),
            float(config.get("VIDEO_CHAT_TIMEOUT", 900.0)),
        )

    def interval(self, polls: int) -> float:
        """Seconds between poll number ``polls`` and the next one."""
        return min(self.most, self.first * 1.5**polls)


def video_request(
    provider: Provider, model: str | None, prompt: str, image: str | None, ratio: str, request_id: str
) -> tuple[ChatRequest, str]:
    """The chat request a video is started from, and the model name to show."""
    upstream_model, shown, options = provider.resolve_request(model)
    content: Any = prompt
    if image:
        content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image}}]
    options.update(video=True, image_size=ratio)
    request = ChatRequest(
        model=upstream_model,
        messages=[{"role": "user", "content": content}],
        requested_model=model,
        options=options,
        request_id=request_id,
    )
    return request, shown


def start(
    provider: Provider, request: ChatRequest, polling: Polling, *, model: str, prompt: str, size: str, seconds: str
) -> VideoTask:
    """Start the task upstream and keep it; the answer comes at once (status ``queued``)."""
    task = provider.start_video(request)
    with db.session():
        return VideoTask.create(
            provider=provider.name,
            task_id=task.task_id,
            account_id=task.account_id,
            upstream_chat_id=task.chat_id,
            parent_id=task.parent_id,
            response_id=task.response_id,
            model=model,
            prompt=prompt,
            size=size,
            seconds=seconds,
            next_poll_at=time.time() + polling.interval(0),
        )


def get(video_id: str) -> VideoTask:
    """The task with our id (``video_…``) or the upstream's task id; 404 when neither."""
    with db.session():
        row = VideoTask.get_or_none(VideoTask.id == video_id) or VideoTask.get_or_none(VideoTask.task_id == video_id)
    if row is None:
        raise NotFound(f"No video with id {video_id!r}", param="video_id", code="video_not_found")
    return row


def refresh(video_id: str, registry: ProviderRegistry, polling: Polling) -> VideoTask:
    """The task as the database has it, after one upstream poll if one is due."""
    row = get(video_id)
    now = time.time()
    if row.status in DONE or now < row.next_poll_at:
        return row
    with db.session():
        claimed = (
            VideoTask.update(next_poll_at=now + polling.interval(row.polls + 1), polls=row.polls + 1)
            .where((VideoTask.id == row.id) & (VideoTask.next_poll_at == row.next_poll_at))
            .execute()
        )
    if not claimed:  # another worker is asking right now
        return get(row.id)
    provider = registry.get(row.provider)
    if provider is None:
        return record(row.id, TaskState("failed", row.progress, error=f"Provider {row.provider} is not configured"))
    task = MediaTask(row.task_id, row.account_id, row.upstream_chat_id, row.parent_id, row.response_id)
    try:
        state = provider.video_status(task)
    except NotFound:
        state = TaskState("failed", row.progress, error="The upstream no longer knows this video task")
    except ApiError as exc:  # the upstream is down or refused for now: ask again next time
        log.warning("polling video task %s failed: %s", row.task_id, exc.message)
        return get(row.id)
    return record(row.id, state)


def record(video_id: str, state: TaskState) -> VideoTask:
    """Keep what the upstream said (a finished task is never changed again)."""
    fields: dict[Any, Any] = {VideoTask.status: state.status, VideoTask.progress: state.progress}
    if state.status == "completed":
        fields.update({VideoTask.url: state.url, VideoTask.completed_at: time.time(), VideoTask.progress: 100})
    elif state.status == "failed":
        fields.update({VideoTask.error_code: FAILED_CODE, VideoTask.error_message: state.error})
    with db.session():
        VideoTask.update(fields).where((VideoTask.id == video_id) & VideoTask.status.not_in(DONE)).execute()
    return get(video_id)


def to_object(row: VideoTask) -> dict[str, Any]:
    return video_object(
        id=row.id,
        model=row.model,
        status=row.status,
        progress=row.progress,
        created_at=row.created_at,
        completed_at=row.completed_at,
        size=row.size,
        seconds=row.seconds,
        prompt=row.prompt,
        error_code=row.error_code,
        error_message=row.error_message,
    )


def poll_after_ms(row: VideoTask) -> int:
    """When asking again can bring news (the ``openai-poll-after-ms`` header the SDK's
    ``videos.poll`` reads)."""
    return max(0, int((row.next_poll_at - time.time()) * 1000))


def page(limit: int, order: str, after: str | None) -> tuple[list[VideoTask], bool]:
    """A page of the list, newest first unless ``order`` is ``asc``."""
    keys = (VideoTask.created_at, VideoTask.id)
    with db.session():
        rows = list(VideoTask.select().order_by(*(k.asc() if order == "asc" else k.desc() for k in keys)))
    if after:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    return rows[:limit], len(rows) > limit


def delete(video_id: str) -> str:
    """Forget a task (the upstream keeps its own copy until its link expires)."""
    row = get(video_id)
    with db.session():
        row.delete_instance()
    return row.id


# --------------------------------------------------------------------------- -video chats


def chat_stream(
    provider: Provider, request: ChatRequest, registry: ProviderRegistry, polling: Polling, *, model: str
) -> EventStream:
    """A ``-video`` chat turn as events: the task starts (``ResponseStarted``), its progress
    goes out as reasoning while the stream loop sends ``: ping`` in between, and the answer
    is the video's URL. A failed task is an error; a client that leaves stops the waiting."""
    cancelled = threading.Event()
    stream = EventStream(iter(()), on_cancel=cancelled.set)

    def events() -> Iterator[Event]:
        users = [m for m in request.messages if m.get("role") == "user"]
        prompt = text_of(users[-1].get("content")) if users else ""
        ratio = str(request.options.get("image_size") or "16:9")
        row = start(provider, request, polling, model=model, prompt=prompt, size=ratio, seconds=DEFAULT_SECONDS)
        stream.info.update(account_id=row.account_id, upstream_chat_id=row.upstream_chat_id, video_id=row.id)
        yield ResponseStarted(row.upstream_chat_id, row.parent_id, row.response_id)
        yield ReasoningDelta(f"Video {row.id} queued.")
        seen = (row.status, row.progress)
        deadline = time.monotonic() + polling.chat_timeout
        while not cancelled.wait(max(0.0, row.next_poll_at - time.time())):
            row = refresh(row.id, registry, polling)
            if (row.status, row.progress) != seen and row.status not in DONE:
                seen = (row.status, row.progress)
                yield ReasoningDelta(f"\n{row.status.replace('_', ' ')}: {row.progress}%")
            if row.status == "completed":
                yield TextDelta(row.url or "")
                yield Finished("stop")
                return
            if row.status == "failed":
                raise UpstreamError(row.error_message or "The video task failed", code=row.error_code or FAILED_CODE)
            if time.monotonic() > deadline:
                raise UpstreamError(
                    f"Video {row.id} is still {row.status}; ask GET /v1/videos/{row.id} later",
                    code="video_timeout",
                    status=504,
                )

    stream.events = events()
    return stream
