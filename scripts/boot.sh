#!/bin/sh
# Migrate, then serve under gunicorn + gevent (the container's command; scripts/start.sh ends here).
# The database may still be starting (PostgreSQL in compose): retry the migration for a while.
set -e
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
tries=0
until "$PY" -m flask --app app db upgrade; do
  tries=$((tries + 1))
  [ "$tries" -ge 12 ] && exit 1
  echo "database not ready; retrying in 5 s" >&2
  sleep 5
done
exec "$PY" -m gunicorn -c gunicorn.conf.py app:app
