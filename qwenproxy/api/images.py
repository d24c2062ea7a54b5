"""``POST /api/images/generations`` (also ``/v1/images/generations``): OpenAI's images API
on top of Qwen's ``t2i`` chat mode (spec §4.6, docs/MODES.md)."""

from __future__ import annotations

import base64
import time
import uuid

import requests
from flask import Blueprint, Response, current_app, g, jsonify

from ..errors import UpstreamError
from ..providers import ChatRequest
from ..serving.streaming import as_api_error
from ..wire.openai import ImageRequest, collect, parse_request
from .common import json_body, registry

bp = Blueprint("images", __name__)


@bp.post("/api/images/generations")
def generations() -> Response:
    req = parse_request(ImageRequest.model_validate, json_body())
    model = req.model
    # image models of other vendors (dall-e-3, gpt-image-1) fall back to the default model
    provider = registry().for_model(model)
    upstream_model, _shown, _options = provider.resolve_request(model)

    urls: list[str] = []
    for _ in range(req.n):
        request = ChatRequest(
            model=upstream_model,
            messages=[{"role": "user", "content": req.prompt}],
            requested_model=model,
            options={"image": True, "image_size": req.ratio},
            request_id=getattr(g, "request_id", "") or uuid.uuid4().hex,
        )
        try:
            stream = provider.open_stream(request)
            try:
                urls += collect(stream).images
            finally:
                stream.close()
        except BaseException as exc:
            raise as_api_error(exc) from exc
    if not urls:
        raise UpstreamError("The upstream answered without an image", code="upstream_no_image")
    if req.response_format == "b64_json":
        data = [{"b64_json": _download(url)} for url in urls]
    else:
        data = [{"url": url} for url in urls]
    return jsonify({"created": int(time.time()), "data": data})


def _download(url: str) -> str:
    """The image behind a (signed, short-lived) CDN URL, base64-encoded."""
    timeout = (float(current_app.config["QWEN_CONNECT_TIMEOUT"]), float(current_app.config["QWEN_READ_TIMEOUT"]))
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise UpstreamError(f"Could not fetch the generated image: {exc}", code="upstream_image_fetch") from exc
    if response.status_code != 200:
        raise UpstreamError(
            f"Fetching the generated image answered HTTP {response.status_code}", code="upstream_image_fetch"
        )
    return base64.b64encode(response.content).decode("ascii")
