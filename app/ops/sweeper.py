"""The background task that keeps the ledger whole: it applies settlements kept in the
journal while the database was away, finishes ledger rows whose worker died (see
``ledger.sweep``), and deletes expired cache entries.

Every process runs one. A row is stale once no live worker could still be working on it:
a reserved row (a cache hit) is settled within milliseconds, and a forwarded call cannot
outlive its providers' timeouts along its fallback chain. The journal is replayed first, so a call
answered during an outage is settled at what it cost, not swept at what it might have.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from app.access import keys
from app.billing import ledger
from app.catalog import Catalog
from app.gateway import cache, idempotency
from app.settings import Sweeping
from app.storage import database

if TYPE_CHECKING:
    from app.gateway.call import Gateway

logger = logging.getLogger("earmark")


def forwarded_stale_after(catalog: Catalog, margin_seconds: float) -> timedelta:
    """How long a forwarded call may still be running: each attempt of its longest
    fallback chain may take its provider's timeout to send the upload, then as long again
    to answer (a late settlement still corrects a row swept too early)."""
    longest = max(
        (
            sum(2 * route.provider.timeout_seconds for route in [catalog.routes[name], *chain])
            for name, chain in catalog.fallbacks.items()
        ),
        default=0.0,
    )
    return timedelta(seconds=longest + margin_seconds)


async def replay_journal(gateway: Gateway) -> int:
    applied = await gateway.journal.replay(gateway.engine)
    gateway.metrics.journal_settlements.labels("applied").inc(applied)
    return applied


async def sweep_once(gateway: Gateway, sweeping: Sweeping) -> int:
    await replay_journal(gateway)
    now = database.utcnow()
    return await ledger.sweep(
        gateway.engine,
        reserved_before=now - timedelta(seconds=sweeping.reserved_after_seconds),
        forwarded_before=now - forwarded_stale_after(gateway.catalog, sweeping.margin_seconds),
    )


async def run_sweeper(gateway: Gateway, sweeping: Sweeping) -> None:
    while True:
        await asyncio.sleep(sweeping.interval_seconds)
        try:
            swept = await sweep_once(gateway, sweeping)
            await cache.purge_expired(gateway.engine)
            await keys.announce_expired(gateway.engine)
            await idempotency.purge_expired(gateway.engine)
        except Exception:  # the database may be down; try again next round
            logger.exception("ledger sweep failed")
            continue
        if swept:
            logger.warning("swept %d ledger rows left by a lost worker", swept)
