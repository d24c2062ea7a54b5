"""Fixtures the local coder's process tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def tiny_gptq(tmp_path_factory) -> dict[str, str]:
    """The tiny Qwen2 (fp), its GPTQ int4 checkpoint (auto-gptq on the CPU, in a subprocess) and a
    tied copy without ``lm_head.weight``; built once per session: ``{fp_dir, quant_dir, tied_dir}``."""
    pytest.importorskip("auto_gptq", reason="the local model stack (requirements-local.txt) is not installed")
    base = tmp_path_factory.mktemp("local-coder")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "tests.tools.quantize_tiny", str(base / "tiny-qwen"), "--tied-dir", str(base / "tied")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
