"""Per-key rate limits: requests per minute, audio seconds per rolling window, calls in
flight.

There are no separate counters: the key's own ledger rows are the record. Inside the
reservation transaction the key's row is locked (PostgreSQL ``FOR UPDATE``; SQLite's
``BEGIN IMMEDIATE`` already serialises writers), and one aggregate over the key's recent
rows decides, so a burst spread over many processes admits exactly the limit.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import EarmarkError
from app.models import OPEN_ROWS, api_keys, ledger
from app.schemas import RateLimits, RateUse

MINUTE = timedelta(minutes=1)


class RateLimited(EarmarkError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, limit: str, retry_after: int, *, certain: bool = False) -> None:
        super().__init__(
            f"Rate limit reached for this key: {limit}. Retry after {retry_after} s.",
            code="rate_limit_exceeded",
            headers={"retry-after": str(retry_after)},
        )
        self.limit = limit
        self.retry_after = retry_after
        # No call of this key can fit before retry_after (requests per minute): another
        # kind may fit sooner (a smaller file, a freed slot).
        self.certain = certain


class RecentRefusals:
    """Keys this process refused because no call could fit their requests-per-minute
    limit before a given time: until then (and while their limits stay as they were), a
    call from one is refused again before its upload is read or measured."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._until: dict[str, tuple[float, RateLimits, RateLimited]] = {}
        self.max_entries = max_entries

    def remember(self, key_id: str, limits: RateLimits, refusal: RateLimited) -> None:
        if not refusal.certain:
            return
        now = time.monotonic()
        if len(self._until) >= self.max_entries:
            self._until = {k: v for k, v in self._until.items() if v[0] > now}
        if len(self._until) < self.max_entries:
            self._until[key_id] = (now + refusal.retry_after, limits, refusal)

    def check(self, key_id: str, limits: RateLimits | None) -> None:
        entry = self._until.get(key_id)
        if entry is None:
            return
        until, then, refusal = entry
        left = until - time.monotonic()
        if left <= 0 or limits != then:
            del self._until[key_id]
            return
        raise RateLimited(refusal.limit, max(1, math.ceil(left)), certain=True)


async def _use(conn: AsyncConnection, key_id: str, limits: RateLimits, now: datetime) -> Any:
    """The key's use, in one statement bounded whatever the ledger's size: its rows of the
    window (``ix_ledger_key_id_created_at``) and its open rows (the partial ``ix_ledger_open``)."""
    window_start = now - timedelta(seconds=limits.window_seconds)
    minute_ago = now - MINUTE
    in_minute = ledger.c.created_at > minute_ago
    in_window = ledger.c.created_at > window_start
    in_flight = select(func.count()).where(ledger.c.key_id == key_id, OPEN_ROWS).scalar_subquery()
    return (
        await conn.execute(
            select(
                func.coalesce(func.sum(case((in_minute, 1), else_=0)), 0).label("requests"),
                func.min(case((in_minute, ledger.c.created_at))).label("oldest_request"),
                func.coalesce(
                    func.sum(case((in_window, ledger.c.probed_audio_ms), else_=0)), 0
                ).label("audio_ms"),
                func.min(case((in_window, ledger.c.created_at))).label("oldest_audio"),
                in_flight.label("in_flight"),
            ).where(
                ledger.c.key_id == key_id,
                ledger.c.created_at > min(window_start, minute_ago),
                ledger.c.status != "rejected",
            )
        )
    ).one()


def _retry_after(oldest: datetime | None, span: timedelta, now: datetime) -> int:
    if oldest is None:
        return 1
    return max(1, math.ceil((oldest + span - now).total_seconds()))


async def admit(
    conn: AsyncConnection, key_id: str, limits: RateLimits, audio_ms: int, now: datetime
) -> None:
    """Raise RateLimited (429 with Retry-After) unless this call fits every limit."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id).with_for_update())
    use = await _use(conn, key_id, limits, now)
    window = timedelta(seconds=limits.window_seconds)
    if limits.requests_per_minute is not None and use.requests + 1 > limits.requests_per_minute:
        wait = _retry_after(use.oldest_request, MINUTE, now)
        raise RateLimited(f"{limits.requests_per_minute} requests per minute", wait, certain=True)
    if (
        limits.audio_seconds_per_window is not None
        and use.audio_ms + audio_ms > limits.audio_seconds_per_window * 1000
    ):
        wait = _retry_after(use.oldest_audio, window, now)
        raise RateLimited(
            f"{limits.audio_seconds_per_window} audio seconds per {limits.window_seconds} s", wait
        )
    if limits.max_concurrent is not None and use.in_flight + 1 > limits.max_concurrent:
        raise RateLimited(f"{limits.max_concurrent} calls in flight", 1)


async def current_use(
    conn: AsyncConnection, key_id: str, limits: RateLimits, now: datetime
) -> RateUse:
    use = await _use(conn, key_id, limits, now)
    return RateUse(
        requests_last_minute=use.requests,
        audio_seconds_in_window=use.audio_ms / 1000,
        in_flight=use.in_flight,
    )
