"""Prometheus metrics: what each process counts, and ``/metrics`` summed over processes.

``earmark serve`` runs prometheus-client in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by the CLI before any worker starts): every worker writes its samples to files in that
directory and a scrape of any worker sums them all. An app built in-process (tests, an
embedding program) keeps its own registry instead. Labels are bounded: configured model and
provider names, HTTP route templates, status codes and fixed reasons; never a key, and a
tenant only when ``EARMARK_METRICS_TENANT_LABEL`` asks for it.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import time
from collections.abc import Iterable

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

from app import __version__
from app.billing.metering import NANOS_PER_USD, Usage
from app.catalog import ModelRoute
from app.errors import BAD_INPUT, REFUSAL_REASONS
from app.request_id import log_access
from app.settings import MULTIPROC_ENV

# The classic text format, which every Prometheus reads (the web layer adds the charset).
CONTENT_TYPE = "text/plain; version=0.0.4"
# From a fast rejection to a long file on a slow provider: buckets reach ten minutes.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip
NONE = "none"  # label value when a call never reached a model or provider
ENDPOINTS = ("transcription", "translation")
TOKEN_KINDS = ("input_text", "input_audio", "output")
UPSTREAM_ERROR_KINDS = (
    "timeout", "unreachable", "dropped", "reset", "broken_stream", "abandoned", "worker_died",
    "status_5xx", "status_429", "status_4xx", "malformed",
)  # fmt: skip

_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


class _Pid:
    """This process's id, kept: multiprocess mode asks for it on every increment, to
    notice a fork, and ``os.getpid`` is a system call (20 of them a call, by strace)."""

    value = os.getpid()

    @classmethod
    def forked(cls) -> None:
        cls.value = os.getpid()

    @classmethod
    def current(cls) -> int:
        return cls.value


os.register_at_fork(after_in_child=_Pid.forked)
if getattr(values.ValueClass, "_multiprocess", False):
    values.ValueClass = values.MultiProcessValue(process_identifier=_Pid.current)


class Metrics:
    """The process's metrics. One per app; ``render()`` is what ``/metrics`` serves."""

    def __init__(self, *, tenant_label: bool = False, access_log: bool = False) -> None:
        self.access_log = access_log
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        if self.multiprocess_dir and not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                f"{MULTIPROC_ENV} was set after prometheus_client was imported; "
                "set it before the process starts"
            )
        self.tenant_label = tenant_label
        # `_created` series exist only without multiprocess mode; drop them so every
        # deployment exports the same names.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess_dir else self.registry
        tenant = ("tenant",) if tenant_label else ()
        spend = (*tenant, "model", "provider")

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...], mode: str) -> Gauge:
            return Gauge(name, doc, labels, multiprocess_mode=mode, registry=registry)

        self.http_requests = counter(
            "earmark_http_requests_total",
            "HTTP requests answered, by route template and status code.",
            ("method", "route", "status"),
        )
        self.http_duration = histogram(
            "earmark_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ("method", "route"),
        )
        self.calls = counter(
            "earmark_calls_total",
            "Metered audio calls by how their ledger row ended "
            "(succeeded, failed, interrupted, rejected) and the status the caller saw.",
            (*tenant, "endpoint", "model", "provider", "status", "outcome"),
        )
        self.call_duration = histogram(
            "earmark_call_duration_seconds",
            "Whole metered call, gateway and upstream (a stream until its last event).",
            ("endpoint", "model", "provider"),
        )
        self.upstream_duration = histogram(
            "earmark_upstream_request_duration_seconds",
            "One upstream attempt, until the provider's answer or failure.",
            ("provider", "model"),
        )
        self.upstream_errors = counter(
            "earmark_upstream_errors_total",
            f"Upstream attempts that failed: {', '.join(UPSTREAM_ERROR_KINDS)}.",
            ("provider", "kind"),
        )
        self.audio_seconds = counter("earmark_audio_seconds_total", "Audio seconds billed.", spend)
        self.tokens = counter(
            "earmark_tokens_total",
            "Tokens billed, by kind: input_text, input_audio, output.",
            (*spend, "kind"),
        )
        self.cost = counter("earmark_cost_usd_total", "Cost charged, in US dollars.", spend)
        self.refusals = counter(
            "earmark_refusals_total",
            "Tenant requests the gateway refused: auth, forbidden, budget, rate_limit, bad_input.",
            ("reason",),
        )
        self.uncertain_attempts = counter(
            "earmark_uncertain_attempts_total",
            "Upstream attempts the provider had whole but never answered (timeout, reset, "
            "broken stream): charged their expected cost and listed for review.",
            ("provider",),
        )
        self.hold_overruns = counter(
            "earmark_hold_overruns_total",
            "Calls charged more than they held (charged in full, and listed for review).",
            ("model", "provider"),
        )
        self.journal_settlements = counter(
            "earmark_journal_settlements_total",
            "Settlements the database could not take: kept in the local journal, and "
            "applied from it once the database answered.",
            ("event",),
        )
        self.cache_lookups = counter(
            "earmark_cache_lookups_total",
            "Transcription cache lookups: hit (answered without the provider) or miss.",
            ("model", "provider", "result"),
        )
        self.holds_in_flight = gauge(
            "earmark_holds_in_flight",
            "Calls holding budget now (reserved or forwarded, not yet settled).",
            (),
            "livesum",
        )
        self.held_usd = gauge(
            "earmark_held_usd", "Budget held by calls in flight, in US dollars.", (), "livesum"
        )
        self.webhook_deliveries = counter(
            "earmark_webhook_deliveries_total",
            "Webhook delivery attempts by outcome: succeeded, retrying (failed, tried again "
            "later) or failed (given up on).",
            ("outcome",),
        )
        build = gauge(
            "earmark_build_info",
            "Always 1; the labels say which Earmark is running.",
            ("version", "python_version"),
            "max",
        )
        build.labels(__version__, platform.python_version()).set(1)

    def start_series(self, routes: Iterable[ModelRoute]) -> None:
        """Create, at zero, the series of every configured model: Prometheus sees no
        increase in a series whose first sample already counts a call."""
        for route in routes:
            model, provider = route.name, route.provider_name
            if route.cache is not None:
                for result in ("hit", "miss"):
                    self.cache_lookups.labels(model, provider, result)
            self.upstream_duration.labels(provider, model)
            self.uncertain_attempts.labels(provider)
            self.hold_overruns.labels(model, provider)
            for kind in UPSTREAM_ERROR_KINDS:
                self.upstream_errors.labels(provider, kind)
            for endpoint in ENDPOINTS:
                self.call_duration.labels(endpoint, model, provider)
            if self.tenant_label:
                continue
            for endpoint in ENDPOINTS:
                self.calls.labels(endpoint, model, provider, "200", "succeeded")
            self.audio_seconds.labels(model, provider)
            self.cost.labels(model, provider)
            for kind in TOKEN_KINDS:
                self.tokens.labels(model, provider, kind)
        for reason in (*REFUSAL_REASONS.values(), BAD_INPUT):
            self.refusals.labels(reason)
        for outcome in ("succeeded", "retrying", "failed"):
            self.webhook_deliveries.labels(outcome)
        for event in ("kept", "applied"):
            self.journal_settlements.labels(event)

    def call_opened(self, hold_nanos: int) -> None:
        self.holds_in_flight.inc()
        self.held_usd.inc(hold_nanos / NANOS_PER_USD)

    def call_ended(
        self,
        *,
        tenant: str,
        endpoint: str,
        model: str | None,
        provider: str | None,
        status: int,
        outcome: str,
        seconds: float,
        usage: Usage | None = None,
        cost_nanos: int = 0,
        hold_nanos: int | None = None,
    ) -> None:
        """Count one finished call; ``hold_nanos`` is given when it had been opened."""
        model, provider = model or NONE, provider or NONE
        tenant_values = (tenant,) if self.tenant_label else ()
        spend = (*tenant_values, model, provider)
        self.calls.labels(*tenant_values, endpoint, model, provider, str(status), outcome).inc()
        self.call_duration.labels(endpoint, model, provider).observe(seconds)
        if hold_nanos is not None:
            self.holds_in_flight.dec()
            self.held_usd.dec(hold_nanos / NANOS_PER_USD)
        if usage is None:
            return
        if usage.audio_ms:
            self.audio_seconds.labels(*spend).inc(usage.audio_ms / 1000)
        counts = (usage.input_text_tokens, usage.input_audio_tokens, usage.output_tokens)
        for kind, count in zip(TOKEN_KINDS, counts, strict=True):
            if count:
                self.tokens.labels(*spend, kind).inc(count)
        if cost_nanos:
            self.cost.labels(*spend).inc(cost_nanos / NANOS_PER_USD)

    def upstream_attempt(
        self, provider: str, model: str, seconds: float, error: str | None = None
    ) -> None:
        self.upstream_duration.labels(provider, model).observe(seconds)
        if error is not None:
            self.upstream_errors.labels(provider, error).inc()

    def render(self) -> bytes:
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        _forget_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Count and time every HTTP request by its route template (bounded), and write
        the access log's line for it when that is on."""

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                seconds = time.perf_counter() - started
                route = scope.get("path_template") or "unmatched"
                method = scope["method"]
                self.http_requests.labels(method, route, str(status)).inc()
                self.http_duration.labels(method, route).observe(seconds)
                if self.access_log:
                    log_access(scope, status, seconds)

        return measured


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that died (a restarted worker gets a new pid), so
    holds in flight are not counted for a process that no longer holds anything."""
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_FILE.search(path)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
