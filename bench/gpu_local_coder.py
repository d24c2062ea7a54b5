"""The local coder's decode speed on a GPU: torch int4 kernels + the worker's batch runner.

Runs as ``python3 bench/gpu_local_coder.py`` from the repository root on a machine with torch
(CUDA) and transformers (4.57 or 5.x), without auto-gptq, a checkpoint or a network: it builds a
Qwen2.5-Coder-7B-shaped model from transformers' ``Qwen2Config`` (random weights), replaces every
projection by the worker's ``Int4Linear`` made from random GPTQ tensors (qweight/qzeros/scales/
g_idx, auto-gptq's v1 layout, group 128, the same path as ``-m CHECKPOINT`` after auto-gptq's
loader), and drives the worker's own ``Scheduler`` + ``BatchRunner`` in-process (no HTTP).

It reports, for CUDA graphs on and off: batch-1 decode tok/s, the aggregate tok/s of 16 streams
decoding together, time to first token; the kernel name, a kernel self-check against a plain
dequantized matmul, and the GPU memory (model weights, peak while decoding). Results go to
``$OUT/gpu_local_coder.json`` and ``$OUT/gpu_local_coder.md`` (``--out``, default ``$OUT`` or
the current folder) and to stdout.

CPU check of the same path (a tiny shape)::

    python3 bench/gpu_local_coder.py --device cpu --shape tiny --gen 16 --streams 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from workers.inference.int4 import GPTQWeight, Int4Linear, kernel_name  # noqa: E402
from workers.inference.model import PROJECTIONS, BatchRunner, KernelReport, install_int4  # noqa: E402
from workers.inference.protocol import Prompt, SamplingParams  # noqa: E402
from workers.inference.scheduler import Request, Scheduler  # noqa: E402

SHAPES = {
    # Qwen2.5-Coder-7B
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    ),
    # a CPU-sized check of the same code
    "tiny": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
    ),
}


def random_gptq(n_in: int, n_out: int, group: int, device: torch.device, gen: torch.Generator, bias: bool,
                act_order: bool = False, asym: bool = False) -> GPTQWeight:  # fmt: skip
    """Random GPTQ v1 tensors in auto-gptq's packed layout (zeros stored as z - 1)."""
    groups = n_in // group
    qweight = torch.randint(-(2**31), 2**31 - 1, (n_in // 8, n_out), dtype=torch.int32, device=device, generator=gen)
    if asym:
        z = torch.randint(1, 16, (groups, n_out), dtype=torch.int32, device=device, generator=gen) - 1
        shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=device)
        qzeros = (z.view(groups, n_out // 8, 8) << shifts).sum(-1, dtype=torch.int32)
    else:
        qzeros = torch.full((groups, n_out // 8), 0x77777777, dtype=torch.int32, device=device)
    scale = 1.0 / (4.6 * n_in**0.5)
    scales = ((torch.rand((groups, n_out), device=device, generator=gen) * 0.5 + 0.75) * scale).half()
    g_idx = torch.arange(n_in, dtype=torch.int32, device=device) // group
    if act_order:
        g_idx = g_idx[torch.randperm(n_in, device=device, generator=gen)]
    b = (torch.randn(n_out, device=device, generator=gen) * 0.01).half() if bias else None
    return GPTQWeight(qweight, qzeros, scales, g_idx, b)


def dequantize_reference(w: GPTQWeight) -> torch.Tensor:
    """``W [out, in]`` in fp32 the way auto-gptq's pure-torch QuantLinear computes it."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=w.qweight.device)
    q = ((w.qweight.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF).reshape(-1, w.qweight.shape[1])  # [in, out]
    z = (((w.qzeros.unsqueeze(2) >> shifts.view(1, 1, 8)) & 0xF).reshape(w.qzeros.shape[0], -1) + 1) & 0xF
    g = w.g_idx.long()
    return ((q.float() - z[g].float()) * w.scales[g].float()).t()


def kernel_self_check(device: torch.device, gen: torch.Generator) -> dict[str, Any]:
    """Int4Linear against the dequantized reference: plain, asymmetric zeros, act order, fused."""
    out: dict[str, Any] = {}
    x = torch.randn(5, 3584, device=device, generator=gen)
    cases = {
        "sym": [random_gptq(3584, 4096, 128, device, gen, True)],
        "asym zeros": [random_gptq(3584, 4096, 128, device, gen, False, asym=True)],
        "act order": [random_gptq(3584, 4096, 128, device, gen, False, act_order=True)],
        "fused 3": [random_gptq(3584, n, 128, device, gen, True) for n in (3584, 512, 512)],
    }
    for name, parts in cases.items():
        try:
            layer = Int4Linear.from_gptq(parts, device)
            want = torch.cat([x @ dequantize_reference(p).t() + (p.bias.float() if p.bias is not None else 0)
                              for p in parts], dim=-1)  # fmt: skip
            got = layer(x.bfloat16()).float()
            err = ((got - want).abs().max() / want.abs().max()).item()
            out[name] = {"rel_err": round(err, 5), "ok": err < 0.03}
        except Exception as exc:
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return out


def build_model(shape: dict[str, int], device: torch.device, gen: torch.Generator) -> tuple[Any, KernelReport]:
    """A transformers Qwen2ForCausalLM with random bf16 weights whose projections are replaced
    by Int4Linear from random GPTQ tensors (group 128, or 32 for the tiny shape)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, use_cache=False)  # fmt: skip
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    h, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    group = 128 if h % 128 == 0 and h >= 1024 else 32
    sizes = {"q_proj": (h, h, True), "k_proj": (h, kv, True), "v_proj": (h, kv, True), "o_proj": (h, h, False),
             "gate_proj": (h, inter, False), "up_proj": (h, inter, False), "down_proj": (inter, h, False)}  # fmt: skip
    report = KernelReport()
    for i, layer in enumerate(model.model.layers):
        names = [n for _, _, group_names in PROJECTIONS for n in group_names]
        weights = {n: random_gptq(sizes[n][0], sizes[n][1], group, device, gen, sizes[n][2]) for n in names}
        install_int4(layer, weights, device, report, prefix=f"layer {i} ")
    report.kernel = kernel_name(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model, report


class _Bench:
    """What the scheduler needs from a model: its runner, sequences, and a text for each token."""

    def __init__(self, runner: BatchRunner) -> None:
        self.runner = runner

    def new_sequence(self, params: SamplingParams):
        from workers.inference.model import Sequence

        return Sequence(params, set())  # random weights: no end-of-sequence token

    @staticmethod
    def decode(ids: list[int]) -> str:
        return "x" * len(ids)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_streams(runner: BatchRunner, device: torch.device, streams: int, prompt_len: int, gen: int) -> dict[str, Any]:
    """``streams`` requests submitted at once, stepped until all are done, timed per request."""
    model = _Bench(runner)
    sched = Scheduler(model, max_batch=streams, max_queue=0, prefill_chunk=512)
    vocab = runner.vocab
    requests = []
    for i in range(streams):
        ids = [(7 * i + 13 * j) % (vocab - 1) for j in range(prompt_len)]
        params = SamplingParams(max_tokens=gen, temperature=0, min_tokens=gen, repetition_penalty=1.0)
        requests.append(Request(prompt=Prompt(ids=ids, max_new_tokens=gen), params=params))
    sync(device)
    t0 = time.perf_counter()
    for r in requests:
        sched.submit(r)
    first: dict[int, float] = {}
    while sched.has_work():
        sched.step()
        now = time.perf_counter()
        for i, r in enumerate(requests):
            if i not in first and r.completion_tokens:
                first[i] = now
    sync(device)
    t1 = time.perf_counter()
    tokens = sum(r.completion_tokens for r in requests)
    errors = [r.events.get() for r in requests if r.finish_reason not in ("length", "stop")]
    decode_start = max(first.values())
    return {
        "streams": streams,
        "tokens": tokens,
        "ttft_ms": round((min(first.values()) - t0) * 1000, 1),
        "ttft_max_ms": round((decode_start - t0) * 1000, 1),
        "aggregate_tps": round(tokens / (t1 - t0), 1),
        "decode_tps": round(sum(r.completion_tokens - 1 for r in requests) / (t1 - decode_start), 1)
        if t1 > decode_start
        else 0.0,
        "per_stream_tps": round((gen - 1) / (t1 - decode_start), 1) if t1 > decode_start else 0.0,
        "errors": [str(e) for e in errors],
        "mean_batch": sched.stats()["mean_batch"],
    }


def greedy_tokens(runner: BatchRunner, prompt_len: int, gen: int) -> list[int]:
    """One greedy sequence's token ids (graph vs eager agreement)."""
    from workers.inference.model import Sequence

    seq = Sequence(SamplingParams(max_tokens=gen, temperature=0, repetition_penalty=1.0), set())
    ids = [(13 * j) % (runner.vocab - 1) for j in range(prompt_len)]
    runner.open(seq, ids)
    try:
        out = runner.step([(seq, ids, True)])
        tokens = [out[0]]
        for _ in range(gen - 1):
            tokens.append(runner.step([(seq, [tokens[-1]], True)])[0])
        return tokens
    finally:
        runner.close(seq)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    p.add_argument("--layers", type=int, help="fewer layers than the shape's")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per stream")
    p.add_argument("--gen", type=int, default=128, help="generated tokens per stream")
    p.add_argument("--streams", type=int, default=16, help="the concurrent run")
    p.add_argument("--threads", type=int, default=0, help="CPU only: torch threads")
    p.add_argument("--no-graphs", action="store_true", help="only the eager decode")
    p.add_argument("--out", default=os.environ.get("OUT") or ".")
    args = p.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    import transformers

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "shape": args.shape,
        "prompt": args.prompt,
        "gen": args.gen,
        "runs": {},
    }
    gen = torch.Generator(device=device).manual_seed(0)
    try:
        result["kernel_check"] = kernel_self_check(device, gen)
        print("kernel self-check:", json.dumps(result["kernel_check"]), flush=True)
        shape = dict(SHAPES[args.shape])
        if args.layers:
            shape["num_hidden_layers"] = args.layers
        result["layers"] = shape["num_hidden_layers"]
        t = time.perf_counter()
        model, report = build_model(shape, device, gen)
        result["build_s"] = round(time.perf_counter() - t, 1)
        result["kernel"] = report.kernel
        result["kernel_detail"] = report.summary()
        if device.type == "cuda":
            result["weights_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(device)
        print(f"model built in {result['build_s']} s: {report.summary()}", flush=True)
        modes = [("cuda graphs", True), ("eager", False)]
        if args.no_graphs or device.type != "cuda":
            modes = [("eager", False)]
        tokens_by_mode = {}
        for mode, graphs in modes:
            runner = BatchRunner(model, max_slots=max(args.streams, 1), max_seq_len=args.prompt + args.gen + 8,
                                 cache="normal", cuda_graphs=graphs)  # fmt: skip
            try:
                run_streams(runner, device, 1, args.prompt, 8)  # warm-up (and graph capture for batch 1)
                single = run_streams(runner, device, 1, args.prompt, args.gen)
                run_streams(runner, device, args.streams, args.prompt, 8)  # warm-up at the full batch
                many = run_streams(runner, device, args.streams, args.prompt, args.gen)
                tokens_by_mode[mode] = greedy_tokens(runner, args.prompt, min(args.gen, 32))
                entry = {"single": single, "concurrent": many, "graphs_captured": len(runner.graphs),
                         "graph_failed": runner.graph_failed}  # fmt: skip
            except Exception as exc:
                entry = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            result["runs"][mode] = entry
            print(f"{mode}: {json.dumps(entry)}", flush=True)
            del runner
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if len(tokens_by_mode) == 2:
            a, b = tokens_by_mode.values()
            result["graph_vs_eager_same_tokens"] = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
        if device.type == "cuda":
            result["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["trace"] = traceback.format_exc()[-3000:]
        print(result["trace"], file=sys.stderr)
    result["total_s"] = round(time.perf_counter() - started, 1)
    table = render(result)
    print(table)
    (out_dir / "gpu_local_coder.json").write_text(json.dumps(result, indent=2))
    (out_dir / "gpu_local_coder.md").write_text(table + "\n")
    return 1 if "error" in result else 0


def render(r: dict[str, Any]) -> str:
    lines = [
        f"# {r['date']} · {r['gpu']} · torch {r['torch']} · transformers {r['transformers']} · "
        f"{r['shape']} shape, {r.get('layers', '?')} layers · prompt {r['prompt']} · {r['gen']} generated",
        f"kernel: {r.get('kernel', '?')} ({r.get('kernel_detail', '')}); self-check: "
        + ", ".join(
            f"{k} {'ok' if v.get('ok') else 'FAIL'} ({v.get('rel_err', v.get('error'))})"
            for k, v in r.get("kernel_check", {}).items()
        ),
        f"weights {r.get('weights_gib', '–')} GiB, peak {r.get('peak_gib', '–')} GiB; build {r.get('build_s', '–')} s; "
        f"graph vs eager greedy agreement {r.get('graph_vs_eager_same_tokens', '–')}; total {r['total_s']} s",
        "",
        "| decode | TTFT ms (1) | tok/s batch 1 | streams | aggregate tok/s | decode-phase tok/s | per stream "
        "| mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, run in r.get("runs", {}).items():
        if "error" in run:
            lines.append(f"| {mode} | error: {run['error']} | | | | | | |")
            continue
        s, c = run["single"], run["concurrent"]
        lines.append(
            f"| {mode} | {s['ttft_ms']} | {s['decode_tps']} | {c['streams']} | {c['aggregate_tps']} "
            f"| {c['decode_tps']} | {c['per_stream_tps']} | {c['mean_batch']} |"
        )
    if "error" in r:
        lines.append(f"\nerror: {r['error']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
