"""Admin API: budgets on keys and tenants, their current period, top-ups, resets, audit."""

from __future__ import annotations

from litestar import delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncEngine

from app.billing import budgets
from app.ops.audit import Actor
from app.routes.params import PathId, QueryId
from app.schemas import (
    Budget,
    BudgetCreate,
    BudgetEventList,
    BudgetList,
    BudgetPeriodList,
    BudgetUpdate,
    TopUp,
)


@post("/keys/{key_id:str}/budgets", summary="Add a budget to a key")
async def add_key_budget(
    key_id: FromPath[PathId],
    data: JSONBody[BudgetCreate],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> Budget:
    return await budgets.create_budget(engine, data, actor, key_id=key_id)


@post("/tenants/{tenant_id:str}/budgets", summary="Add a budget to a tenant (all its keys)")
async def add_tenant_budget(
    tenant_id: FromPath[PathId],
    data: JSONBody[BudgetCreate],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> Budget:
    return await budgets.create_budget(engine, data, actor, tenant_id=tenant_id)


@get("/budgets", summary="List budgets, by key or tenant")
async def list_budgets(
    engine: NamedDependency[AsyncEngine],
    key_id: FromQuery[QueryId] = None,
    tenant_id: FromQuery[QueryId] = None,
) -> BudgetList:
    found = await budgets.list_budgets(engine, key_id=key_id, tenant_id=tenant_id)
    return BudgetList(data=found, next_cursor=None)


@get("/budgets/{budget_id:str}", summary="A budget and its current period")
async def get_budget(budget_id: FromPath[PathId], engine: NamedDependency[AsyncEngine]) -> Budget:
    return await budgets.get_budget(engine, budget_id)


@patch("/budgets/{budget_id:str}", summary="Raise or lower a budget's limit")
async def update_budget(
    budget_id: FromPath[PathId],
    data: JSONBody[BudgetUpdate],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> Budget:
    return await budgets.update_budget(engine, budget_id, data, actor)


@delete("/budgets/{budget_id:str}", summary="Remove a budget: it is no longer enforced")
async def delete_budget(
    budget_id: FromPath[PathId], engine: NamedDependency[AsyncEngine], actor: NamedDependency[Actor]
) -> None:
    await budgets.delete_budget(engine, budget_id, actor)


@post(
    "/budgets/{budget_id:str}/top-up",
    status_code=200,
    summary="Grant extra spend for the current period",
)
async def top_up(
    budget_id: FromPath[PathId],
    data: JSONBody[TopUp],
    engine: NamedDependency[AsyncEngine],
    actor: NamedDependency[Actor],
) -> Budget:
    return await budgets.top_up(engine, budget_id, data.amount_usd, actor)


@post("/budgets/{budget_id:str}/reset", status_code=200, summary="Zero the current period's spend")
async def reset(
    budget_id: FromPath[PathId], engine: NamedDependency[AsyncEngine], actor: NamedDependency[Actor]
) -> Budget:
    return await budgets.reset(engine, budget_id, actor)


@get("/budgets/{budget_id:str}/periods", summary="Spend of every period, newest first")
async def budget_periods(
    budget_id: FromPath[PathId], engine: NamedDependency[AsyncEngine]
) -> BudgetPeriodList:
    return BudgetPeriodList(data=await budgets.periods(engine, budget_id), next_cursor=None)


@get("/budgets/{budget_id:str}/events", summary="Who changed the budget, and when")
async def budget_events(
    budget_id: FromPath[PathId], engine: NamedDependency[AsyncEngine]
) -> BudgetEventList:
    return BudgetEventList(data=await budgets.events(engine, budget_id), next_cursor=None)


ROUTES = [
    add_key_budget,
    add_tenant_budget,
    list_budgets,
    get_budget,
    update_budget,
    delete_budget,
    top_up,
    reset,
    budget_periods,
    budget_events,
]
