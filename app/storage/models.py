"""The SQL schema. Alembic migrations under ``migrations/`` must match these tables exactly
(a test checks that autogenerate finds nothing to do)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Ledger rows still open: holding budget, not yet settled. Partial indexes cover them.
OPEN = ("reserved", "forwarded")
# As literal SQL: SQLite uses a partial index only for a WHERE it can see implies the
# index's own, which a bound parameter never does.
OPEN_ROWS = sa.text("ledger.status IN ('reserved', 'forwarded')")
_OPEN_ROWS = sa.text("status IN ('reserved', 'forwarded')")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text, which still sorts and
    compares correctly. Values always come back aware.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: sa.JSON(),
        dict[str, Any] | None: sa.JSON(none_as_null=True),  # None: SQL NULL, not 'null'
    }


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    # The name casefolded: "Acme" and "ACME" are one tenant's name.
    name_key: Mapped[str] = mapped_column(sa.String(600), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16))  # active | inactive
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    display_prefix: Mapped[str] = mapped_column(sa.String(16))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    # NULL: every configured model.
    allowed_models: Mapped[list[str] | None] = mapped_column(sa.JSON)
    # NULL: no rate limits. See app/billing/rate_limits.py.
    rate_limits: Mapped[dict[str, Any] | None]
    # False: the key's calls bypass the transcription cache.
    cache: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    expires_at: Mapped[datetime | None]
    # key.expired was sent for this expiry (a new expires_at clears it).
    expiry_announced: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    revoked_at: Mapped[datetime | None]
    # Deleted keys disappear from the admin API but keep their id for the ledger.
    deleted_at: Mapped[datetime | None]
    rotated_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class KeySecret(Base):
    """One row per secret ever issued for a key; a rotation adds one and gives the previous
    ones an end (now, or now + grace)."""

    __tablename__ = "key_secrets"

    digest: Mapped[bytes] = mapped_column(sa.LargeBinary(32), primary_key=True)
    key_id: Mapped[str] = mapped_column(sa.ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[datetime]
    valid_until: Mapped[datetime | None]


class AdminUser(Base):
    __tablename__ = "admin_users"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ConsoleSession(Base):
    """A signed-in console browser. The cookie holds the token; the row holds its SHA-256,
    so a copy of the database opens no session. Shared by every process."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # hex SHA-256 of token
    admin: Mapped[str] = mapped_column(sa.String(120))  # token | user:NAME (audit actor)
    # A digest of the credential signed in with (the token, or the user's password hash):
    # a new password or token ends the session.
    credential: Mapped[str] = mapped_column(sa.String(64))
    csrf: Mapped[str] = mapped_column(sa.String(64))  # every form and mutation carries it
    created_at: Mapped[datetime] = mapped_column(index=True)
    seen_at: Mapped[datetime]


class LedgerEntry(Base):
    """One row per metered call: opened before the call goes upstream, settled after."""

    __tablename__ = "ledger"
    __table_args__ = (
        sa.Index("ix_ledger_key_id_id", "key_id", "id"),
        sa.Index("ix_ledger_key_id_created_at", "key_id", "created_at"),
        sa.Index("ix_ledger_tenant_id_id", "tenant_id", "id"),
        sa.Index("ix_ledger_tenant_id_created_at", "tenant_id", "created_at"),
        sa.Index("ix_ledger_created_at", "created_at"),
        # Rows still open, and rows for review: few, whatever the ledger's size, so the
        # sweeper, the rate limits' in-flight count and the review list stay bounded.
        sa.Index(
            "ix_ledger_open",
            "key_id",
            "created_at",
            sqlite_where=_OPEN_ROWS,
            postgresql_where=_OPEN_ROWS,
        ),
        sa.Index(
            "ix_ledger_open_created_at",
            "created_at",
            sqlite_where=_OPEN_ROWS,
            postgresql_where=_OPEN_ROWS,
        ),
        sa.Index(
            "ix_ledger_review",
            "id",
            sqlite_where=sa.text("review IS NOT NULL"),
            postgresql_where=sa.text("review IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # the request id
    key_id: Mapped[str] = mapped_column(sa.ForeignKey("api_keys.id"))
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id"))
    endpoint: Mapped[str] = mapped_column(sa.String(16))  # transcription | translation
    # forwarded → succeeded | failed | interrupted; rejected never went upstream.
    status: Mapped[str] = mapped_column(sa.String(16))
    http_status: Mapped[int | None]
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    model_requested: Mapped[str] = mapped_column(sa.String(200))
    provider: Mapped[str | None] = mapped_column(sa.String(100))
    model: Mapped[str | None] = mapped_column(sa.String(200))  # the provider's model
    attempts: Mapped[int] = mapped_column(default=0)
    response_format: Mapped[str | None] = mapped_column(sa.String(20))
    stream: Mapped[bool] = mapped_column(default=False)
    upload_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    probed_audio_ms: Mapped[int | None]
    # Billed duration: the provider's reported seconds, else the probed duration.
    audio_ms: Mapped[int | None]
    input_text_tokens: Mapped[int | None]
    input_audio_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    total_tokens: Mapped[int | None]
    # provider: usage as reported; probe: duration measured here; estimate: tokens estimated.
    usage_source: Mapped[str | None] = mapped_column(sa.String(16))
    cost_nanos: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # 1e-9 USD
    # What it is expected to cost (the measured audio at its model's price and billing
    # rule): charged for an attempt whose outcome is uncertain, or a row swept.
    expected_nanos: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # The most this call could cost, reserved against its budgets before going upstream.
    hold_nanos: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    # Why a person should look at it: uncertain (charged for an attempt the provider may
    # have billed), hold_overrun (charged more than it held), worker_lost (swept).
    review: Mapped[str | None] = mapped_column(sa.String(16))
    # Retries with the same Idempotency-Key answered with this call's answer, unbilled.
    replays: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    latency_ms: Mapped[int | None]
    upstream_latency_ms: Mapped[int | None]
    created_at: Mapped[datetime]
    # Set just before an attempt's last request bytes go: until then no provider can
    # have the whole request, so a row swept without it was billed nothing.
    sent_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class UpstreamAttempt(Base):
    """One upstream attempt of a call: where it went, what came back, what it cost."""

    __tablename__ = "upstream_attempts"

    call_id: Mapped[str] = mapped_column(sa.ForeignKey("ledger.id"), primary_key=True)
    n: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(100))
    model: Mapped[str] = mapped_column(sa.String(200))  # the provider's model
    started_at: Mapped[datetime]
    # answered | refused | failed (nothing billed) | uncertain (may have been billed)
    outcome: Mapped[str] = mapped_column(sa.String(16))
    http_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.String(32))
    bytes_sent: Mapped[int] = mapped_column(sa.BigInteger)
    latency_ms: Mapped[int]
    charged_nanos: Mapped[int] = mapped_column(sa.BigInteger)


class Budget(Base):
    """A spending cap in USD on a key or a tenant, per calendar period (UTC) or lifetime."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(sa.ForeignKey("api_keys.id"), index=True)
    tenant_id: Mapped[str | None] = mapped_column(sa.ForeignKey("tenants.id"), index=True)
    limit_nanos: Mapped[int] = mapped_column(sa.BigInteger)
    period: Mapped[str] = mapped_column(sa.String(8))  # day | week | month | none
    # Percents of the limit whose crossing sends budget.threshold (app/billing/alerts.py).
    thresholds: Mapped[list[int] | None] = mapped_column(sa.JSON(none_as_null=True))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class BudgetCounter(Base):
    """Spend of one budget in one period. A new period is a new row: no reset job."""

    __tablename__ = "budget_counters"

    budget_id: Mapped[str] = mapped_column(sa.ForeignKey("budgets.id"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    spent_nanos: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    held_nanos: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    top_up_nanos: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    # The highest threshold already announced this period, and whether its first refusal was.
    alerted_percent: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    exhausted_alerted: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())


class LedgerHold(Base):
    """What one call holds against one budget's period, so settling knows what to move."""

    __tablename__ = "ledger_holds"

    ledger_id: Mapped[str] = mapped_column(sa.ForeignKey("ledger.id"), primary_key=True)
    budget_id: Mapped[str] = mapped_column(sa.ForeignKey("budgets.id"), primary_key=True)
    period_start: Mapped[datetime]
    amount_nanos: Mapped[int] = mapped_column(sa.BigInteger)


class AuditEntry(Base):
    """One admin change, written in the transaction that made it: who, what, on what,
    the changed fields before and after (never a secret or its digest), from where.
    Append-only: nothing updates or deletes these rows."""

    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_target_id_id", "target_id", "id"),
        sa.Index("ix_audit_log_actor_id", "actor", "id"),
        sa.Index("ix_audit_log_action_id", "action", "id"),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # time-ordered
    created_at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(sa.String(120))  # token | user:NAME | cli:OS_USER
    action: Mapped[str] = mapped_column(sa.String(40))  # e.g. key.revoke
    target_type: Mapped[str] = mapped_column(sa.String(16))
    target_id: Mapped[str] = mapped_column(sa.String(40))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    details: Mapped[dict[str, Any] | None]  # what the action was given (an amount, a grace)
    request_id: Mapped[str | None] = mapped_column(sa.String(64))
    source: Mapped[str | None] = mapped_column(sa.String(64))  # the client's address


class WebhookEndpoint(Base):
    """Where events are posted, which ones, and the secret they are signed with."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    url: Mapped[str] = mapped_column(sa.String(2000))
    event_types: Mapped[list[str]] = mapped_column(sa.JSON)
    tenant_id: Mapped[str | None] = mapped_column(sa.ForeignKey("tenants.id"))  # only its events
    enabled: Mapped[bool]
    # "whsec_" + base64: Standard Webhooks' form. Readable: every delivery is signed with it.
    secret: Mapped[str] = mapped_column(sa.String(100))
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class WebhookEvent(Base):
    """The outbox: an event, written in the transaction of the change that caused it."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # webhook-id
    type: Mapped[str] = mapped_column(sa.String(40))
    tenant_id: Mapped[str | None] = mapped_column(sa.String(40))
    payload: Mapped[dict[str, Any]]  # the JSON body every endpoint is sent
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event for one endpoint: attempted until it succeeds or is given up on."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        sa.Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.ForeignKey("webhook_events.id"))
    endpoint_id: Mapped[str] = mapped_column(sa.ForeignKey("webhook_endpoints.id"))
    status: Mapped[str] = mapped_column(sa.String(16))  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    # When it is next due; while an attempt runs, when that attempt's lease ends.
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None]  # the receiver's HTTP status
    last_error: Mapped[str | None] = mapped_column(sa.String(300))
    created_at: Mapped[datetime]


class IdempotencyKey(Base):
    """An Idempotency-Key a tenant key sent: the call it started, and once that call was
    answered, the answer a retry gets instead of a second bill."""

    __tablename__ = "idempotency_keys"

    key_id: Mapped[str] = mapped_column(sa.ForeignKey("api_keys.id"), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    request_digest: Mapped[str] = mapped_column(sa.String(64))  # hex SHA-256: audio + fields
    call_id: Mapped[str] = mapped_column(sa.String(40))  # the ledger row of the call
    status: Mapped[str] = mapped_column(sa.String(16))  # in_progress | done
    response_status: Mapped[int | None]  # what is kept: the answer, or a billed refusal
    content_type: Mapped[str | None] = mapped_column(sa.String(100))
    body: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class CacheEntry(Base):
    """A stored answer, keyed by a digest of the audio bytes and the call's parameters."""

    __tablename__ = "transcription_cache"
    __table_args__ = (sa.Index("ix_transcription_cache_route_created_at", "route", "created_at"),)

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # hex SHA-256
    route: Mapped[str] = mapped_column(sa.String(200))  # provider/model
    content_type: Mapped[str] = mapped_column(sa.String(100))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    usage: Mapped[dict[str, Any]]  # the usage the original call was billed
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


# Core handles on the tables: services write plain SQL statements against these.
tenants = Tenant.__table__
api_keys = ApiKey.__table__
key_secrets = KeySecret.__table__
admin_users = AdminUser.__table__
console_sessions = ConsoleSession.__table__
ledger = LedgerEntry.__table__
budgets = Budget.__table__
budget_counters = BudgetCounter.__table__
ledger_holds = LedgerHold.__table__
upstream_attempts = UpstreamAttempt.__table__
audit_log = AuditEntry.__table__
webhook_endpoints = WebhookEndpoint.__table__
webhook_events = WebhookEvent.__table__
webhook_deliveries = WebhookDelivery.__table__
transcription_cache = CacheEntry.__table__
idempotency_keys = IdempotencyKey.__table__
