"""Admin input that used to be a 500 (PostgreSQL refusing NUL bytes, BIGINT overflows, a
year-10000 datetime, 100,000-deep JSON) or was accepted loosely ("5\\n" as money, "10" as
an integer, two tenant names that differ only by case): each a 400 or 409 naming the
field, with no traceback in the log."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import ADMIN

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Any:
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "earmark"]
    assert not errors, [r.getMessage() for r in errors]


async def _send(client: AsyncTestClient, method: str, path: str, body: Any = None) -> Any:
    if isinstance(body, str):
        return await client.request(
            method, path, content=body, headers={**ADMIN, "content-type": "application/json"}
        )
    return await client.request(method, path, json=body, headers=ADMIN)


async def _refused(client, method, path, body=None, status=400, param=None) -> dict:
    response = await _send(client, method, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize(
    "amount",
    ["5\n", "\u0665", "086602388400", "1000000000.000000001", " 5", "5.0000000001", "1e3", "-1"],
    ids=[
        "newline",
        "arabic-indic",
        "over-bigint",
        "over-max",
        "space",
        "ten-decimals",
        "exp",
        "neg",
    ],
)
async def test_money_is_ascii_decimal_within_bounds(client, tenant, amount):
    path = f"/admin/tenants/{tenant['id']}/budgets"
    await _refused(client, "POST", path, {"limit_usd": amount, "period": "day"}, param="limit_usd")


async def test_limit_plus_top_ups_cannot_overflow_a_period(client, tenant):
    budget = (
        await _send(
            client,
            "POST",
            f"/admin/tenants/{tenant['id']}/budgets",
            {"limit_usd": "1000000000", "period": "month"},
        )
    ).json()
    for _ in range(3):
        response = await _send(
            client, "POST", f"/admin/budgets/{budget['id']}/top-up", {"amount_usd": "1000000000"}
        )
        assert response.status_code == 200, response.text
    error = await _refused(
        client, "POST", f"/admin/budgets/{budget['id']}/top-up", {"amount_usd": "1000000000"}
    )
    assert error["code"] == "amount_too_large"
    await _refused(client, "PATCH", f"/admin/budgets/{budget['id']}", {"limit_usd": "1000000001"})
    # The tenant's keys still authenticate and are counted against it: nothing overflowed.
    key = (
        await _send(client, "POST", "/admin/keys", {"tenant_id": tenant["id"], "name": "k"})
    ).json()
    quota = await client.get("/v1/quota", headers={"authorization": f"Bearer {key['secret']}"})
    assert quota.status_code == 200, quota.text
    assert quota.json()["budgets"][0]["top_up_usd"] == "3000000000.000000000"


async def test_integers_are_not_strings(client, tenant):
    body = {"tenant_id": tenant["id"], "name": "k", "rate_limits": {"requests_per_minute": "10"}}
    await _refused(client, "POST", "/admin/keys", body, param="rate_limits.requests_per_minute")
    key = (
        await _send(client, "POST", "/admin/keys", {"tenant_id": tenant["id"], "name": "k"})
    ).json()
    await _refused(
        client,
        "POST",
        f"/admin/keys/{key['id']}/rotate",
        {"grace_seconds": "10"},
        param="grace_seconds",
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/admin/tenants", {"name": "ac\u0000me"}, "name"),
        ("POST", "/admin/tenants", {"name": "acme\u200b"}, "name"),
        ("POST", "/admin/tenants", {"name": "   "}, "name"),
        ("POST", "/admin/keys", {"tenant_id": "ten_\u0000x", "name": "k"}, "tenant_id"),
        ("GET", "/admin/keys/key_%00abc", None, "key_id"),
        ("GET", "/admin/tenants/ten_%00", None, "tenant_id"),
        ("GET", "/admin/keys?tenant_id=ten_%00b", None, "tenant_id"),
        ("GET", "/admin/keys?cursor=key_%00", None, "cursor"),
        ("GET", "/admin/budgets?key_id=%00", None, "key_id"),
        ("GET", "/admin/keys/" + "k" * 5000, None, "key_id"),
    ],
    ids=[
        "nul-name",
        "zero-width-name",
        "blank-name",
        "nul-body-id",
        "nul-path-id",
        "nul-tenant-path",
        "nul-query",
        "nul-cursor",
        "nul-budget-query",
        "huge-path-id",
    ],
)
async def test_nul_bytes_and_invisible_characters_never_reach_a_query(
    client, method, path, body, param
):
    await _refused(client, method, path, body, param=param)


@pytest.mark.parametrize(
    "invisible", ["\u034f", "\ufe0f", "\u3164", "\u2800", "\u115f", "\u180b", "\U000e0101"]
)
async def test_a_name_with_an_invisible_character_is_not_a_lookalike_tenant(client, invisible):
    await _refused(client, "POST", "/admin/tenants", {"name": f"acme{invisible}"}, param="name")


@pytest.mark.parametrize(
    ("param", "value"),
    [("from", "0001-01-01T00:00:00%2B05:00"), ("to", "9999-12-31T23:59:59-05:00")],
)
async def test_a_usage_range_past_the_calendar_in_utc_is_a_400(client, param, value):
    await _refused(client, "GET", f"/admin/usage?{param}={value}", param=param)


@pytest.mark.parametrize("path", ["/admin/tenants", "/v1/models"])
async def test_basic_credentials_that_are_not_ascii_are_a_401(client, path):
    response = await client.get(path, headers={"authorization": "Basic é".encode()})
    assert response.status_code == 401, response.text


async def test_an_expiry_past_year_9999_in_utc_is_a_400(client, tenant):
    body = {"tenant_id": tenant["id"], "name": "k", "expires_at": "9999-12-31T23:00:00-05:00"}
    await _refused(client, "POST", "/admin/keys", body, param="expires_at")


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"name": "x", "metadata": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}",
    ],
    ids=["top-level", "in-metadata"],
)
async def test_json_nested_100000_deep_is_a_400(client, body):
    await _refused(client, "POST", "/admin/tenants", body)


async def test_a_body_over_a_mebibyte_is_413(client):
    body = '{"name": "x", "metadata": {"a": "' + "x" * (2 << 20) + '"}}'
    await _refused(client, "POST", "/admin/tenants", body, status=413)


async def test_tenant_names_are_one_name_whatever_their_case_or_form(client):
    created = await _send(client, "POST", "/admin/tenants", {"name": "  A\u0301cme Corp  "})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "Ácme Corp"  # NFC, trimmed
    for same in ("ÁCME CORP", "A\u0301cme corp", "ácme corp"):
        error = await _refused(client, "POST", "/admin/tenants", {"name": same}, status=409)
        assert error["code"] == "name_taken"
    other = (await _send(client, "POST", "/admin/tenants", {"name": "other"})).json()
    error = await _refused(
        client, "PATCH", f"/admin/tenants/{other['id']}", {"name": "ÁCME corp"}, status=409
    )
    assert error["code"] == "name_taken"
