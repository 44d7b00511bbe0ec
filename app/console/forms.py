"""Form fields to the admin API's request types: what a console form sends becomes the
same ``KeyCreate``, ``BudgetCreate``… the JSON API decodes, checked by the same rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from litestar.datastructures import FormMultiDict
from litestar.params import Parameter, QueryParameter

from app.errors import InvalidRequest
from app.ids import ID_MAX_LENGTH, ID_PATTERN
from app.routes.params import ACTION_PATTERN, ACTOR_PATTERN

T = TypeVar("T")
# A list's filters, as a GET form sends them: an empty field (``name=``) is no filter.
# "Contains" text is what a person types, never a NUL or a control character; ids,
# cursors, actors and actions are checked as the admin API checks them.
SearchText = Annotated[str | None, Parameter(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
FilterId = Annotated[str | None, Parameter(pattern=f"^$|{ID_PATTERN}", max_length=ID_MAX_LENGTH)]
FilterActor = Annotated[
    str | None, QueryParameter(name="actor", pattern=f"^$|{ACTOR_PATTERN}", max_length=120)
]
FilterAction = Annotated[str | None, Parameter(pattern=f"^$|{ACTION_PATTERN}", max_length=40)]
_ID = re.compile(ID_PATTERN)


def text(fields: FormMultiDict, name: str) -> str | None:
    value = fields.get(name)
    return value.strip() or None if isinstance(value, str) else None


def identifier(fields: FormMultiDict, name: str) -> str | None:
    """An id from a hidden field, checked as the API checks ids in a path."""
    value = text(fields, name)
    if value is not None and (len(value) > ID_MAX_LENGTH or not _ID.match(value)):
        raise InvalidRequest(f"`{name}` is not an id.", param=name)
    return value


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
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: before the year 1 once in UTC
        raise InvalidRequest(f"{label} must be a date and time.", param=name) from None


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
