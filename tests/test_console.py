"""The admin console over HTTP, on SQLite and PostgreSQL: sessions, CSRF, sign-in refusals
and throttling, security headers, and every action audited like the API's.

The whole user story in a real browser is in tests/test_console_browser.py.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access import admin_users
from app.console.gate import CSP
from app.main import create_app
from app.ops import audit
from app.ops.audit import Actor
from app.storage import database
from app.storage.models import api_keys, console_sessions, tenants
from tests.conftest import ADMIN, ADMIN_TOKEN

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"
# Every page an admin can open, once a tenant, a key and a budget exist ({...} filled in).
PAGES = [
    "/console",
    "/console/tenants",
    "/console/tenants/{tenant}",
    "/console/keys",
    "/console/keys/new",
    "/console/keys/{key}",
    "/console/keys/{key}/revoke",
    "/console/budgets/{budget}",
    "/console/budgets/{budget}/delete",
    "/console/usage",
    "/console/models",
    "/console/webhooks",
    "/console/audit",
]


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field in the page"
    return unescape(found.group(1))


async def sign_in(
    client: AsyncTestClient, secret: str = ADMIN_TOKEN, user: str = "", next_page: str = ""
) -> Any:
    form = await client.get("/console/sign-in", params={"next": next_page} if next_page else {})
    assert form.status_code == 200
    return await submit(
        client,
        "/console/sign-in",
        {
            "sign_in_token": _field(form.text, "sign_in_token"),
            "next": _field(form.text, "next"),
            "user": user,
            "password": secret,
        },
    )


async def submit(client: AsyncTestClient, path: str, data: dict[str, Any]) -> Any:
    return await client.post(path, data=data, follow_redirects=False)


async def signed_in(client: AsyncTestClient, **credentials: str) -> str:
    """Sign in; the session's CSRF token."""
    response = await sign_in(client, **credentials)
    assert response.status_code == 303, response.text
    page = await client.get("/console")
    assert page.status_code == 200
    return _field(page.text, "csrf")


async def _rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with database.read(engine) as conn:
        return (await conn.execute(query)).all()


async def _age_sessions(engine: AsyncEngine, **ages: timedelta) -> None:
    """Move every session's times back, as if that much time had passed."""
    async with database.write(engine) as conn:
        for row in (await conn.execute(select(console_sessions))).all():
            values = {column: getattr(row, column) - age for column, age in ages.items()}
            await conn.execute(
                update(console_sessions).where(console_sessions.c.id == row.id).values(**values)
            )


async def test_a_page_without_a_session_sends_the_browser_to_sign_in(client):
    response = await client.get("/console/keys?status=active", follow_redirects=False)
    assert response.status_code in (302, 303)
    assert (
        response.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fkeys%3Fstatus%3Dactive"
    )
    refused = await submit(client, "/console/tenants", {"name": "x", "csrf": "x"})
    assert refused.status_code == 401
    assert "Your session has ended" in refused.text
    assert (await client.get("/admin/tenants", headers=ADMIN)).json()["data"] == []


async def test_signing_in_returns_to_the_page_asked_for_and_never_to_another_site(client):
    response = await sign_in(client, next_page="/console/keys?status=revoked")
    assert response.headers["location"] == "/console/keys?status=revoked"
    for elsewhere in ("https://evil.example/", "//evil.example/console", "/console\\@evil", "/x"):
        client.cookies.clear()
        response = await sign_in(client, next_page=elsewhere)
        assert response.status_code == 303
        assert response.headers["location"] == "/console", elsewhere


async def test_every_page_renders_with_the_security_headers_and_only_its_own_assets(client):
    csrf = await signed_in(client)
    tenant = (await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)).json()
    key = (
        await client.post(
            "/admin/keys",
            json={
                "tenant_id": tenant["id"],
                "name": "web",
                "rate_limits": {"requests_per_minute": 10},
                "budgets": [{"limit_usd": "5.00", "period": "month", "thresholds": [50]}],
            },
            headers=ADMIN,
        )
    ).json()
    ids = {"tenant": tenant["id"], "key": key["id"], "budget": key["budgets"][0]["id"]}
    for page in PAGES:
        response = await client.get(page.format(**ids))
        assert response.status_code == 200, (page, response.text)
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        html = response.text
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', html):
            assert url.startswith(("/console", "#")), (page, url)
        # No inline script, no inline style, no event handler attribute.
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page
        assert "<style" not in html and " style=" not in html, page
        assert not re.search(r"\son[a-z]+=", html), page
        assert csrf in html or page == "/console/keys/new"  # sign-out form on every page
    for form in (  # a filter form as a browser sends it: every field, empty ones too
        "/console/keys?name=&tenant_id=&status=",
        "/console/tenants?name=&status=",
        "/console/audit?target=&actor=&action=",
        "/console/usage?from=&to=&by=",
    ):
        assert (await client.get(form)).status_code == 200, form
    csv = await client.get("/console/usage.csv")
    assert csv.status_code == 200 and csv.text.startswith("day,tenant,tenant_name,calls")
    for asset in ("console.css", "console.js", "vendor/htmx-2.0.11.min.js"):
        served = await client.get(f"/console/static/{asset}")
        assert served.status_code == 200
        assert served.headers["content-security-policy"] == CSP


async def test_wrong_credentials_and_tenant_keys_are_refused_and_throttled(client, key):
    wrong = await sign_in(client, secret="not-the-admin-token")
    assert wrong.status_code == 401 and "Wrong admin token." in wrong.text
    tenant_key = await sign_in(client, secret=key["secret"])
    assert tenant_key.status_code == 403
    assert "Tenant keys cannot open the console" in tenant_key.text
    bearer = await client.get(
        "/console", headers={"authorization": f"Bearer {key['secret']}"}, follow_redirects=False
    )
    assert bearer.status_code in (302, 303)  # a key in a header opens nothing either
    for _ in range(9):
        await sign_in(client, user="mallory", secret="guess-guess-guess")
    throttled = await sign_in(client, user="mallory", secret="guess-guess-guess")
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert "Too many failed sign-ins" in throttled.text
    assert "set-cookie" not in throttled.headers or "earmark_console=" not in str(
        throttled.headers.get_list("set-cookie")
    )


async def test_the_sign_in_form_needs_its_own_token(client):
    forged = await submit(
        client, "/console/sign-in", {"user": "", "password": ADMIN_TOKEN, "sign_in_token": "x"}
    )
    assert forged.status_code == 403
    assert "earmark_console=" not in str(forged.headers.get_list("set-cookie"))


async def test_a_token_or_cookie_that_is_not_ascii_is_refused_not_a_500(client):
    """Constant-time comparison of text takes ASCII only; these come from anyone."""
    form = await client.get("/console/sign-in")
    token = _field(form.text, "sign_in_token")
    for data, cookie in (({"sign_in_token": "é"}, token), ({"sign_in_token": token}, "%C3%A9")):
        client.cookies.set("earmark_console_sign_in", cookie)
        refused = await submit(client, "/console/sign-in", {**data, "password": ADMIN_TOKEN})
        assert refused.status_code == 403, refused.text
        assert "This sign-in form is out of date" in refused.text
    client.cookies.clear()
    csrf = await signed_in(client)
    refused = await submit(client, "/console/tenants", {"name": "evil", "csrf": "é" + csrf})
    assert refused.status_code == 403
    assert (await client.get("/admin/tenants", headers=ADMIN)).json()["data"] == []


async def test_a_form_without_the_session_csrf_token_changes_nothing(client):
    csrf = await signed_in(client)
    for data in (
        {"name": "evil"},
        {"name": "evil", "csrf": "forged"},
        {"name": "evil", "csrf": ""},
    ):
        response = await submit(client, "/console/tenants", data)
        assert response.status_code == 403, data
        assert "out of date or was not sent from the console" in response.text
    assert (await client.get("/admin/tenants", headers=ADMIN)).json()["data"] == []
    created = await submit(client, "/console/tenants", {"name": "good", "csrf": csrf})
    assert created.status_code == 303


async def test_the_session_cookie_is_http_only_same_site_strict_and_host_only_on_tls(settings):
    """Over HTTPS the cookie is ``__Host-``: Secure, path /, and no sibling subdomain can
    set one (a planted session); over plain HTTP it is scoped to /console."""
    for base, name, path, secure in (
        ("http://testserver.local", "earmark_console", "/console", False),
        ("https://testserver.local", "__Host-earmark_console", "/", True),
    ):
        async with AsyncTestClient(app=create_app(settings), base_url=base) as client:
            response = await sign_in(client)
            cookie = next(
                value
                for value in response.headers.get_list("set-cookie")
                if value.startswith(f"{name}=")
            )
            attributes = {part.strip().lower() for part in cookie.split(";")}
            assert {"httponly", "samesite=strict", f"path={path}"} <= attributes
            assert ("secure" in attributes) is secure
            assert (await client.get("/console", follow_redirects=False)).status_code == 200


async def test_sessions_end_when_idle_too_long_too_old_signed_out_or_the_password_changes(
    client, engine
):
    await admin_users.create_admin_user(engine, "alice", PASSWORD, Actor("test"))

    async def opens() -> bool:
        response = await client.get("/console", follow_redirects=False)
        return response.status_code == 200

    await signed_in(client, user="alice", secret=PASSWORD)
    assert await opens()
    await _age_sessions(engine, seen_at=timedelta(minutes=31))
    assert not await opens()

    await signed_in(client, user="alice", secret=PASSWORD)
    await _age_sessions(engine, created_at=timedelta(hours=13))
    assert not await opens()

    await signed_in(client, user="alice", secret=PASSWORD)
    await admin_users.set_password(engine, "alice", "another long password", Actor("test"))
    assert not await opens()

    csrf = await signed_in(client, user="alice", secret="another long password")
    cookie = client.cookies["earmark_console"]
    signed_out = await submit(client, "/console/sign-out", {"csrf": csrf})
    assert signed_out.status_code == 303
    client.cookies.set("earmark_console", cookie, path="/console")  # a copy kept by a thief
    assert not await opens()
    assert await _rows(engine, select(console_sessions)) == []


async def test_actions_go_through_the_services_and_are_audited_as_the_admin(client, engine):
    await admin_users.create_admin_user(engine, "alice", PASSWORD, Actor("test"))
    csrf = await signed_in(client, user="alice", secret=PASSWORD)

    created = await submit(client, "/console/tenants", {"name": "Acme", "csrf": csrf})
    tenant_id = created.headers["location"].split("/")[-1].split("?")[0]
    renamed = await submit(
        client, f"/console/tenants/{tenant_id}", {"name": "Acme Speech", "csrf": csrf}
    )
    assert renamed.status_code == 303
    new_key = await submit(
        client,
        "/console/keys",
        {
            "csrf": csrf,
            "tenant_id": tenant_id,
            "name": "<script>alert(1)</script>",
            "models": ["openai/whisper-1"],
            "requests_per_minute": "60",
            "cache": "on",
            "limit_usd": "10",
            "period": "month",
            "thresholds": "50, 80",
        },
    )
    assert new_key.status_code == 201, new_key.text
    assert "you will not see it again" in new_key.text
    assert "<script>alert(1)</script>" not in new_key.text  # escaped, never markup
    secret = _field(new_key.text, "secret") if 'name="secret"' in new_key.text else None
    secret = secret or re.search(r'value="(sk-bf-[^"]+)"', new_key.text).group(1)
    quota = await client.get("/v1/quota", headers={"authorization": f"Bearer {secret}"})
    assert quota.status_code == 200
    key_id = quota.json()["key_id"]
    assert quota.json()["allowed_models"] == ["openai/whisper-1"]
    assert quota.json()["rate_limits"]["requests_per_minute"] == 60
    [budget] = quota.json()["budgets"]

    steps = [
        (f"/console/budgets/{budget['id']}", {"limit_usd": "20", "thresholds": "90"}),
        (f"/console/budgets/{budget['id']}/top-up", {"amount_usd": "2.50"}),
        (f"/console/budgets/{budget['id']}/reset", {}),
        (f"/console/keys/{key_id}/rotate", {"grace_seconds": "0"}),
        (f"/console/keys/{key_id}/revoke", {}),
        (f"/console/budgets/{budget['id']}/delete", {}),
        (f"/console/tenants/{tenant_id}", {"status": "inactive"}),
    ]
    for path, data in steps:
        response = await submit(client, path, {**data, "csrf": csrf})
        assert response.status_code in (200, 303), (path, response.text)

    key = (await client.get(f"/admin/keys/{key_id}", headers=ADMIN)).json()
    assert key["status"] == "revoked"
    tenant = (await client.get(f"/admin/tenants/{tenant_id}", headers=ADMIN)).json()
    assert (tenant["name"], tenant["status"]) == ("Acme Speech", "inactive")
    entries = await audit.every_entry(engine, actor="user:alice")
    assert [entry.action for entry in reversed(entries)] == [
        "tenant.create",
        "tenant.update",
        "key.create",
        "budget.create",
        "budget.update",
        "budget.top_up",
        "budget.reset",
        "key.rotate",
        "key.revoke",
        "budget.delete",
        "tenant.update",
    ]
    assert all(entry.request_id and entry.source for entry in entries)
    assert not await _rows(engine, select(api_keys).where(api_keys.c.name.contains("evil")))
    assert len(await _rows(engine, select(tenants))) == 1


async def test_bad_form_values_get_a_page_that_says_what_is_wrong(client, tenant):
    csrf = await signed_in(client)
    cases = [
        ("/console/keys", {"tenant_id": tenant["id"], "name": "k", "requests_per_minute": "x"}),
        ("/console/keys", {"tenant_id": tenant["id"], "name": "k", "expires_at": "soon"}),
        ("/console/keys", {"tenant_id": tenant["id"], "name": ""}),
        ("/console/keys", {"tenant_id": "ten_nope", "name": "k"}),
        ("/console/keys", {"tenant_id": tenant["id"], "name": "k", "models": "nope/model"}),
        ("/console/budgets", {"tenant_id": tenant["id"], "limit_usd": "lots", "period": "month"}),
        ("/console/budgets", {"tenant_id": tenant["id"], "limit_usd": "5", "thresholds": "a"}),
        ("/console/budgets", {"limit_usd": "5", "period": "month"}),
        ("/console/tenants", {"name": "\x1b[31m"}),
    ]
    for path, data in cases:
        response = await submit(client, path, {**data, "csrf": csrf})
        assert 400 <= response.status_code < 500, (data, response.status_code, response.text)
        assert 'role="alert"' in response.text, data
    missing = await client.get("/console/keys/key_doesnotexist")
    assert missing.status_code == 404 and "no key with id" in missing.text.lower()
    assert (await client.get("/console/usage?from=yesterday")).status_code == 400


async def test_a_session_opened_on_one_process_works_and_ends_on_every_other(settings):
    """Sessions live in the database: a sign-in on one gateway process opens pages on
    another behind the same balancer, and a sign-out on either ends it on both."""
    async with (
        AsyncTestClient(app=create_app(settings)) as first,
        AsyncTestClient(app=create_app(settings)) as second,
    ):
        csrf = await signed_in(first)
        second.cookies.set("earmark_console", first.cookies["earmark_console"], path="/console")
        assert (await second.get("/console", follow_redirects=False)).status_code == 200
        created = await submit(second, "/console/tenants", {"name": "shared", "csrf": csrf})
        assert created.status_code == 303
        assert (await submit(second, "/console/sign-out", {"csrf": csrf})).status_code == 303
        assert (await first.get("/console", follow_redirects=False)).status_code in (302, 303)
