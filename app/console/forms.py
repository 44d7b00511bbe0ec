"""Form fields to the admin API's request types: what a console form sends becomes the
same ``KeyCreate``, ``BudgetCreate``… the JSON API decodes, checked by the same rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.datastructures import FormMultiDict

from app.errors import InvalidRequest

T = TypeVar("T")


def text(fields: FormMultiDict, name: str) -> str | None:
    value = fields.get(name)
    return value.strip() or None if isinstance(value, str) else None


def whole(fields: FormMultiDict, name: str, label: str) -> int | None:
    value = text(fields, name)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 15:
        raise InvalidRequest(f"{label} must be a whole number.", param=name)
    return int(value)


def utc_time(fields: FormMultiDict, name: str, label: str) -> datetime | None:
    """A ``datetime-local`` field, read as UTC (the console shows every time in UTC)."""
    value = text(fields, name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{label} must be a date and time.", param=name) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def thresholds(fields: FormMultiDict) -> list[int]:
    """ "50, 80, 100" → [50, 80, 100]."""
    value = text(fields, "thresholds") or ""
    parts = [part.strip() for part in value.replace(" ", ",").split(",") if part.strip()]
    if not all(part.isascii() and part.isdigit() and len(part) <= 3 for part in parts):
        raise InvalidRequest("Alert thresholds are whole percents, e.g. 50, 80, 100.")
    return [int(part) for part in parts]


def rate_limits(fields: FormMultiDict) -> dict[str, int] | None:
    """The rate-limit fields that were filled in, or None for no limits."""
    limits = {
        name: value
        for name, label in (
            ("requests_per_minute", "Requests per minute"),
            ("audio_seconds_per_window", "Audio seconds per window"),
            ("window_seconds", "Window"),
            ("max_concurrent", "Calls at once"),
        )
        if (value := whole(fields, name, label)) is not None
    }
    return limits or None


def budget(fields: FormMultiDict) -> dict[str, Any] | None:
    """A budget from ``limit_usd``, ``period`` and ``thresholds``; None if no limit is given."""
    limit = text(fields, "limit_usd")
    if limit is None:
        return None
    return {"limit_usd": limit, "period": text(fields, "period"), "thresholds": thresholds(fields)}


def decoded(value: dict[str, Any], into: type[T]) -> T:
    """``value`` as the API's request type (a 400 page says what is wrong)."""
    return msgspec.convert(value, into)


async def fields_of(request: Request) -> FormMultiDict:
    """The form the gate checked (parsed once per request)."""
    return await request.form()
