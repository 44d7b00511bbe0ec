"""Console pages for budgets: add to a key or a tenant, raise or lower, alert thresholds,
top up, reset, delete, and each period's spend with the budget's history."""

from __future__ import annotations

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Redirect

from app.billing import budgets
from app.console import forms
from app.console.gate import PREFIX, actor, render
from app.errors import InvalidRequest
from app.routes.params import PathId
from app.schemas import BudgetCreate, BudgetUpdate, TopUp


@post("/budgets", status_code=303)
async def add_budget(request: Request) -> Redirect:
    """A budget on ``key_id`` or ``tenant_id`` (whichever the form carries)."""
    fields = await request.form()
    key_id, tenant_id = forms.identifier(fields, "key_id"), forms.identifier(fields, "tenant_id")
    if (key_id is None) == (tenant_id is None):
        raise InvalidRequest("A budget belongs to one key or one tenant.")
    data = forms.decoded(forms.budget(fields) or {"limit_usd": ""}, BudgetCreate)
    budget = await budgets.create_budget(
        request.app.state.engine, data, actor(request), key_id=key_id, tenant_id=tenant_id
    )
    return Redirect(f"{PREFIX}/budgets/{budget.id}?done=created", status_code=303)


@get("/budgets/{budget_id:str}")
async def budget_page(request: Request, budget_id: FromPath[PathId]) -> Response:
    engine = request.app.state.engine
    return render(
        request,
        "budget.html",
        budget=await budgets.get_budget(engine, budget_id),
        periods=await budgets.periods(engine, budget_id),
        events=await budgets.events(engine, budget_id),
    )


@post("/budgets/{budget_id:str}", status_code=303)
async def update_budget(request: Request, budget_id: FromPath[PathId]) -> Redirect:
    """A new limit (raise or lower) and alert thresholds."""
    fields = await request.form()
    changes = {
        "limit_usd": forms.text(fields, "limit_usd") or "",
        "thresholds": forms.thresholds(fields),
    }
    data = forms.decoded(changes, BudgetUpdate)
    await budgets.update_budget(request.app.state.engine, budget_id, data, actor(request))
    return Redirect(f"{PREFIX}/budgets/{budget_id}?done=saved", status_code=303)


@post("/budgets/{budget_id:str}/top-up", status_code=303)
async def top_up(request: Request, budget_id: FromPath[PathId]) -> Redirect:
    fields = await request.form()
    data = forms.decoded({"amount_usd": forms.text(fields, "amount_usd") or ""}, TopUp)
    await budgets.top_up(request.app.state.engine, budget_id, data.amount_usd, actor(request))
    return Redirect(f"{PREFIX}/budgets/{budget_id}?done=topped-up", status_code=303)


@post("/budgets/{budget_id:str}/reset", status_code=303)
async def reset(request: Request, budget_id: FromPath[PathId]) -> Redirect:
    await budgets.reset(request.app.state.engine, budget_id, actor(request))
    return Redirect(f"{PREFIX}/budgets/{budget_id}?done=reset", status_code=303)


@get("/budgets/{budget_id:str}/delete")
async def confirm_delete(request: Request, budget_id: FromPath[PathId]) -> Response:
    budget = await budgets.get_budget(request.app.state.engine, budget_id)
    return render(request, "budget_delete.html", budget=budget)


@post("/budgets/{budget_id:str}/delete", status_code=303)
async def delete_budget(request: Request, budget_id: FromPath[PathId]) -> Redirect:
    engine = request.app.state.engine
    budget = await budgets.get_budget(engine, budget_id)
    await budgets.delete_budget(engine, budget_id, actor(request))
    owner = f"keys/{budget.key_id}" if budget.key_id else f"tenants/{budget.tenant_id}"
    return Redirect(f"{PREFIX}/{owner}?done=deleted", status_code=303)


ROUTES = [add_budget, budget_page, update_budget, top_up, reset, confirm_delete, delete_budget]
