"""The Billing dashboard's SQL, run against a real PostgreSQL filled by real calls, shows the
ledger's numbers: every panel, every variable, macros expanded as Grafana does."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from app.billing import ledger
from app.storage.database import create_engine
from tests.gateway import FIXTURES, Gateway
from tests.grafana import (
    GRAFANA,
    POSTGRES_UID,
    PROMETHEUS_UID,
    dashboard,
    interpolate,
    panels,
    sql_list,
    sql_macros,
    variables,
)

SPEECH = (FIXTURES / "speech.wav").read_bytes()
BILLING = dashboard("billing")
ON_POSTGRES = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def test_provisioning_names_the_datasources_the_dashboards_use() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/earmark.yaml").read_text())
    uids = {source["uid"]: source["type"] for source in provisioned["datasources"]}
    assert uids == {
        PROMETHEUS_UID: "prometheus",
        POSTGRES_UID: "grafana-postgresql-datasource",
    }
    for name, uid in (("billing", POSTGRES_UID), ("operations", PROMETHEUS_UID)):
        board = dashboard(name)
        assert board["uid"] == f"earmark-{name}"
        used = {
            target["datasource"]["uid"] for panel in panels(board) for target in panel["targets"]
        }
        used |= {var["datasource"]["uid"] for var in variables(board).values()}
        assert used == {uid}
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids))
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/earmark.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"


def _call(gateway: Gateway, key: dict, model: str) -> int:
    return gateway.post_audio(key, model).status_code


def _key(gateway: Gateway, tenant: dict, name: str, **body: Any) -> dict:
    return gateway.admin(
        "POST", "/admin/keys", json={"tenant_id": tenant["id"], "name": name, **body}
    )


@pytest.fixture
def billed(gateway: Gateway, database_url: str) -> dict[str, Any]:
    """Two tenants, four keys, four models, successes, refusals of several kinds, budgets
    on keys and on a tenant, and one call still holding its budget."""
    acme = gateway.admin("POST", "/admin/tenants", json={"name": "acme"})
    globex = gateway.admin("POST", "/admin/tenants", json={"name": "globex"})
    gateway.admin(
        "POST", f"/admin/tenants/{globex['id']}/budgets", json={"limit_usd": "1", "period": "none"}
    )
    capped = _key(gateway, acme, "capped", budgets=[{"limit_usd": "0.0015", "period": "day"}])
    wide = _key(gateway, acme, "wide", budgets=[{"limit_usd": "5", "period": "month"}])
    limited = _key(gateway, globex, "limited", rate_limits={"requests_per_minute": 2})
    other = _key(gateway, globex, "other", allowed_models=["openai/whisper-1"])
    statuses = [
        _call(gateway, capped, "openai/whisper-1"),
        _call(gateway, capped, "openai/whisper-1"),
        _call(gateway, capped, "openai/whisper-1"),  # 402: budget
        _call(gateway, wide, "gpt-4o-transcribe"),
        _call(gateway, wide, "gpt-4o-mini-transcribe"),
        _call(gateway, wide, "groq/whisper-large-v3"),
        _call(gateway, limited, "groq/whisper-large-v3"),
        _call(gateway, limited, "openai/whisper-1"),
        _call(gateway, limited, "openai/whisper-1"),  # 429: rate limit
        _call(gateway, other, "openai/whisper-1"),
        _call(gateway, other, "groq/whisper-large-v3"),  # 403: model not allowed
    ]
    assert statuses == [200, 200, 402, 200, 200, 200, 200, 200, 429, 200, 403]
    # A call in flight: its hold shows as "held" on the wide key's budget.
    engine = create_engine(database_url)

    async def hold() -> None:
        opening = ledger.Opening(
            id="req_in_flight",
            key_id=wide["id"],
            tenant_id=acme["id"],
            endpoint="transcription",
            model_requested="openai/whisper-1",
            hold_nanos=250_000_000,
        )
        try:
            await ledger.open_call(engine, opening, "openai", "whisper-1")
        finally:
            await engine.dispose()

    asyncio.run(hold())
    keys = [capped, wide, limited, other]
    calls = [call for key in keys for call in gateway.calls(key)]
    budgets = [
        budget
        for key in keys
        for budget in gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    ] + gateway.admin("GET", "/admin/budgets", params={"tenant_id": globex["id"]})["data"]
    return {
        "tenants": {acme["id"]: "acme", globex["id"]: "globex"},
        "keys": {key["id"]: key for key in keys},
        "calls": calls,
        "budgets": budgets,
    }


def _run(database_url: str, sql: str) -> list[dict[str, Any]]:
    async def query() -> list[dict[str, Any]]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                return [dict(row._mapping) for row in await conn.execute(text(sql))]
        finally:
            await engine.dispose()

    return asyncio.run(query())


def _grafana(database_url: str, sql: str, values: dict[str, str], interval: str = "1h"):
    """Run one panel query as Grafana would, over the last day."""
    end = datetime.now(UTC) + timedelta(minutes=1)
    expanded = interpolate(sql, {**values, "__interval": interval})
    return _run(database_url, sql_macros(expanded, end - timedelta(days=1), end))


def _all_values(database_url: str, values: dict[str, str] | None = None) -> dict[str, str]:
    """Every dashboard variable set to All, resolved through its own query in order."""
    values = dict(values or {})
    for name, variable in variables(BILLING).items():
        if name in values:
            continue
        rows = _run(database_url, interpolate(variable["query"], values))
        values[name] = sql_list([row["__value"] for row in rows])
    return values


def _model(call: dict) -> str:
    return f"{call['provider']}/{call['model']}"


def _sums(calls: list[dict], key: Callable[[dict], str], field: str) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for call in calls:
        if call[field] is not None:
            totals[key(call)] += Decimal(str(call[field]))
    return dict(totals)


def _series_totals(rows: list[dict]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        assert row["time"] is not None
        totals[row["metric"]] += Decimal(str(row["value"]))
    return dict(totals)


def _close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert abs(Decimal(str(actual[name])) - value) < Decimal("1e-9"), name


def _check(title: str, rows: list[dict], data: dict[str, Any]) -> None:
    """Each panel's rows against the same figure computed from the ledger rows the admin
    API returned."""
    calls = data["calls"]
    billed = [c for c in calls if c["status"] not in ("rejected", "released")]
    refused = [c for c in calls if c["status"] == "rejected"]
    key_label = {k: f"{key['name']} ({key['display_prefix']})" for k, key in data["keys"].items()}
    hours = {m: v / 3_600_000 for m, v in _sums(calls, _model, "audio_ms").items()}
    cost = lambda by: _sums(calls, by, "cost_usd")  # noqa: E731
    if title == "Spend":
        assert rows[0]["spend"] == sum(Decimal(c["cost_usd"]) for c in calls) > 0
    elif title == "Audio hours":
        expected = Decimal(sum(c["audio_ms"] or 0 for c in calls)) / 3_600_000
        assert abs(rows[0]["audio hours"] - expected) < Decimal("1e-12")
    elif title == "Billed calls":
        assert rows[0]["calls"] == len(billed) == 9  # 8 answered + 1 in flight
    elif title == "Refused calls":
        assert rows[0]["refused"] == len(refused) == 3
    elif title == "Spend per tenant":
        _close(
            _series_totals(rows),
            {data["tenants"][t]: v for t, v in cost(lambda c: c["tenant_id"]).items()},
        )
    elif title == "Spend per key":
        _close(
            _series_totals(rows), {key_label[k]: v for k, v in cost(lambda c: c["key_id"]).items()}
        )
    elif title == "Top keys by cost":
        expected = _sums(billed, lambda c: c["key_id"], "cost_usd")
        ranked = sorted(expected.values(), reverse=True)
        assert [row["cost"] for row in rows] == ranked
        _close(
            {row["prefix"]: row["cost"] for row in rows},
            {data["keys"][k]["display_prefix"]: v for k, v in expected.items()},
        )
        assert {row["calls"] for row in rows} <= {1, 2, 3, 4}
        assert sum(row["calls"] for row in rows) == len(billed)
    elif title == "Top models by cost":
        _close({row["model"]: row["cost"] for row in rows}, _sums(billed, _model, "cost_usd"))
        _close(
            {row["model"]: row["audio hours"] for row in rows},
            {m: hours.get(m, Decimal(0)) for m in {_model(c) for c in billed}},
        )
    elif title == "Audio hours by model":
        _close(_series_totals(rows), hours)
    elif title == "Tokens by model":
        token_calls = [c for c in calls if c["total_tokens"] is not None]
        assert {row["model"] for row in rows} == {
            "openai/gpt-4o-transcribe",
            "openai/gpt-4o-mini-transcribe",
        }
        for kind in ("input_text", "input_audio", "output"):
            label = f"{kind.replace('_', ' ')} tokens"
            _close(
                {row["model"]: row[label] for row in rows},
                _sums(token_calls, _model, f"{kind}_tokens"),
            )
    elif title == "Budget burn-down (current period)":
        by_id = {row["budget id"]: row for row in rows}
        assert by_id.keys() == {budget["id"] for budget in data["budgets"]}
        for budget in data["budgets"]:
            row = by_id[budget["id"]]
            assert row["spent"] == Decimal(budget["spent_usd"])
            assert row["held"] == Decimal(budget["held_usd"])
            assert row["limit"] == Decimal(budget["limit_usd"]) + Decimal(budget["top_up_usd"])
            assert row["remaining"] == Decimal(budget["remaining_usd"])
        assert any(row["held"] > 0 for row in rows)
        assert {row["budget on"] for row in rows} == {"acme / capped", "acme / wide", "globex"}
    elif title == "Refused calls by reason":
        expected = defaultdict(Decimal)
        for call in refused:
            expected[call["error_code"]] += 1
        _close(_series_totals(rows), dict(expected))
        assert set(expected) == {"budget_exceeded", "rate_limit_exceeded", "model_not_allowed"}
    else:
        pytest.fail(f"the Billing panel {title!r} has no check: add one here")


@ON_POSTGRES
def test_every_billing_panel_shows_the_ledger(database_url: str, billed: dict) -> None:
    values = _all_values(database_url)
    checked = 0
    for panel in panels(BILLING):
        (target,) = panel["targets"]
        rows = _grafana(database_url, target["rawSql"], values)
        _check(panel["title"], rows, billed)
        checked += 1
    assert checked == 12


@ON_POSTGRES
def test_variables_list_tenants_and_their_keys(database_url: str, billed: dict) -> None:
    tenants = _run(database_url, variables(BILLING)["tenant"]["query"])
    assert {row["__value"]: row["__text"] for row in tenants} == billed["tenants"]
    acme = next(t for t, name in billed["tenants"].items() if name == "acme")
    keys = _run(
        database_url,
        interpolate(variables(BILLING)["key"]["query"], {"tenant": sql_list([acme])}),
    )
    assert {row["__text"] for row in keys} == {
        f"{k['name']} ({k['display_prefix']})"
        for k in billed["keys"].values()
        if k["tenant_id"] == acme
    }


@ON_POSTGRES
def test_one_tenant_selected_shows_only_its_spend(database_url: str, billed: dict) -> None:
    (spend_panel,) = [p for p in panels(BILLING) if p["title"] == "Spend"]
    for tenant, name in billed["tenants"].items():
        values = _all_values(database_url, {"tenant": sql_list([tenant])})
        (row,) = _grafana(database_url, spend_panel["targets"][0]["rawSql"], values)
        expected = sum(Decimal(c["cost_usd"]) for c in billed["calls"] if c["tenant_id"] == tenant)
        assert row["spend"] == expected > 0, name


@ON_POSTGRES
@pytest.mark.parametrize("interval", ["1m", "1h", "1d"])
def test_time_series_bucket_at_any_interval(database_url: str, billed: dict, interval: str) -> None:
    values = _all_values(database_url)
    for panel in panels(BILLING):
        if panel["type"] != "timeseries":
            continue
        rows = _grafana(database_url, panel["targets"][0]["rawSql"], values, interval)
        times = [row["time"] for row in rows]
        assert times == sorted(times), panel["title"]  # Grafana needs series sorted by time
        assert rows, panel["title"]
