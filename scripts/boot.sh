#!/bin/sh
# Migrate, then serve under gunicorn + gevent (the container's command; scripts/start.sh ends here).
# The database may still be starting (PostgreSQL in compose): retry the migration for a while.
set -e
cd "$(dirname "$0")/.."
# Docker: started as root, give the data folders (bind mounts may be root's) to the
# unprivileged QWENPROXY_USER, owner-only, and run everything below as that user.
if [ "$(id -u)" = 0 ] && [ -n "${QWENPROXY_USER:-}" ]; then
  uid=$(id -u "$QWENPROXY_USER")
  for dir in "${SESSION_DIR:-session}" "${LOGS_DIR:-logs}" "${UPLOADS_DIR:-uploads}"; do
    mkdir -p "$dir"
    [ "$(stat -c %u "$dir")" = "$uid" ] || chown -R "$QWENPROXY_USER:" "$dir"
    chmod 700 "$dir"
  done
  export HOME="${SESSION_DIR:-session}"  # writable by that user (Chromium keeps a few files there)
  exec setpriv --reuid="$uid" --regid="$(id -g "$QWENPROXY_USER")" --init-groups sh "$0" "$@"
fi
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
