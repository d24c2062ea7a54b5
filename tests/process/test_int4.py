"""torch's int4 kernels against auto-gptq's own ``QuantLinear`` output, layer by layer.

Tolerance: the kernel runs in bf16 (activations, scales and zero points), whose 8-bit mantissa
gives about 0.4% relative rounding; a layer passes when its largest error is under 1.5% of the
largest output. A wrong zero-point convention (auto-gptq's +1) or row order is off by 10% or more.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("auto_gptq", reason="the local model stack (requirements-local.txt) is not installed")

from workers.inference.int4 import CannotRepack, GPTQWeight, Int4Linear  # noqa: E402

TOLERANCE = 0.015


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


@pytest.fixture(scope="module")
def tiny_quant(tiny_gptq) -> str:
    """The tiny GPTQ fixture (tests/process/conftest.py)."""
    return tiny_gptq["quant_dir"]


@pytest.fixture(scope="module")
def quant_layers(tiny_quant) -> dict:
    from auto_gptq import AutoGPTQForCausalLM

    torch.set_num_threads(1)
    wrapper = AutoGPTQForCausalLM.from_quantized(
        tiny_quant, device="cpu", use_safetensors=True, use_triton=False, use_marlin=False,
        disable_exllama=True, disable_exllamav2=True, torch_dtype=torch.float32,
    )  # fmt: skip
    return {n: m for n, m in wrapper.model.named_modules() if type(m).__name__ == "QuantLinear"}


def test_every_layer_of_the_tiny_checkpoint_matches_quantlinear(quant_layers) -> None:
    assert len(quant_layers) == 14  # 2 layers x 7 projections
    gen = torch.Generator().manual_seed(0)
    for name, layer in quant_layers.items():
        x = torch.randn(5, layer.infeatures, generator=gen)
        want = layer(x)
        got = Int4Linear.from_gptq(GPTQWeight.from_module(layer))(x)
        assert got.dtype == x.dtype and got.shape == want.shape
        assert rel_err(got, want) < TOLERANCE, name


def test_the_zero_point_offset_is_what_makes_it_match(quant_layers) -> None:
    """Reading qzeros without auto-gptq's +1 (the v1 convention) is clearly wrong: the test
    above could fail."""
    layer = quant_layers["model.layers.0.mlp.gate_proj"]
    x = torch.randn(5, layer.infeatures, generator=torch.Generator().manual_seed(1))
    weight = GPTQWeight.from_module(layer)
    weight.zero_offset = 0
    assert rel_err(Int4Linear.from_gptq(weight)(x), layer(x)) > 0.1


def test_fused_qkv_and_gate_up_equal_the_separate_layers(quant_layers) -> None:
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(2))
    for names in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
        prefix = "model.layers.1.self_attn." if names[0] == "q_proj" else "model.layers.1.mlp."
        layers = [quant_layers[prefix + n] for n in names]
        fused = Int4Linear.from_gptq([GPTQWeight.from_module(m) for m in layers])
        assert fused.splits == tuple(m.outfeatures for m in layers)
        want = torch.cat([m(x) for m in layers], dim=-1)
        assert rel_err(fused(x), want) < TOLERANCE


def _act_order_quantlinear(k: int = 256, n: int = 64, group: int = 32, seed: int = 3):
    """An auto-gptq ``QuantLinear`` (the g_idx-aware ``qlinear_cuda``) quantized with act order:
    the input rows of each group are scattered by a random permutation."""
    from auto_gptq.nn_modules.qlinear.qlinear_cuda import QuantLinear

    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(k, n, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=gen) * 0.05)
        linear.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    perm = torch.randperm(k, generator=gen)
    g_idx = (torch.argsort(perm) // group).to(torch.int32)  # row perm[j] belongs to group j // group
    scales = torch.rand(n, k // group, generator=gen) * 0.01 + 0.005
    zeros = torch.full((n, k // group), 8.0)
    layer = QuantLinear(bits=4, group_size=group, infeatures=k, outfeatures=n, bias=True, weight_dtype=torch.float32)
    layer.pack(linear, scales, zeros, g_idx=g_idx)
    return layer


def test_act_order_g_idx_is_honoured() -> None:
    layer = _act_order_quantlinear()
    x = torch.randn(4, layer.infeatures, generator=torch.Generator().manual_seed(4))
    int4 = Int4Linear.from_gptq(GPTQWeight.from_module(layer))
    assert int4.perm is not None
    assert rel_err(int4(x), layer(x)) < TOLERANCE
    # ignoring g_idx would compute something else
    weight = GPTQWeight.from_module(layer)
    weight.g_idx = None
    assert rel_err(Int4Linear.from_gptq(weight)(x), layer(x)) > 0.1


def test_bf16_and_3d_inputs_keep_their_dtype_and_shape(quant_layers) -> None:
    layer = quant_layers["model.layers.0.self_attn.o_proj"]
    int4 = Int4Linear.from_gptq(GPTQWeight.from_module(layer))
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(5))
    got = int4(x.bfloat16())
    assert got.dtype == torch.bfloat16 and got.shape == (2, 3, 128)
    assert rel_err(got, layer(x)) < 3 * TOLERANCE  # bf16 input rounding on top


def test_what_cannot_be_repacked_says_why(quant_layers) -> None:
    weight = GPTQWeight.from_module(quant_layers["model.layers.0.self_attn.q_proj"])
    with pytest.raises(CannotRepack, match="3-bit"):
        Int4Linear.from_gptq(GPTQWeight(weight.qweight, weight.qzeros, weight.scales, weight.g_idx, bits=3))
    # 8 outputs: the CPU kernel packs rows by 16
    narrow = GPTQWeight(weight.qweight[:, :8], weight.qzeros[:, :1], weight.scales[:, :8], weight.g_idx)
    with pytest.raises(CannotRepack, match="N % 16"):
        Int4Linear.from_gptq(narrow)

    class Exllama(torch.nn.Module):
        QUANT_TYPE = "exllama"  # shuffles qweight in place: not the GPTQ layout any more

    with pytest.raises(CannotRepack, match="exllama"):
        GPTQWeight.from_module(Exllama())


def test_int8_lm_head_is_within_a_percent_of_bf16() -> None:
    """``--lm-head int8``: per-row symmetric int8 against the bf16 layer it replaces."""
    from workers.inference.int4 import Int8Linear

    gen = torch.Generator().manual_seed(6)
    linear = torch.nn.Linear(256, 1000, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(1000, 256, generator=gen) * 0.02)
    int8 = Int8Linear.from_linear(linear, rows_per_chunk=300)
    assert int8.weight.dtype == torch.int8 and int8.out_features == 1000
    x = torch.randn(3, 256, generator=gen).bfloat16()
    want = linear(x)
    got = int8(x)
    assert got.dtype == torch.bfloat16 and rel_err(got, want) < 0.01
    assert (got.argmax(-1) == want.argmax(-1)).all()
