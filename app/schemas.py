"""API types: msgspec Structs for request and response bodies, apart from the ORM models.

Request bodies forbid unknown fields and bound every length, so a typo or an absurd value
is a 400 that names the field. Names are normalised (NFC, outer spaces trimmed) and may
hold no control or invisible characters, so two names that look alike are alike.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from app.ids import ID_PATTERN

Name = Annotated[str, Meta(min_length=1, max_length=200, examples=["acme"])]
Id = Annotated[str, Meta(min_length=1, max_length=40, pattern=ID_PATTERN)]
ModelName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
AllowedModels = Annotated[
    list[ModelName],
    Meta(
        min_length=1,
        max_length=100,
        description="Models this key may call; omit or null for every configured model.",
        examples=[["openai/whisper-1", "gpt-4o-transcribe"]],
    ),
]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=100)]
MetadataValue = Annotated[str, Meta(max_length=1000)] | int | float | bool | None
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    Meta(max_length=50, description="Free-form labels, up to 50 entries."),
]
AwareDatetime = Annotated[datetime, Meta(tz=True, description="RFC 3339 with a UTC offset")]
GraceSeconds = Annotated[int, Meta(ge=0, le=30 * 86_400)]
TenantStatus = Literal["active", "inactive"]
KeyStatus = Literal["active", "expired", "revoked"]


# Unicode's Default_Ignorable_Code_Point (joiners, variation selectors, fillers: they
# show nothing) and the blank Braille pattern, which Python counts as printable.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def normalized_name(value: str) -> str:
    """A name as stored: NFC, trimmed; ValueError if it is blank or has a character that
    does not print (controls, zero-width, format and other invisible characters)."""
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise ValueError("`name` cannot be blank")
    if not name.isprintable() or _INVISIBLE.search(name):
        raise ValueError("`name` cannot contain control or invisible characters")
    return name


class _Request(Struct, forbid_unknown_fields=True, kw_only=True):
    def __post_init__(self) -> None:
        name: Any = getattr(self, "name", UNSET)
        if isinstance(name, str):
            self.name = normalized_name(name)  # type: ignore[attr-defined]


class TenantCreate(_Request):
    name: Name
    metadata: Metadata = msgspec.field(default_factory=dict)


class TenantUpdate(_Request):
    name: Name | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    status: TenantStatus | UnsetType = UNSET


class Tenant(Struct, kw_only=True):
    id: str
    name: str
    status: TenantStatus
    metadata: dict[str, MetadataValue]
    created_at: datetime
    updated_at: datetime


class TenantPage(Struct, kw_only=True):
    data: list[Tenant]
    next_cursor: str | None


# Checked by budgets.usd_to_nanos, whose refusal says what is wrong.
UsdAmount = Annotated[
    str,
    Meta(
        max_length=21,
        description="USD as an ASCII decimal string, up to 9 decimals and $1,000,000,000",
        examples=["5.00"],
    ),
]
BudgetPeriod = Literal["day", "week", "month", "none"]


Thresholds = Annotated[
    list[Annotated[int, Meta(ge=1, le=100)]],
    Meta(max_length=10, description="percents of the limit: each crossing sends budget.threshold"),
]


class BudgetCreate(_Request):
    limit_usd: UsdAmount
    period: BudgetPeriod
    thresholds: Thresholds = []


class BudgetUpdate(_Request):
    """Fields left out stay as they are; ``thresholds: []`` sends no more alerts."""

    limit_usd: UsdAmount | UnsetType = UNSET
    thresholds: Thresholds | UnsetType = UNSET


class TopUp(_Request):
    amount_usd: UsdAmount


class Budget(Struct, kw_only=True):
    """A budget with its current period: what is spent, held by calls in flight, left."""

    id: str
    owner: Literal["key", "tenant"]
    key_id: str | None
    tenant_id: str | None
    limit_usd: str
    period: BudgetPeriod
    period_start: datetime
    period_end: datetime | None
    spent_usd: str
    held_usd: str
    top_up_usd: str
    remaining_usd: str
    thresholds: list[int]
    created_at: datetime
    updated_at: datetime


class BudgetPeriodSpend(Struct, kw_only=True):
    period_start: datetime
    spent_usd: str
    held_usd: str
    top_up_usd: str


class BudgetEvent(Struct, kw_only=True):
    id: str
    action: str
    actor: str
    details: dict[str, object]
    created_at: datetime


class RateLimits(_Request):
    """Per-key limits; leave one out for no limit of that kind."""

    requests_per_minute: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    audio_seconds_per_window: Annotated[int, Meta(ge=1, le=10**9)] | None = None
    window_seconds: Annotated[int, Meta(ge=1, le=31 * 86_400)] = 3600
    max_concurrent: Annotated[int, Meta(ge=1, le=100_000)] | None = None


class RateUse(Struct, kw_only=True):
    requests_last_minute: int
    audio_seconds_in_window: float
    in_flight: int


class KeyCreate(_Request):
    tenant_id: Id
    name: Name
    metadata: Metadata = msgspec.field(default_factory=dict)
    expires_at: AwareDatetime | None = None
    allowed_models: AllowedModels | None = None
    rate_limits: RateLimits | None = None
    # False: this key's calls never read or fill the transcription cache.
    cache: bool = True
    budgets: Annotated[list[BudgetCreate], Meta(max_length=10)] = msgspec.field(
        default_factory=list
    )


class KeyUpdate(_Request):
    """Fields left out stay as they are; ``null`` clears expiry, models or rate limits."""

    name: Name | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    expires_at: AwareDatetime | UnsetType | None = UNSET
    allowed_models: AllowedModels | UnsetType | None = UNSET
    rate_limits: RateLimits | UnsetType | None = UNSET
    cache: bool | UnsetType = UNSET


class KeyRotate(_Request):
    grace_seconds: GraceSeconds = 0


class Key(Struct, kw_only=True):
    id: str
    tenant_id: str
    name: str
    display_prefix: str
    status: KeyStatus
    metadata: dict[str, MetadataValue]
    allowed_models: list[str] | None
    rate_limits: RateLimits | None
    cache: bool
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    created_at: datetime
    updated_at: datetime


class KeyWithSecret(Key, kw_only=True):
    """Returned by creation and rotation only: the one time the secret is shown."""

    secret: str
    previous_secret_valid_until: datetime | None = None
    # The key's own budgets, with their ids (at creation, those given inline).
    budgets: list[Budget] = []


class KeyPage(Struct, kw_only=True):
    data: list[Key]
    next_cursor: str | None


class BudgetList(Struct, kw_only=True):
    """A key's or a tenant's budgets: few, so always one page (``next_cursor`` null)."""

    data: list[Budget]
    next_cursor: str | None


class BudgetPeriodList(Struct, kw_only=True):
    data: list[BudgetPeriodSpend]
    next_cursor: str | None


class BudgetEventList(Struct, kw_only=True):
    data: list[BudgetEvent]
    next_cursor: str | None


class AuditEntry(Struct, kw_only=True):
    """One admin change: the fields that changed as the API shows them, before and after
    (``before`` is null for a creation, ``after`` for a deletion)."""

    id: str
    created_at: datetime
    actor: str  # token | user:NAME | cli:OS_USER
    action: str  # TYPE.VERB, e.g. key.revoke
    target_type: str  # tenant | key | budget | admin_user
    target_id: str
    before: dict[str, object] | None
    after: dict[str, object] | None
    details: dict[str, object] | None  # what the action was given: an amount, a grace
    request_id: str | None  # the API request's x-request-id
    source: str | None  # the client's address


class AuditPage(Struct, kw_only=True):
    data: list[AuditEntry]
    next_cursor: str | None


class Quota(Struct, kw_only=True):
    key_id: str
    key_name: str
    display_prefix: str
    tenant_id: str
    tenant_name: str
    status: KeyStatus
    expires_at: datetime | None
    allowed_models: list[str] | None
    budgets: list[Budget]
    rate_limits: RateLimits | None
    rate_use: RateUse | None
    # This key's calls, refusals, audio seconds, tokens and cost since the UTC month began.
    usage_this_month: dict[str, object]


class AdminUserCreated(Struct, kw_only=True):
    id: str
    name: str
    created_at: datetime


# What a webhook endpoint may subscribe to (app/ops/webhooks.py emits each, with the change).
WebhookEventType = Literal[
    "budget.threshold",
    "budget.exhausted",
    "key.created",
    "key.revoked",
    "key.rotated",
    "key.expired",
    "tenant.deactivated",
    "call.review",
]
WebhookUrl = Annotated[str, Meta(min_length=8, max_length=2000, pattern=r"^https?://[^\s]+$")]
WebhookEventTypes = Annotated[list[WebhookEventType], Meta(min_length=1, max_length=20)]


class WebhookCreate(_Request):
    url: WebhookUrl
    event_types: WebhookEventTypes
    tenant_id: Id | None = None  # only this tenant's events
    enabled: bool = True


class WebhookUpdate(_Request):
    """Fields left out stay as they are; ``tenant_id: null`` receives every tenant's."""

    url: WebhookUrl | UnsetType = UNSET
    event_types: WebhookEventTypes | UnsetType = UNSET
    tenant_id: Id | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET


class WebhookEndpoint(Struct, kw_only=True):
    id: str
    url: str
    event_types: list[str]
    tenant_id: str | None
    enabled: bool
    failing: bool  # its last deliveries failed one after another; it is still retried
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookEndpoint, kw_only=True):
    secret: str  # whsec_…: shown only at creation and rotation; verify signatures with it


class WebhookPage(Struct, kw_only=True):
    data: list[WebhookEndpoint]
    next_cursor: str | None


class WebhookDelivery(Struct, kw_only=True):
    id: str
    event_id: str  # the webhook-id header: the same on every attempt
    event_type: str
    status: str  # pending | succeeded | failed (given up)
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime


class WebhookDeliveryPage(Struct, kw_only=True):
    data: list[WebhookDelivery]
    next_cursor: str | None


def provided(update: Struct) -> dict[str, object]:
    """The fields of a PATCH body that were actually sent."""
    return {
        name: value for name, value in msgspec.structs.asdict(update).items() if value is not UNSET
    }
