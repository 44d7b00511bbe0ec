"""How the console writes amounts, times and durations (the templates' filters)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from app.schemas import Budget

DASH = "—"


def usd(amount: str | Decimal | None) -> str:
    """``"0.001250000"`` → ``$0.00125``: every significant decimal, at least cents."""
    if amount is None:
        return DASH
    value = Decimal(amount).normalize()
    places = max(2, -value.as_tuple().exponent)  # type: ignore[operator]
    return f"${value:,.{places}f}"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else DASH


def audio(milliseconds: int | None) -> str:
    return DASH if milliseconds is None else f"{milliseconds / 1000:,.1f} s"


def duration(seconds: str | Decimal) -> str:
    """Audio time in the unit that reads best: 6.0 s, 12.5 min, 1,234.50 h."""
    value = Decimal(seconds)
    if value < 60:
        return f"{value:,.1f} s"
    if value < 3600:
        return f"{value / 60:,.1f} min"
    return f"{value / 3600:,.2f} h"


def number(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def used_percent(budget: Budget) -> int:
    """How much of a budget's period is spent or held, 0-100 (its bar; the overview's order)."""
    available = Decimal(budget.limit_usd) + Decimal(budget.top_up_usd)
    if available <= 0:
        return 100
    return min(100, int((Decimal(budget.spent_usd) + Decimal(budget.held_usd)) * 100 / available))


def as_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


FILTERS = {
    "usd": usd,
    "when": when,
    "audio": audio,
    "duration": duration,
    "number": number,
    "as_json": as_json,
    "used_percent": used_percent,
}
