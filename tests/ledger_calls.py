"""Calls opened straight on the ledger, for the tests of budgets and of the sweeper: a
tenant and a key with budgets on their path, and calls opened on them."""

from __future__ import annotations

from datetime import timedelta

from app.access import keys, tenants
from app.billing import budgets, ledger
from app.ops.audit import Actor
from app.schemas import BudgetCreate, KeyCreate, TenantCreate
from app.storage import database

ACTOR = Actor("test")


async def key_with_budgets(
    engine, limit_usd: str = "1", period: str = "month", *, tenant_budget: bool = True
) -> tuple[str, str]:
    """A tenant and a key with a budget of ``limit_usd`` a ``period``, and the tenant one
    of its own unless not ``tenant_budget``: (key id, tenant id)."""
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    budget = BudgetCreate(limit_usd=limit_usd, period=period)
    key = await keys.create_key(
        engine, "", KeyCreate(tenant_id=tenant.id, name="k", budgets=[budget]), ACTOR
    )
    if tenant_budget:
        async with database.write(engine) as conn:
            await budgets.add_budget(conn, budget, ACTOR, tenant_id=tenant.id)
    return key.id, tenant.id


async def open_calls(
    engine,
    key_id: str,
    tenant_id: str,
    *call_ids: str,
    hold: int = 1_000,
    expected: int = 0,
    age: timedelta = timedelta(0),
    status: str = "forwarded",
) -> dict[str, ledger.Opening]:
    """Open each call ``age`` ago, holding ``hold`` nanodollars on every budget on its
    path: their openings, by id."""
    openings = {}
    for call_id in call_ids:
        openings[call_id] = ledger.Opening(
            id=call_id, key_id=key_id, tenant_id=tenant_id, endpoint="transcription",
            model_requested="m", expected_nanos=expected, hold_nanos=hold,
        )  # fmt: skip
        now = database.utcnow() - age
        await ledger.open_call(engine, openings[call_id], "p", "m", now=now, status=status)
    return openings
