"""Benchmark the local Qwen2.5-Coder worker: TTFT, decode tok/s, aggregate tok/s, peak memory.

It starts the real worker (``python -m workers.inference``) and measures through its
``/v1/stream`` endpoint, so the numbers include the HTTP hop the gateway pays.

Models, none downloaded:

- ``--model PATH``: an existing GPTQ checkpoint folder.
- ``--tiny``: the test fixture (tiny Qwen2, GPTQ int4, built on the CPU in a few seconds).
- ``--random-7b DIR``: random weights in the exact Qwen2.5-Coder-7B shape, GPTQ int4 g128
  (hidden 3584, 28 layers, 28 heads / 4 KV heads, MLP 18944, vocab 152064), written straight in
  auto-gptq's packed format; ``--layers``/``--vocab`` shrink it for a CPU run. Random weights
  make random text, but the arithmetic per token is the real model's.

Examples::

    python bench/local_coder.py --tiny --threads 1
    python bench/local_coder.py --random-7b /tmp/qwen7b-rand            # on a GPU
    python bench/local_coder.py --random-7b /tmp/q7b-2l --layers 2 --gen-tokens 8 --concurrency 4

Anchors (shared/specs, Qwen2.5 speed benchmark, A100 80GB, bs 1): transformers + AutoGPTQ
43 tok/s, vLLM 154 tok/s for Qwen2.5-7B-Instruct GPTQ-Int4.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QWEN25_CODER_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


# -- random GPTQ checkpoint of the real shape ---------------------------------------------------


def _synthetic_tokenizer(vocab_size: int):
    """A byte-level BPE whose vocabulary covers every id the model can emit, so each generated
    token decodes to text (the tiny trained tokenizer only knows 512 ids). Qwen's special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab: dict[str, int] = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = {k: v for k, v in SPECIALS.items() if v < vocab_size} or {
        "<|endoftext|>": vocab_size - 3,
        "<|im_start|>": vocab_size - 2,
        "<|im_end|>": vocab_size - 1,
    }
    special_ids = set(specials.values())
    i = len(vocab)
    n = 0
    while i < vocab_size:
        if i not in special_ids:
            vocab[f"Ġw{n}"] = i  # "Ġ" is the byte-level space: decodes to " w<n>"
            n += 1
        i += 1
    for token, idx in specials.items():
        vocab[token] = idx
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    from tests.tools.make_tiny_qwen import wrap_chatml

    return wrap_chatml(tok)


def build_random_gptq(out: Path, group_size: int = 128, seed: int = 0, **shape: Any) -> Path:
    """Write a GPTQ int4 (v1, sym, desc_act False) checkpoint with random weights, tensor by
    tensor in auto-gptq's packed layout: qweight int32 [in/8, out], qzeros int32 [in/g, out/8],
    scales [in/g, out], g_idx [in]."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config

    cfg = {**QWEN25_CODER_7B, **{k: v for k, v in shape.items() if v is not None}}
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _synthetic_tokenizer(cfg["vocab_size"])
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(**cfg, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad, torch_dtype="float16")
    qcfg = {"bits": 4, "group_size": group_size, "desc_act": False, "sym": True, "static_groups": False,
            "true_sequential": True, "damp_percent": 0.01, "model_name_or_path": None,
            "model_file_base_name": "model", "is_marlin_format": False, "quant_method": "gptq"}  # fmt: skip
    config.quantization_config = qcfg
    gen = torch.Generator().manual_seed(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    tensors: dict[str, torch.Tensor] = {}

    def quant_linear(prefix: str, n_in: int, n_out: int) -> None:
        groups = n_in // group_size
        tensors[prefix + ".qweight"] = torch.randint(
            -(2**31), 2**31 - 1, (n_in // 8, n_out), dtype=torch.int32, generator=gen
        )
        tensors[prefix + ".qzeros"] = torch.full((groups, n_out // 8), 0x77777777, dtype=torch.int32)
        # nibbles minus zero are uniform in [-8, 7] (std ~4.6): scale for weights of std 1/sqrt(in)
        scale = 1.0 / (4.6 * n_in**0.5)
        tensors[prefix + ".scales"] = (torch.rand((groups, n_out), generator=gen) * 0.5 + 0.75).mul(scale).half()
        tensors[prefix + ".g_idx"] = (torch.arange(n_in, dtype=torch.int32) // group_size).int()
        tensors[prefix + ".bias"] = torch.zeros(n_out, dtype=torch.float16)

    tensors["model.embed_tokens.weight"] = (torch.randn((cfg["vocab_size"], h), generator=gen) * 0.02).half()
    tensors["lm_head.weight"] = (torch.randn((cfg["vocab_size"], h), generator=gen) * 0.02).half()
    tensors["model.norm.weight"] = torch.ones(h, dtype=torch.float16)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        for name, n_out in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
            quant_linear(f"{p}.self_attn.{name}", h, n_out)
        quant_linear(f"{p}.mlp.gate_proj", h, inter)
        quant_linear(f"{p}.mlp.up_proj", h, inter)
        quant_linear(f"{p}.mlp.down_proj", inter, h)
        tensors[f"{p}.input_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
        tensors[f"{p}.post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    (out / "quantize_config.json").write_text(json.dumps(qcfg, indent=2))
    tokenizer.save_pretrained(out)
    return out


# -- measuring ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one(url: str, body: dict[str, Any]) -> dict[str, float]:
    """One streamed request: TTFT, decode rate, token counts."""
    t0 = time.monotonic()
    first = None
    end: dict[str, Any] = {}
    with requests.post(url + "/v1/stream", json=body, stream=True, timeout=(5, 3600)) as resp:
        resp.raise_for_status()
        for raw in resp.iter_lines(chunk_size=None):
            if not raw:
                continue
            line = json.loads(raw)
            if line["type"] == "text" and first is None:
                first = time.monotonic()
            elif line["type"] == "end":
                end = line
            elif line["type"] == "error":
                raise RuntimeError(line["message"])
    t1 = time.monotonic()
    n = int(end.get("completion_tokens", 0))
    first = first or t1
    return {
        "ttft": first - t0,
        "decode_tps": (n - 1) / (t1 - first) if n > 1 and t1 > first else 0.0,
        "tokens": n,
        "prompt_tokens": int(end.get("prompt_tokens", 0)),
        "seconds": t1 - t0,
    }


def _concurrent(url: str, body: dict[str, Any], n: int) -> dict[str, float]:
    results: list[dict[str, float]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(_one(url, body))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} concurrent request(s) failed: {errors[0]}")
    total = sum(r["tokens"] for r in results)
    return {"aggregate_tps": total / wall, "wall": wall, "tokens": total,
            "ttft_max": max(r["ttft"] for r in results)}  # fmt: skip


def _prompt_of(tokens: int) -> str:
    """Roughly ``tokens`` tokens of code-like text for the tiny and synthetic tokenizers."""
    return ("def add(a, b):\n    return a + b\n" * (tokens // 8 + 1))[: tokens * 4]


def run_bench(args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "workers.inference", "-m", model_dir, "-p", str(port),
            "-cache", args.cache, "--device", args.device, "--dtype", args.dtype,
            "--parallel", str(args.parallel), "--name", Path(model_dir).name]  # fmt: skip
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.max_seq_len:
        argv += ["-l", str(args.max_seq_len)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = open(args.worker_log, "wb") if args.worker_log else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        health: dict[str, Any] = {}
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode} (see --worker-log)")
            try:
                health = requests.get(url + "/health", timeout=2).json()
            except requests.RequestException:
                health = {}
            if health.get("status") == "ok":
                break
            if health.get("status") == "error":
                raise RuntimeError(f"worker failed to load: {health.get('error')}")
            time.sleep(0.5)
        load_s = time.monotonic() - t0
        body = {
            "messages": [{"role": "user", "content": _prompt_of(args.prompt_tokens)}],
            "temperature": 0,
            "max_tokens": args.gen_tokens,
            "min_tokens": args.gen_tokens,
        }
        _one(url, {**body, "max_tokens": 2, "min_tokens": 2})  # warm-up
        singles = [_one(url, body) for _ in range(args.runs)]
        result: dict[str, Any] = {
            "model": Path(model_dir).name,
            "device": health.get("device"),
            "dtype": health.get("dtype"),
            "kernel": health.get("kernel"),
            "cache": health.get("cache"),
            "parallel": args.parallel,
            "load_s": load_s,
            "prompt_tokens": singles[0]["prompt_tokens"],
            "gen_tokens": args.gen_tokens,
            "ttft_ms": statistics.median(r["ttft"] for r in singles) * 1000,
            "decode_tps": statistics.median(r["decode_tps"] for r in singles),
            "concurrent": {},
        }
        conc_body = {**body, "max_tokens": args.conc_gen_tokens, "min_tokens": args.conc_gen_tokens}
        for n in args.concurrency:
            result["concurrent"][n] = _concurrent(url, conc_body, n)
        health = requests.get(url + "/health", timeout=5).json()
        result["memory"] = health.get("memory", {})
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def print_table(r: dict[str, Any]) -> None:
    mem = r.get("memory", {})
    rows = [
        ("model", r["model"]),
        ("device / dtype / cache", f"{r['device']} / {r['dtype']} / {r['cache']}"),
        ("auto-gptq kernel", r["kernel"]),
        ("worker start + load (s)", f"{r['load_s']:.1f}"),
        ("prompt tokens / generated", f"{r['prompt_tokens']} / {r['gen_tokens']}"),
        ("time to first token (ms, median)", f"{r['ttft_ms']:.1f}"),
        ("decode tok/s, batch 1 (median)", f"{r['decode_tps']:.2f}"),
    ]
    for n, c in r["concurrent"].items():
        rows.append((f"aggregate tok/s, {n} concurrent (parallel {r['parallel']})", f"{c['aggregate_tps']:.2f}"))
    rows.append(("peak RSS (MiB)", f"{mem.get('rss_peak_mb', 0):.0f}"))
    if "cuda_peak_mb" in mem:
        rows.append(("peak CUDA allocated (MiB)", f"{mem['cuda_peak_mb']:.0f}"))
    width = max(len(k) for k, _ in rows)
    print(f"| {'metric'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="an existing GPTQ checkpoint folder")
    src.add_argument("--tiny", action="store_true", help="build and use the tiny test model")
    src.add_argument("--random-7b", metavar="DIR", help="build (if missing) a random Qwen2.5-Coder-7B-shaped GPTQ")
    p.add_argument("--layers", type=int, help="with --random-7b: fewer layers (CPU)")
    p.add_argument("--vocab", type=int, help="with --random-7b: smaller vocabulary (CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--cache", default="normal", choices=["normal", "q4"])
    p.add_argument("--parallel", type=int, default=1, help="the worker's concurrent generation slots")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-seq-len", type=int, default=0)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", default="4,16", help="comma-separated concurrent request counts")
    p.add_argument("--conc-gen-tokens", type=int, default=64)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker-log", help="write the worker's log here")
    args = p.parse_args(argv)
    args.concurrency = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.model:
        model_dir = args.model
    elif args.tiny:
        tmp = Path(tempfile.mkdtemp(prefix="bench-tiny-"))
        cmd = [sys.executable, "-m", "tests.tools.quantize_tiny", str(tmp / "tiny-qwen")]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        model_dir = str(tmp / "tiny-qwen")
    else:
        out = Path(args.random_7b)
        if not (out / "model.safetensors").exists():
            started = time.monotonic()
            build_random_gptq(out, num_hidden_layers=args.layers, vocab_size=args.vocab)
            print(f"built random GPTQ checkpoint in {out} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        model_dir = str(out)
    result = run_bench(args, model_dir)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
