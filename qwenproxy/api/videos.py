"""OpenAI's videos API on Qwen's ``t2v`` tasks (docs/MODES.md): ``POST /api/videos`` starts a
task and answers at once, ``GET /api/videos/<id>`` says where it stands (polling the upstream
when due), ``GET /api/videos/<id>/content`` hands over the video. The seed-style
``POST /api/videos/generations`` and ``GET /api/tasks/status/<id>`` are aliases."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request, stream_with_context

from ..errors import BadRequest, Conflict
from ..serving import images, videos
from ..serving.fetch import MediaFetcher
from ..wire.media import VideoRequest, task_status_object, video_list
from ..wire.openai import parse_request
from .common import json_body, registry
from .files import parse_multipart, uploader

bp = Blueprint("videos", __name__)


def _polling() -> videos.Polling:
    return videos.Polling.from_config(current_app.config)


def _answer(row: Any) -> Response:
    response = jsonify(videos.to_object(row))
    if row.status not in videos.DONE:
        response.headers["openai-poll-after-ms"] = str(videos.poll_after_ms(row))
    return response


def _start(req: VideoRequest, image: str | None) -> Any:
    provider = registry().for_model(req.model)
    request_id = getattr(g, "request_id", "") or uuid.uuid4().hex
    chat_request, shown = videos.video_request(provider, req.model, req.prompt, image, req.ratio, request_id)
    return videos.start(
        provider, chat_request, _polling(), model=shown, prompt=req.prompt, size=req.size, seconds=req.seconds
    )


def _create() -> Any:
    """A video from JSON or from multipart (the OpenAI SDK's shape; ``input_reference`` may
    be an image file, uploaded through the usual upload path)."""
    if request.mimetype != "multipart/form-data":
        req = parse_request(VideoRequest.model_validate, json_body())
        return _start(req, req.image_reference())
    up = uploader()
    with up.spool() as spool:
        form, files = parse_multipart(up, spool)
        req = parse_request(VideoRequest.from_form, form)
        image = req.image_reference()
        sent = files.get("input_reference") or files.get("image")
        if sent is not None:
            image = images.upload_images(up, [(sent.stream, sent.filename, getattr(sent.stream, "size", None))])[0]
    return _start(req, image)


@bp.post("/api/videos")
def create() -> Response:
    return _answer(_create())


@bp.post("/api/videos/generations")
def generations() -> Response:
    """Seed style: the same task; ``task_id`` is the id ``/api/tasks/status`` takes."""
    row = _create()
    return jsonify({**videos.to_object(row), "task_id": row.id})


@bp.get("/api/videos")
def list_videos() -> Response:
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("`order` must be asc or desc", param="order")
    limit_text = request.args.get("limit", "20")
    limit = int(limit_text) if limit_text.isdigit() else 0
    if not 1 <= limit <= 100:
        raise BadRequest("`limit` must be between 1 and 100", param="limit")
    rows, more = videos.page(limit, order, request.args.get("after"))
    return jsonify(video_list([videos.to_object(r) for r in rows], more))


@bp.get("/api/videos/<video_id>")
def retrieve(video_id: str) -> Response:
    return _answer(videos.refresh(video_id, registry(), _polling()))


@bp.delete("/api/videos/<video_id>")
def delete(video_id: str) -> Response:
    return jsonify({"id": videos.delete(video_id), "object": "video.deleted", "deleted": True})


@bp.get("/api/videos/<video_id>/content")
def content(video_id: str) -> Response:
    """The finished video, streamed from the upstream's host (``VIDEO_CONTENT=redirect``: a
    redirect to its signed link instead)."""
    variant = request.args.get("variant", "video")
    if variant != "video":
        raise BadRequest("Only the `video` variant exists here (no thumbnail or spritesheet)", param="variant")
    row = videos.refresh(video_id, registry(), _polling())
    if row.status != "completed" or not row.url:
        code = "video_failed" if row.status == "failed" else "video_not_ready"
        raise Conflict(f"Video {row.id} is {row.status}; its content exists once it is completed", code=code)
    fetcher = MediaFetcher.from_config(current_app.config)
    fetcher.check(row.url)
    if str(current_app.config.get("VIDEO_CONTENT") or "stream").lower() == "redirect":
        return redirect(row.url, code=302)
    download = fetcher.open(row.url)
    response = Response(stream_with_context(download.chunks()), mimetype=download.content_type)
    if download.length is not None:
        response.headers["Content-Length"] = str(download.length)
    response.call_on_close(download.close)
    return response


@bp.get("/api/tasks/status/<video_id>")
def task_status(video_id: str) -> Response:
    """Seed style: the upstream's own status shape around the video object."""
    row = videos.refresh(video_id, registry(), _polling())
    return jsonify(task_status_object(videos.to_object(row), row.url))
