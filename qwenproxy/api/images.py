"""OpenAI's images API on Qwen's image modes (docs/MODES.md): ``POST /api/images/generations``
and ``POST /api/images/edits`` (also under ``/v1``)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from ..errors import BadRequest
from ..serving import images
from ..serving.fetch import MediaFetcher
from ..wire.media import ImageEditRequest
from ..wire.openai import ImageRequest, parse_request
from .common import json_body, registry
from .files import parse_multipart, uploader

bp = Blueprint("images", __name__)

NO_IMAGE = "`image` is required: one or more image files (or, as JSON, URLs, data: URIs or file ids)"


def _request_id() -> str:
    return getattr(g, "request_id", "") or uuid.uuid4().hex


def _draw(req: ImageRequest, refs: list[str]) -> Response:
    # image models of other vendors (dall-e-3, gpt-image-1) fall back to the default model
    return jsonify(
        images.draw(
            registry().for_model(req.model),
            model=req.model,
            prompt=req.prompt,
            n=req.n,
            ratio=req.ratio,
            images=refs,
            response_format=req.response_format,
            fetcher=MediaFetcher.from_config(current_app.config),
            request_id=_request_id(),
        )
    )


@bp.post("/api/images/generations")
def generations() -> Response:
    return _draw(parse_request(ImageRequest.model_validate, json_body()), [])


@bp.post("/api/images/edits")
def edits() -> Response:
    """Multipart as OpenAI's (``image`` or ``image[]`` files); JSON with image references too."""
    if request.mimetype != "multipart/form-data":
        body = json_body()
        refs = _json_images(body)
        return _draw(parse_request(ImageEditRequest.model_validate, body), refs)
    up = uploader()
    with up.spool() as spool:
        form, files = parse_multipart(up, spool)
        sent = files.getlist("image") + files.getlist("image[]")
        if not sent:
            raise BadRequest(NO_IMAGE, param="image", code="missing_image")
        req = parse_request(ImageEditRequest.from_form, form)
        refs = images.upload_images(up, [(f.stream, f.filename, getattr(f.stream, "size", None)) for f in sent])
    return _draw(req, refs)


def _json_images(body: dict[str, Any]) -> list[str]:
    """``image`` (a reference or a list) and ``images`` (``[{image_url} | {file_id}]``, as
    OpenAI's JSON edits take them)."""
    found: list[Any] = []
    image = body.get("image")
    found += image if isinstance(image, list) else ([image] if image else [])
    for item in body.get("images") or []:
        found.append(item.get("image_url") or item.get("file_id") if isinstance(item, dict) else item)
    refs = [r.get("url") if isinstance(r, dict) else r for r in found]
    if not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise BadRequest(NO_IMAGE, param="image", code="missing_image")
    return refs
