"""Qwen web (chat.qwen.ai) as a provider: one account per request, retried on quota/expiry."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

from flask import Flask

from ..accounts.pool import GUEST_ID, Account, AccountPool, Rotation
from ..content import is_text_part, part_text, text_of
from ..errors import ApiError, BadRequest, Conflict, RateLimited, Unauthorized, UpstreamBlocked, UpstreamUnavailable
from ..events import Annotation, Event, EventStream, ReasoningDelta, ResponseStarted, TaskState
from ..qwen import modes, tasks
from ..qwen.aliases import AliasMap
from ..qwen.catalog import ModelCatalog
from ..qwen.client import QwenClient
from ..qwen.files import QwenFiles
from ..qwen.protocol import completion_body
from ..qwen.transport import DirectTransport, Transport, UpstreamResponse
from ..uploads.attachments import Attachments, media_part
from ..uploads.context import CHAT_ID_PLACEHOLDER, Context, ContextFitter
from ..uploads.uploader import Uploader
from ..wire import tools, transcript
from . import qwen_turns
from .base import ChatRequest, MediaTask, ModelCard, Provider

log = logging.getLogger(__name__)


def make_transport(config: dict[str, Any]) -> Transport:
    """The transport ``QWEN_TRANSPORT`` names: ``browser`` (default), ``direct`` or ``auto``."""
    kind = str(config.get("QWEN_TRANSPORT") or "browser").lower()
    if kind == "direct":
        return DirectTransport(float(config["QWEN_CONNECT_TIMEOUT"]), float(config["QWEN_READ_TIMEOUT"]))
    if kind not in ("browser", "auto"):
        log.warning("QWEN_TRANSPORT=%s is unknown (browser, direct, auto); using browser", kind)
        kind = "browser"
    from ..qwen.browser_transport import make_browser_transport

    return make_browser_transport(kind, config)


def _list_models(client: QwenClient, pool: AccountPool) -> list[dict[str, Any]]:
    """The upstream model list, asked as some account without a turn in the rotation (the
    browser pool then runs it in that account's profile instead of opening another one)."""
    account = pool.any_account()
    if account is None:  # a guest sees the guest list (2026 §5), in the guest's own profile
        return client.list_models(None, account_id=GUEST_ID if pool.guest_mode == "auto" else None)
    return client.list_models(account.token, account_id=account.id)


def _guest_refused(exc: ApiError) -> ApiError:
    """What a refused guest chat means to the client: add an account (2026 §5)."""
    if isinstance(exc, RateLimited):
        return RateLimited(
            f"Qwen's guest quota is used up ({exc.message}); add an account with `flask accounts add`",
            retry_after=exc.retry_after,
            code="guest_rate_limited",
        )
    return UpstreamUnavailable(
        f"Qwen refused a guest chat ({exc.message}); add an account with `flask accounts add`",
        code="guest_refused",
    )


def last_user_turn(messages: list[dict[str, Any]]) -> tuple[Any, str | None]:
    """The last user message's content and the first system message (seed §7.2/7.3)."""
    content: Any = None
    system: str | None = None
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer") and system is None:
            system = text_of(message.get("content"))
        elif role == "user":
            content = message.get("content")
    return content, system


Attach = Callable[[str, Any], "dict[str, Any] | None"]


def to_qwen_content(content: Any) -> str | list[dict[str, Any]]:
    """A user message's content as Qwen's inline shape (§5.4): a string, or text/image items."""
    return to_qwen_message(content)[0]


def to_qwen_message(
    content: Any, attach: Attach | None = None
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """A user message's content as Qwen's ``content`` and ``files[]`` (§5.4).

    Text parts stay ``content``; each media part (seed ``image``/``file``, OpenAI
    ``image_url`` and ``file``) goes through ``attach(kind, reference)``, which returns its
    ``files[]`` item, or ``None`` to keep the part inline in the seed's shape.
    """
    if not isinstance(content, list):
        return text_of(content), []
    items: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if is_text_part(part):
            items.append({"type": "text", "text": part_text(part)})
            continue
        media = media_part(part)
        if media is None:
            continue
        kind, ref = media
        item = attach(kind, ref) if attach is not None else None
        if item is not None:
            files.append(item)
        else:
            items.append({"type": kind, kind: ref})
    if all(i["type"] == "text" for i in items):
        return "".join(i["text"] for i in items), files
    return items, files


def images_to_files(content: Any, files: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """An image edit (and image-to-video) takes its images from ``files[]`` only (2026 §6):
    images left inline (URLs that are not Qwen's storage) move there as ``{type, url}``."""
    if not isinstance(content, list):
        return content, files
    moved = [{"type": "image", "url": i["image"]} for i in content if i.get("type") == "image" and i.get("image")]
    rest = [i for i in content if i.get("type") != "image"]
    if all(i.get("type") == "text" for i in rest):
        return "".join(i.get("text") or "" for i in rest), [*files, *moved]
    return rest, [*files, *moved]


def has_image(files: list[dict[str, Any]]) -> bool:
    return any(f.get("type") == "image" and f.get("url") for f in files)


def research_notes(events: Iterator[Event]) -> Iterator[Event]:
    """Deep research: each source also goes out as a line of reasoning when it is found
    (the annotations themselves come with the answer's end)."""
    count = 0
    try:
        for event in events:
            yield event
            if isinstance(event, Annotation):
                count += 1
                yield ReasoningDelta(f"\n\nSource [{count}]: {event.title or event.url} ({event.url})")
    finally:
        close = getattr(events, "close", None)
        if close is not None:  # the relay releases the account when it is closed
            close()


def needs_vision(content: Any, files: list[dict[str, Any]]) -> bool:
    """Whether a converted message carries images or video."""
    inline = isinstance(content, list) and any(i.get("type") in ("image", "video") for i in content)
    return inline or any(f.get("file_class") in ("vision", "video") for f in files)


class QwenWebProvider(Provider):
    name = "qwen"
    server_side_history = True

    def __init__(
        self,
        client: QwenClient,
        pool: AccountPool,
        catalog: ModelCatalog,
        max_attempts: int = 20,
        *,
        attachments: Attachments | None = None,
        vision_model: str | None = None,
        fitter: ContextFitter | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.pool = pool
        self.catalog = catalog
        self.max_attempts = max_attempts
        self.attachments = attachments
        self.vision_model = vision_model
        self.fitter = fitter or ContextFitter(attachments.uploader if attachments else None, 120000)
        settings = settings or {}
        self.show_forced_reasoning = bool(settings.get("QWEN_SHOW_FORCED_REASONING"))
        self.stop_timeout = float(settings.get("QWEN_STOP_TIMEOUT") or 2.0)
        self.backoff = qwen_turns.parse_backoff(settings.get("QWEN_IN_PROGRESS_BACKOFF", "0.5,1,2"))

    @classmethod
    def from_app(cls, app: Flask) -> QwenWebProvider:
        config = app.config
        pool = app.extensions["account_pool"]  # accounts/store.py's init_app, run before the providers
        client = QwenClient(make_transport(config), config)
        pool.use_client(client)  # token refresh and quota go the way chats go
        catalog = ModelCatalog(
            config["MODELS_FILE"],
            config.get("DEFAULT_MODEL"),
            fetch=lambda: _list_models(client, pool),
            ttl=float(config["MODELS_CACHE_SECONDS"]),
            aliases=AliasMap(config.get("MODEL_ALIASES")),
            locked_models=str(config.get("QWEN_THINKING_LOCKED_MODELS") or ""),
        )
        uploader = Uploader(QwenFiles(client), pool, config)
        app.extensions["uploader"] = uploader
        return cls(
            client,
            pool,
            catalog,
            attachments=Attachments(uploader),
            vision_model=str(config.get("VISION_MODEL") or "") or None,
            fitter=ContextFitter(uploader, int(config.get("QWEN_MAX_BODY_BYTES") or 120000)),
            settings=dict(config),
        )

    # --- names
    def owns(self, model: str) -> bool:
        """Its own names only (aliases, the models file, the last upstream list): asking
        must never fetch the model list, since every request's routing asks."""
        return self.catalog.known(model, fetch=False)

    def resolve_model(self, model: str | None) -> str:
        return self.catalog.resolve(model)

    def resolve_request(self, model: str | None) -> tuple[str, str, dict[str, Any]]:
        """``qwen3-max-thinking`` → (``qwen3-max``, ``qwen3-max-thinking``, {thinking}) (modes.py)."""
        resolved, flags = self.catalog.resolve_modes(model)
        return resolved, resolved + flags.suffix(), flags.options()

    def list_models(self) -> list[ModelCard]:
        upstream = {str(m["id"]): m for m in (self.catalog.upstream_models() or [])}
        cards = []
        variants = []
        for mid in self.catalog.ids():
            created = int((upstream.get(mid) or {}).get("info", {}).get("created_at") or 0)
            cards.append(ModelCard(id=mid, owned_by="qwen", created=created))
            if mid in upstream:  # the modes a model supports, from its capabilities/chat_type
                variants += [ModelCard(id=v, owned_by="qwen", created=created) for v in modes.variants(upstream[mid])]
        return cards + variants

    # --- chat
    def open_stream(self, request: ChatRequest) -> EventStream:
        stream = EventStream(iter(()))
        current: dict[str, Any] = {}

        def cancel() -> None:
            guard = current.get("guard")
            if guard is not None:
                guard.abandon()  # the site would keep the chat "in progress" (2026 §3)
            response = current.get("response")
            if response is not None:
                response.close()

        spec = request.tool_spec or tools.ToolSpec.parse(
            request.tools, request.tool_choice, request.options.get("parallel_tool_calls")
        )
        stream.events = self._events(request, spec, stream, current)
        if spec.active:

            def retry(started: ResponseStarted | None) -> Iterator[Event]:
                again = replace(
                    request,
                    messages=[{"role": "user", "content": tools.RETRY_PROMPT}],
                    conversation_id=stream.info.get("upstream_chat_id"),
                    parent_id=started.response_id if started else None,
                    account_id=stream.info.get("account_id"),
                    upstream_known=None,
                )
                return self._events(again, spec, stream, current)

            stream.events = tools.ToolCallFilter(stream.events, spec, retry=retry)
        stream.on_cancel = cancel
        return stream

    def _events(
        self, request: ChatRequest, spec: tools.ToolSpec, stream: EventStream, current: dict[str, Any]
    ) -> Iterator[Event]:
        """Pin an account (another one on quota or expiry, before anything was sent), start
        the upstream turn as it, then relay its events."""
        content, _system = last_user_turn(request.messages)
        mode = modes.upstream_mode(request.options)
        if content is None:
            raise BadRequest("No user message to send", param="messages")
        # uploaded files belong to the account that uploaded them: prefer it for a new chat
        prefer = request.account_id or (self.attachments.owner_hint(content) if self.attachments else None)
        rotation = Rotation(self.pool, attempts=self.max_attempts, prefer=prefer, reuse_tried=True, guest=True)
        walled = False
        for account in rotation:
            try:
                chat_id, events, response = self._start(request, spec, account, mode, stream)
            except Conflict:
                self.pool.release(account.id)
                if not request.conversation_id:
                    raise
                # the chat stays "in progress" after stop and retries (qwen_turns), or another
                # request is continuing the same stored conversation right now: this one goes to
                # a new chat with its whole history folded (a chatId client's stored history)
                log.info("upstream chat %s is busy; folding the history into a new chat", request.conversation_id)
                messages = request.messages
                if request.upstream_known is None and request.history is not None:
                    messages = request.history()
                request = replace(
                    request, messages=messages, conversation_id=None, parent_id=None, account_id=None, upstream_known=0
                )
                rotation.prefer = None
                continue
            except UpstreamBlocked as exc:
                self.pool.release(account.id)
                if getattr(exc, "browser_next", False) and not walled:
                    # auto met a wall inside a direct stream: the turn again, in the browser
                    walled, rotation.prefer = True, account.id
                    continue
                self.pool.note_wall(account.id)  # walls in a row: the account needs a human
                raise
            except (RateLimited, Unauthorized) as exc:
                if account.guest:
                    self.pool.release(account.id)
                    raise _guest_refused(exc) from exc
                why = "rate limited" if isinstance(exc, RateLimited) else "unauthorized"
                log.warning("account %s %s; trying another", account.id, why)
                rotation.refused(account, exc)
                self.pool.release(account.id)
                continue
            except BaseException:
                self.pool.release(account.id)
                raise
            stream.info.update(
                account_id=account.id, upstream_chat_id=chat_id, transport=response.served_by or "direct"
            )
            current["response"] = response
            guard = current["guard"] = qwen_turns.StopGuard(
                self.client, account.token, account.id, chat_id, self.stop_timeout
            )
            relayed = self._relay(events, response, account, chat_id, guard)
            yield from research_notes(relayed) if mode[0] == "deep_research" else relayed
            return
        raise rotation.exhausted("No Qwen account could serve the request")

    def _start(
        self,
        request: ChatRequest,
        spec: tools.ToolSpec,
        account: Account,
        mode: tuple[str, dict[str, Any], dict[str, Any]],
        stream: EventStream,
    ) -> tuple[str, Iterator[Event], UpstreamResponse]:
        """The upstream turn as ``account``: its chat (new unless the conversation lives in
        this account), the message with its files, the opened completion."""
        chat_type, features, extra = mode
        # a conversation lives in the account that created it upstream
        same_account = request.account_id in (None, account.id)
        chat_id = request.conversation_id if same_account else None
        parent_id = request.parent_id if chat_id else None
        stateless = request.upstream_known is not None
        tool_prompt, content, system = self._turn(request, spec, continuing=bool(chat_id and parent_id) or stateless)
        history = self._history(request, spec, known=(request.upstream_known or 0) if chat_id else 0)
        attach = self.attachments.resolver(account) if self.attachments else None
        qwen_content, files = to_qwen_message(content, attach)
        if chat_type in modes.IMAGE_TYPES:  # with an image it is an edit, else a new picture
            qwen_content, files = images_to_files(qwen_content, files)
            chat_type, features, extra = modes.upstream_mode(request.options, has_image=has_image(files))
        model = self._vision_model(request.model, qwen_content, files, stream)
        # a model that cannot think off thinks; unasked-for reasoning is dropped (2026 §1)
        features, hide_reasoning = qwen_turns.forced_thinking(
            self.catalog, model, request.options, features, self.show_forced_reasoning
        )
        fields = {
            "model": model,
            "parent_id": parent_id,
            "files": files,
            "chat_type": chat_type,
            "feature_config": features,
            "extra": extra,
            "chat_mode": "guest" if account.guest else "normal",
        }
        # never above the body size wall: long parts go as documents (uploads/context.py)
        measure = partial(self._body, request, chat_id=chat_id or CHAT_ID_PLACEHOLDER, **fields)
        context = self.fitter.fit(Context(system, history, qwen_content, tools=tool_prompt), measure, account)
        if not chat_id:
            chat_id = self.client.create_chat(
                account.token, model, chat_type=chat_type, account_id=account.id, chat_mode=fields["chat_mode"]
            )
        body = self._body(request, context, chat_id, **fields)
        # "in progress" is stopped and retried here; a Conflict left over moves the turn (_events)
        events, response = qwen_turns.open_completion(
            self.client,
            account.token,
            body,
            account_id=account.id,
            model=model,
            backoff=self.backoff,
            stop_timeout=self.stop_timeout,
        )
        if hide_reasoning:
            events = qwen_turns.without_reasoning(events)
        return chat_id, events, response

    def _relay(
        self,
        events: Iterator[Event],
        response: UpstreamResponse,
        account: Account,
        chat_id: str,
        guard: qwen_turns.StopGuard,
    ) -> Iterator[Event]:
        """The upstream events (``ResponseStarted`` completed with the chat id); the account
        is released however the stream ends, and a generation left unfinished is stopped in
        the background (2026 §3)."""
        done = False
        try:
            with qwen_turns.relaying(chat_id):
                for upstream_event in events:
                    event = upstream_event
                    if isinstance(event, ResponseStarted) and not event.chat_id:
                        event = ResponseStarted(chat_id, event.parent_id, event.response_id)
                    guard.observe(event)
                    yield event
            done = True
            self.pool.mark_success(account.id)
        except UpstreamBlocked:  # a wall inside the stream (2026 §4)
            guard.done = True  # nothing is generating
            self.pool.note_wall(account.id)
            raise
        except ApiError:
            # the upstream or the pool broke, not the client: no stop call into a failing
            # transport; a chat left "in progress" is met on the next turn (qwen_turns)
            guard.done = True
            raise
        finally:
            # read to ``finished``: the connection may serve the next turn; else abort it
            response.release() if done else response.close()
            guard.abandon()  # left before finished: stop it, off the request's path
            self.pool.release(account.id)

    @staticmethod
    def _turn(request: ChatRequest, spec: tools.ToolSpec, continuing: bool) -> tuple[str, Any, str | None]:
        """The tool prompt, the user content and the system message of this turn; with
        tools, the earlier calls and results are written into the content (tools.fold_turn_parts)."""
        if tools.engaged(request.messages, spec):
            return tools.fold_turn_parts(request.messages, spec, continuing=continuing)
        return ("", *last_user_turn(request.messages))

    @staticmethod
    def _history(request: ChatRequest, spec: tools.ToolSpec, known: int) -> str:
        """The earlier turns a stateless client sent that the upstream chat does not hold
        (``messages[known:]`` up to the new turn), as a transcript; "" for chatId clients."""
        if request.upstream_known is None:
            return ""
        start = transcript.turn_start(request.messages, tools_engaged=tools.engaged(request.messages, spec))
        return transcript.folded(request.messages, known, start)

    def _body(self, request: ChatRequest, context: Context, chat_id: str, **fields: Any) -> dict[str, Any]:
        """The completions body of a turn; ``fields``: model, parent_id, files and the mode."""
        files = fields.pop("files")
        return completion_body(
            chat_id=chat_id,
            content=context.content(),
            system=context.system,
            files=[*context.documents, *(request.options.get("files") or []), *files],
            **fields,
        )

    # --- video tasks (2026 §6)
    def start_video(self, request: ChatRequest) -> MediaTask:
        """A ``t2v`` turn (``stream:false``) as some account; its answer names the task."""
        content, _system = last_user_turn(request.messages)
        if content is None:
            raise BadRequest("No user message to send", param="messages")
        prefer = request.account_id or (self.attachments.owner_hint(content) if self.attachments else None)
        rotation = Rotation(self.pool, attempts=self.max_attempts, prefer=prefer, reuse_tried=True)
        for account in rotation:
            try:
                task = self._start_video(request, content, account)
            except UpstreamBlocked:
                self.pool.note_wall(account.id)
                raise
            except (RateLimited, Unauthorized) as exc:
                log.warning("account %s refused a video task; trying another", account.id)
                rotation.refused(account, exc)
                continue
            finally:
                self.pool.release(account.id)
            self.pool.mark_success(account.id)
            return task
        raise rotation.exhausted("No Qwen account could start the video")

    def _start_video(self, request: ChatRequest, content: Any, account: Account) -> MediaTask:
        attach = self.attachments.resolver(account) if self.attachments else None
        qwen_content, files = images_to_files(*to_qwen_message(content, attach))
        chat_type, features, extra = modes.upstream_mode({**request.options, "video": True})
        chat_id = self.client.create_chat(account.token, request.model, chat_type=chat_type, account_id=account.id)
        body = completion_body(
            chat_id=chat_id,
            model=request.model,
            content=qwen_content,
            files=files,
            chat_type=chat_type,
            feature_config=features,
            extra=extra,
        )
        payload = self.client.start_task(account.token, body, account_id=account.id)
        task_id, parent_id, response_id = tasks.task_reference(payload)
        log.info("video task %s started in chat %s as account %s", task_id, chat_id, account.id)
        return MediaTask(task_id, account.id, chat_id, parent_id, response_id)

    def video_status(self, task: MediaTask) -> TaskState:
        """One ``tasks/status`` call, as the account that owns the task."""
        account = self.pool.lookup(task.account_id) if task.account_id else None
        if account is None:
            raise UpstreamUnavailable(
                "The account that started this video is no longer registered", code="video_account_gone"
            )
        return tasks.task_state(self.client.task_status(account.token, task.task_id, account_id=account.id))

    def _vision_model(self, model: str, content: Any, files: list[dict[str, Any]], stream: EventStream) -> str:
        """``VISION_MODEL`` instead of a model known to lack vision when images are sent;
        the switch is announced in the ``X-Model-Switched`` response header."""
        if not self.vision_model or not needs_vision(content, files) or self.has_vision(model) is not False:
            return model
        target = self.catalog.resolve(self.vision_model)
        if target == model:
            return model
        log.info("model %s has no vision; using %s", model, target)
        stream.info.setdefault("headers", {})["X-Model-Switched"] = f"{model} -> {target}"
        return target

    def has_vision(self, model: str) -> bool | None:
        """``info.meta.capabilities.vision`` from the upstream model list; ``None`` if unknown."""
        for entry in self.catalog.upstream_models() or []:
            if entry.get("id") == model:
                caps = ((entry.get("info") or {}).get("meta") or {}).get("capabilities") or {}
                return bool(caps["vision"]) if isinstance(caps, dict) and "vision" in caps else None
        return None

    def status(self) -> dict[str, Any]:
        accounts = self.pool.status()
        out = {
            "name": self.name,
            "accounts": accounts,
            "transport": self.client.transport.name,
            "defaultModel": self.catalog.cached_default_model(),
        }
        if self.pool.serves_guests(accounts):
            out["guest"] = True  # no usable account: chats go out as a guest (QWEN_GUEST=auto)
        pool_status = getattr(self.client.transport, "pool_status", None)
        if pool_status is not None:
            out["browserPool"] = pool_status()
        return out

    def close(self) -> None:
        self.client.transport.close()
