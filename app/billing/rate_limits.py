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

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import EarmarkError
from app.schemas import RateLimits, RateUse
from app.storage.driver import Program, Statement, fetch, utc
from app.storage.models import OPEN_ROWS, UTCDateTime, api_keys, ledger

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


def _use_statement() -> Any:
    """The key's use, in one statement bounded whatever the ledger's size: its rows of the
    window (``ix_ledger_key_id_created_at``) and its open rows (the partial ``ix_ledger_open``)."""
    key_id = bindparam("key_id")
    in_minute = ledger.c.created_at > bindparam("minute_ago", type_=UTCDateTime())
    in_window = ledger.c.created_at > bindparam("window_start", type_=UTCDateTime())
    in_flight = select(func.count()).where(ledger.c.key_id == key_id, OPEN_ROWS).scalar_subquery()
    return select(
        func.coalesce(func.sum(case((in_minute, 1), else_=0)), 0).label("requests"),
        func.min(case((in_minute, ledger.c.created_at))).label("oldest_request"),
        func.coalesce(func.sum(case((in_window, ledger.c.probed_audio_ms), else_=0)), 0).label(
            "audio_ms"
        ),
        func.min(case((in_window, ledger.c.created_at))).label("oldest_audio"),
        in_flight.label("in_flight"),
    ).where(
        ledger.c.key_id == key_id,
        ledger.c.created_at > bindparam("since", type_=UTCDateTime()),
        ledger.c.status != "rejected",
    )


_USE = Statement(_use_statement())
# The key's row locked for the reservation (SQLite's BEGIN IMMEDIATE already serialises).
_LOCK_KEY = Statement(
    {
        "postgresql": select(api_keys.c.id)
        .where(api_keys.c.id == bindparam("key_id"))
        .with_for_update(),
        "sqlite": select(api_keys.c.id).where(api_keys.c.id == bindparam("key_id")),
    }
)


def _use_params(key_id: str, limits: RateLimits, now: datetime) -> dict[str, Any]:
    window_start, minute_ago = now - timedelta(seconds=limits.window_seconds), now - MINUTE
    return {
        "key_id": key_id,
        "minute_ago": minute_ago,
        "window_start": window_start,
        "since": min(window_start, minute_ago),
    }


def _row(row: Any) -> Any:
    return row._replace(oldest_request=utc(row.oldest_request), oldest_audio=utc(row.oldest_audio))


def _retry_after(oldest: datetime | None, span: timedelta, now: datetime) -> int:
    if oldest is None:
        return 1
    return max(1, math.ceil((oldest + span - now).total_seconds()))


def admitting(key_id: str, limits: RateLimits, audio_ms: int, now: datetime) -> Program[None]:
    """Raise RateLimited (429 with Retry-After) unless this call fits every limit."""
    yield fetch(_LOCK_KEY, key_id=key_id)
    (use,) = yield fetch(_USE, **_use_params(key_id, limits, now))
    use = _row(use)
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
        n = limits.max_concurrent
        raise RateLimited(f"{n} call{'' if n == 1 else 's'} in flight", 1)


async def current_use(
    conn: AsyncConnection, key_id: str, limits: RateLimits, now: datetime
) -> RateUse:
    use = (await conn.execute(_USE.statement, _use_params(key_id, limits, now))).one()
    return RateUse(
        requests_last_minute=use.requests,
        audio_seconds_in_window=use.audio_ms / 1000,
        in_flight=use.in_flight,
    )
