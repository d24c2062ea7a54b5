# qwenproxy: the gateway under gunicorn + gevent, with Debian's Chromium (headed, on Xvfb) for the browser pool.
#   docker compose up -d --build                      (docker-compose.yml, docs/OPERATIONS.md)
#   docker build --build-arg WITH_LOCAL_MODEL=1 .     (+ torch and the GPTQ stack, for the inference service)
FROM python:3.11-slim-bookworm

ARG WITH_LOCAL_MODEL=0
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=3264 \
    SKIP_ACCOUNT_MENU=true \
    CHROME_PATH=/usr/bin/chromium \
    SESSION_DIR=/app/session \
    LOGS_DIR=/app/logs \
    UPLOADS_DIR=/app/uploads \
    API_KEYS_FILE=/app/session/Authorization.txt \
    QWENPROXY_USER=qwenproxy

RUN apt-get update \
 && apt-get install -y --no-install-recommends chromium xvfb fonts-liberation fonts-noto-color-emoji \
        ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# requirements first, so that a code change does not reinstall them
COPY requirements.txt requirements-local.txt* ./
RUN pip install -r requirements.txt \
 && if [ "$WITH_LOCAL_MODEL" = "1" ] && [ -f requirements-local.txt ]; then \
        pip install torch==2.13.0 \
        && BUILD_CUDA_EXT=0 DISABLE_CUDA=1 pip install --no-build-isolation --no-binary auto-gptq,hqq \
            -r requirements-local.txt; \
    fi
COPY . .
# the gateway and Chromium run as this unprivileged user, never as root: scripts/boot.sh starts
# as root only to hand the (possibly bind-mounted) folders to it, then drops to it with setpriv
RUN useradd --system --uid 10001 --user-group --home-dir /app/session --shell /usr/sbin/nologin qwenproxy \
 && mkdir -p session logs uploads \
 && chown qwenproxy:qwenproxy session logs uploads \
 && chmod 700 session logs uploads

VOLUME ["/app/session", "/app/logs", "/app/uploads"]
EXPOSE 3264
HEALTHCHECK --interval=30s --timeout=5s --start-period=40s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/health/live" || exit 1
# tini: signals reach gunicorn's master, zombies (Chromium's children) are reaped
ENTRYPOINT ["tini", "--"]
CMD ["sh", "scripts/boot.sh"]
