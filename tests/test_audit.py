"""The audit trail: every admin change leaves one row, written with the change (a change
that fails leaves none), naming who, what, the fields before and after, and from where;
never a secret; read-only, filtered, paged, and as CSV, from the API and the CLI."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import pwd
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError

from app.access import key_format, tenants
from app.ops.audit import Actor
from app.schemas import TenantCreate
from app.storage import database
from app.storage.database import create_engine
from app.storage.models import audit_log
from tests.conftest import ADMIN
from tests.processes import earmark_env, run_cli


def _trail(gateway: Any, **params: Any) -> list[dict[str, Any]]:
    """Every row matching ``params``, oldest first."""
    rows, cursor = [], None
    while True:
        paging = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = gateway.admin("GET", "/admin/audit", params={**params, **paging})
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows[::-1]


def _request(gateway: Any, method: str, path: str, **kwargs: Any) -> tuple[Any, str]:
    """The admin answer's JSON and its request id."""
    response = gateway.http.request(method, path, headers=ADMIN, **kwargs)
    assert response.status_code < 300, response.text
    return (response.json() if response.content else None), response.headers["x-request-id"]


def test_every_admin_change_through_the_api_leaves_its_row(gateway, database_url):
    secrets: list[str] = []
    tenant, made_tenant = _request(gateway, "POST", "/admin/tenants", json={"name": "Acme"})
    tid = tenant["id"]
    _request(gateway, "PATCH", f"/admin/tenants/{tid}", json={"metadata": {"plan": "pro"}})
    key, made_key = _request(
        gateway,
        "POST",
        "/admin/keys",
        json={"tenant_id": tid, "name": "prod", "budgets": [{"limit_usd": "5", "period": "day"}]},
    )
    secrets.append(key["secret"])
    kid, bid = key["id"], key["budgets"][0]["id"]
    _request(gateway, "PATCH", f"/admin/keys/{kid}", json={"name": "production"})
    rotated, _ = _request(gateway, "POST", f"/admin/keys/{kid}/rotate", json={"grace_seconds": 60})
    secrets.append(rotated["secret"])
    _request(gateway, "PATCH", f"/admin/budgets/{bid}", json={"limit_usd": "7"})
    _request(gateway, "POST", f"/admin/budgets/{bid}/top-up", json={"amount_usd": "1.5"})
    _request(gateway, "POST", f"/admin/budgets/{bid}/reset")
    tenant_budget, _ = _request(
        gateway, "POST", f"/admin/tenants/{tid}/budgets", json={"limit_usd": "9", "period": "month"}
    )
    _request(gateway, "DELETE", f"/admin/budgets/{tenant_budget['id']}")
    _request(gateway, "POST", f"/admin/keys/{kid}/revoke")
    _request(gateway, "DELETE", f"/admin/keys/{kid}")
    _request(gateway, "DELETE", f"/admin/tenants/{tid}")

    rows = _trail(gateway)
    assert [(r["action"], r["target_id"]) for r in rows] == [
        ("tenant.create", tid),
        ("tenant.update", tid),
        ("key.create", kid),
        ("budget.create", bid),
        ("key.update", kid),
        ("key.rotate", kid),
        ("budget.update", bid),
        ("budget.top_up", bid),
        ("budget.reset", bid),
        ("budget.create", tenant_budget["id"]),
        ("budget.delete", tenant_budget["id"]),
        ("key.revoke", kid),
        ("key.delete", kid),
        ("tenant.deactivate", tid),
    ]
    assert {r["actor"] for r in rows} == {"token"}
    assert {r["source"] for r in rows} == {"127.0.0.1"}
    assert rows[0]["request_id"] == made_tenant and rows[2]["request_id"] == made_key
    assert rows[2]["request_id"] == rows[3]["request_id"]  # the key and its budget: one request
    by_action = {r["action"]: r for r in rows}
    assert rows[0]["before"] is None and rows[0]["after"]["name"] == "Acme"
    assert by_action["tenant.update"]["before"] == {"metadata": {}}
    assert by_action["tenant.update"]["after"] == {"metadata": {"plan": "pro"}}
    assert by_action["key.update"]["before"] == {"name": "prod"}
    assert by_action["key.update"]["after"] == {"name": "production"}
    rotation = by_action["key.rotate"]
    assert set(rotation["after"]) == {"display_prefix", "rotated_at"}
    assert rotation["details"] == {"grace_seconds": 60}
    assert by_action["budget.update"]["before"]["limit_usd"] == "5.000000000"
    assert by_action["budget.update"]["after"]["limit_usd"] == "7.000000000"
    top_up = by_action["budget.top_up"]
    assert top_up["details"] == {"amount_usd": "1.5"}
    assert (top_up["before"]["top_up_usd"], top_up["after"]["top_up_usd"]) == (
        "0.000000000",
        "1.500000000",
    )
    assert by_action["key.revoke"]["after"]["status"] == "revoked"
    assert by_action["key.delete"]["after"] is None
    assert by_action["key.delete"]["before"]["name"] == "production"
    assert by_action["tenant.deactivate"]["after"] == {"status": "inactive"}
    # The budget's own history is its part of the trail.
    events = gateway.admin("GET", f"/admin/budgets/{bid}/events")["data"]
    assert [e["action"] for e in events] == ["create", "update", "top_up", "reset"]
    assert events[2]["details"] == {"amount_usd": "1.5"} and events[2]["actor"] == "token"

    _no_secret_in_the_trail(database_url, secrets, pepper="")


def _no_secret_in_the_trail(database_url: str, secrets: list[str], pepper: str) -> None:
    """No secret, nor its digest in any encoding, in any audit row's text."""
    import asyncio

    async def text_of_rows() -> str:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(audit_log))).all()
        finally:
            await engine.dispose()
        return json.dumps([list(row) for row in rows], default=str)

    trail = asyncio.run(text_of_rows())
    assert trail.count("aud_") >= 1
    for secret in secrets:
        digest = key_format.digest(secret, pepper)
        for form in (secret, secret[len(key_format.PREFIX) :], digest.hex()):
            assert form not in trail
        assert base64.b64encode(digest).decode() not in trail


def test_a_change_that_fails_leaves_no_row(gateway):
    tenant = gateway.admin("POST", "/admin/tenants", json={"name": "Acme"})
    taken = gateway.http.post("/admin/tenants", json={"name": "ACME"}, headers=ADMIN)
    assert taken.status_code == 409
    key = gateway.admin(
        "POST",
        "/admin/keys",
        json={
            "tenant_id": tenant["id"],
            "name": "k",
            "budgets": [{"limit_usd": "5", "period": "day"}],
        },
    )
    budget = key["budgets"][0]["id"]
    # A top-up so large the limit and top-ups would overflow: refused inside the write.
    refused = gateway.http.post(
        f"/admin/budgets/{budget}/top-up", json={"amount_usd": "9" * 12}, headers=ADMIN
    )
    assert refused.status_code == 400, refused.text
    gone = gateway.http.post("/admin/keys/key_0000000000000000000000000/revoke", headers=ADMIN)
    assert gone.status_code == 404
    assert [r["action"] for r in _trail(gateway)] == [
        "tenant.create",
        "key.create",
        "budget.create",
    ]


def test_filters_pages_and_csv(gateway):
    first = gateway.admin("POST", "/admin/tenants", json={"name": '=HYPERLINK("x")'})
    second = gateway.admin("POST", "/admin/tenants", json={"name": "Beta"})
    gateway.admin("PATCH", f"/admin/tenants/{second['id']}", json={"name": "Beta Inc"})
    assert [r["action"] for r in _trail(gateway, target=second["id"])] == [
        "tenant.create",
        "tenant.update",
    ]
    assert [r["target_id"] for r in _trail(gateway, action="tenant.create")] == [
        first["id"],
        second["id"],
    ]
    assert len(_trail(gateway, actor="token")) == 3
    assert _trail(gateway, actor="user:alice") == []
    newest = _trail(gateway)[-1]["created_at"]
    assert [r["action"] for r in _trail(gateway, **{"from": newest})] == ["tenant.update"]
    assert len(_trail(gateway, to=newest)) == 2
    for bad in ({"action": "DROP TABLE"}, {"actor": "x" * 200}, {"from": "yesterday"}):
        answer = gateway.http.get("/admin/audit", params=bad, headers=ADMIN)
        assert answer.status_code == 400, (bad, answer.text)

    exported = gateway.http.get("/admin/audit", params={"format": "csv"}, headers=ADMIN)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["action"] for row in table] == ["tenant.update", "tenant.create", "tenant.create"]
    assert json.loads(table[2]["after"])["name"] == '=HYPERLINK("x")'  # JSON text: no formula
    assert table[2]["before"] == table[2]["details"] == ""
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in table for cell in row.values())


def test_the_trail_cannot_be_written_through_the_api(gateway):
    gateway.admin("POST", "/admin/tenants", json={"name": "Acme"})
    entry = _trail(gateway)[0]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert gateway.http.request(method, "/admin/audit", headers=ADMIN).status_code == 405
        answer = gateway.http.request(method, f"/admin/audit/{entry['id']}", headers=ADMIN)
        assert answer.status_code in (404, 405)
    assert _trail(gateway) == [entry]


def test_the_cli_is_an_actor_with_its_os_user(sqlite_url):
    database_url = sqlite_url
    env = earmark_env(database_url)
    user = f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"

    def cli(*args: str, stdin: str = "") -> Any:
        result = run_cli(env, *args, "--json", stdin=stdin)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if result.stdout.strip() else None

    tenant = cli("tenants", "create", "acme")
    key = cli("keys", "create", "--tenant", tenant["id"], "--name", "k")
    cli("keys", "revoke", key["id"])
    cli("admin", "create-user", "alice", stdin="correct horse battery\n")
    for action, stdin in (("set-password", "another long password\n"), ("delete-user", "")):
        assert run_cli(env, "admin", action, "alice", stdin=stdin).returncode == 0
    rows = cli("audit", "--all")["data"][::-1]
    assert [(r["actor"], r["action"]) for r in rows] == [
        (user, "tenant.create"),
        (user, "key.create"),
        (user, "key.revoke"),
        (user, "admin_user.create"),
        (user, "admin_user.set_password"),
        (user, "admin_user.delete"),
    ]
    assert {r["source"] for r in rows} == {None}
    assert rows[3]["after"]["name"] == "alice" and rows[5]["before"]["name"] == "alice"
    assert rows[3]["target_id"] == rows[4]["target_id"] == rows[5]["target_id"]
    # What a password became is never recorded, nor the hash it became.
    text = json.dumps(rows)
    assert "correct horse" not in text and "another long" not in text and "argon2" not in text
    _no_secret_in_the_trail(database_url, [key["secret"]], pepper="")

    listed = run_cli(env, "audit", "--action", "key.revoke")
    assert listed.returncode == 0 and "key.revoke" in listed.stdout and user in listed.stdout
    exported = run_cli(env, "audit", "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(exported.stdout)))) == 6


@pytest.mark.anyio
async def test_the_database_refuses_to_change_or_delete_a_row(engine):
    await tenants.create_tenant(engine, TenantCreate(name="t"), Actor("test"))
    for statement in (update(audit_log).values(actor="someone else"), delete(audit_log)):
        with pytest.raises(DBAPIError, match="append-only"):
            async with database.write(engine) as conn:
                await conn.execute(statement)
    async with engine.connect() as conn:
        assert (await conn.execute(select(audit_log.c.actor))).scalars().all() == ["test"]
