"""OpenAI's image-edit and video APIs: request models (checks and the OpenAPI schema) and
the ``video`` object. Flask-free; the routes are ``api/images.py`` and ``api/videos.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from ..errors import BadRequest
from .openai import ASPECT_RATIOS, ImageRequest, aspect_ratio

BINARY = {"type": "string", "format": "binary"}
VIDEO_STATUSES = ("queued", "in_progress", "completed", "failed")
# OpenAI's video sizes (SDK ``VideoSize``) → Qwen's aspect ratios
VIDEO_SIZES: dict[str, str] = {"720x1280": "9:16", "1280x720": "16:9", "1024x1792": "9:16", "1792x1024": "16:9"}
DEFAULT_VIDEO_SIZE = "1280x720"
DEFAULT_SECONDS = "5"  # [U] the site's clips run about five seconds; `seconds` is not sent upstream
MAX_SECONDS = 60


def _number(value: Any) -> Any:
    """A form field (always a string) as the number it spells; other values as they are."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


class ImageEditRequest(ImageRequest):
    """``POST /api/images/edits`` (multipart): ``image`` (one or more files, also ``image[]``),
    ``prompt``, ``n``, ``size``, ``response_format``, ``model``. Images are checked in the route."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["image", "prompt"]})

    image: Annotated[Any, WithJsonSchema({"oneOf": [BINARY, {"type": "array", "items": BINARY}]})] = None

    @classmethod
    def from_form(cls, form: Mapping[str, Any]) -> ImageEditRequest:
        """The request a multipart form spells (numbers arrive as strings)."""
        fields = {k: v for k, v in form.items() if k in cls.model_fields and k != "image"}
        if "n" in fields:
            fields["n"] = _number(fields["n"])
        return cls.model_validate(fields)


def video_ratio(size: Any) -> str:
    """OpenAI's video sizes, Qwen's ratios (``16:9``) and other ``WxH`` (the nearest ratio)."""
    text = str(size).strip().lower()
    if text in VIDEO_SIZES:
        return VIDEO_SIZES[text]
    try:
        ratio = aspect_ratio(text)
    except ValueError as exc:
        raise BadRequest(
            f"Unknown video size {size!r}: use {', '.join(VIDEO_SIZES)} or a ratio such as 16:9", param="size"
        ) from exc
    if ratio is None or ratio not in ASPECT_RATIOS:
        raise BadRequest(f"Unknown video size {size!r}", param="size")
    return ratio


def _size(value: Any) -> str:
    if value is None or value == "":
        return DEFAULT_VIDEO_SIZE
    if not isinstance(value, str):
        raise BadRequest("`size` must be a string such as 1280x720", param="size")
    video_ratio(value)
    return value.strip()


def _seconds(value: Any) -> str:
    if value is None or value == "":
        return DEFAULT_SECONDS
    number = _number(value)
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_SECONDS:
        raise BadRequest(f"`seconds` must be a whole number of seconds between 1 and {MAX_SECONDS}", param="seconds")
    return str(number)


def _prompt(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("`prompt` must be a non-empty string", param="prompt")
    return value


def _reference(value: Any) -> Any:
    """``input_reference`` as JSON: ``{"image_url"}``, ``{"file_id"}`` or a URL string."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and (isinstance(value.get("image_url"), str) or isinstance(value.get("file_id"), str)):
        return value
    raise BadRequest(
        "`input_reference` must be {image_url} or {file_id} (or an uploaded file)", param="input_reference"
    )


class VideoRequest(BaseModel):
    """``POST /api/videos`` (JSON or multipart, as the OpenAI SDK sends it) and the seed-style
    ``POST /api/videos/generations``: a prompt, maybe an image to animate (``input_reference``
    file or ``{image_url}``/``{file_id}``; ``image`` as a URL, data: URI or file id)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["prompt"]})

    prompt: Annotated[str, BeforeValidator(_prompt)] = Field(None, validate_default=True, min_length=1)
    model: Annotated[str | None, WithJsonSchema({"type": "string"})] = None
    size: Annotated[str, BeforeValidator(_size), WithJsonSchema({"type": "string", "example": "1280x720"})] = Field(
        DEFAULT_VIDEO_SIZE, validate_default=True
    )
    seconds: Annotated[str, BeforeValidator(_seconds), WithJsonSchema({"type": "string", "example": "4"})] = Field(
        DEFAULT_SECONDS, validate_default=True
    )
    input_reference: Annotated[
        Any,
        BeforeValidator(_reference),
        WithJsonSchema(
            {
                "oneOf": [
                    BINARY,
                    {"type": "object", "properties": {"image_url": {"type": "string"}, "file_id": {"type": "string"}}},
                ]
            }
        ),
    ] = None
    image: Annotated[str | None, WithJsonSchema({"type": "string", "description": "URL, data: URI or file id"})] = None

    @classmethod
    def from_form(cls, form: Mapping[str, Any]) -> VideoRequest:
        return cls.model_validate({k: v for k, v in form.items() if k != "input_reference"})

    @property
    def ratio(self) -> str:
        return video_ratio(self.size)

    def image_reference(self) -> str | None:
        """The image to animate, as a chat ``image_url`` reference (URL, data: URI, file id)."""
        ref = self.input_reference
        if isinstance(ref, dict):
            return ref.get("image_url") or ref.get("file_id")
        return ref or self.image or None


def video_object(
    *,
    id: str,
    model: str,
    status: str,
    progress: int,
    created_at: float,
    size: str,
    seconds: str,
    prompt: str | None = None,
    completed_at: float | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """OpenAI's ``video`` object (SDK ``Video``)."""
    return {
        "id": id,
        "object": "video",
        "created_at": int(created_at),
        "completed_at": int(completed_at) if completed_at else None,
        "expires_at": None,
        "error": {"code": error_code or "video_failed", "message": error_message or ""} if status == "failed" else None,
        "model": model,
        "progress": int(progress),
        "prompt": prompt,
        "remixed_from_video_id": None,
        "seconds": seconds,
        "size": size,
        "status": status,
    }


def video_list(objects: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": objects,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": has_more,
    }


def task_status_object(video: Mapping[str, Any], url: str | None) -> dict[str, Any]:
    """The seed-style ``GET /api/tasks/status/<id>``: the upstream's own shape (2026 §6)
    around the video object."""
    words = {"queued": "queued", "in_progress": "running", "completed": "success", "failed": "failed"}
    out: dict[str, Any] = {
        "task_id": video["id"],
        "task_status": words[video["status"]],
        "progress": video["progress"],
        "content": url if video["status"] == "completed" else None,
    }
    if video.get("error"):
        out["message"] = video["error"]["message"]
    out["video"] = dict(video)
    return out


# --------------------------------------------------------------------------- response shapes (documentation)


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """OpenAI's ``video`` object."""

    id: str
    object: Literal["video"]
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    error: VideoError | None = None
    model: str
    progress: int
    prompt: str | None = None
    seconds: str
    size: str
    status: Literal[VIDEO_STATUSES]


class VideoList(BaseModel):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class ListVideosQuery(BaseModel):
    """``GET /api/videos``."""

    limit: int | None = Field(None, ge=1, le=100)
    order: Literal["asc", "desc"] | None = None
    after: str | None = None
