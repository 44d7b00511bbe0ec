"""Usage reports reconcile with the ledger and the budget counters, as JSON and as CSV."""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import ADMIN
from tests.gateway import FIXTURES

SPEECH = (FIXTURES / "speech.wav").read_bytes()


def _call(gateway, key, model):
    return gateway.post_audio(key, model).status_code


@pytest.fixture
def traffic(gateway):
    """Two tenants, three providers, and one refused call."""
    acme = gateway.admin("POST", "/admin/tenants", json={"name": "acme"})
    globex = gateway.admin("POST", "/admin/tenants", json={"name": "globex"})
    budgeted = gateway.admin(
        "POST",
        "/admin/keys",
        json={
            "tenant_id": acme["id"],
            "name": "budgeted",
            "budgets": [{"limit_usd": "0.0015", "period": "month"}],
        },
    )
    other = gateway.admin("POST", "/admin/keys", json={"tenant_id": globex["id"], "name": "g"})
    statuses = [
        _call(gateway, budgeted, "openai/whisper-1"),
        _call(gateway, budgeted, "openai/whisper-1"),
        _call(gateway, budgeted, "openai/whisper-1"),  # over the budget: 402
        _call(gateway, other, "gpt-4o-transcribe"),
        _call(gateway, other, "groq/whisper-large-v3"),
    ]
    assert statuses == [200, 200, 402, 200, 200]
    calls = gateway.calls(budgeted) + gateway.calls(other)
    return {"acme": acme, "globex": globex, "budgeted": budgeted, "calls": calls}


def _usage(gateway, **params):
    response = gateway.http.get("/admin/usage", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response


def test_totals_equal_the_ledger_and_the_budget(gateway, traffic):
    report = _usage(gateway).json()
    ledger_cost = sum(Decimal(call["cost_usd"]) for call in traffic["calls"])
    totals = report["totals"]
    assert Decimal(totals["cost_usd"]) == ledger_cost
    assert totals["calls"] == 4
    assert totals["refused"] == 1
    assert totals["input_audio_tokens"] == sum(
        c["input_audio_tokens"] or 0 for c in traffic["calls"]
    )
    assert Decimal(totals["audio_seconds"]) == sum(
        Decimal(c["audio_ms"] or 0) / 1000 for c in traffic["calls"]
    )

    by_key = {row["key"]: row for row in _usage(gateway, group_by="key").json()["data"]}
    (budget,) = gateway.admin(
        "GET", "/admin/budgets", params={"key_id": traffic["budgeted"]["id"]}
    )["data"]
    assert by_key[traffic["budgeted"]["id"]]["cost_usd"] == budget["spent_usd"]


def test_grouped_rows_add_up_to_the_totals(gateway, traffic):
    report = _usage(gateway, group_by="tenant,provider,model").json()
    assert report["group_by"] == ["tenant", "provider", "model"]
    rows = report["data"]
    assert {(r["tenant"], r["provider"]) for r in rows if r["calls"]} == {
        (traffic["acme"]["id"], "openai"),
        (traffic["globex"]["id"], "openai"),
        (traffic["globex"]["id"], "groq"),
    }
    names = {traffic["acme"]["id"]: "acme", traffic["globex"]["id"]: "globex"}
    assert all(row["tenant_name"] == names[row["tenant"]] for row in rows)  # for invoices
    for metric in ("calls", "refused", "output_tokens"):
        assert sum(row[metric] for row in rows) == report["totals"][metric]
    assert sum(Decimal(row["cost_usd"]) for row in rows) == Decimal(report["totals"]["cost_usd"])

    today = datetime.now(UTC)
    (day,) = _usage(gateway, group_by="day").json()["data"]
    assert day["day"] == today.strftime("%Y-%m-%d")
    (month,) = _usage(gateway, group_by="month").json()["data"]
    assert month["month"] == today.strftime("%Y-%m")


def test_csv_export_matches_the_json(gateway, traffic):
    json_rows = _usage(gateway, group_by="tenant,model").json()["data"]
    response = _usage(gateway, group_by="tenant,model", format="csv")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["content-disposition"]
    assert response.text.startswith("tenant,tenant_name,model,calls,")
    csv_rows = list(csv.DictReader(io.StringIO(response.text)))
    assert csv_rows == [
        {k: "" if v is None else str(v) for k, v in row.items()} for row in json_rows
    ]


def test_time_ranges_are_half_open(gateway, traffic):
    now = datetime.now(UTC)
    later = _usage(gateway, **{"from": (now + timedelta(minutes=1)).isoformat()}).json()
    assert later["totals"]["calls"] == 0
    assert later["totals"]["cost_usd"] == "0.000000000"
    window = {
        "from": (now - timedelta(hours=1)).isoformat(),
        "to": (now + timedelta(minutes=1)).isoformat(),
    }
    assert _usage(gateway, **window).json()["totals"]["calls"] == 4


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "planet"}, "group_by"),
        ({"group_by": "key,key"}, "group_by"),
        ({"from": "2026-11-01T00:00:00"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"),
        ({"format": "xml"}, "format"),
    ],
)
def test_bad_parameters_are_400(gateway, params, param):
    response = gateway.http.get("/admin/usage", params=params, headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
