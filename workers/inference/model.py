"""The GPTQ Qwen2.5-Coder model inside the inference worker: loading, prompts, streaming.

This module imports torch, auto-gptq and transformers, so only the worker process imports it
(never a gevent web process). Loading follows shared/specs/local-coder-gptq-recipe.md §5:
``AutoGPTQForCausalLM.from_quantized`` with an explicit device, no exllama/triton/marlin on the
CPU, and a repair of tied embeddings that auto-gptq loads as garbage when the checkpoint has no
``lm_head.weight``. Generation calls the inner transformers model directly (auto-gptq's
``generate`` wrapper forces CPU autocast, which breaks fp16 and silently runs fp32 in bf16).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

logger = logging.getLogger(__name__)

# seed 002 (chat.py): the sampling the gateway uses for Qwen
DEFAULT_SAMPLING = {"temperature": 0.4, "top_p": 0.9, "top_k": 60, "repetition_penalty": 1.1}

CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class GenerationError(Exception):
    """A request the model cannot serve; ``code`` travels to the gateway."""

    code = "generation_error"
    status = 500


class ContextTooLongError(GenerationError):
    code = "context_length_exceeded"
    status = 400


class BadParams(GenerationError):
    code = "invalid_request"
    status = 400


@dataclass
class SamplingParams:
    """Per-request generation settings; ``temperature`` 0 means greedy."""

    max_tokens: int = 4096
    temperature: float = DEFAULT_SAMPLING["temperature"]
    top_p: float = DEFAULT_SAMPLING["top_p"]
    top_k: int = DEFAULT_SAMPLING["top_k"]
    repetition_penalty: float = DEFAULT_SAMPLING["repetition_penalty"]
    stop: list[str] = field(default_factory=list)
    min_tokens: int = 0  # vLLM's name; forces a length (the bench and tests use it)

    @classmethod
    def from_dict(cls, body: dict[str, Any], defaults: dict[str, Any] | None = None) -> SamplingParams:
        """Build from a request body, falling back to ``defaults`` then to the class defaults."""
        merged: dict[str, Any] = {}
        for source in (defaults or {}, body):
            for key in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "min_tokens"):
                if source.get(key) is not None:
                    merged[key] = source[key]
        stop = merged.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        try:
            params = cls(
                max_tokens=int(merged.get("max_tokens", cls.max_tokens)),
                temperature=float(merged.get("temperature", cls.temperature)),
                top_p=float(merged.get("top_p", cls.top_p)),
                top_k=int(merged.get("top_k", cls.top_k)),
                repetition_penalty=float(merged.get("repetition_penalty", cls.repetition_penalty)),
                stop=[str(s) for s in stop if s],
                min_tokens=int(merged.get("min_tokens", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise BadParams(f"Invalid sampling parameter: {exc}") from exc
        if params.max_tokens < 1:
            raise BadParams("max_tokens must be at least 1")
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.top_k < 0:
            raise BadParams("temperature must be >= 0, top_p in (0, 1], top_k >= 0")
        if params.repetition_penalty <= 0:
            raise BadParams("repetition_penalty must be > 0")
        return params


@dataclass
class Prompt:
    """A tokenized chat prompt, after truncation to the context window."""

    ids: list[int]
    max_new_tokens: int
    dropped_messages: int = 0


def _message_text(content: Any) -> str:
    """OpenAI content may be a list of parts; the model only reads the text ones."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def normalize_messages(messages: Any, system: str | None = None) -> list[dict[str, str]]:
    """Validate ``[{role, content}]`` and add ``system`` in front when none is present."""
    if not isinstance(messages, list) or not messages:
        raise BadParams("messages must be a non-empty list")
    out = []
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise BadParams("each message needs a role and a content")
        out.append({"role": msg["role"], "content": _message_text(msg.get("content"))})
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


class _CancelCriteria(StoppingCriteria):
    """Stops generation at the next token once the request is cancelled or a stop string hit."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


class TokenStreamer(TextIteratorStreamer):
    """``TextIteratorStreamer`` that emits per token (not per word), counts the real token ids
    and applies stop strings synchronously, so the stopping criteria end generation on the
    very token that completed a stop string.

    Incremental detokenization keeps a window (prefix/read offsets, as TGI and vLLM do) and
    holds back text ending in an incomplete UTF-8 sequence.
    """

    def __init__(self, tokenizer, stop: list[str], eos_ids: set[int]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop = stop
        self.eos_ids = eos_ids
        self.completion_tokens = 0
        self.last_token: int | None = None
        self.stop_hit = False
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._pending = ""  # text held back because it may be the start of a stop string

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def put(self, value: torch.Tensor) -> None:
        if self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        ids = value.reshape(-1).tolist()
        self.completion_tokens += len(ids)
        if ids:
            self.last_token = ids[-1]
        if self.stop_hit:
            return
        self._ids.extend(ids)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            self._emit(delta)

    def end(self) -> None:
        if not self.stop_hit:
            prefix_text = self._decode(self._ids[self._prefix : self._read])
            new_text = self._decode(self._ids[self._prefix :])
            tail = new_text[len(prefix_text) :]
            self._pending += tail
            if self._pending:
                self.on_finalized_text(self._pending)
                self._pending = ""
        self.on_finalized_text("", stream_end=True)

    def _emit(self, delta: str) -> None:
        if not self.stop:
            self.on_finalized_text(delta)
            return
        text = self._pending + delta
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stop_hit = True
            self._pending = ""
            if min(hits):
                self.on_finalized_text(text[: min(hits)])
            return
        hold = 0  # the longest suffix of text that may begin a stop string
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        self._pending = text[len(text) - hold :] if hold else ""
        if len(text) > hold:
            self.on_finalized_text(text[: len(text) - hold])

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text)
        if stream_end:
            self.text_queue.put(self.stop_signal)


class Generation:
    """One running generation: iterate ``next_event(timeout)``; ``cancel()`` stops it at the
    next token. Events: ``("text", str)`` then ``("end", finish_reason, completion_tokens)`` or
    ``("error", message)``."""

    def __init__(self, streamer: TokenStreamer, cancel: threading.Event, max_new_tokens: int) -> None:
        self.streamer = streamer
        self.cancelled = cancel
        self.max_new_tokens = max_new_tokens
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self._done = False

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def finish_reason(self) -> str:
        s = self.streamer
        if s.stop_hit or (s.last_token is not None and s.last_token in s.eos_ids):
            return "stop"
        if self.cancelled.is_set():
            return "cancelled"
        if s.completion_tokens >= self.max_new_tokens:
            return "length"
        return "stop"

    def next_event(self, timeout: float | None = None) -> tuple:
        """The next event; raises ``queue.Empty`` after ``timeout`` seconds without one."""
        if self._done:
            raise StopIteration
        item = self.streamer.text_queue.get(timeout=timeout)
        if item is self.streamer.stop_signal:
            self._done = True
            if self.thread is not None:
                self.thread.join()
            if self.error is not None:
                return ("error", f"Generation error: {self.error}")
            return ("end", self.finish_reason, self.streamer.completion_tokens)
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        return ("text", item)

    def __iter__(self) -> Iterator[tuple]:
        while True:
            try:
                yield self.next_event()
            except StopIteration:
                return

    def wait(self) -> None:
        """Block until the generating thread is gone (after a cancel, at most one token)."""
        if self.thread is not None:
            self.thread.join()


def _checkpoint_keys(path: Path) -> set[str] | None:
    """Tensor names in the checkpoint's safetensors files (header only), or None if unknown."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    keys: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            keys.update(fh.keys())
    return keys


def _read_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = [path / json.loads(index.read_text())["weight_map"][name]]
    else:
        files = sorted(path.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            if name in fh.keys():
                return fh.get_tensor(name)
    raise KeyError(name)


def fix_tied_embeddings(hf_model, path: Path) -> bool:
    """Reload the input embeddings when the checkpoint ties them and has no ``lm_head.weight``.

    auto-gptq 0.7.1's ``from_quantized`` ties ``lm_head`` to ``embed_tokens`` before accelerate
    loads the file, and the reload then leaves both pointing at uninitialised (or zeroed)
    memory with no error: the logits are garbage. Returns True when a repair was made.
    """
    config = hf_model.config
    if not getattr(config, "tie_word_embeddings", False):
        return False
    keys = _checkpoint_keys(path)
    if keys is None or "lm_head.weight" in keys:
        return False
    embed = hf_model.get_input_embeddings()
    name = next((k for k in keys if k.endswith("embed_tokens.weight")), None)
    if name is None:
        logger.warning("tied checkpoint without lm_head.weight and no embed_tokens.weight found")
        return False
    weight = _read_tensor(path, name).to(device=embed.weight.device, dtype=embed.weight.dtype)
    with torch.no_grad():
        embed.weight.copy_(weight)
    hf_model.get_output_embeddings().weight = embed.weight
    logger.info("tied embeddings reloaded from %s (checkpoint has no lm_head.weight)", name)
    return True


class LocalModel:
    """A GPTQ causal LM and its tokenizer, ready to stream chat completions."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        cache: str = "normal",
        max_seq_len: int | None = None,
        q4_group_size: int = 64,
        q4_residual: int = 128,
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        if dtype == "auto":
            dtype = "float16" if device.startswith("cuda") else "float32"
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        self.dtype = dtype
        if cache not in ("normal", "q4"):
            raise ValueError("cache must be 'normal' or 'q4'")
        self.cache = cache
        self.requested_max_seq_len = max_seq_len
        self.max_seq_len = 0
        self.q4_group_size = q4_group_size
        self.q4_residual = q4_residual
        self.tokenizer = None
        self.model = None  # the transformers model inside auto-gptq's wrapper
        self.eos_ids: set[int] = set()
        self.kernel = ""  # the auto-gptq QuantLinear implementation that was picked
        self.pad_id: int | None = None
        self._tok_lock = threading.Lock()  # fast tokenizers are not safe for concurrent encode

    @property
    def name(self) -> str:
        return self.path.name

    def load(self, progress: Callable[[str], None] = lambda stage: None) -> None:
        """Load tokenizer and weights; ``progress`` is told each stage (the log shows them)."""
        from auto_gptq import AutoGPTQForCausalLM

        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"{self.path} has no config.json (not a model folder)")
        progress("tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        if not self.tokenizer.chat_template:
            logger.warning("checkpoint has no chat_template; using ChatML")
            self.tokenizer.chat_template = CHATML_FALLBACK
        sizes = sum(f.stat().st_size for f in self.path.glob("*.safetensors"))
        progress(f"weights ({sizes / 2**20:.1f} MiB, device={self.device}, dtype={self.dtype})")
        on_cpu = not self.device.startswith("cuda")
        wrapper = AutoGPTQForCausalLM.from_quantized(
            str(self.path),
            device=self.device,
            use_safetensors=True,
            use_triton=False,
            use_marlin=False,
            # exllama kernels only exist on CUDA; auto-gptq turns them off itself when not built
            disable_exllama=on_cpu,
            disable_exllamav2=on_cpu,
            inject_fused_attention=False,
            inject_fused_mlp=False,
            torch_dtype=DTYPES[self.dtype],
        )
        self.model = wrapper.model.eval()
        qlinear = next((m for m in self.model.modules() if type(m).__name__ == "QuantLinear"), None)
        self.kernel = f"{type(qlinear).__module__}.QuantLinear" if qlinear is not None else "none"
        progress(f"weights loaded, kernel {self.kernel}")
        progress("tied embeddings check")
        fix_tied_embeddings(self.model, self.path)
        config = self.model.config
        self.max_seq_len = int(self.requested_max_seq_len or getattr(config, "max_position_embeddings", 32768))
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            self.eos_ids.add(im_end)
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids) if self.eos_ids else 0
        if self.cache == "q4":
            progress("q4 cache check")
            from transformers.utils import is_hqq_available

            if not is_hqq_available():
                raise RuntimeError("-cache q4 needs the hqq package (pip install hqq; see requirements-local.txt)")

    def warmup(self) -> None:
        """One short generation so the first request does not pay for lazy initialisation."""
        prompt = self.build_prompt([{"role": "user", "content": "hi"}], None, 2)
        gen = self.start(prompt, SamplingParams(max_tokens=2, temperature=0), threading.Event())
        for _ in gen:
            pass

    # -- prompts -------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        with self._tok_lock:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(self.tokenizer.encode(text, add_special_tokens=False))

    def build_prompt(self, messages: list[dict[str, str]], system: str | None, max_new_tokens: int) -> Prompt:
        """Template the chat, dropping the oldest turns until it fits ``max_seq_len``.

        At least ``min(max_new_tokens, max_seq_len // 2)`` positions stay free for the answer
        while there are old turns to drop; the leading system message and the last message are
        never dropped. If those alone do not fit the window, ``ContextTooLongError``.
        """
        msgs = normalize_messages(messages, system)
        window = self.max_seq_len
        head = []
        while msgs and msgs[0]["role"] == "system" and len(msgs) > 1:
            head.append(msgs.pop(0))
        rest = msgs
        budget = window - min(max_new_tokens, window // 2)

        # the fewest dropped messages that fit the budget: binary search over the start
        lo, hi = 0, len(rest) - 1
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            ids = self.encode_chat(head + rest[mid:])
            if len(ids) <= budget:
                best, hi = (mid, ids), mid - 1
            else:
                lo = mid + 1
        if best is None:
            start, ids = len(rest) - 1, self.encode_chat(head + rest[-1:])
        else:
            start, ids = best
        # a kept history starts with a user turn, not a dangling assistant reply
        while start < len(rest) - 1 and rest[start]["role"] not in ("user",):
            start += 1
            ids = self.encode_chat(head + rest[start:])
        if len(ids) >= window:
            raise ContextTooLongError(
                f"The prompt needs {len(ids)} tokens even without older turns; the model's context (-l) is {window}"
            )
        if start:
            logger.info("prompt truncated: dropped %d oldest message(s) to fit %d tokens", start, window)
        return Prompt(ids=ids, max_new_tokens=min(max_new_tokens, window - len(ids)), dropped_messages=start)

    # -- generation ----------------------------------------------------------------------

    def _cache(self):
        if self.cache != "q4":
            return None
        from transformers import QuantizedCache

        head_dim = getattr(self.model.config, "head_dim", None) or (
            self.model.config.hidden_size // self.model.config.num_attention_heads
        )
        return QuantizedCache(
            backend="hqq",
            config=self.model.config,
            nbits=4,
            axis_key=1,
            axis_value=1,
            q_group_size=min(self.q4_group_size, head_dim),
            residual_length=self.q4_residual,
        )

    def start(self, prompt: Prompt, params: SamplingParams, cancel: threading.Event) -> Generation:
        """Start generating in a thread; the returned ``Generation`` streams its events."""
        streamer = TokenStreamer(self.tokenizer, params.stop, self.eos_ids)
        gen = Generation(streamer, cancel, prompt.max_new_tokens)
        input_ids = torch.tensor([prompt.ids], dtype=torch.long, device=self.model.device)
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=prompt.max_new_tokens,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_CancelCriteria(lambda: cancel.is_set() or streamer.stop_hit)]),
            eos_token_id=sorted(self.eos_ids) or None,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        if params.min_tokens:
            kwargs["min_new_tokens"] = min(params.min_tokens, prompt.max_new_tokens)
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        cache = self._cache()
        if cache is not None:
            kwargs["past_key_values"] = cache

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # reported to the client as an error event
                logger.exception("generation failed")
                gen.error = exc
                streamer.text_queue.put(streamer.stop_signal)

        gen.thread = threading.Thread(target=run, name="generate", daemon=True)
        gen.thread.start()
        return gen

    def generate_text(self, prompt: Prompt, params: SamplingParams) -> tuple[str, int, str]:
        """Blocking helper: the whole text, the completion token count and the finish reason."""
        gen = self.start(prompt, params, threading.Event())
        parts = []
        for event in gen:
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "error":
                raise GenerationError(event[1])
            else:
                return "".join(parts), event[2], event[1]
        return "".join(parts), gen.streamer.completion_tokens, gen.finish_reason

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits for every position (used by the tied-embedding regression test)."""
        with torch.inference_mode():
            out = self.model(torch.tensor([ids], device=self.model.device))
        return out.logits[0].float().cpu()


def memory_stats() -> dict[str, float]:
    """Peak memory of this process: RSS and, on a GPU, what torch allocated."""
    import resource

    stats = {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        stats["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return stats
