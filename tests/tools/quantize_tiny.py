"""GPTQ-quantize a (tiny) Qwen2 checkpoint on the CPU with auto-gptq 0.7.1.

auto-gptq's ``quantize()`` is CUDA-bound as shipped; four small shims (recipe §4) let it run on
the CPU: build the GPTQ wrapper directly instead of through ``from_pretrained`` (which refuses
without CUDA), point its hard-coded ``cuda:0`` at the CPU, make ``torch.cuda.synchronize`` a
no-op, and adapt to transformers >= 4.53 decoder layers (tensor outputs, ``attention_type``).
The algorithm itself (GPTQ + ``pack_model``) is auto-gptq's own.

Usage::

    python -m tests.tools.quantize_tiny OUT_DIR [--fp-dir FP_DIR] [--tied-dir TIED_DIR]

Without ``--fp-dir`` the tiny fp model is built first (``make_tiny_qwen``) into ``OUT_DIR-fp``.
``--tied-dir`` also writes a copy of the quantized checkpoint *without* ``lm_head.weight``, the
way gptqmodel and transformers 5 save tied embeddings (the recipe's §5 gotcha 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _calibration_examples(tokenizer, n: int = 16) -> list[dict]:
    from .make_tiny_qwen import corpus

    texts = corpus()
    step = max(1, len(texts) // n)
    examples = []
    for i in range(n):
        chunk = " ".join(texts[i * step : i * step + 6])
        enc = tokenizer(chunk, return_tensors="pt", truncation=True, max_length=128)
        examples.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return examples


def _install_cpu_shims():
    """Shims 2 and 2b: auto-gptq hard-codes cuda:0 and calls torch.cuda.synchronize()."""
    import auto_gptq.modeling._base as base
    import torch

    base.CUDA_0 = torch.device("cpu")
    torch.cuda.synchronize = lambda *a, **k: None


@contextlib.contextmanager
def _new_transformers_shims(layers):
    """Shims 3 and 4, only during quantize(): tuple outputs and kept ``attention_type``."""
    import torch

    class _KeepAttrsModuleList(torch.nn.ModuleList):
        def __setitem__(self, idx, module):
            old = self[idx]
            if hasattr(old, "attention_type") and not hasattr(module, "attention_type"):
                module.attention_type = old.attention_type
            super().__setitem__(idx, module)

    hooks = [layer.register_forward_hook(lambda m, i, o: (o,) if torch.is_tensor(o) else o) for layer in layers]
    cls, layers.__class__ = layers.__class__, _KeepAttrsModuleList
    try:
        yield
    finally:
        layers.__class__ = cls
        for hook in hooks:
            hook.remove()


def quantize(fp_dir: str | Path, out_dir: str | Path, bits: int = 4, group_size: int = 64) -> Path:
    """Quantize ``fp_dir`` into ``out_dir`` (a standard GPTQ v1 checkpoint, ``model.safetensors``)."""
    import torch
    from auto_gptq import BaseQuantizeConfig
    from auto_gptq.modeling.auto import GPTQ_CAUSAL_LM_MODEL_MAP
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _install_cpu_shims()
    out = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(fp_dir)
    hf = AutoModelForCausalLM.from_pretrained(fp_dir, torch_dtype=torch.float32).eval()
    hf.seqlen = hf.config.max_position_embeddings
    qcfg = BaseQuantizeConfig(bits=bits, group_size=group_size, desc_act=False, sym=True, model_file_base_name="model")
    model = GPTQ_CAUSAL_LM_MODEL_MAP[hf.config.model_type](hf, False, qcfg)  # shim 1
    started = time.monotonic()
    with _new_transformers_shims(model.model.model.layers):
        model.quantize(_calibration_examples(tokenizer), use_cuda_fp16=False, cache_examples_on_gpu=False)
    logger.info("quantized in %.2f s", time.monotonic() - started)
    model.save_quantized(str(out), use_safetensors=True)
    tokenizer.save_pretrained(out)
    gen_cfg = Path(fp_dir) / "generation_config.json"
    if gen_cfg.exists():
        shutil.copy(gen_cfg, out / "generation_config.json")
    return out


def write_tied_variant(quant_dir: str | Path, tied_dir: str | Path) -> Path:
    """Copy the checkpoint without ``lm_head.weight`` (tied embeddings, as gptqmodel saves them)."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(quant_dir), Path(tied_dir)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    tensors.pop("lm_head.weight", None)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--fp-dir", help="existing fp checkpoint; default: build the tiny one")
    parser.add_argument("--tied-dir", help="also write a tied copy without lm_head.weight here")
    parser.add_argument("--init-range", type=float, default=0.02)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    fp_dir = args.fp_dir
    if not fp_dir:
        from .make_tiny_qwen import make_tiny

        fp_dir = str(
            make_tiny(args.out_dir.rstrip("/") + "-fp", init_range=args.init_range, train_steps=args.train_steps)
        )
    quantize(fp_dir, args.out_dir)
    if args.tied_dir:
        write_tied_variant(args.out_dir, args.tied_dir)
    print(json.dumps({"fp_dir": fp_dir, "quant_dir": args.out_dir, "tied_dir": args.tied_dir}))


if __name__ == "__main__":
    main()
