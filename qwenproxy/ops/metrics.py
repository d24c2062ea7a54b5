"""Prometheus metrics: one ``Metrics`` per app, multiprocess-aware under gunicorn.

Counters and histograms are updated in two places only: the after-request hook (requests
by route and status) and the stream loop (``TurnStats``: upstream latency, time to first
token, tokens, errors by code). Gauges about state (accounts, providers, worker processes,
draining) are read when ``/metrics`` is scraped, in the process that answers it.

Under gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker
starts; every worker then writes its samples there and a scrape adds them up
(``prometheus_client.multiprocess``). Flask-free.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from ..events import Event, ReasoningDelta, TextDelta, ToolCallDelta

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STATES = ("OK", "WAIT", "INVALID", "NEEDS_HUMAN")


class Metrics:
    """The app's metric objects, registered on a registry of its own (one per app)."""

    def __init__(self, multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir or None
        if self.multiproc_dir:
            Path(self.multiproc_dir).mkdir(parents=True, exist_ok=True)
        disable_created_metrics()  # no *_created series: multiprocess mode has none either
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "qwenproxy_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "qwenproxy_http_request_duration_seconds",
            "Time until the response headers (a stream's first byte)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "qwenproxy_upstream_latency_seconds",
            "Time from calling the upstream to its first event",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "qwenproxy_time_to_first_token_seconds",
            "Time from the request to the first generated token",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_seconds = Histogram(
            "qwenproxy_completion_duration_seconds",
            "Whole completions, first request to last event",
            ["provider", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("qwenproxy_tokens", "Tokens reported by the upstream", ["provider", "kind"], registry=r)
        self.completions = Counter(
            "qwenproxy_completions",
            "Completions by outcome (complete, partial, error)",
            ["provider", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "qwenproxy_errors",
            "Errors by code; stage=early (a JSON error) or in_stream (in-band, after the stream began)",
            ["provider", "code", "stage"],
            registry=r,
        )
        self.rejected = Counter(
            "qwenproxy_rejected_requests",
            "Requests refused before reaching a route (no or a wrong key, rate limit, foreign origin)",
            ["reason"],
            registry=r,
        )
        self.streams = Gauge(
            "qwenproxy_streams_in_progress", "Streams being relayed now", registry=r, multiprocess_mode="livesum"
        )

    def scrape(self, state: Callable[[], Iterable[Metric]] | None = None) -> tuple[bytes, str]:
        """The exposition text: every worker's samples (multiprocess) plus ``state()`` now."""
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            source = CollectorRegistry()
            multiprocess.MultiProcessCollector(source, path=self.multiproc_dir)
        else:
            source = self.registry
        return generate_latest(_Joined(source, state)), CONTENT_TYPE_LATEST

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, kept: prometheus_client checks and converts the label
        values on every call, several times a request (the values come from small sets)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found


class _Joined:
    """``generate_latest`` takes anything with ``collect()``: the registry, then the state."""

    def __init__(self, registry: CollectorRegistry, state: Callable[[], Iterable[Metric]] | None) -> None:
        self.registry = registry
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        if self.state is not None:
            yield from self.state()


def state_metrics(
    providers: dict[str, dict[str, Any]], usable: dict[str, bool], workers: dict[str, Any], draining: bool
) -> list[Metric]:
    """Gauges read at scrape time: accounts by state, providers, supervised workers, draining."""
    accounts = GaugeMetricFamily("qwenproxy_accounts", "Upstream accounts by state", labels=["provider", "state"])
    for name, status in providers.items():
        if isinstance(status.get("accounts"), list):
            counts = dict.fromkeys(STATES, 0)
            for account in status["accounts"]:
                state = str(account.get("status", "INVALID"))
                counts[state] = counts.get(state, 0) + 1
            for state, count in counts.items():
                accounts.add_metric([name, state], count)
    up = GaugeMetricFamily("qwenproxy_provider_usable", "1 when the provider can serve a request", labels=["provider"])
    for name, ok in usable.items():
        up.add_metric([name], 1 if ok else 0)
    running = GaugeMetricFamily("qwenproxy_worker_up", "Supervised worker processes running", labels=["worker"])
    restarts = GaugeMetricFamily("qwenproxy_worker_restarts", "Restarts of a supervised worker", labels=["worker"])
    for name, info in workers.items():
        running.add_metric([name], 1 if info.get("running") else 0)
        restarts.add_metric([name], int(info.get("restarts") or 0))
    pool = GaugeMetricFamily("qwenproxy_browser_pool", "Browser pool figures, as the pool reports them", labels=["key"])
    for status in providers.values():
        for key, value in (status.get("browserPool") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                pool.add_metric([key], float(value))
    drain = GaugeMetricFamily("qwenproxy_draining", "1 while this process shuts down", value=1 if draining else 0)
    return [accounts, up, running, restarts, pool, drain]


class TurnStats:
    """Timings and counts of one completion, fed by the stream loop, recorded once."""

    def __init__(
        self, metrics: Metrics | None, provider: str, model: str, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.metrics = metrics
        self.provider = provider
        self.model = model
        self.clock = clock
        self.started = clock()
        self.first_event: float | None = None
        self.first_token: float | None = None
        self.done = False

    def upstream_answered(self) -> None:
        if self.first_event is None:
            self.first_event = self.clock()
            if self.metrics:
                m = self.metrics
                m.child(m.upstream_seconds, self.provider).observe(self.first_event - self.started)

    def observe(self, event: Event) -> None:
        if self.first_token is None and isinstance(event, (TextDelta, ReasoningDelta, ToolCallDelta)):
            self.first_token = self.clock()
            if self.metrics:
                m = self.metrics
                m.child(m.ttft_seconds, self.provider, self.model).observe(self.first_token - self.started)

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else (self.first_token - self.started) * 1000

    def error(self, code: str | None, stage: str) -> None:
        if self.metrics:
            self.metrics.child(self.metrics.errors, self.provider, code or "error", stage).inc()

    def finish(self, outcome: str, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        if self.done:
            return
        self.done = True
        if not self.metrics:
            return
        m = self.metrics
        m.child(m.completions, self.provider, outcome).inc()
        m.child(m.turn_seconds, self.provider, outcome).observe(self.clock() - self.started)
        if prompt_tokens:
            m.child(m.tokens, self.provider, "prompt").inc(prompt_tokens)
        if completion_tokens:
            m.child(m.tokens, self.provider, "completion").inc(completion_tokens)


# --- the multiprocess directory (used by gunicorn.conf.py, in the master) ------------------


def reset_multiproc_dir(path: str | os.PathLike, clean_siblings: bool = False) -> None:
    """Create ``path`` empty; with ``clean_siblings``, also remove the directories that dead
    masters left beside it (``<SESSION_DIR>/metrics/<pid>``)."""
    directory = Path(path)
    if directory.exists():
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    if not clean_siblings:
        return
    for sibling in directory.parent.iterdir():
        if sibling != directory and sibling.is_dir() and sibling.name.isdigit() and not _alive(int(sibling.name)):
            shutil.rmtree(sibling, ignore_errors=True)


def mark_worker_dead(pid: int, path: str | os.PathLike) -> None:
    """A web worker exited: drop its live gauges (gunicorn's ``child_exit``)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_workers_file(path: str | os.PathLike) -> dict[str, Any]:
    """The supervisor's last status of its worker processes (empty when there is none)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
