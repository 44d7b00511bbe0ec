"""The background task that finishes ledger rows whose worker died (see ``ledger.sweep``)
and deletes expired cache entries.

Every process runs one. A row is stale once no live worker could still be working on it:
a reservation is forwarded within milliseconds, and a forwarded call cannot outlive its
providers' timeouts along its fallback chain.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from app import cache, database, ledger
from app.catalog import Catalog

logger = logging.getLogger("earmark")

SWEEP_INTERVAL_SECONDS = 30.0
RESERVED_STALE_AFTER = timedelta(seconds=60)
FORWARDED_MARGIN = timedelta(seconds=300)


def forwarded_stale_after(catalog: Catalog) -> timedelta:
    longest = max(
        (
            sum(route.provider.timeout_seconds for route in [catalog.routes[name], *chain])
            for name, chain in catalog.fallbacks.items()
        ),
        default=0.0,
    )
    return timedelta(seconds=longest) + FORWARDED_MARGIN


async def sweep_once(engine: AsyncEngine, catalog: Catalog) -> int:
    now = database.utcnow()
    return await ledger.sweep(
        engine,
        reserved_before=now - RESERVED_STALE_AFTER,
        forwarded_before=now - forwarded_stale_after(catalog),
    )


async def run_sweeper(engine: AsyncEngine, catalog: Catalog) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
        try:
            swept = await sweep_once(engine, catalog)
            await cache.purge_expired(engine)
        except Exception:  # the database may be down; try again next round
            logger.exception("ledger sweep failed")
            continue
        if swept:
            logger.warning("swept %d ledger rows left by a lost worker", swept)
