#!/usr/bin/env bash
# The test command: installs everything the suite needs, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
