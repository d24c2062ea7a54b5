"""The local Qwen2.5-Coder inference worker: a separate process serving a GPTQ model over HTTP.

Run by hand with the seed's flags::

    python -m workers.inference -m PATH [-cache normal|q4] [-l MAX_SEQ_LEN] [-p 8001]

or let the gateway start and supervise it (set ``LOCAL_MODEL_PATH``; see ``worker_spec``).

Why a process of its own: torch and a multi-GB model must never live in a gevent web worker
(one per gunicorn worker, blocking the hub). Why threads here: the seed ran generation inside
an ``async def``, so ``/health`` timed out while it generated. Here every request has its own
thread (``ThreadingHTTPServer``), generation runs in yet another thread, and a fair FIFO queue
hands out ``--parallel`` generation slots, so ``/health`` always answers.

Wire protocol (loopback TCP, or a Unix socket with ``--socket``):

- ``GET /health`` -> ``{"status": "ok"|"loading"|"error", "model_loaded", "model", "queue",
  "active", ...}``; 200 when loaded, 503 otherwise.
- ``POST /generate`` -> the seed's blocking endpoint: ``{"response", "generation_time",
  "tokens_generated"}``.
- ``POST /v1/stream`` -> ``application/x-ndjson``: ``{"type": "start", "id", "prompt_tokens"}``,
  optional ``{"type": "queued", "position"}`` while waiting for a slot, ``{"type": "text",
  "text"}`` per token piece, then ``{"type": "end", "finish_reason", "prompt_tokens",
  "completion_tokens"}`` or ``{"type": "error", "message"}``. Closing the connection cancels
  the generation at the next token.

Modules: ``server`` (HTTP, NDJSON), ``scheduler`` (admission, batching), ``model`` (loading,
int4 kernels, forward), ``launch`` (the gateway's side: command line, supervisor spec). This
package imports no torch at import time (the gateway imports ``worker_spec`` from it).
"""

from .launch import worker_argv, worker_spec

__all__ = ["worker_argv", "worker_spec"]
