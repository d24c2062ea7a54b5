"""Build a tiny random-weight Qwen2 checkpoint with an offline-trained BPE tokenizer.

Tests and the bench need a real Qwen2-architecture checkpoint without downloading one. The
tokenizer is a byte-level BPE trained here on a deterministic corpus and wrapped as
``Qwen2TokenizerFast`` with ChatML special tokens and a ChatML ``chat_template``, so
``apply_chat_template`` behaves the way Qwen's does. See shared/specs/local-coder-gptq-recipe.md §3.

Pure random weights are a poor fixture: with a small init the greedy output is one token repeated;
with a large one the logits are so flat that a 4-bit KV cache flips the greedy argmax at the
second token and GPTQ logits drift to cosine 0.7-0.85. So by default the model is trained for 100
steps (about 4 s on one core) on the tokenizer's corpus in ChatML form: logits become peaked, GPTQ
keeps cosine > 0.999 and greedy text is stable. ``--train-steps 0`` gives the pure random model.

Usage: ``python -m tests.tools.make_tiny_qwen OUT_DIR [--train-steps 100] [--init-range 0.02]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, the format of Qwen2.5's template without its tool-calling branches.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CODE_LINES = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "import os\nprint(os.getcwd())\n",
    "if __name__ == '__main__':\n    main()\n",
    "with open('data.txt') as f:\n    lines = f.readlines()\n",
    "result = [x for x in items if x is not None]\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = 0\n",
]
_WORDS = (
    "the model writes clean code with comments and tests a function returns a value "
    "python list dict string number loop class method error file request response "
    "Привет мир код функция список ответ вопрос пример"
).split()


def corpus() -> list[str]:
    """A deterministic training corpus: the Zen of Python, code lines and generated sentences."""
    import codecs

    with contextlib.redirect_stdout(io.StringIO()):
        import this
    zen = codecs.decode(this.s, "rot13").splitlines()
    sentences = []
    n = len(_WORDS)
    for i in range(400):
        words = [_WORDS[(i * 7 + j * 13) % n] for j in range(5 + i % 9)]
        sentences.append(" ".join(words).capitalize() + ".")
    return zen + _CODE_LINES * 20 + sentences


def build_tokenizer(vocab_size: int = 512):
    """Train a byte-level BPE offline and wrap it as a Qwen2 fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    wrapped = wrap_chatml(tok)
    wrapped.model_max_length = 32768
    return wrapped


def wrap_chatml(tok):
    """A raw ``tokenizers`` BPE as Qwen's tokenizer: ChatML specials and chat template."""
    from transformers import Qwen2TokenizerFast

    wrapped = Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_model(tokenizer, init_range: float = 0.02, seed: int = 0, tie: bool = True, **shape):
    """A random Qwen2ForCausalLM; ``shape`` overrides the tiny defaults (hidden 128, 2 layers)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    params = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        initializer_range=init_range,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    params.update(shape)
    config = Qwen2Config(**params)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def train(model, tokenizer, steps: int, seed: int = 0, batch: int = 8, max_len: int = 96) -> float:
    """A few AdamW steps on ChatML turns from the corpus; returns the last loss."""
    import random

    import torch

    texts = corpus()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        rows = []
        for _ in range(batch):
            i = rng.randrange(len(texts) - 3)
            msgs = [
                {"role": "user", "content": texts[i]},
                {"role": "assistant", "content": " ".join(texts[i + 1 : i + 3])},
            ]
            rows.append(tokenizer.apply_chat_template(msgs, tokenize=True)[:max_len])
        width = max(len(r) for r in rows)
        ids = torch.full((batch, width), tokenizer.pad_token_id)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for j, row in enumerate(rows):
            ids[j, : len(row)] = torch.tensor(row)
            mask[j, : len(row)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return loss.item()


def make_tiny(out_dir: str | Path, init_range: float = 0.02, seed: int = 0, train_steps: int = 100) -> Path:
    """Write the fp32 tiny model and its tokenizer to ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, init_range=init_range, seed=seed)
    if train_steps:
        loss = train(model, tokenizer, train_steps, seed=seed)
        logger.info("trained %d steps, loss %.3f", train_steps, loss)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    logger.info("tiny Qwen2 written to %s (%d params)", out, sum(p.numel() for p in model.parameters()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--init-range", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    import torch

    torch.set_num_threads(1)
    make_tiny(args.out_dir, args.init_range, args.seed, args.train_steps)


if __name__ == "__main__":
    main()
