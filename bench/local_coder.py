"""Benchmark the local Qwen2.5-Coder worker: TTFT, decode tok/s at 1 and N streams, peak memory.

It starts the real worker (``python -m workers.inference``) and, by default, the real gateway
(gunicorn, ``bench.common.Gateway``) in front of it, and streams ``/v1/chat/completions``, so the
numbers include both HTTP hops a client pays. ``--via worker`` talks to the worker's
``/v1/stream`` directly (which can force a length with ``min_tokens``; through the OpenAI API a
model may stop early at its end-of-sequence token, so the tiny trained fixture runs that way).

Models, none downloaded:

- ``--model PATH``: an existing GPTQ checkpoint folder.
- ``--tiny``: the test fixture (tiny Qwen2, GPTQ int4, built on the CPU in a few seconds).
- ``--random-7b [DIR]``: random weights in the exact Qwen2.5-Coder-7B shape, GPTQ int4 g128
  (hidden 3584, 28 layers, 28 heads / 4 KV heads, MLP 18944, vocab 152064), written straight in
  auto-gptq's packed layout; ``--layers``/``--vocab`` shrink it. Built once and cached (default
  under ``~/.cache/qwenproxy-bench/``, outside the repository; the folder only appears when
  complete). Random weights make random text, but the arithmetic per token is the real model's.
- ``--suite``: the CPU set recorded in docs/PERFORMANCE.md: the tiny fixture, the 2-layer and
  the full 28-layer 7B shape, 1 and 4 streams.

Examples::

    python bench/local_coder.py --suite --threads 2
    python bench/local_coder.py --tiny --via worker --threads 1
    python bench/local_coder.py --random-7b --layers 2 --prompt-tokens 32 --gen-tokens 32
    python bench/local_coder.py --random-7b --kernel gptq      # auto-gptq's QuantLinear, for comparison

Without a GPU stack in this environment, ``bench/gpu_local_coder.py`` measures the same int4
modules and batch runner on CUDA without auto-gptq or a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Fake, Gateway, free_port, machine  # noqa: E402

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
CACHE = Path(os.environ.get("QWENPROXY_BENCH_CACHE", Path.home() / ".cache" / "qwenproxy-bench"))
LOCAL_MODEL = "qwen2.5-coder-local"


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


def random_gptq_tensors(prefix: str, n_in: int, n_out: int, group_size: int, gen, bias: bool = True) -> dict:
    """One GPTQ v1 (sym, no act order) linear layer with random int4 weights, in auto-gptq's
    packed layout: qweight int32 [in/8, out], qzeros int32 [in/g, out/8], scales [in/g, out],
    g_idx [in]. The stored zero 7 is GPTQ's 8 (v1 keeps z - 1)."""
    import torch

    groups = n_in // group_size
    out = {
        prefix + ".qweight": torch.randint(-(2**31), 2**31 - 1, (n_in // 8, n_out), dtype=torch.int32, generator=gen),
        prefix + ".qzeros": torch.full((groups, n_out // 8), 0x77777777, dtype=torch.int32),
        # nibbles minus zero are uniform in [-8, 7] (std ~4.6): scale for weights of std 1/sqrt(in)
        prefix + ".scales": (torch.rand((groups, n_out), generator=gen) * 0.5 + 0.75).mul(1 / (4.6 * n_in**0.5)).half(),
        prefix + ".g_idx": (torch.arange(n_in, dtype=torch.int32) // group_size).int(),
    }
    if bias:
        out[prefix + ".bias"] = torch.zeros(n_out, dtype=torch.float16)
    return out


def build_random_gptq(out: Path, group_size: int = 128, seed: int = 0, **shape: Any) -> Path:
    """Write a GPTQ int4 (v1, sym, desc_act False) checkpoint with random weights, sharded by a
    few layers (so memory stays at one shard), into ``out`` (made whole at the end)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config

    cfg = {**QWEN25_CODER_7B, **{k: v for k, v in shape.items() if v is not None}}
    tmp = out.with_name(out.name + f".partial-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
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
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    n_layers = cfg["num_hidden_layers"]
    per_shard = 4
    shards: list[dict] = [{}]
    shards[0]["model.embed_tokens.weight"] = (torch.randn((cfg["vocab_size"], h), generator=gen) * 0.02).half()
    shards[0]["lm_head.weight"] = (torch.randn((cfg["vocab_size"], h), generator=gen) * 0.02).half()
    shards[0]["model.norm.weight"] = torch.ones(h, dtype=torch.float16)
    weight_map: dict[str, str] = {}
    n_shards = 1 + (n_layers + per_shard - 1) // per_shard

    def flush(index: int, tensors: dict) -> None:
        name = f"model-{index + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))

    flush(0, shards[0])
    del shards
    for start in range(0, n_layers, per_shard):
        tensors: dict = {}
        for i in range(start, min(start + per_shard, n_layers)):
            p = f"model.layers.{i}"
            for name, n_out in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
                bias = name != "o_proj"
                tensors.update(random_gptq_tensors(f"{p}.self_attn.{name}", h, n_out, group_size, gen, bias))
            tensors.update(random_gptq_tensors(f"{p}.mlp.gate_proj", h, inter, group_size, gen, False))
            tensors.update(random_gptq_tensors(f"{p}.mlp.up_proj", h, inter, group_size, gen, False))
            tensors.update(random_gptq_tensors(f"{p}.mlp.down_proj", inter, h, group_size, gen, False))
            tensors[f"{p}.input_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
            tensors[f"{p}.post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
        flush(1 + start // per_shard, tensors)
    index = {"metadata": {"total_size": sum(f.stat().st_size for f in tmp.glob("*.safetensors"))}}
    (tmp / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}, indent=1))
    config.save_pretrained(tmp)
    (tmp / "quantize_config.json").write_text(json.dumps(qcfg, indent=2))
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def random_7b_dir(layers: int | None, vocab: int | None) -> Path:
    layers = layers or QWEN25_CODER_7B["num_hidden_layers"]
    vocab = vocab or QWEN25_CODER_7B["vocab_size"]
    return CACHE / f"random-qwen2.5-coder-7b-L{layers}-V{vocab}-g128"


def ensure_random_7b(path: Path, layers: int | None, vocab: int | None) -> Path:
    if (path / "config.json").exists():
        return path
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    build_random_gptq(path, num_hidden_layers=layers, vocab_size=vocab)
    print(f"built the random GPTQ checkpoint {path} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return path


def tiny_dir() -> Path:
    out = Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny-qwen"
    cmd = [sys.executable, "-m", "tests.tools.quantize_tiny", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out


# -- measuring ---------------------------------------------------------------------------------


class Target:
    """Where requests go: the worker's NDJSON stream, or the gateway's OpenAI SSE stream."""

    def __init__(self, via: str, url: str) -> None:
        self.via, self.url = via, url

    def one(self, content: str, tokens: int) -> dict[str, Any]:
        """One streamed request; ``times`` holds the arrival time of each text piece."""
        t0 = time.monotonic()
        times: list[float] = []
        n = prompt = 0
        if self.via == "worker":
            body = {"messages": [{"role": "user", "content": content}], "temperature": 0,
                    "max_tokens": tokens, "min_tokens": tokens}  # fmt: skip
            with requests.post(self.url + "/v1/stream", json=body, stream=True, timeout=(5, 3600)) as resp:
                resp.raise_for_status()
                for raw in resp.iter_lines(chunk_size=None):
                    line = json.loads(raw) if raw else {}
                    if line.get("type") == "text":
                        times.append(time.monotonic())
                    elif line.get("type") == "end":
                        n, prompt = line["completion_tokens"], line["prompt_tokens"]
                    elif line.get("type") == "error":
                        raise RuntimeError(line["message"])
        else:
            body = {"model": LOCAL_MODEL, "messages": [{"role": "user", "content": content}], "stream": True,
                    "temperature": 0, "max_tokens": tokens, "stream_options": {"include_usage": True}}  # fmt: skip
            with requests.post(self.url + "/v1/chat/completions", json=body, stream=True, timeout=(5, 3600)) as resp:
                resp.raise_for_status()
                for raw in resp.iter_lines(chunk_size=None):
                    if not raw.startswith(b"data: ") or raw == b"data: [DONE]":
                        continue
                    chunk = json.loads(raw[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"])
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        times.append(time.monotonic())
                    if chunk.get("usage"):
                        n, prompt = chunk["usage"]["completion_tokens"], chunk["usage"]["prompt_tokens"]
        t1 = time.monotonic()
        first = times[0] if times else t1
        return {
            "ttft": first - t0,
            "decode_tps": (n - 1) / (t1 - first) if n > 1 and t1 > first else 0.0,
            "tokens": n,
            "prompt_tokens": prompt,
            "seconds": t1 - t0,
            "times": times,
        }

    def concurrent(self, content: str, tokens: int, n: int) -> dict[str, float]:
        """``n`` streams at once. The decoding rate counts the text pieces of all streams that
        arrive while every one of them is decoding (after the last first piece, before the
        first last piece), over that window: the batch's steady rate, prompts excluded."""
        results: list[dict[str, Any]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                results.append(self.one(content, tokens))
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
        streaming = [r for r in results if r["times"]]
        start = max((r["times"][0] for r in streaming), default=0.0)
        end = min((r["times"][-1] for r in streaming), default=0.0)
        pieces = sum(1 for r in streaming for t in r["times"] if start < t <= end)
        return {
            "aggregate_tps": sum(r["tokens"] for r in results) / wall,
            "decode_aggregate_tps": pieces / (end - start) if end > start else 0.0,
            "overlap_pieces": pieces,
            "wall": wall,
            "tokens": sum(r["tokens"] for r in results),
            "ttft_max": start - t0 if streaming else 0.0,
        }


def prompt_text(model_dir: str, tokens: int) -> str:
    """Code-like text that the checkpoint's tokenizer reads as about ``tokens`` tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.encode("def add(a, b):\n    return a + b\n" * (tokens // 4 + 1), add_special_tokens=False)
    return tok.decode(ids[:tokens])


def start_worker(args: argparse.Namespace, model_dir: str, log_path: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "workers.inference", "-m", model_dir, "-p", str(port),
            "-cache", args.cache, "--device", args.device, "--dtype", args.dtype, "--kernel", args.kernel,
            "--lm-head", args.lm_head,
            "--parallel", str(args.parallel), "--max-queue", str(max(16, *args.concurrency)),
            "--name", Path(model_dir).name]  # fmt: skip
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.max_seq_len:
        argv += ["-l", str(args.max_seq_len)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), f"http://127.0.0.1:{port}"


def wait_loaded(proc: subprocess.Popen, url: str) -> dict[str, Any]:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} (see --worker-log)")
        try:
            health = requests.get(url + "/health", timeout=2).json()
        except requests.RequestException:
            health = {}
        if health.get("status") == "ok":
            return health
        if health.get("status") == "error":
            raise RuntimeError(f"worker failed to load: {health.get('error')}")
        time.sleep(0.5)


def run_bench(args: argparse.Namespace, model_dir: str, label: str, via: str) -> dict[str, Any]:
    t0 = time.monotonic()
    proc, worker_url = start_worker(args, model_dir, args.worker_log)
    fake = gateway = None
    try:
        health = wait_loaded(proc, worker_url)
        load_s = time.monotonic() - t0
        url = worker_url
        if via == "gateway":
            fake = Fake()
            gateway = Gateway(fake, LOCAL_MODEL_URL=worker_url, LOCAL_MODEL_NAME=LOCAL_MODEL)
            url = gateway.url
        target = Target(via, url)
        content = prompt_text(model_dir, args.prompt_tokens)
        target.one(content, 2)  # warm-up (and the gateway's first request)
        singles = [target.one(content, args.gen_tokens) for _ in range(args.runs)]
        for single in singles:
            single.pop("times")
        rss_loaded = psutil.Process(proc.pid).memory_info().rss / 2**20
        result: dict[str, Any] = {
            "model": label,
            "via": via,
            "device": health.get("device"),
            "dtype": health.get("dtype"),
            "kernel": health.get("kernel"),
            "cache": health.get("cache"),
            "parallel": args.parallel,
            "threads": args.threads,
            "load_s": load_s,
            "prompt_tokens": singles[0]["prompt_tokens"],
            "gen_tokens": statistics.median(r["tokens"] for r in singles),
            "ttft_ms": statistics.median(r["ttft"] for r in singles) * 1000,
            "decode_tps": statistics.median(r["decode_tps"] for r in singles),
            "concurrent": {},
        }
        for n in args.concurrency:
            result["concurrent"][n] = target.concurrent(content, args.conc_gen_tokens, n)
        health = requests.get(worker_url + "/health", timeout=5).json()
        result["memory"] = {**health.get("memory", {}), "rss_after_load_mb": rss_loaded}
        result["batch"] = health.get("batch", {})
        return result
    finally:
        if gateway is not None:
            gateway.stop()
        if fake is not None:
            fake.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    levels = sorted({n for r in results for n in r["concurrent"]})
    print(f"# {time.strftime('%Y-%m-%d')} · {machine()} · torch threads {args.threads or 'default'} · "
          f"batch {args.parallel} · prompt ~{args.prompt_tokens} tokens")  # fmt: skip
    head = ["model", "via", "kernel", "load s", "TTFT ms", "tok/s 1 stream"]
    for n in levels:
        head += [f"agg. tok/s {n} streams (decoding)", f"x single ({n})", f"agg. tok/s {n} (wall, with prompts)"]
    head += ["peak RSS MiB", "RSS loaded MiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        mem = r.get("memory", {})
        kernel = (r["kernel"] or "").replace("aten.", "").replace(" (tinygemm)", "")
        row = [r["model"], r["via"], kernel, f"{r['load_s']:.0f}", f"{r['ttft_ms']:.0f}", f"{r['decode_tps']:.2f}"]
        for n in levels:
            c = r["concurrent"].get(n)
            if c and not c["overlap_pieces"]:  # never all decoding at once (more streams than the batch)
                row += ["–", "–", f"{c['aggregate_tps']:.2f}"]
            elif c:
                ratio = c["decode_aggregate_tps"] / r["decode_tps"] if r["decode_tps"] else 0.0
                row += [f"{c['decode_aggregate_tps']:.2f}", f"{ratio:.1f}", f"{c['aggregate_tps']:.2f}"]
            else:
                row += ["–", "–", "–"]
        row += [f"{mem.get('rss_peak_mb', 0):.0f}", f"{mem.get('rss_after_load_mb', 0):.0f}"]
        if "cuda_peak_mb" in mem:
            row[-2] += f" (CUDA {mem['cuda_peak_mb']:.0f})"
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="an existing GPTQ checkpoint folder")
    src.add_argument("--tiny", action="store_true", help="build and use the tiny test model")
    src.add_argument("--random-7b", nargs="?", const="", metavar="DIR",
                     help="a random Qwen2.5-Coder-7B-shaped GPTQ (built once; default: a cache folder)")  # fmt: skip
    src.add_argument("--suite", action="store_true", help="tiny, 2-layer and 28-layer 7B shapes (CPU record)")
    p.add_argument("--layers", type=int, help="with --random-7b: fewer layers")
    p.add_argument("--vocab", type=int, help="with --random-7b: smaller vocabulary")
    p.add_argument("--via", choices=["gateway", "worker"], help="default: gateway (worker for --tiny)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kernel", default="auto", choices=["auto", "gptq"])
    p.add_argument("--cache", default="normal", choices=["normal", "q4"])
    p.add_argument("--lm-head", default="bf16", choices=["bf16", "int8"], help="the worker's output layer")
    p.add_argument("--parallel", type=int, default=4, help="the worker's batch size")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", default="4", help="comma-separated concurrent stream counts")
    p.add_argument("--conc-gen-tokens", type=int, default=0, help="tokens per stream (0: --gen-tokens)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker-log", help="write the worker's log here")
    args = p.parse_args(argv)
    args.concurrency = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    args.conc_gen_tokens = args.conc_gen_tokens or args.gen_tokens
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    runs: list[tuple[str, str, str]] = []  # (model dir, label, via)
    if args.suite:
        runs.append((str(tiny_dir()), "tiny fixture (2 layers, hidden 128)", args.via or "worker"))
        for layers in (2, 28):
            path = ensure_random_7b(random_7b_dir(layers, args.vocab), layers, args.vocab)
            runs.append((str(path), f"random 7B shape, {layers} layers", args.via or "gateway"))
    elif args.model:
        runs.append((args.model, Path(args.model).name, args.via or "gateway"))
    elif args.tiny:
        runs.append((str(tiny_dir()), "tiny fixture", args.via or "worker"))
    else:
        path = Path(args.random_7b) if args.random_7b else random_7b_dir(args.layers, args.vocab)
        path = ensure_random_7b(path, args.layers, args.vocab)
        runs.append((str(path), f"random 7B shape, {args.layers or 28} layers", args.via or "gateway"))
    results = []
    for model_dir, label, via in runs:
        results.append(run_bench(args, model_dir, label, via))
        print(json.dumps(results[-1]), file=sys.stderr)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
