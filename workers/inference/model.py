"""The GPTQ Qwen2.5-Coder model inside the inference worker: loading, int4 kernels, the batched
forward pass and sampling.

Loading follows shared/specs/local-coder-gptq-recipe.md §5: ``AutoGPTQForCausalLM.from_quantized``
with an explicit device and none of auto-gptq's own kernels, then a repair of tied embeddings that
auto-gptq loads as garbage when the checkpoint has no ``lm_head.weight``. Then each ``QuantLinear``
is replaced by an ``Int4Linear`` (``int4.py``: torch's int4 matmul; q/k/v and gate/up fused);
what cannot be repacked keeps its ``QuantLinear`` and the log says why.

Generation does not go through ``transformers.generate``: ``BatchRunner`` runs the decoder layers
itself on the transformers modules' weights, for a batch of sequences at different positions
(continuous batching): every linear layer runs once on all the step's tokens, attention runs on
each sequence's own cache. With the normal cache every sequence owns a row ("slot") of one
preallocated K/V pool per layer, and decoding sequences attend in a single call; with ``-cache
q4`` each sequence has its own transformers ``QuantizedCache`` (HQQ, 4-bit). On CUDA the
decode-only step is captured once per (batch, length) bucket as a CUDA graph and replayed.

This module imports torch and transformers; only the worker process (and the GPU bench) import it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .int4 import CannotRepack, GPTQWeight, Int4Linear, Int8Linear, check_device, kernel_name
from .protocol import (  # noqa: F401  (re-exported: the model's public request types)
    BadParams,
    ContextTooLongError,
    GenerationError,
    Prompt,
    SamplingParams,
    normalize_messages,
)

logger = logging.getLogger(__name__)

CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# (parent module, fused name, projections that read the same input)
PROJECTIONS = (
    ("self_attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
    ("self_attn", None, ("o_proj",)),
    ("mlp", "gate_up_proj", ("gate_proj", "up_proj")),
    ("mlp", None, ("down_proj",)),
)


# -- int4 kernels on a transformers model ---------------------------------------------------------


@dataclass
class KernelReport:
    """Which kernel runs the quantized projections, and what kept auto-gptq's ``QuantLinear``."""

    kernel: str = "none"
    replaced: int = 0
    kept: list[str] = field(default_factory=list)
    fused: int = 0

    def summary(self) -> str:
        total = self.replaced + len(self.kept)
        text = f"{self.kernel} on {self.replaced}/{total} projections ({self.fused} fused groups)"
        return text + (f"; {len(self.kept)} kept QuantLinear" if self.kept else "")


def install_int4(
    layer: nn.Module,
    weights: dict[str, GPTQWeight | Exception],
    device: torch.device | str,
    report: KernelReport,
    prefix: str = "",
    fuse: bool = True,
) -> None:
    """Put ``Int4Linear`` modules on one decoder layer, from the GPTQ tensors of its projections
    (by name: ``q_proj``, ...; an exception stands for one that cannot be read). A projection
    that cannot be repacked keeps its module; one that was fused is set to None."""
    for parent_name, fused_name, names in PROJECTIONS:
        parent = getattr(layer, parent_name)
        if fused_name and fuse and all(isinstance(weights.get(n), GPTQWeight) for n in names):
            try:
                setattr(parent, fused_name, Int4Linear.from_gptq([weights[n] for n in names], device))
            except CannotRepack as exc:
                logger.info("%s%s.%s: not fused (%s)", prefix, parent_name, fused_name, exc)
            else:
                for n in names:
                    setattr(parent, n, None)
                report.replaced += len(names)
                report.fused += 1
                continue
        for n in names:
            weight = weights.get(n)
            try:
                if not isinstance(weight, GPTQWeight):
                    raise weight if isinstance(weight, Exception) else CannotRepack("no GPTQ tensors")
                setattr(parent, n, Int4Linear.from_gptq(weight, device))
                report.replaced += 1
            except CannotRepack as exc:
                report.kept.append(f"{prefix}{parent_name}.{n}")
                logger.warning("%s%s.%s keeps auto-gptq's QuantLinear: %s", prefix, parent_name, n, exc)


def use_int4_kernels(hf_model: nn.Module, device: torch.device | str, fuse: bool = True) -> KernelReport:
    """Replace every auto-gptq ``QuantLinear`` of a Qwen2-style model by ``Int4Linear``."""
    report = KernelReport()
    try:
        check_device(device)
    except CannotRepack as exc:
        logger.warning("int4 kernels unavailable (%s): keeping auto-gptq's QuantLinear", exc)
        report.kernel = _quantlinear_name(hf_model)
        return report
    for i, layer in enumerate(hf_model.model.layers):
        weights: dict[str, GPTQWeight | Exception] = {}
        for parent_name, _, names in PROJECTIONS:
            parent = getattr(layer, parent_name)
            for n in names:
                module = getattr(parent, n)
                try:
                    weights[n] = GPTQWeight.from_module(module)
                except (CannotRepack, AttributeError) as exc:
                    weights[n] = CannotRepack(str(exc))
        install_int4(layer, weights, device, report, prefix=f"layer {i} ", fuse=fuse)
    report.kernel = kernel_name(device) if report.replaced else _quantlinear_name(hf_model)
    if report.kept and report.replaced:
        report.kernel += f" + {_quantlinear_name(hf_model)}"
    return report


def _quantlinear_name(hf_model: nn.Module) -> str:
    qlinear = next((m for m in hf_model.modules() if type(m).__name__ == "QuantLinear"), None)
    return f"{type(qlinear).__module__}.QuantLinear" if qlinear is not None else "none"


# -- tied embeddings (recipe §5, gotcha 2) --------------------------------------------------------


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


def fix_tied_embeddings(hf_model: nn.Module, path: Path) -> bool:
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


# -- the batched forward pass -------------------------------------------------------------------


class Sequence:
    """One request's state inside the runner: its cache row (or own cache) and its sampling."""

    def __init__(self, params: SamplingParams, eos_ids: set[int]) -> None:
        self.params = params
        self.eos_ids = eos_ids
        self.slot = -1
        self.length = 0  # tokens whose keys and values are cached
        self.generated = 0  # sampled tokens so far (min_tokens)
        self.cache: Any = None  # a transformers Cache with -cache q4


@dataclass
class _Layer:
    """The modules of one decoder layer, looked up once."""

    in_norm: nn.Module
    post_norm: nn.Module
    qkv: nn.Module | None
    q: nn.Module | None
    k: nn.Module | None
    v: nn.Module | None
    o: nn.Module
    gate_up: nn.Module | None
    gate: nn.Module | None
    up: nn.Module | None
    down: nn.Module
    act: Callable[[torch.Tensor], torch.Tensor]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _DecodeGraph:
    """One CUDA graph of the decode-only step for ``batch`` rows and keys up to ``length``."""

    def __init__(self, runner: BatchRunner, batch: int, length: int) -> None:
        device = runner.device
        self.batch = batch
        self.ids = torch.zeros(batch, dtype=torch.long, device=device)
        # warm-up writes go to the last position of the bucket, which no sequence uses yet
        self.pos = torch.full((batch,), length - 1, dtype=torch.long, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                runner._decode_all(self.ids, self.pos, length)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = runner._decode_all(self.ids, self.pos, length)

    def run(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        n = ids.shape[0]
        self.ids[:n].copy_(ids)
        self.pos[:n].copy_(pos)
        if n < self.batch:  # padding rows: free slots, written at position 0, never read
            self.ids[n:].zero_()
            self.pos[n:].zero_()
        self.graph.replay()
        return self.logits[:n]


class BatchRunner:
    """Runs a Qwen2-architecture transformers model for many sequences at once.

    ``step`` takes, per sequence, the tokens to feed (a prompt chunk, or the last sampled token)
    and returns a sampled next token for those that asked for one. It owns the KV cache.
    """

    GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)

    def __init__(
        self,
        hf_model: nn.Module,
        max_slots: int,
        max_seq_len: int,
        cache: str = "normal",
        cache_factory: Callable[[], Any] | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        self.hf = hf_model
        config = hf_model.config
        self.config = config
        self.device = hf_model.model.embed_tokens.weight.device
        self.dtype = hf_model.model.embed_tokens.weight.dtype
        self.max_slots = max(1, max_slots)
        self.max_seq_len = max_seq_len
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.groups = self.n_heads // self.n_kv
        self.cache_kind = cache
        self.cache_factory = cache_factory
        self.embed = hf_model.model.embed_tokens
        self.norm = hf_model.model.norm
        self.lm_head = hf_model.lm_head
        self.vocab = getattr(self.lm_head, "out_features", None) or self.lm_head.weight.shape[0]
        rotary = getattr(hf_model.model, "rotary_emb", None)
        inv_freq = getattr(rotary, "inv_freq", None)
        if inv_freq is None:  # default RoPE from the config (transformers 5 keeps it in rope_parameters)
            rope = getattr(config, "rope_parameters", None) or {}
            theta = float(getattr(config, "rope_theta", None) or rope.get("rope_theta") or 10000.0)
            inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        self.inv_freq = inv_freq.to(device=self.device, dtype=torch.float32)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0) or 1.0)
        if getattr(config, "use_sliding_window", False):
            logger.warning("the checkpoint asks for sliding-window attention; the runner attends to the whole context")
        self.layers = [self._layer(layer) for layer in hf_model.model.layers]
        self.capacity = 0  # positions per slot in the K/V pools
        self.k_pool: list[torch.Tensor] = []
        self.v_pool: list[torch.Tensor] = []
        self.slots: list[Sequence | None] = [None] * self.max_slots
        self.seen = torch.zeros((self.max_slots, self.vocab), dtype=torch.bool, device=self.device)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda" and cache == "normal"
        self.graphs: dict[tuple[int, int], _DecodeGraph] = {}
        self.graph_failed = False
        self.steps = 0
        self.rows = 0  # tokens fed, over all steps (mean batch = rows / steps)

    @staticmethod
    def _layer(layer: nn.Module) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        return _Layer(
            in_norm=layer.input_layernorm,
            post_norm=layer.post_attention_layernorm,
            qkv=getattr(attn, "qkv_proj", None),
            q=attn.q_proj,
            k=attn.k_proj,
            v=attn.v_proj,
            o=attn.o_proj,
            gate_up=getattr(mlp, "gate_up_proj", None),
            gate=mlp.gate_proj,
            up=mlp.up_proj,
            down=mlp.down_proj,
            act=mlp.act_fn,
        )

    # -- sequences ---------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return sum(1 for s in self.slots if s is not None)

    @torch.inference_mode()
    def open(self, seq: Sequence, prompt_ids: list[int]) -> None:
        """Give ``seq`` the lowest free slot (slots stay packed: 0..active-1)."""
        slot = self.slots.index(None)
        self.slots[slot] = seq
        seq.slot, seq.length, seq.generated = slot, 0, 0
        if self.cache_kind != "normal":
            seq.cache = self.cache_factory() if self.cache_factory else None
        self.seen[slot].zero_()
        if prompt_ids:
            self.seen[slot, torch.tensor(prompt_ids, device=self.device)] = True

    @torch.inference_mode()
    def close(self, seq: Sequence) -> None:
        """Free ``seq``'s slot; the sequence in the last used slot moves into it."""
        slot = seq.slot
        if slot < 0 or self.slots[slot] is not seq:
            return
        self.slots[slot] = None
        seq.slot, seq.cache = -1, None
        last = max((i for i, s in enumerate(self.slots) if s is not None), default=-1)
        if last > slot:
            moved = self.slots[last]
            n = moved.length
            if n and self.k_pool:
                for pool in (*self.k_pool, *self.v_pool):
                    pool[slot, :, :n] = pool[last, :, :n]
            self.seen[slot] = self.seen[last]
            self.slots[slot], self.slots[last] = moved, None
            moved.slot = slot

    def _reserve(self, needed: int) -> None:
        """Grow the K/V pools (doubling, up to ``max_seq_len``) to hold ``needed`` positions."""
        if self.cache_kind != "normal" or needed <= self.capacity:
            return
        if needed > self.max_seq_len:
            raise GenerationError(f"sequence of {needed} tokens exceeds the context ({self.max_seq_len})")
        new = max(256, self.capacity)
        while new < needed:
            new *= 2
        new = min(new, -(-self.max_seq_len // 256) * 256)  # whole 256-blocks: aligned attention masks
        shape = (self.max_slots, self.n_kv, new, self.head_dim)
        old = self.capacity
        for pools in (self.k_pool, self.v_pool):
            for i in range(len(self.layers)):
                pool = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if pools and old:
                    pool[:, :, :old] = pools[i]
                if len(pools) > i:
                    pools[i] = pool
                else:
                    pools.append(pool)
        self.capacity = new
        self.graphs.clear()  # they point at the old pools
        logger.debug("K/V pools grown to %d positions x %d slots", new, self.max_slots)

    # -- the step ------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, items: list[tuple[Sequence, list[int], bool]]) -> list[int | None]:
        """Feed each sequence its tokens; sample a next token where the flag asks for one."""
        if not items:
            return []
        self.steps += 1
        self.rows += sum(len(t) for _, t, _ in items)
        if self.cache_kind == "normal":
            self._reserve(max(seq.length + len(tokens) for seq, tokens, _ in items))
        decode = sorted((it for it in items if len(it[1]) == 1), key=lambda it: it[0].slot)
        chunks = [it for it in items if len(it[1]) > 1]
        wanted = [it for it in (*decode, *chunks) if it[2]]
        if (
            self.cuda_graphs
            and not chunks
            and not self.graph_failed
            and all(it[2] for it in decode)
            and [it[0].slot for it in decode] == list(range(len(decode)))
        ):
            logits = self._graph_decode(decode)
        else:
            logits = self._forward(decode, chunks)
        for seq, tokens, _ in items:
            seq.length += len(tokens)
        if not wanted:
            return [None] * len(items)
        sampled = self.sample(logits, [it[0] for it in wanted])
        by_seq = {id(it[0]): tok for it, tok in zip(wanted, sampled, strict=True)}
        return [by_seq.get(id(seq)) if want else None for seq, _, want in items]

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale).to(self.dtype), (emb.sin() * self.rope_scale).to(self.dtype)

    def _qkv(self, layer: _Layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if layer.qkv is not None:
            return layer.qkv(x).split(layer.qkv.splits, dim=-1)
        return layer.q(x), layer.k(x), layer.v(x)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        if layer.gate_up is not None:
            gate, up = layer.gate_up(x).split(layer.gate_up.splits, dim=-1)
        else:
            gate, up = layer.gate(x), layer.up(x)
        return layer.down(layer.act(gate) * up)

    def _forward(self, decode: list, chunks: list) -> torch.Tensor:
        """One forward pass over all fed tokens; logits of the last token of each item that
        asked for a sample (decode items first, in slot order, then chunks)."""
        dev = self.device
        tokens: list[int] = []
        positions: list[int] = []
        for seq, toks, _ in (*decode, *chunks):
            tokens += toks
            positions += range(seq.length, seq.length + len(toks))
        ids = torch.tensor(tokens, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        cos, sin = self._rope(pos)
        cos, sin = cos[:, None, :], sin[:, None, :]
        nd = len(decode)
        dec_rows = torch.tensor([it[0].slot for it in decode], dtype=torch.long, device=dev) if nd else None
        dec_pos = pos[:nd]
        dec_len = max((it[0].length for it in decode), default=0) + 1
        packed = nd and [it[0].slot for it in decode] == list(range(nd))
        dec_mask = None
        if nd and self.cache_kind == "normal":
            dec_mask = (torch.arange(dec_len, device=dev)[None, :] <= dec_pos[:, None])[:, None, None, :]
        chunk_masks = []
        for seq, toks, _ in chunks:
            n, start = len(toks), seq.length
            m = torch.arange(start + n, device=dev)[None, :] <= (start + torch.arange(n, device=dev))[:, None]
            chunk_masks.append(m.repeat(self.groups, 1)[None, None])
        h = self.embed(ids)
        t = h.shape[0]
        for li, layer in enumerate(self.layers):
            x = layer.in_norm(h)
            q, k, v = self._qkv(layer, x)
            q = q.reshape(t, self.n_heads, self.head_dim)
            k = k.reshape(t, self.n_kv, self.head_dim)
            v = v.reshape(t, self.n_kv, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            out = []
            if nd:
                out.append(
                    self._attend_decode(
                        li, decode, q[:nd], k[:nd], v[:nd], dec_rows, dec_pos, dec_len, dec_mask, packed
                    )
                )
            offset = nd
            for (seq, toks, _), mask in zip(chunks, chunk_masks, strict=True):
                n = len(toks)
                sl = slice(offset, offset + n)
                out.append(self._attend_chunk(li, seq, q[sl], k[sl], v[sl], mask))
                offset += n
            attn = torch.cat(out) if len(out) > 1 else out[0]
            h = h + layer.o(attn)
            h = h + self._mlp(layer, layer.post_norm(h))
        last = []
        offset = 0
        for _, toks, want in (*decode, *chunks):
            offset += len(toks)
            if want:
                last.append(offset - 1)
        if not last:
            return torch.empty(0, self.vocab, device=dev)
        h = h[torch.tensor(last, device=dev)] if len(last) != t else h
        return self.lm_head(self.norm(h)).float()

    def _attend_decode(self, li, decode, q, k, v, rows, pos, length, mask, packed) -> torch.Tensor:
        """Attention for sequences fed one token each: one call over their cache rows."""
        b = q.shape[0]
        g, d = self.groups, self.head_dim
        if self.cache_kind != "normal":
            outs = []
            for i, (seq, _, _) in enumerate(decode):
                keys, values = seq.cache.update(k[i, None, :, None, :], v[i, None, :, None, :], li)
                qi = q[i].reshape(1, self.n_kv, g, d)
                outs.append(F.scaled_dot_product_attention(qi, keys, values).reshape(1, -1))
            return torch.cat(outs)
        kp, vp = self.k_pool[li], self.v_pool[li]
        kp[rows, :, pos] = k
        vp[rows, :, pos] = v
        if packed:
            keys, values = kp[:b, :, :length], vp[:b, :, :length]
        else:
            keys, values = kp.index_select(0, rows)[:, :, :length], vp.index_select(0, rows)[:, :, :length]
        out = F.scaled_dot_product_attention(q.reshape(b, self.n_kv, g, d), keys, values, attn_mask=mask)
        return out.reshape(b, self.n_heads * d)

    def _attend_chunk(self, li, seq, q, k, v, mask) -> torch.Tensor:
        """Attention for one sequence's prompt chunk (causal inside, all of its past before)."""
        n = q.shape[0]
        g, d = self.groups, self.head_dim
        start = seq.length
        kt, vt = k.transpose(0, 1), v.transpose(0, 1)  # [kv heads, n, d]
        if self.cache_kind != "normal":
            keys, values = seq.cache.update(kt[None], vt[None], li)
        else:
            kp, vp = self.k_pool[li], self.v_pool[li]
            kp[seq.slot, :, start : start + n] = kt
            vp[seq.slot, :, start : start + n] = vt
            keys, values = kp[seq.slot : seq.slot + 1, :, : start + n], vp[seq.slot : seq.slot + 1, :, : start + n]
        # the g query heads of a kv head ride along the query axis: no repeated keys
        qf = q.reshape(n, self.n_kv, g, d).permute(1, 2, 0, 3).reshape(1, self.n_kv, g * n, d)
        out = F.scaled_dot_product_attention(qf, keys, values, attn_mask=mask)
        return out.reshape(self.n_kv, g, n, d).permute(2, 0, 1, 3).reshape(n, self.n_heads * d)

    # -- decode step as a CUDA graph -----------------------------------------------------------

    def _decode_all(self, ids: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
        """The decode step for slots 0..B-1 with static shapes (what a CUDA graph captures)."""
        b = ids.shape[0]
        g, d = self.groups, self.head_dim
        rows = torch.arange(b, device=ids.device)
        cos, sin = self._rope(pos)
        cos, sin = cos[:, None, :], sin[:, None, :]
        mask = (torch.arange(length, device=ids.device)[None, :] <= pos[:, None])[:, None, None, :]
        h = self.embed(ids)
        for li, layer in enumerate(self.layers):
            x = layer.in_norm(h)
            q, k, v = self._qkv(layer, x)
            q = q.reshape(b, self.n_heads, d)
            k = k.reshape(b, self.n_kv, d)
            v = v.reshape(b, self.n_kv, d)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kp, vp = self.k_pool[li], self.v_pool[li]
            kp[rows, :, pos] = k
            vp[rows, :, pos] = v
            out = F.scaled_dot_product_attention(
                q.reshape(b, self.n_kv, g, d), kp[:b, :, :length], vp[:b, :, :length], attn_mask=mask
            )
            h = h + layer.o(out.reshape(b, self.n_heads * d))
            h = h + self._mlp(layer, layer.post_norm(h))
        return self.lm_head(self.norm(h)).float()

    def _graph_decode(self, decode: list) -> torch.Tensor:
        b = len(decode)
        need = max(it[0].length for it in decode) + 1
        batch = next((n for n in self.GRAPH_BATCHES if n >= b and n <= self.max_slots), self.max_slots)
        length = 256
        while length < need:
            length *= 2
        length = min(length, self.capacity)
        ids = torch.tensor([it[1][0] for it in decode], dtype=torch.long, device=self.device)
        pos = torch.tensor([it[0].length for it in decode], dtype=torch.long, device=self.device)
        graph = self.graphs.get((batch, length))
        if graph is None:
            try:
                graph = self.graphs[(batch, length)] = _DecodeGraph(self, batch, length)
                logger.info("captured a CUDA graph for decode batch %d, keys up to %d", batch, length)
            except Exception:
                logger.exception("CUDA graph capture failed; decoding eagerly from now on")
                self.graph_failed = True
                return self._forward(decode, [])
        return graph.run(ids, pos)

    # -- sampling ------------------------------------------------------------------------------

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """Next tokens, one per row: repetition penalty on everything seen (prompt included),
        ``min_tokens`` (no end-of-sequence yet), then greedy or temperature/top-k/top-p."""
        dev = logits.device
        rows = len(seqs)
        slots = torch.tensor([s.slot for s in seqs], dtype=torch.long, device=dev)
        penalties = [s.params.repetition_penalty for s in seqs]
        if any(p != 1.0 for p in penalties):
            pen = torch.tensor(penalties, dtype=logits.dtype, device=dev)[:, None]
            penalized = torch.where(logits < 0, logits * pen, logits / pen)
            logits = torch.where(self.seen.index_select(0, slots), penalized, logits)
        for i, s in enumerate(seqs):
            if s.generated < s.params.min_tokens and s.eos_ids:
                logits[i, list(s.eos_ids)] = float("-inf")
        out = logits.argmax(dim=-1)
        sampled = [i for i, s in enumerate(seqs) if s.params.temperature > 0]
        if sampled:
            idx = torch.tensor(sampled, dtype=torch.long, device=dev)
            temps = torch.tensor([seqs[i].params.temperature for i in sampled], device=dev)[:, None]
            top_ks = [seqs[i].params.top_k or self.vocab for i in sampled]
            kmax = min(max(top_ks), self.vocab)
            vals, cand = (logits.index_select(0, idx) / temps).topk(kmax, dim=-1)
            beyond_k = torch.arange(kmax, device=dev)[None, :] >= torch.tensor(top_ks, device=dev)[:, None]
            vals = vals.masked_fill(beyond_k, float("-inf"))
            probs = vals.softmax(dim=-1)
            top_p = torch.tensor([seqs[i].params.top_p for i in sampled], device=dev)[:, None]
            probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > top_p, 0.0)
            choice = torch.multinomial(probs, 1)
            out[idx] = cand.gather(1, choice).squeeze(1)
        self.seen[slots, out] = True
        tokens = out.tolist()
        for s in seqs:
            s.generated += 1
        return tokens[:rows]

    @torch.inference_mode()
    def prompt_logits(self, ids: list[int]) -> torch.Tensor:
        """Logits at every position of ``ids``, on a scratch slot (tests and checks; not while
        the scheduler runs)."""
        seq = Sequence(SamplingParams(max_tokens=1, temperature=0), set())
        self.open(seq, [])
        try:
            self._reserve(len(ids))
            n = len(ids)
            causal = torch.arange(n, device=self.device)[None, :] <= torch.arange(n, device=self.device)[:, None]
            mask = causal.repeat(self.groups, 1)[None, None]
            cos, sin = self._rope(torch.arange(n, device=self.device))
            cos, sin = cos[:, None, :], sin[:, None, :]
            h = self.embed(torch.tensor(ids, dtype=torch.long, device=self.device))
            for li, layer in enumerate(self.layers):
                q, k, v = self._qkv(layer, layer.in_norm(h))
                q = q.reshape(n, self.n_heads, self.head_dim)
                k = k.reshape(n, self.n_kv, self.head_dim)
                v = v.reshape(n, self.n_kv, self.head_dim)
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
                h = h + layer.o(self._attend_chunk(li, seq, q, k, v, mask))
                h = h + self._mlp(layer, layer.post_norm(h))
            return self.lm_head(self.norm(h)).float()
        finally:
            self.close(seq)


# -- the model as the worker uses it ------------------------------------------------------------


class LocalModel:
    """A GPTQ causal LM, its tokenizer and its batch runner."""

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        cache: str = "normal",
        max_seq_len: int | None = None,
        q4_group_size: int = 64,
        q4_residual: int = 128,
        kernel: str = "auto",
        max_batch: int = 4,
        cuda_graphs: bool = True,
        lm_head: str = "bf16",
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        if kernel not in ("auto", "gptq"):
            raise ValueError("kernel must be 'auto' (torch int4 where possible) or 'gptq' (auto-gptq's QuantLinear)")
        self.kernel_mode = kernel
        if dtype == "auto":
            # torch's int4 kernels run in bf16 (on the CPU bf16 is also ~30x faster than fp16)
            if kernel == "auto":
                dtype = "bfloat16"
            else:
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
        self.max_batch = max(1, max_batch)
        self.cuda_graphs = cuda_graphs
        if lm_head not in ("bf16", "int8"):
            raise ValueError("lm_head must be 'bf16' (the model's dtype) or 'int8'")
        self.lm_head_mode = lm_head
        self.tokenizer = None
        self.model = None  # the transformers model inside auto-gptq's wrapper
        self.runner: BatchRunner | None = None
        self.eos_ids: set[int] = set()
        self.kernel = ""  # what runs the quantized projections (log, /health, gateway status)
        self.kernels: KernelReport | None = None
        self.pad_id: int | None = None
        self._tok_lock = threading.Lock()  # fast tokenizers are not safe for concurrent encode

    @property
    def name(self) -> str:
        return self.path.name

    def load(self, progress: Callable[[str], None] = lambda stage: None) -> None:
        """Load tokenizer and weights; ``progress`` is told each stage (the log shows them)."""
        from auto_gptq import AutoGPTQForCausalLM
        from transformers import AutoTokenizer

        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"{self.path} has no config.json (not a model folder)")
        progress("tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        if not self.tokenizer.chat_template:
            logger.warning("checkpoint has no chat_template; using ChatML")
            self.tokenizer.chat_template = CHATML_FALLBACK
        sizes = sum(f.stat().st_size for f in self.path.glob("*.safetensors"))
        progress(f"weights ({sizes / 2**20:.1f} MiB, device={self.device}, dtype={self.dtype})")
        wrapper = AutoGPTQForCausalLM.from_quantized(
            str(self.path),
            device=self.device,
            use_safetensors=True,
            use_triton=False,
            use_marlin=False,
            # auto-gptq's own kernels: never needed with torch's int4 ones (exllama also
            # rewrites qweight in place, which the repacking could not read); CPU: none exist
            disable_exllama=self.kernel_mode == "auto" or not self.device.startswith("cuda"),
            disable_exllamav2=self.kernel_mode == "auto" or not self.device.startswith("cuda"),
            inject_fused_attention=False,
            inject_fused_mlp=False,
            torch_dtype=DTYPES[self.dtype],
        )
        self.model = wrapper.model.eval()
        progress("tied embeddings check")
        fix_tied_embeddings(self.model, self.path)
        if self.kernel_mode == "auto":
            progress("repacking GPTQ weights for torch's int4 kernel")
            self.kernels = use_int4_kernels(self.model, self.device)
        else:
            self.kernels = KernelReport(kernel=_quantlinear_name(self.model))
        self.kernel = self.kernels.kernel
        if self.lm_head_mode == "int8":
            self.model.lm_head = Int8Linear.from_linear(self.model.lm_head)  # a tied embedding stays bf16
            self.kernel += f" + lm_head {Int8Linear.kernel}"
        progress(f"weights loaded, kernel {self.kernels.summary()}, lm_head {self.lm_head_mode}")
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
        self.runner = BatchRunner(
            self.model,
            max_slots=self.max_batch,
            max_seq_len=self.max_seq_len,
            cache=self.cache,
            cache_factory=self._q4_cache if self.cache == "q4" else None,
            cuda_graphs=self.cuda_graphs,
        )

    def _q4_cache(self):
        from transformers import QuantizedCache

        config = self.model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return QuantizedCache(
            backend="hqq",
            config=config,
            nbits=4,
            axis_key=1,
            axis_value=1,
            q_group_size=min(self.q4_group_size, head_dim),
            residual_length=self.q4_residual,
        )

    def warmup(self) -> None:
        """One short generation so the first request does not pay for lazy initialisation."""
        prompt = self.build_prompt([{"role": "user", "content": "hi"}], None, 2)
        self.generate_text(prompt, SamplingParams(max_tokens=2, temperature=0))

    def new_sequence(self, params: SamplingParams) -> Sequence:
        return Sequence(params, self.eos_ids)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` without special tokens (the incremental decoder's window)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # -- prompts -------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        with self._tok_lock:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
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

    # -- generation (blocking helpers; the worker goes through scheduler.Scheduler) ---------

    def generate_text(self, prompt: Prompt, params: SamplingParams) -> tuple[str, int, str]:
        """The whole text, the completion token count and the finish reason (no thread)."""
        from .scheduler import Request, Scheduler

        scheduler = Scheduler(self, max_batch=1, max_queue=0)
        request = Request(prompt=prompt, params=params)
        scheduler.submit(request)
        while scheduler.has_work():
            scheduler.step()
        parts, reason, n = [], "stop", 0
        while not request.events.empty():
            event = request.events.get()
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "error":
                raise GenerationError(event[1])
            else:
                reason, n = event[1], event[2]
        return "".join(parts), n, reason

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits for every position (used by the tied-embedding regression test)."""
        return self.runner.prompt_logits(ids).cpu()


def memory_stats() -> dict[str, float]:
    """Peak memory of this process: RSS and, on a GPU, what torch allocated."""
    import resource

    stats = {"rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        stats["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return stats
