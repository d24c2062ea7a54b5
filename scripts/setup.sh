#!/usr/bin/env bash
# Installs what qwenproxy needs on a Debian machine (run as root), idempotently.
#   scripts/setup.sh            gateway: Chromium, Xvfb, a venv in .venv, requirements.txt
#   scripts/setup.sh --local    + the local model's stack (torch 2.13.0 CPU, auto-gptq, transformers)
#   scripts/setup.sh --tests    + everything the test suite needs (implies --local)
set -euo pipefail
cd "$(dirname "$0")/.."

want_local=0; want_tests=0
for arg in "$@"; do
  case "$arg" in
    --local) want_local=1 ;;
    --tests) want_tests=1; want_local=1 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

# xvfb: the browser pool runs Chromium headed on its own virtual display (BROWSER_HEADLESS=auto)
if ! command -v chromium >/dev/null 2>&1 || ! command -v Xvfb >/dev/null 2>&1 || ! command -v python3 >/dev/null 2>&1; then
  echo "==> apt: chromium, xvfb, python3-venv"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium xvfb python3 python3-venv python3-dev gcc curl >/dev/null
fi

if [ "$want_tests" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> apt: postgresql (portability tests), curl"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql curl >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> venv .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q -U pip
fi
PIP=".venv/bin/pip"

if [ "$want_local" = 1 ]; then
  echo "==> torch 2.13.0 (CPU) first, then the local model stack"
  $PIP install -q torch==2.13.0
  if [ -f requirements-local.txt ]; then
    BUILD_CUDA_EXT=0 DISABLE_CUDA=1 $PIP install -q --no-build-isolation --no-binary auto-gptq,hqq \
      -r requirements-local.txt
  fi
fi

echo "==> gateway requirements"
$PIP install -q -r requirements.txt
if [ "$want_tests" = 1 ]; then
  echo "==> test requirements"
  $PIP install -q -r requirements-dev.txt
fi
$PIP check || echo "(pip check reported the pins above; see README 'Dependencies')"
