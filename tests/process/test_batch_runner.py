"""The worker's batch runner on the real tiny GPTQ checkpoint, in-process: sequences decoded
together give the tokens they give alone (also when one leaves mid-way and its slot is reused),
a step that mixes a prompt chunk with decoding rows is the same as separate steps, and the
static decode step that a GPU captures as a CUDA graph computes what the eager step computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("auto_gptq", reason="the local model stack (requirements-local.txt) is not installed")

from workers.inference.model import LocalModel, SamplingParams  # noqa: E402
from workers.inference.scheduler import Request, Scheduler  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "def add(a, b):"}],
    [{"role": "system", "content": "You write Python code."}, {"role": "user", "content": "class Stack:"}],
    [{"role": "user", "content": "Beautiful is better than ugly. Explicit is better than implicit."}],
]


@pytest.fixture(scope="module")
def model(tiny_gptq) -> LocalModel:
    torch.set_num_threads(1)
    m = LocalModel(tiny_gptq["quant_dir"], max_batch=4, max_seq_len=512)
    m.load()
    return m


def _run_together(model: LocalModel, lengths: list[int], chunk: int = 64) -> list[tuple[str, int, str]]:
    sched = Scheduler(model, max_batch=4, max_queue=4, prefill_chunk=chunk)
    requests = []
    for messages, n in zip(PROMPTS, lengths, strict=True):
        prompt = model.build_prompt(messages, None, n)
        requests.append(Request(prompt=prompt, params=SamplingParams(max_tokens=n, temperature=0, min_tokens=n)))
        sched.submit(requests[-1])
    while sched.has_work():
        sched.step()
    out = []
    for r in requests:
        text = []
        while not r.events.empty():
            event = r.events.get()
            if event[0] == "text":
                text.append(event[1])
        out.append(("".join(text), r.completion_tokens, r.finish_reason))
    assert model.runner.active == 0
    return out


def test_sequences_decoded_together_match_each_alone(model: LocalModel) -> None:
    """The first sequence stops after 6 tokens: its slot is freed and the last one moves into it
    while the others keep decoding; prompts go in 8-token chunks next to decoding rows."""
    lengths = [6, 40, 24]
    alone = [
        model.generate_text(model.build_prompt(m, None, n), SamplingParams(max_tokens=n, temperature=0, min_tokens=n))
        for m, n in zip(PROMPTS, lengths, strict=True)
    ]
    together = _run_together(model, lengths, chunk=8)
    assert together == alone
    assert [n for _, n, _ in together] == lengths and all(len(text) > 3 for text, _, _ in together)


def test_the_cuda_graph_step_computes_the_eager_step(model: LocalModel) -> None:
    """``_decode_all`` (what a GPU captures, here run eagerly) against ``_forward`` for the same
    two decoding rows, padded to a batch of 4 and keys up to 256 as a graph bucket would be."""
    runner = model.runner
    seqs, last = [], []
    for messages in PROMPTS[:2]:
        seq = model.new_sequence(SamplingParams(max_tokens=8, temperature=0))
        ids = model.build_prompt(messages, None, 8).ids
        runner.open(seq, ids)
        last.append(runner.step([(seq, ids, True)])[0])
        seqs.append(seq)
    try:
        with torch.inference_mode():
            items = [(s, [t], True) for s, t in zip(seqs, last, strict=True)]
            eager = runner._forward(items, [])
            ids = torch.tensor([*last, 0, 0])
            pos = torch.tensor([seqs[0].length, seqs[1].length, 0, 0])
            static = runner._decode_all(ids, pos, 256)[:2]
        assert torch.allclose(eager, static, atol=1e-3, rtol=1e-3)
        assert eager.argmax(-1).tolist() == static.argmax(-1).tolist()
    finally:
        for seq in seqs:
            runner.close(seq)
    assert runner.active == 0


def test_q4_cache_sequences_decoded_together_match_each_alone(model: LocalModel) -> None:
    """-cache q4: each sequence has its own HQQ-quantized cache, attention per sequence."""
    pytest.importorskip("hqq")
    q4 = LocalModel(model.path, cache="q4", q4_residual=8, q4_group_size=32, max_batch=4, max_seq_len=512)
    q4.load()
    lengths = [12, 30, 20]
    alone = [
        q4.generate_text(q4.build_prompt(m, None, n), SamplingParams(max_tokens=n, temperature=0, min_tokens=n))
        for m, n in zip(PROMPTS, lengths, strict=True)
    ]
    assert _run_together(q4, lengths) == alone
