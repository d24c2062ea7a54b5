"""GPTQ int4 weights run by torch's own int4 matmul kernels (no auto-gptq needed at run time).

auto-gptq's pure-torch ``QuantLinear`` (the only one ``requirements-local.txt`` builds)
dequantizes the whole weight on every forward pass. torch ships int4 kernels that read packed
int4 weights with groupwise scales and zero points directly:

- CPU: ``aten._convert_weight_to_int4pack_for_cpu`` (int32 ``[N, K]`` of nibbles in, packed
  uint8 out) and ``aten._weight_int4pack_mm_for_cpu``; bf16 activations are some 30x faster
  than fp16/fp32 there, so the kernel always runs in bf16.
- CUDA (sm80+): ``aten._convert_weight_to_int4pack`` (uint8 ``[N, K/2]`` in, even k in the
  high nibble; out int32 ``[N/8, K/(16*inner_k_tiles), 32, inner_k_tiles/2]``) and
  ``aten._weight_int4pack_mm`` (tinygemm); bf16 only; group size 32, 64, 128 or 256.

Both dequantize ``w = (q - 8) * scale + zero`` from ``scales_and_zeros[K/group, N, 2]``
(``[..., 0]`` the scale, ``[..., 1]`` the zero, in the activation dtype). GPTQ's is
``w = (q - z) * scale``, so the zero passed is ``(8 - z) * scale``. GPTQ "v1" checkpoints (the
format auto-gptq 0.7.1 writes and reads) store ``z - 1`` in ``qzeros``; auto-gptq adds the 1
back (mod 16) when it dequantizes, and so do we. With ``desc_act`` (act order) the input rows
of a group are scattered (``g_idx``): the rows are sorted by group once at load and the
activations are permuted the same way on each call.

Layouts read (auto-gptq's packing, 4 bits): ``qweight`` int32 ``[K/8, N]`` (row ``8r + i`` in
bits ``4i..4i+3`` of row ``r``), ``qzeros`` int32 ``[K/group, N/8]`` (same along columns),
``scales`` ``[K/group, N]``, ``g_idx`` ``[K]``. No dequantized (fp16/fp32) copy of a weight is
kept: a layer's nibbles exist unpacked only while it is being repacked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

CPU_KERNEL = "aten._weight_int4pack_mm_for_cpu"
CUDA_KERNEL = "aten._weight_int4pack_mm (tinygemm)"
CUDA_GROUP_SIZES = (256, 128, 64, 32)
REPACKABLE = ("cuda-old", "cuda", "triton")  # auto-gptq QuantLinear types that keep the GPTQ layout


class CannotRepack(ValueError):
    """This weight cannot run on torch's int4 kernel (the caller keeps the original module)."""


@dataclass
class GPTQWeight:
    """One GPTQ-quantized linear layer, as stored in the checkpoint."""

    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor | None
    bias: torch.Tensor | None = None
    bits: int = 4
    zero_offset: int = 1  # GPTQ v1 (auto-gptq) stores z - 1; gptq_v2 checkpoints store z

    @property
    def in_features(self) -> int:
        return self.qweight.shape[0] * 32 // self.bits

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]

    @classmethod
    def from_module(cls, module: nn.Module) -> GPTQWeight:
        """The tensors of an auto-gptq ``QuantLinear`` (refuses layouts other kernels rewrote)."""
        kind = getattr(module, "QUANT_TYPE", None)
        if kind not in REPACKABLE:
            raise CannotRepack(f"QuantLinear type {kind!r} does not keep the GPTQ layout")
        bias = getattr(module, "bias", None)
        return cls(module.qweight, module.qzeros, module.scales, getattr(module, "g_idx", None), bias, module.bits)


def _unpack_rows_transposed(packed: torch.Tensor) -> torch.Tensor:
    """int32 ``[R, C]`` holding 8 nibbles each along rows -> uint8 ``[C, 8R]`` (values 0..15).

    Works on the little-endian bytes (low nibble first) and transposes once, in uint8: the
    result comes out contiguous in the kernels' ``[N, K]`` order.
    """
    rows, cols = packed.shape
    octets = packed.contiguous().view(torch.uint8).view(rows, cols, 4)
    nibbles = torch.stack((octets & 0xF, octets >> 4), dim=-1)  # [R, C, 4, 2]: k = 8r + 2b + h
    return nibbles.permute(1, 0, 2, 3).reshape(cols, 8 * rows)


def _unpack_cols(packed: torch.Tensor) -> torch.Tensor:
    """int32 ``[R, C]`` holding 8 nibbles each along columns -> ``[R, 8C]``."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nibbles = (packed.unsqueeze(2) >> shifts.view(1, 1, 8)) & 0xF
    return nibbles.reshape(packed.shape[0], -1)


@dataclass
class _Unpacked:
    q: torch.Tensor  # uint8 [N, K] (values 0..15), K sorted by group
    scales: torch.Tensor  # float32 [G, N]
    zeros: torch.Tensor  # float32 [G, N] (GPTQ's integer zero point)
    group_size: int
    perm: torch.Tensor | None  # input permutation (act order), or None


def _unpack(w: GPTQWeight) -> _Unpacked:
    if w.bits != 4:
        raise CannotRepack(f"{w.bits}-bit weights (torch's kernels are 4-bit)")
    k, n = w.in_features, w.out_features
    groups = w.scales.shape[0]
    if k % groups:
        raise CannotRepack(f"{k} input features do not split into {groups} groups")
    group_size = k // groups
    q = _unpack_rows_transposed(w.qweight.to(torch.int32))  # [N, K]
    zeros = (_unpack_cols(w.qzeros.to(torch.int32))[:, :n] + w.zero_offset) & 0xF  # [G, N]
    perm = None
    if w.g_idx is not None:
        g_idx = w.g_idx.to(torch.long)
        trivial = torch.arange(k, device=g_idx.device) // group_size
        if not torch.equal(g_idx, trivial):
            counts = torch.bincount(g_idx, minlength=groups)
            if counts.numel() != groups or not bool((counts == group_size).all()):
                raise CannotRepack("g_idx groups are not all of one size")
            perm = torch.argsort(g_idx, stable=True)
            q = q.index_select(1, perm)
    return _Unpacked(q, w.scales.float(), zeros.float(), group_size, perm)


def _kernel_group_size(group_size: int, k: int, device: torch.device) -> int:
    """The group size handed to the kernel: GPTQ's, or a divisor of it the kernel accepts
    (scales and zeros are then repeated), e.g. per-channel (one group of K) on CUDA."""
    if device.type != "cuda":
        return group_size
    for size in CUDA_GROUP_SIZES:
        if size <= group_size and group_size % size == 0 and k % size == 0:
            return size
    raise CannotRepack(f"group size {group_size} has no divisor among {CUDA_GROUP_SIZES}")


def kernel_name(device: torch.device | str) -> str:
    return CUDA_KERNEL if torch.device(device).type == "cuda" else CPU_KERNEL


def check_device(device: torch.device | str) -> None:
    """Raise ``CannotRepack`` when this device has no int4 kernel (old GPU, other backends)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            raise CannotRepack("tinygemm needs compute capability 8.0+ (bf16 tensor cores)")
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
            raise CannotRepack("this torch has no aten._weight_int4pack_mm")
    elif device.type == "cpu":
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            raise CannotRepack("this torch has no aten._weight_int4pack_mm_for_cpu")
    else:
        raise CannotRepack(f"no int4 kernel for device type {device.type}")


class Int4Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` in torch's packed int4 layout (see the module docstring).

    One module may hold several GPTQ layers that read the same input (q/k/v, gate/up) side by
    side: ``splits`` gives their output widths, and one kernel call serves them all.
    """

    def __init__(
        self,
        packed: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        group_size: int,
        in_features: int,
        out_features: int,
        bias: torch.Tensor | None,
        perm: torch.Tensor | None,
        splits: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.splits = splits
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("perm", perm, persistent=False)
        self.on_cuda = packed.device.type == "cuda"
        self.kernel = kernel_name(packed.device)

    @classmethod
    def from_gptq(cls, parts: list[GPTQWeight] | GPTQWeight, device: torch.device | str | None = None) -> Int4Linear:
        """Repack one GPTQ layer, or several with the same input side by side (fused)."""
        parts = [parts] if isinstance(parts, GPTQWeight) else list(parts)
        device = torch.device(device) if device is not None else parts[0].qweight.device
        check_device(device)
        act = torch.bfloat16
        unpacked = [_unpack(p) for p in parts]
        first = unpacked[0]
        k = parts[0].in_features
        for p, u in zip(parts[1:], unpacked[1:], strict=True):
            if p.in_features != k or u.group_size != first.group_size:
                raise CannotRepack("fused layers differ in input size or group size")
            if (u.perm is None) != (first.perm is None) or (u.perm is not None and not torch.equal(u.perm, first.perm)):
                raise CannotRepack("fused layers have different act-order permutations")
        q = torch.cat([u.q for u in unpacked]) if len(unpacked) > 1 else first.q
        scales = torch.cat([u.scales for u in unpacked], dim=1)
        zeros = torch.cat([u.zeros for u in unpacked], dim=1)
        n = q.shape[0]
        group_size = _kernel_group_size(first.group_size, k, device)
        if device.type == "cpu":
            if n % 16 or k % 2:
                raise CannotRepack(f"the CPU kernel needs N % 16 == 0 and an even K (N={n}, K={k})")
        elif n % 8 or k % 32:
            raise CannotRepack(f"tinygemm needs N % 8 == 0 and K % 32 == 0 (N={n}, K={k})")
        repeat = first.group_size // group_size
        if repeat > 1:
            scales = scales.repeat_interleave(repeat, dim=0)
            zeros = zeros.repeat_interleave(repeat, dim=0)
        # tinygemm: w = (q - 8) * s + zt; GPTQ: w = (q - z) * s  =>  zt = (8 - z) * s
        sz = torch.stack([scales, (8.0 - zeros) * scales], dim=-1).to(device=device, dtype=act).contiguous()
        q = q.to(device)
        try:
            if device.type == "cuda":
                inner = next(t for t in (8, 4, 2) if k % (16 * t) == 0)
                as_bytes = (q[:, ::2] << 4) | q[:, 1::2]  # uint8 [N, K/2], even k in the high nibble
                del q
                packed = torch.ops.aten._convert_weight_to_int4pack(as_bytes.contiguous(), inner)
            else:
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
        except RuntimeError as exc:
            raise CannotRepack(f"the kernel refused the weight: {exc}") from exc
        biases = [p.bias if p.bias is not None else torch.zeros(p.out_features) for p in parts]
        has_bias = any(p.bias is not None for p in parts)
        bias = torch.cat([b.to(device=device, dtype=act) for b in biases]) if has_bias else None
        perm = first.perm.to(device) if first.perm is not None else None
        return cls(packed, sz, group_size, k, n, bias, perm, tuple(p.out_features for p in parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.perm is not None:
            x2 = x2.index_select(1, self.perm)
        if x2.dtype != torch.bfloat16:
            x2 = x2.to(torch.bfloat16)
        x2 = x2.contiguous()
        if self.on_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.reshape(*shape, self.out_features)

    def extra_repr(self) -> str:
        fused = f", splits={self.splits}" if len(self.splits) > 1 else ""
        order = ", act_order" if self.perm is not None else ""
        return f"in={self.in_features}, out={self.out_features}, group={self.group_size}{fused}{order}, {self.kernel}"


class Int8Linear(nn.Module):
    """``y = x @ W.T`` with ``W`` in int8 and one bf16 scale per output row (symmetric), on
    ``aten._weight_int8pack_mm``. For the CPU's ``lm_head`` (``--lm-head int8``): a bf16 matvec
    over a 152k-row vocabulary is memory-bound, and int8 halves what it reads."""

    kernel = "aten._weight_int8pack_mm"

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("scales", scales, persistent=False)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Module, rows_per_chunk: int = 8192) -> Int8Linear:
        """Quantize a linear layer's weight (no bias), a chunk of rows at a time."""
        if getattr(linear, "bias", None) is not None:
            raise CannotRepack("Int8Linear has no bias")
        w = linear.weight
        q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
        scales = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
        for start in range(0, w.shape[0], rows_per_chunk):
            chunk = w[start : start + rows_per_chunk].float()
            scale = chunk.abs().amax(dim=1).clamp(min=1e-8) / 127.0
            q[start : start + rows_per_chunk] = torch.round(chunk / scale[:, None]).clamp(-127, 127).to(torch.int8)
            scales[start : start + rows_per_chunk] = scale
        return cls(q, scales.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        return y.to(x.dtype).reshape(*shape, self.out_features)
