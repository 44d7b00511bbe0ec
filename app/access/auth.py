"""Who is calling: tenants by virtual key, admins by token or user.

A tenant key may arrive in any of the carriers OpenAI-compatible clients use. Keys are
looked up on every request (one indexed query, no cache), so a revoke or expiry is
effective on the next request on every process.
"""

from __future__ import annotations

import base64
import hmac
from datetime import datetime
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.datastructures import Headers, State
from litestar.handlers import BaseRouteHandler
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access import key_format
from app.access.admin_users import PasswordChecker
from app.access.keys import stored_rate_limits
from app.access.throttle import SignInThrottle
from app.billing import budgets
from app.errors import AuthenticationFailed, PermissionDenied
from app.schemas import RateLimits
from app.storage import database
from app.storage.driver import Program, Statement, fetch, json, utc
from app.storage.models import api_keys, key_secrets, tenants

_KEY_HEADERS = ("x-bf-vk", "x-api-key", "api-key")
_ADMIN_CHALLENGE = {"www-authenticate": 'Basic realm="earmark-admin"'}


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated tenant key."""

    key_id: str
    key_name: str
    display_prefix: str
    tenant_id: str
    tenant_name: str
    allowed_models: list[str] | None
    rate_limits: RateLimits | None
    cache: bool
    expires_at: datetime | None
    # A budget on the key's path that is used up this period: every call is refused.
    exhausted_budget_id: str | None = None
    # A budget on the key's path has alert thresholds: settles look for crossings.
    budget_alerts: bool = False


def _basic_credentials(value: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 once decoded
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def presented_key(headers: Headers) -> str | None:
    """The tenant key from whichever carrier holds one; an ``sk-bf-`` value wins, so a
    client may send a provider key in one header and its Earmark key in another."""
    candidates = [headers.get(name, "").strip() for name in _KEY_HEADERS]
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        candidates.insert(0, value.strip())
    elif scheme.lower() == "basic" and (credentials := _basic_credentials(value)):
        user, password = credentials
        candidates.append(password or user)
    candidates = [candidate for candidate in candidates if candidate]
    for candidate in candidates:
        if candidate.startswith(key_format.PREFIX):
            return candidate
    return candidates[0] if candidates else None


_LOOKUP = Statement(
    select(
        api_keys.c.id,
        api_keys.c.name,
        api_keys.c.display_prefix,
        api_keys.c.tenant_id,
        api_keys.c.allowed_models,
        api_keys.c.rate_limits,
        api_keys.c.cache,
        api_keys.c.expires_at,
        api_keys.c.revoked_at,
        api_keys.c.deleted_at,
        key_secrets.c.valid_until,
        tenants.c.name.label("tenant_name"),
        tenants.c.status.label("tenant_status"),
        budgets.exhausted_on_path(api_keys.c.id, api_keys.c.tenant_id).label("exhausted"),
        budgets.alerting_on_path(api_keys.c.id, api_keys.c.tenant_id).label("alerting"),
    )
    .select_from(key_secrets)
    .join(api_keys, api_keys.c.id == key_secrets.c.key_id)
    .join(tenants, tenants.c.id == api_keys.c.tenant_id)
    .where(key_secrets.c.digest == bindparam("digest"))
)


def _looking_up(digest: bytes, now: datetime) -> Program[object | None]:
    rows = yield fetch(_LOOKUP, digest=digest, **budgets.period_starts(now))
    return rows[0] if rows else None


async def authenticate_tenant(engine: AsyncEngine, pepper: str, secret: str | None) -> Principal:
    if not secret:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send your Earmark key as "
            "`Authorization: Bearer sk-bf-…` (or in x-bf-vk, x-api-key or api-key)."
        )
    if not key_format.is_well_formed(secret):
        raise AuthenticationFailed(
            "Incorrect API key provided: this is not an Earmark key (sk-bf-…), or it is "
            "mistyped (its checksum does not match)."
        )
    digest = key_format.digest(secret, pepper)
    now = database.utcnow()
    row: Any = await database.store(engine).alone(lambda: _looking_up(digest, now))
    shown = key_format.display_prefix(secret)
    if row is None or row.deleted_at is not None:
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}….")
    valid_until, expires_at = utc(row.valid_until), utc(row.expires_at)
    if valid_until is not None and valid_until <= now:
        raise AuthenticationFailed(
            f"This secret of key {row.id} was replaced by a rotation and is no longer valid; "
            "use the new secret."
        )
    if row.revoked_at is not None:
        raise PermissionDenied(f"API key {row.id} has been revoked.", code="key_revoked")
    if expires_at is not None and expires_at <= now:
        raise PermissionDenied(
            f"API key {row.id} expired at {database.utc_text(expires_at)}.", code="key_expired"
        )
    if row.tenant_status != "active":
        raise PermissionDenied(
            f"The tenant of API key {row.id} is inactive.", code="tenant_inactive"
        )
    return Principal(
        key_id=row.id,
        key_name=row.name,
        display_prefix=row.display_prefix,
        tenant_id=row.tenant_id,
        tenant_name=row.tenant_name,
        allowed_models=json(row.allowed_models),
        rate_limits=stored_rate_limits(json(row.rate_limits)),
        cache=bool(row.cache),
        expires_at=expires_at,
        exhausted_budget_id=row.exhausted,
        budget_alerts=bool(row.alerting),
    )


async def require_tenant(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for /v1: runs before the body is read, so strangers cannot make us spool."""
    state = connection.app.state
    connection.state.principal = await authenticate_tenant(
        state.engine, state.settings.key_pepper, presented_key(connection.headers)
    )


async def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for /admin: the bootstrap token as a bearer, or an admin user by HTTP Basic.
    Failures are throttled per source address and user name before anything is hashed."""
    state = connection.app.state
    scheme, _, value = connection.headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    key = presented_key(connection.headers)
    if key and key.startswith(key_format.PREFIX):
        raise PermissionDenied("Tenant keys cannot use the admin API.", code="tenant_key_not_admin")
    if scheme not in ("bearer", "basic"):
        raise _admin_refusal(
            "Admin credentials required: `Authorization: Bearer <EARMARK_ADMIN_TOKEN>` or "
            "HTTP Basic with an admin user (`earmark admin create-user NAME`)."
        )
    source = connection.client.host if connection.client else "unknown"
    if scheme == "bearer":
        if await admin_identity(state, source, None, value.strip()):
            connection.state.admin = "token"  # the audit trail's actor
            return
        raise _admin_refusal("Invalid admin token.")
    credentials = _basic_credentials(value)
    if credentials is None:
        state.sign_in_throttle.attempt(source, None)  # malformed: a failure of its address
    elif admin := await admin_identity(state, source, *credentials):
        connection.state.admin = admin
        return
    raise _admin_refusal("Invalid admin user name or password.")


async def admin_identity(state: State, source: str, user: str | None, secret: str) -> str | None:
    """Who an admin signs in as with ``secret``: the bootstrap token (``user`` None) gives
    "token", an admin user's password "user:NAME"; None if wrong. Failures are throttled per
    source address and user name before anything is hashed (``TooManyAttempts``)."""
    throttle: SignInThrottle = state.sign_in_throttle
    throttle.attempt(source, user)  # a failure until it proves otherwise
    if user is None:
        admin_token = state.settings.admin_token
        if admin_token and hmac.compare_digest(secret.encode(), admin_token.encode()):
            throttle.succeeded(source, None)
            return "token"
        return None
    passwords: PasswordChecker = state.admin_passwords
    if await passwords.verify(state.engine, user, secret, source=source):
        throttle.succeeded(source, user)
        return f"user:{user}"
    return None


def _admin_refusal(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code="invalid_admin_credentials", headers=_ADMIN_CHALLENGE)
