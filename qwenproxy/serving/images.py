"""OpenAI's images API on Qwen's image modes: generations (``t2i``) and edits (``image_edit``
with the source images in ``files[]``, 2026 spec §6); URLs or, for ``b64_json``, the
downloaded bytes (serving/fetch.py)."""

from __future__ import annotations

import base64
import time
from typing import IO, Any

from ..errors import BadRequest, UpstreamError
from ..providers import ChatRequest, Provider
from ..uploads.uploader import Uploader
from ..uploads.validation import IMAGE_TYPES, clean_name, sniff_image
from ..wire.openai import collect
from .fetch import MediaFetcher
from .streaming import as_api_error


def draw(
    provider: Provider,
    *,
    model: str | None,
    prompt: str,
    n: int,
    ratio: str,
    images: list[str],
    response_format: str,
    fetcher: MediaFetcher,
    request_id: str,
) -> dict[str, Any]:
    """``n`` pictures (each one upstream turn) as an OpenAI ``ImagesResponse``: new ones, or
    edits of ``images`` (URLs, data: URIs or file ids) when there are any."""
    upstream_model, _shown, _options = provider.resolve_request(model)
    content: Any = prompt
    if images:
        content = [{"type": "text", "text": prompt}, *({"type": "image_url", "image_url": {"url": i}} for i in images)]
    urls: list[str] = []
    for _ in range(n):
        request = ChatRequest(
            model=upstream_model,
            messages=[{"role": "user", "content": content}],
            requested_model=model,
            options={"image": True, "image_size": ratio},
            request_id=request_id,
        )
        try:
            stream = provider.open_stream(request)
            try:
                urls += collect(stream).images
            finally:
                stream.close()
        except Exception as exc:  # GreenletExit / SystemExit (the worker stopping) go on as they are
            raise as_api_error(exc) from exc
    if not urls:
        raise UpstreamError("The upstream answered without an image", code="upstream_no_image")
    if response_format == "b64_json":
        data = [{"b64_json": base64.b64encode(fetcher.read(url)).decode("ascii")} for url in urls]
    else:
        data = [{"url": url} for url in urls]
    return {"created": int(time.time()), "data": data}


def image_name(filename: str | None, head: bytes) -> str:
    """A name the uploader accepts for an image: the client's when it says an image type,
    else one from the first bytes; anything that is not an image is refused."""
    name = clean_name(filename or "image")
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    if ext in IMAGE_TYPES:
        return name
    sniffed = sniff_image(head)
    if sniffed is None:
        raise BadRequest("`image` must be a PNG, JPEG, WEBP, GIF or BMP file", param="image", code="invalid_image")
    return f"{name.rpartition('.')[0] or name or 'image'}.{sniffed}"


def upload_images(uploader: Uploader, files: list[tuple[IO[bytes], str | None, int | None]]) -> list[str]:
    """Upload the edit's images (``(stream, filename, size)``) through the usual upload path,
    all as one account (the edit turn then runs as that account, uploads/attachments.py),
    and return their file ids."""
    named = []
    for stream, filename, size in files:
        stream.seek(0)
        named.append((stream, image_name(filename, stream.read(16)), size))

    def send(account: Any) -> list[str]:
        return [uploader.upload(s, name=n, size=z, purpose="vision", account=account).id for s, n, z in named]

    return uploader.with_account(send)
