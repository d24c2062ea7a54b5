#!/usr/bin/env bash
# The start command: installs what the gateway needs, migrates, serves under gunicorn + gevent.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=()
if [ -n "${LOCAL_MODEL_PATH:-}" ] || grep -qs '^LOCAL_MODEL_PATH=.' .env; then extra+=(--local); fi
bash scripts/setup.sh "${extra[@]}"
[ -f .env ] || cp .env.example .env
exec sh scripts/boot.sh  # migrate, then gunicorn -c gunicorn.conf.py app:app
