"""Peewee models: the current shape of the tables that ``migrations/`` create.

Keep these in step with the migrations; a migration never imports this module (it carries
its own frozen copy), so old migrations keep working when a model changes.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from peewee import (
    AutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from . import database


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return str(uuid.uuid4())


class BaseModel(Model):
    class Meta:
        database = database


class Chat(BaseModel):
    """A conversation kept locally, whichever provider answered it."""

    id = CharField(primary_key=True, max_length=64, default=new_id)
    name = CharField(max_length=500)
    created = BigIntegerField(default=now_ms, index=True)  # epoch ms, as the seed
    updated = BigIntegerField(default=now_ms)
    model = CharField(max_length=200, null=True)
    provider = CharField(max_length=50, null=True)
    upstream_chat_id = CharField(max_length=100, null=True, index=True)
    last_response_id = CharField(max_length=100, null=True)  # next turn's parent_id
    account_id = CharField(max_length=100, null=True)  # account the upstream chat lives in
    session_id = CharField(max_length=200, null=True, unique=True)  # Dual AI Chat session

    class Meta:
        table_name = "chat"


class Message(BaseModel):
    id = AutoField()
    uid = CharField(max_length=64, unique=True, default=new_id)
    chat = ForeignKeyField(Chat, backref="messages", on_delete="CASCADE", index=True)
    role = CharField(max_length=20)
    content = TextField()  # plain text, or JSON when ``content_is_json``
    content_is_json = IntegerField(default=0)
    reasoning = TextField(null=True)
    model = CharField(max_length=200, null=True)
    provider = CharField(max_length=50, null=True)
    upstream_chat_id = CharField(max_length=100, null=True)
    response_id = CharField(max_length=100, null=True)
    parent_id = CharField(max_length=100, null=True)
    prompt_tokens = IntegerField(null=True)
    completion_tokens = IntegerField(null=True)
    total_tokens = IntegerField(null=True)
    usage_raw = TextField(null=True)
    finish_reason = CharField(max_length=30, null=True)
    status = CharField(max_length=20, default="complete")  # complete | partial | error
    bot = CharField(max_length=20, null=True)  # Dual AI Chat: "gigachat" | "qwen"
    created = DoubleField(default=time.time)  # unix seconds

    class Meta:
        table_name = "message"

    @property
    def content_value(self) -> Any:
        return json.loads(self.content) if self.content_is_json else self.content

    @staticmethod
    def encode_content(content: Any) -> tuple[str, int]:
        if isinstance(content, str):
            return content, 0
        return json.dumps(content, ensure_ascii=False), 1


class Account(BaseModel):
    """A Qwen web account (``flask accounts``); the state every worker process shares."""

    id = CharField(primary_key=True, max_length=100)  # acc_<epoch-ms>, as the seed
    token = TextField()
    user_id = CharField(max_length=100, null=True, index=True)  # the JWT's ``id`` claim
    email = CharField(max_length=320, null=True)
    expires_at = DoubleField(null=True)  # the JWT's ``exp`` (unix s)
    reset_at = DoubleField(null=True)  # WAIT until then (unix s)
    invalid = BooleanField(default=False)
    last_error = TextField(null=True)
    requests_served = IntegerField(default=0)
    last_used_at = DoubleField(default=0.0, index=True)  # round-robin order
    created_at = DoubleField(default=time.time)
    source = CharField(max_length=20, null=True)  # env | import | browser | password | token
    profile_dir = TextField(null=True)  # Chromium profile (cookies) for the browser pool
    # 0007_account_refresh
    refresh_token = TextField(null=True)  # renews ``token`` (POST /api/v2/auths/refresh); never logged
    refresh_expires_at = DoubleField(null=True)
    token_at = DoubleField(null=True)  # when the current token was stored
    refresh_lease_until = DoubleField(null=True)  # a process is refreshing the token until then
    quota = TextField(null=True)  # the last entitlement_quota answer (JSON)
    quota_at = DoubleField(null=True)
    walls = IntegerField(default=0)  # captcha/WAF walls in a row
    needs_human = BooleanField(default=False)  # walls persisted: `flask accounts solve ID`

    class Meta:
        table_name = "account"


def new_file_id() -> str:
    return "file-" + uuid.uuid4().hex[:24]


class UploadedFile(BaseModel):
    """A file uploaded to Qwen's storage through the proxy (seed upload route or ``/v1/files``)."""

    id = CharField(primary_key=True, max_length=64, default=new_file_id)  # "file-…", the OpenAI id
    filename = CharField(max_length=255)
    bytes = BigIntegerField()
    purpose = CharField(max_length=50)
    mime = CharField(max_length=150)
    kind = CharField(max_length=20)  # image | document
    qwen_file_id = CharField(max_length=100, index=True)
    file_path = CharField(max_length=1000, index=True)  # <user_id>/<file_id>_<filename> in the bucket
    url = TextField()  # the presigned URL Qwen returned
    user_id = CharField(max_length=100, null=True)  # the Qwen user (JWT ``id``) that owns it
    account_id = CharField(max_length=100, null=True)
    created_at = DoubleField(default=time.time)  # unix seconds (OpenAI shows them as an integer)
    status = CharField(max_length=20, default="processed")  # uploaded | processed | error
    content_sha256 = CharField(max_length=64, null=True, index=True)  # long contexts sent as documents

    class Meta:
        table_name = "uploaded_file"


class ApiResponse(BaseModel):
    """A stored answer of the Responses API (``resp_…``): what ``previous_response_id``
    continues and ``GET /v1/responses/{id}`` shows."""

    id = CharField(primary_key=True, max_length=64)
    chat = ForeignKeyField(Chat, backref="api_responses", on_delete="CASCADE", null=True, index=True)
    created = DoubleField(default=time.time, index=True)  # unix seconds
    model = CharField(max_length=200, null=True)
    status = CharField(max_length=20)  # completed | incomplete | failed
    previous_response_id = CharField(max_length=64, null=True)
    upstream_response_id = CharField(max_length=100, null=True)  # the next turn's parent_id
    body = TextField()  # the response object, JSON
    input_items = TextField()  # the request's input items with ids, JSON
    history = TextField()  # the chat messages up to and including this answer, JSON

    class Meta:
        table_name = "api_response"


class ConversationPoint(BaseModel):
    """A conversation held upstream, after one complete answer: the hash of the history up to
    and including that answer, and where to continue it (serving/history.py)."""

    id = AutoField()
    fingerprint = CharField(max_length=64, index=True)  # sha256 chain of the normalised messages
    depth = IntegerField()  # messages the fingerprint covers
    upstream_chat_id = CharField(max_length=100)
    response_id = CharField(max_length=100)  # the next turn's parent_id
    account_id = CharField(max_length=100, null=True)  # the account the upstream chat lives in
    chat = ForeignKeyField(Chat, backref="points", on_delete="CASCADE", null=True, index=True)
    created = DoubleField(default=time.time)

    class Meta:
        table_name = "conversation_point"


def new_video_id() -> str:
    return "video_" + uuid.uuid4().hex


class VideoTask(BaseModel):
    """A video task started upstream (``/v1/videos``, ``-video`` chats): every worker answers
    ``GET /v1/videos/{id}`` from this row and polls the upstream when ``next_poll_at`` is due."""

    id = CharField(primary_key=True, max_length=64, default=new_video_id)  # "video_…", the OpenAI id
    provider = CharField(max_length=50)
    task_id = CharField(max_length=100, index=True)  # the upstream's task id
    account_id = CharField(max_length=100, null=True)  # the account that owns the task upstream
    upstream_chat_id = CharField(max_length=100, null=True)
    parent_id = CharField(max_length=100, null=True)
    response_id = CharField(max_length=100, null=True)
    model = CharField(max_length=200)
    prompt = TextField()
    size = CharField(max_length=50)
    seconds = CharField(max_length=10)
    status = CharField(max_length=20, default="queued")  # queued | in_progress | completed | failed
    progress = IntegerField(default=0)
    url = TextField(null=True)  # the finished video (a signed, expiring link)
    error_code = CharField(max_length=100, null=True)
    error_message = TextField(null=True)
    polls = IntegerField(default=0)  # upstream polls so far: the backoff grows with them
    next_poll_at = DoubleField(default=0.0)  # unix s; a worker claims a poll by moving it
    created_at = DoubleField(default=time.time)
    completed_at = DoubleField(null=True)

    class Meta:
        table_name = "video_task"
