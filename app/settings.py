"""Process settings, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./earmark.db"
MIN_ADMIN_TOKEN_LENGTH = 16
# prometheus-client's own variable: where `earmark serve` workers write metric samples.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class HttpLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What a client may do to a connection before the application sees its request."""

    header_seconds: float = 10.0  # to send the request line and headers
    keepalive_seconds: float = 5.0  # idle between requests
    max_header_bytes: int = 16_384  # request line and headers together
    max_headers: int = 100
    min_body_rate: int = 16_384  # bytes a second, once the grace period is over
    body_grace_seconds: float = 10.0
    max_connections: int = 1_000  # open at once, per process
    # ... and from one client address (a trusted proxy's are not counted: see the README)
    max_connections_per_client: int = 100


class Sweeping(msgspec.Struct, frozen=True, kw_only=True):
    """When the sweeper runs, and when it calls a ledger row abandoned."""

    interval_seconds: float = 30.0
    reserved_after_seconds: float = 60.0  # a reservation is forwarded within milliseconds
    margin_seconds: float = 300.0  # beyond the longest fallback chain's timeouts


class Webhooks(msgspec.Struct, frozen=True, kw_only=True):
    """How webhook deliveries are made and retried (app/ops/webhook_delivery.py)."""

    # Loopback, private, link-local and metadata addresses are refused as targets unless
    # this is set (a receiver on the same host or network).
    allow_private: bool = False
    timeout_seconds: float = 10.0  # per attempt, connecting included
    poll_seconds: float = 1.0  # how often each process looks for deliveries due
    retry_base_seconds: float = 5.0  # the first retry's wait; each doubles, up to an hour
    retry_hours: float = 24.0  # after this long an event is given up on


class Console(msgspec.Struct, frozen=True, kw_only=True):
    """How long a console sign-in lasts (app/console/sessions.py)."""

    idle_minutes: int = 30  # without a page view
    session_hours: int = 12  # from sign-in, however active


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = DEFAULT_DATABASE_URL
    # Bootstrap admin bearer token; admin users (argon2id) work with or without it.
    admin_token: str | None = None
    # Path to earmark.toml (providers, models, prices, limits).
    config_path: str | None = None
    # Server-side secret mixed into every key digest, so a stolen database alone cannot
    # confirm a guessed key. Changing it invalidates every issued key.
    key_pepper: str = ""
    # Add a `tenant` label to the call, audio, token and cost metrics (one series per
    # tenant and model): off by default to keep Prometheus's series count bounded.
    metrics_tenant_label: bool = False
    # Threads for each kind of blocking work (see app/runtime/executors.py).
    probe_threads: int = 4
    # Address space of each process FFmpeg reads an upload in (app/audio/sandbox.py).
    probe_memory_mb: int = 1024
    password_threads: int = 1
    file_threads: int = 4
    http: HttpLimits = HttpLimits()
    sweeping: Sweeping = Sweeping()
    webhooks: Webhooks = Webhooks()
    console: Console = Console()
    # How long an Idempotency-Key's answer is kept for retries of its call.
    idempotency_hours: int = 24
    # Where settlements wait when the database cannot take them (one file per process).
    journal_dir: str = "./earmark-journal"
    # One line per request (method, path without its query, status, ms, request id).
    access_log: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    admin_token = environ.get("EARMARK_ADMIN_TOKEN") or None
    if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN_LENGTH:
        raise SettingsError(
            f"EARMARK_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters long"
        )
    if admin_token is not None and admin_token.startswith("sk-bf-"):
        raise SettingsError("EARMARK_ADMIN_TOKEN must not look like a tenant key (sk-bf-…)")
    database_url = environ.get("EARMARK_DATABASE_URL") or DEFAULT_DATABASE_URL
    if not database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise SettingsError(
            "EARMARK_DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    return Settings(
        database_url=database_url,
        admin_token=admin_token,
        config_path=environ.get("EARMARK_CONFIG") or None,
        key_pepper=environ.get("EARMARK_KEY_PEPPER", ""),
        metrics_tenant_label=_flag(environ, "EARMARK_METRICS_TENANT_LABEL"),
        access_log=_flag(environ, "EARMARK_ACCESS_LOG"),
        probe_threads=_count(environ, "EARMARK_PROBE_THREADS", 4),
        probe_memory_mb=_count(environ, "EARMARK_PROBE_MEMORY_MB", 1024, 1 << 20),
        password_threads=_count(environ, "EARMARK_PASSWORD_THREADS", 1),
        file_threads=_count(environ, "EARMARK_FILE_THREADS", 4),
        http=HttpLimits(
            header_seconds=_seconds(environ, "EARMARK_HTTP_HEADER_TIMEOUT", 10.0),
            keepalive_seconds=_seconds(environ, "EARMARK_HTTP_KEEPALIVE_TIMEOUT", 5.0),
            max_header_bytes=_count(environ, "EARMARK_HTTP_MAX_HEADER_BYTES", 16_384, 1 << 20),
            max_headers=_count(environ, "EARMARK_HTTP_MAX_HEADERS", 100, 10_000),
            min_body_rate=_count(environ, "EARMARK_HTTP_MIN_BODY_RATE", 16_384, 1 << 30),
            body_grace_seconds=_seconds(environ, "EARMARK_HTTP_BODY_GRACE", 10.0),
            max_connections=_count(environ, "EARMARK_HTTP_MAX_CONNECTIONS", 1_000, 1 << 20),
            max_connections_per_client=_count(
                environ, "EARMARK_HTTP_MAX_CONNECTIONS_PER_CLIENT", 100, 1 << 20
            ),
        ),
        sweeping=Sweeping(
            interval_seconds=_seconds(environ, "EARMARK_SWEEP_INTERVAL", 30.0),
            reserved_after_seconds=_seconds(environ, "EARMARK_SWEEP_RESERVED_AFTER", 60.0),
            margin_seconds=_seconds(environ, "EARMARK_SWEEP_FORWARDED_MARGIN", 300.0),
        ),
        webhooks=Webhooks(
            allow_private=_flag(environ, "EARMARK_WEBHOOKS_ALLOW_PRIVATE"),
            timeout_seconds=_seconds(environ, "EARMARK_WEBHOOKS_TIMEOUT", 10.0),
            poll_seconds=_seconds(environ, "EARMARK_WEBHOOKS_POLL_INTERVAL", 1.0),
            retry_base_seconds=_seconds(environ, "EARMARK_WEBHOOKS_RETRY_BASE", 5.0),
            retry_hours=_count(environ, "EARMARK_WEBHOOKS_RETRY_HOURS", 24, 24 * 30),
        ),
        console=Console(
            idle_minutes=_count(environ, "EARMARK_CONSOLE_IDLE_MINUTES", 30, 24 * 60),
            session_hours=_count(environ, "EARMARK_CONSOLE_SESSION_HOURS", 12, 24 * 30),
        ),
        idempotency_hours=_count(environ, "EARMARK_IDEMPOTENCY_HOURS", 24, 24 * 30),
        journal_dir=environ.get("EARMARK_JOURNAL_DIR") or "./earmark-journal",
    )


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _count(environ: Mapping[str, str], name: str, default: int, maximum: int = 64) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise SettingsError(f"{name} must be a whole number from 1 to {maximum}, not {value!r}")
    return int(value)


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise SettingsError(f"{name} must be a number of seconds from 0 to 3600, not {value!r}")
    return seconds
