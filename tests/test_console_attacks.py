"""Attacks on the admin console, each sent for real and answered as it must be, on SQLite
and PostgreSQL: session fixation and forgery, CSRF in every form it could hide in, open
redirects through ``next``, stored and reflected markup, hostile input on every route,
tenant keys and admin headers in every carrier, sign-in throttling, security headers,
and the static directory's walls.

An attack that gets through is a finding: its test is kept, marked
``xfail(strict=True, reason="finding: …")``, so it starts failing once the app is fixed
and the mark must go. tests/test_console.py has the console's ordinary behaviour.

Each attack is a coroutine (``_planted_cookie``…); the tests at the end run them in
groups, one app per group, to keep the file fast. An attack over before any query a
database could answer differently runs on SQLite only (``ONE_DATABASE``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from litestar.testing import transport as litestar_transport
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

import app.console.usage as console_usage
from app.access import admin_users
from app.console.gate import CSP, STATIC
from app.ids import new_id
from app.main import create_app
from app.ops import audit
from app.ops.audit import Actor
from app.storage import database
from app.storage.models import (
    api_keys,
    audit_log,
    budgets,
    console_sessions,
    key_secrets,
    ledger,
    tenants,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
)
from tests.conftest import ADMIN, ADMIN_TOKEN
from tests.test_console import PASSWORD, _age_sessions, _field, sign_in, signed_in, submit

pytestmark = pytest.mark.anyio

COOKIE = "earmark_console"
SIGN_IN_COOKIE = "earmark_console_sign_in"
ORIGIN = "http://testserver.local"
# Markup that runs if a page ever writes it unescaped, in text or in an attribute.
XSS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    "javascript:alert(1)",
]
# Without "/", so it also fits in one path segment.
XSS_SEGMENT = '"><img src=x onerror=alert(1)>'
FORM = {"content-type": "application/x-www-form-urlencoded"}
REDIRECTS = (302, 303)  # the gate sends a page without a session to sign in
# For an attack that is over before any query a database could answer differently
# (addresses, headers, static files, form parsing): SQLite only, to keep the file fast.
ONE_DATABASE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Admin passwords hashed with argon2id at 1 MiB and one pass instead of 64 MiB and
    three: the same checks, a hundredth of the time (nothing here measures hashing cost)."""
    cheap = admin_users._hasher.using(memory_cost=1024, time_cost=1, parallelism=1)
    dummy = cheap.hash("earmark-no-such-user")
    monkeypatch.setattr(admin_users, "_hasher", cheap)
    monkeypatch.setattr(admin_users, "_dummy_hash", lambda: dummy)


# --- reading pages ----------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


_ACTIVE_TAGS = {"img", "svg", "iframe", "object", "embed", "base", "style", "frame", "math"}


def assert_inert(html: str, where: Any) -> _Page:
    """No element, attribute or address on this page came from the data: only the
    templates' own scripts (by src, from /console/static), no event handler, and every
    address a console path (so never ``javascript:`` or another site)."""
    page = parsed(html)
    for tag, attrs in page.elements:
        assert tag not in _ACTIVE_TAGS, (where, tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").startswith("/console/static/"), (where, attrs)
        for name, value in attrs.items():
            assert not name.startswith("on"), (where, tag, name, value)
            if name in ("href", "src", "action", "formaction", "hx-get", "hx-post"):
                assert value.startswith(("/console", "#")), (where, tag, name, value)
    return page


def inputs(page: _Page) -> dict[str, str]:
    """Each field's value, by name (the first field of a name)."""
    found: dict[str, str] = {}
    for _, attrs in page.elements:
        if "name" in attrs:
            found.setdefault(attrs["name"], attrs.get("value", ""))
    return found


def is_console_page(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/html")


# --- helpers ----------------------------------------------------------------------------


async def raw_asgi(
    client: AsyncTestClient,
    method: str,
    path: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    chunks: list[bytes] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the app, exactly as written (no client normalises the
    path), with the body in ``chunks`` and no content-length unless given. It runs where
    the test client runs the app (its portal's event loop), as every request must."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1", "replace"),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.encode(), value.encode("latin-1")) for name, value in (headers or [])]
        + [(b"host", b"testserver.local")],
        "client": ("198.51.100.9", 40000),
        "server": ("testserver.local", 80),
    }
    parts = chunks or [b""]
    messages = [
        {"type": "http.request", "body": part, "more_body": n < len(parts) - 1}
        for n, part in enumerate(parts)
    ]
    answer: dict[str, Any] = {"status": None, "headers": {}, "body": b""}

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()  # the client stays; the app must not need more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {
                name.decode().lower(): value.decode("latin-1")
                for name, value in message.get("headers", [])
            }
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    async def call() -> None:
        with anyio.fail_after(10):
            await client.app(scope, receive, send)

    client.blocking_portal.call(call)
    return answer["status"], answer["headers"], answer["body"]


class _FromAddress(litestar_transport.TestClientTransport):  # type: ignore[type-arg]
    """The test client's transport (the app on its portal), from another address."""

    def __init__(self, client: AsyncTestClient, address: str) -> None:
        super().__init__(client=client)
        self.address = address

    def parse_request(self, request: httpx.Request) -> dict[str, Any]:
        return {**super().parse_request(request), "client": (self.address, 50000)}

    async def __aenter__(self) -> _FromAddress:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def aclose(self) -> None:
        return None


def from_address(client: AsyncTestClient, address: str) -> httpx.AsyncClient:
    """A client of the same running app that connects from ``address``."""
    return httpx.AsyncClient(transport=_FromAddress(client, address), base_url=ORIGIN)  # type: ignore[arg-type]


async def sign_in_to(client: Any, target: str, secret: str = ADMIN_TOKEN) -> httpx.Response:
    """Sign in with ``next`` exactly as given in the form (not as the form page wrote it)."""
    client.cookies.clear()
    form = await client.get("/console/sign-in")
    return await submit(
        client,
        "/console/sign-in",
        {"sign_in_token": _field(form.text, "sign_in_token"), "next": target, "password": secret},
    )


async def opens(client: AsyncTestClient | httpx.AsyncClient) -> bool:
    response = await client.get("/console", follow_redirects=False)
    return response.status_code == 200


async def counts(engine: AsyncEngine) -> dict[str, int]:
    """How many rows every table a console form can change holds (every change is also
    an audit row)."""
    async with database.read(engine) as conn:
        return {
            table.name: await conn.scalar(select(func.count()).select_from(table))
            for table in (audit_log, tenants, api_keys, key_secrets, budgets, console_sessions)
        }


@pytest.fixture
async def world(client: AsyncTestClient) -> dict[str, str]:
    """A tenant, its key and a budget on the key, made with the admin API."""
    tenant = (await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)).json()
    key = (
        await client.post(
            "/admin/keys",
            json={
                "tenant_id": tenant["id"],
                "name": "web",
                "budgets": [{"limit_usd": "5.00", "period": "month", "thresholds": [50]}],
            },
            headers=ADMIN,
        )
    ).json()
    return {
        "tenant": tenant["id"],
        "key": key["id"],
        "budget": key["budgets"][0]["id"],
        "secret": key["secret"],
    }


def mutations(ids: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """Every console form, with the fields that would change something."""
    tenant, key, budget = ids["tenant"], ids["key"], ids["budget"]
    return [
        ("/console/tenants", {"name": "evil"}),
        (f"/console/tenants/{tenant}", {"status": "inactive"}),
        (f"/console/tenants/{tenant}", {"name": "renamed"}),
        ("/console/keys", {"tenant_id": tenant, "name": "evil"}),
        (f"/console/keys/{key}/rotate", {"grace_seconds": "0"}),
        (f"/console/keys/{key}/revoke", {}),
        ("/console/budgets", {"tenant_id": tenant, "limit_usd": "1", "period": "day"}),
        (f"/console/budgets/{budget}", {"limit_usd": "9", "thresholds": ""}),
        (f"/console/budgets/{budget}/top-up", {"amount_usd": "100"}),
        (f"/console/budgets/{budget}/reset", {}),
        (f"/console/budgets/{budget}/delete", {}),
        ("/console/sign-out", {}),
    ]


# --- sessions ---------------------------------------------------------------------------


async def _planted_cookie(client):
    planted = "attacker-chosen-session-token-0123456789abcdef"
    client.cookies.set(COOKIE, planted, path="/console")
    response = await sign_in(client)
    assert response.status_code == 303
    issued = next(
        value for value in response.headers.get_list("set-cookie") if value.startswith(f"{COOKIE}=")
    )
    assert planted not in issued
    client.cookies.clear()
    client.cookies.set(COOKIE, planted, path="/console")
    assert not await opens(client)


async def _forged_cookies(client, engine, world):
    await sign_in(client)
    rows = await _rows(engine, select(console_sessions.c.id, console_sessions.c.csrf))
    row = rows[-1]
    client.cookies.clear()
    before = await counts(engine)
    forged = [
        "x",
        "A" * 43,  # the length of a real token
        "A" * 101,  # just past what is looked up
        "A" * 100_000,
        *(stored.id for stored in rows),  # the digests in the table: a stolen table opens nothing
        row.csrf,
        world["secret"],  # a tenant key
        ADMIN_TOKEN,
        '"quoted; value"',
        "%00%FF%0d%0a",
        "é€😀",
        "=" * 50,
    ]
    for value in forged:
        cookie = f"{COOKIE}={value}".encode()
        page = await client.get("/console/keys", headers={"cookie": cookie}, follow_redirects=False)
        assert page.status_code in REDIRECTS, (value[:40], page.status_code, page.text[:200])
        assert page.headers["location"].startswith("/console/sign-in?next=")
        form = await client.post(
            "/console/tenants",
            content=f"name=evil&csrf={row.csrf}".encode(),
            headers={**FORM, "cookie": cookie},
            follow_redirects=False,
        )
        assert form.status_code == 401 and is_console_page(form), (value[:40], form.status_code)
    for header in (f"{COOKIE}=", f"{COOKIE}", ";;;;", f"{COOKIE}=a; {COOKIE}=b"):
        page = await client.get("/console", headers={"cookie": header}, follow_redirects=False)
        assert page.status_code in REDIRECTS, header
    assert await counts(engine) == before


async def _rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with database.read(engine) as conn:
        return list((await conn.execute(query)).all())


async def _after_sign_out(client, engine):
    csrf = await signed_in(client)
    stolen = client.cookies[COOKIE]
    assert (await submit(client, "/console/sign-out", {"csrf": csrf})).status_code == 303
    client.cookies.set(COOKIE, stolen, path="/console")
    assert not await opens(client)
    replay = await submit(client, "/console/tenants", {"name": "after-sign-out", "csrf": csrf})
    assert replay.status_code == 401
    again = await submit(client, "/console/sign-out", {"csrf": csrf})
    assert again.status_code == 401
    assert await _rows(engine, select(tenants).where(tenants.c.name == "after-sign-out")) == []


async def _crossed_csrf(client, engine):
    async with (
        from_address(client, "192.0.2.10") as alice,
        from_address(client, "192.0.2.66") as mallory,
    ):
        alice_csrf = await signed_in(alice)
        mallory_csrf = await signed_in(mallory)
        assert alice_csrf != mallory_csrf
        crossed = await submit(alice, "/console/tenants", {"name": "x", "csrf": mallory_csrf})
        assert crossed.status_code == 403
        crossed = await submit(mallory, "/console/tenants", {"name": "x", "csrf": alice_csrf})
        assert crossed.status_code == 403
        assert await _rows(engine, select(tenants).where(tenants.c.name == "x")) == []
        own = await submit(alice, "/console/tenants", {"name": "x", "csrf": alice_csrf})
        assert own.status_code == 303


async def _missing_csrf(client, engine, world):
    csrf = await signed_in(client)
    before = await counts(engine)
    for path, fields in mutations(world):
        attempts: list[dict[str, Any]] = [
            {"data": fields},
            {"data": {**fields, "csrf": ""}},
            {"data": {**fields, "csrf": csrf.upper() if csrf != csrf.upper() else csrf.lower()}},
            {"data": {**fields, "csrf": csrf[:-1]}},
            {"data": {**fields, "csrf": csrf + "x"}},
            {"data": {**fields, "csrf": [f"{csrf}x", "forged"]}},
            {"json": {**fields, "csrf": csrf}},  # not a form: no field is read
            {"data": fields, "files": {"csrf": ("csrf.txt", csrf.encode())}},  # a file is no token
            {"data": fields, "headers": {"x-csrf-token": csrf, "x-csrftoken": csrf}},
            {"content": f"csrf={csrf}".encode(), "headers": {"content-type": "text/plain"}},
            {"data": fields, "params": {"csrf": csrf}},  # in the address, not the form
        ]
        for attempt in attempts:
            response = await client.post(path, follow_redirects=False, **attempt)
            assert response.status_code == 403, (path, attempt, response.status_code)
            assert is_console_page(response)
    assert await counts(engine) == before
    assert await opens(client)  # the forged sign-out did not sign out either


async def _get_and_overrides(client, engine, world):
    csrf = await signed_in(client)
    before = await counts(engine)
    overrides = {
        "x-http-method-override": "POST",
        "x-http-method": "POST",
        "x-method-override": "POST",
    }
    for path, fields in mutations(world):
        query = {**fields, "csrf": csrf, "_method": "POST"}
        for method in ("GET", "HEAD"):
            response = await client.request(
                method, path, params=query, headers=overrides, follow_redirects=False
            )
            # A page (the list, or a confirmation), or no such method: never the change.
            assert response.status_code in (200, 405), (method, path, response.status_code)
        # And a POST that claims to be a GET is still a form that needs its token.
        claimed = await client.post(
            path,
            data=fields,
            headers={"x-http-method-override": "GET"},
            params={"_method": "GET"},
            follow_redirects=False,
        )
        assert claimed.status_code == 403, (path, claimed.status_code)
    for method in ("PUT", "PATCH", "DELETE"):
        response = await client.request(
            method, f"/console/keys/{world['key']}", data={"csrf": csrf}, follow_redirects=False
        )
        assert response.status_code == 405
    assert await counts(engine) == before
    assert await opens(client)
    key = (await client.get(f"/admin/keys/{world['key']}", headers=ADMIN)).json()
    assert key["status"] == "active"


async def _sign_in_tokens(client):
    form = await client.get("/console/sign-in")
    token = _field(form.text, "sign_in_token")
    attempts: list[tuple[dict[str, str], dict[str, Any]]] = [
        ({}, {"password": ADMIN_TOKEN, "sign_in_token": token}),  # no cookie
        ({SIGN_IN_COOKIE: token}, {"password": ADMIN_TOKEN}),  # no field
        ({SIGN_IN_COOKIE: token}, {"password": ADMIN_TOKEN, "sign_in_token": token + "x"}),
        ({SIGN_IN_COOKIE: ""}, {"password": ADMIN_TOKEN, "sign_in_token": ""}),
        ({SIGN_IN_COOKIE: token}, {"password": ADMIN_TOKEN, "sign_in_token": token.upper()}),
    ]
    for cookies, fields in attempts:
        client.cookies.clear()
        for name, value in cookies.items():
            client.cookies.set(name, value, path="/console")
        response = await submit(client, "/console/sign-in", fields)
        assert response.status_code == 403, (cookies, fields)
        assert f"{COOKIE}=" not in str(response.headers.get_list("set-cookie"))
        assert not await opens(client)


@ONE_DATABASE
async def test_a_sign_in_token_planted_from_a_sibling_host_is_ignored_over_tls(settings):
    """Login CSRF by cookie tossing: a sibling subdomain (or a plain-HTTP answer) can plant
    a cookie named like the sign-in token's, with a field to match. Over HTTPS the console
    reads only its ``__Host-`` cookie, which no other host can set, so the pair is refused.
    (Over plain HTTP whoever can inject a cookie can read the password anyway.)"""
    async with AsyncTestClient(
        app=create_app(settings), base_url="https://testserver.local"
    ) as client:
        client.cookies.set(SIGN_IN_COOKIE, "chosen-by-the-attacker", path="/")
        response = await submit(
            client,
            "/console/sign-in",
            {"sign_in_token": "chosen-by-the-attacker", "password": ADMIN_TOKEN},
        )
        assert response.status_code == 403
        assert "earmark_console=" not in str(response.headers.get_list("set-cookie"))


# --- where sign-in goes next ------------------------------------------------------------

ELSEWHERE = [
    "https://evil.example/",
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/console@evil.example",
    "/console.evil.example",
    "/consoleevil",
    "%2F%2Fevil.example",
    "/%2F%2Fevil.example",
    "/console\\@evil.example",
    "/console/\\evil.example",
    "/console\t//evil.example",
    "/console/\t/evil.example",
    "\t/console",
    " /console",
    "/console\r\nSet-Cookie: planted=1",
    "/console/\r\nLocation: https://evil.example",
    "/console/\n//evil.example",
    "/console/\u2028//evil.example",
    "/console/\u0085//evil.example",
    "/console\uff0f\uff0fevil.example",
    "/console/\x00//evil.example",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "https:evil.example",
    "/console?next=https://evil.example",
    "/console//evil.example",
    "/console/%2F%2Fevil.example",
    "/console/%5c%5cevil.example",
    "/console/é/€",
    "x" * 20_000,
]


async def _next_elsewhere(client):
    for target in ELSEWHERE:
        response = await sign_in_to(client, target)
        assert response.status_code == 303, repr(target)
        location = response.headers["location"]
        assert not re.search(r"[\x00-\x20\x7f\\]", location), (target, location)
        assert location.startswith("/console") and not location.startswith("//"), location
        resolved = urlsplit(urljoin(f"{ORIGIN}/console/sign-in", location))
        assert (resolved.scheme, resolved.netloc) == ("http", "testserver.local"), location
        assert "planted" not in str(response.headers.get_list("set-cookie")), target
        assert list(response.headers.keys()).count("location") == 1


async def _next_reflected(client):
    for target in [*XSS, "/console?" + XSS[0], "/console?" + XSS[1], "/console\r\nX-Evil: 1"]:
        response = await client.get("/console/sign-in", params={"next": target})
        assert response.status_code == 200 and "x-evil" not in response.headers
        page = assert_inert(response.text, target)
        assert inputs(page)["next"] in ("/console", target)
    # The gate's own redirect to sign-in carries the page asked for, encoded.
    client.cookies.clear()
    for query in ("x=%0d%0aSet-Cookie:%20planted=1", "x=%22%3E%3Cscript%3E", "x=\\\\evil"):
        response = await client.get(f"/console/keys?{query}", follow_redirects=False)
        assert response.status_code in REDIRECTS
        location = response.headers["location"]
        assert location.startswith("/console/sign-in?next=%2Fconsole%2Fkeys%3F")
        assert not re.search(r"[\x00-\x20\x7f<>\"\\]", location), location
        assert "planted" not in str(response.headers.get_list("set-cookie"))


def _dot_resolved(location: str) -> str:
    """The path a browser opens for ``location`` (WHATWG: ``%2e`` is a dot too)."""
    path = location.split("?", 1)[0].split("#", 1)[0]
    out: list[str] = []
    for segment in path.split("/")[1:]:
        plain = segment.lower().replace("%2e", ".")
        if plain == "..":
            if out:
                out.pop()
        elif plain != ".":
            out.append(segment)
    return "/" + "/".join(out)


@ONE_DATABASE
async def test_sign_in_never_leaves_the_console(client):
    for target in (
        "/console/../admin/tenants",
        "/console/%2e%2e/healthz",
        "/console/.%2E/metrics",
        "/console/./../../x",
    ):
        response = await sign_in_to(client, target)
        assert response.status_code == 303
        path = _dot_resolved(response.headers["location"])
        assert path == "/console" or path.startswith("/console/"), (target, path)


# --- stored and reflected markup --------------------------------------------------------


@pytest.fixture
async def hostile(client: AsyncTestClient, engine: AsyncEngine) -> dict[str, Any]:
    """Markup everywhere data reaches a page: tenant and key names and metadata (admin
    API), an admin user's name (the session's label and the audit actor), and ledger,
    audit and webhook rows written as any path could write them."""
    made: dict[str, Any] = {"tenants": [], "keys": []}
    for n, name in enumerate(XSS):
        tenant = await client.post(
            "/admin/tenants",
            json={"name": name, "metadata": {name: name, "n": n}},
            headers=ADMIN,
        )
        assert tenant.status_code == 201, tenant.text
        tenant_id = tenant.json()["id"]
        key = await client.post(
            "/admin/keys",
            json={
                "tenant_id": tenant_id,
                "name": name,
                "metadata": {"note": name},
                "budgets": [{"limit_usd": "1", "period": "month", "thresholds": [50]}],
            },
            headers=ADMIN,
        )
        assert key.status_code == 201, key.text
        made["tenants"].append(tenant_id)
        made["keys"].append(key.json())
    budget = await client.post(
        f"/admin/tenants/{made['tenants'][0]}/budgets",
        json={"limit_usd": "2", "period": "week"},
        headers=ADMIN,
    )
    assert budget.status_code == 201, budget.text
    made["tenant_budget"] = budget.json()["id"]
    now = database.utcnow()
    async with database.write(engine) as conn:
        for n, key in enumerate(made["keys"]):
            await conn.execute(
                insert(ledger).values(
                    id=new_id("req"),
                    key_id=key["id"],
                    tenant_id=made["tenants"][n],
                    endpoint="transcription",
                    status='"><svg onload=1>'[:16] if n == 1 else "succeeded",
                    http_status=200,
                    error_code=XSS[n][:64],
                    model_requested=XSS[n],
                    provider="openai",
                    model=XSS[n],
                    review="<script>" if n == 0 else None,
                    audio_ms=60_000,
                    cost_nanos=1_000_000 * (n + 1),
                    latency_ms=10,
                    created_at=now,
                    completed_at=now,
                )
            )
        await audit.record(
            conn,
            Actor(XSS[1], request_id=XSS[0], source=XSS[2]),
            "<svg/onload=1>.x",  # its type (before the dot) fits 16 characters
            XSS_SEGMENT,
            before={"name": XSS[0]},
            after={"name": XSS[1]},
            details={"why": XSS[2], XSS[3]: XSS[0]},
        )
        webhook_id, event_id = new_id("whk"), new_id("evt")
        made["webhook_secret"] = "whsec_" + "S3cr3t" * 6
        await conn.execute(
            insert(webhook_endpoints).values(
                id=webhook_id,
                url='javascript:alert(1)//"><img src=x onerror=alert(1)>',
                event_types=XSS,
                tenant_id=made["tenants"][1],
                enabled=False,  # nothing is ever delivered to it
                secret=made["webhook_secret"],
                consecutive_failures=3,
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            insert(webhook_events).values(
                id=event_id, type=XSS[0][:40], tenant_id=None, payload={"x": XSS}, created_at=now
            )
        )
        await conn.execute(
            insert(webhook_deliveries).values(
                id=new_id("dlv"),
                event_id=event_id,
                endpoint_id=webhook_id,
                status="failed",
                attempts=9,
                next_attempt_at=None,
                last_attempt_at=now,
                last_status=None,
                last_error=XSS[1],
                created_at=now,
            )
        )
    made["webhook"] = webhook_id
    await admin_users.create_admin_user(engine, XSS_SEGMENT, PASSWORD, Actor("test"))
    await signed_in(client, user=XSS_SEGMENT, secret=PASSWORD)
    return made


async def _stored_pages(client, hostile):
    key, tenant = hostile["keys"][1], hostile["tenants"][1]
    budget = key["budgets"][0]["id"]
    pages = [
        "/console",
        "/console/tenants",
        f"/console/tenants/{tenant}",
        f"/console/tenants/{hostile['tenants'][0]}",
        "/console/keys",
        f"/console/keys?tenant_id={tenant}",
        "/console/keys/new",
        f"/console/keys/new?tenant_id={tenant}",
        *(f"/console/keys/{made['id']}" for made in hostile["keys"]),
        f"/console/keys/{key['id']}/revoke",
        f"/console/budgets/{budget}",
        f"/console/budgets/{budget}/delete",
        "/console/usage",
        "/console/usage?by=model",
        "/console/models",
        "/console/webhooks",
        f"/console/webhooks/{hostile['webhook']}",
        "/console/audit",
    ]
    pages.append(f"/console/budgets/{hostile['tenant_budget']}")
    for path in pages:
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        page = assert_inert(response.text, path)
        assert hostile["webhook_secret"] not in response.text, path
        assert f"user:{XSS_SEGMENT}" in "".join(page.text), path  # who is signed in, as text
    tenant_page = parsed((await client.get(f"/console/tenants/{tenant}")).text)
    assert XSS[1] in "".join(tenant_page.text)
    assert inputs(tenant_page)["name"] == XSS[1]  # the rename field holds it as a value
    audit_page = "".join(parsed((await client.get("/console/audit")).text).text)
    assert XSS[1] in audit_page and XSS[2] in audit_page


async def _chart_data(client, hostile):
    for by, expected in (("tenant", XSS), ("model", XSS)):
        response = await client.get("/console/usage", params={"by": by})
        page = assert_inert(response.text, by)
        [data] = [attrs for tag, attrs in page.elements if attrs.get("id") == "usage-chart-data"]
        values = json.loads(data["data-values"])
        assert set(values["spend"]) == set(expected), by
        assert set(values["hours"]) == set(expected), by
        # The raw attribute never holds a quote that would end it.
        raw = re.search(r'data-values="([^"]*)"', response.text)
        assert raw and "<" not in raw.group(1) and "'" not in raw.group(1)


async def _reflected_queries(client, world):
    await signed_in(client)
    webhooks = await client.post(
        "/admin/webhooks",
        json={
            "url": "https://93.184.216.34/hook",
            "event_types": ["key.revoked"],
            "enabled": False,
        },
        headers=ADMIN,
    )
    assert webhooks.status_code == 201, webhooks.text
    webhook = webhooks.json()["id"]
    reflected = {  # path: (query parameters, the ones a form field shows back)
        "/console/tenants": (("name", "status", "cursor"), ("name",)),
        "/console/keys": (("name", "status", "tenant_id", "cursor"), ("name",)),
        "/console/keys/new": (("tenant_id",), ()),
        f"/console/keys/{world['key']}": (("cursor",), ()),
        f"/console/tenants/{world['tenant']}": (("done",), ()),
        "/console/webhooks": (("cursor",), ()),
        f"/console/webhooks/{webhook}": (("cursor",), ()),
        "/console/audit": (("target", "actor", "action", "cursor"), ("target", "actor", "action")),
        "/console/usage": (("by", "done"), ()),
        "/console/models": (("done",), ()),
    }
    for path, (names, shown) in reflected.items():
        for payload in XSS:
            # Every parameter at once, and one named by the payload: a page, or a 400 page
            # where an id or a cursor is not one; either way nothing in it runs.
            params = {**dict.fromkeys(names, payload), payload: payload}
            response = await client.get(path, params=params)
            assert response.status_code in (200, 400), (path, payload, response.status_code)
            assert is_console_page(response)
            assert_inert(response.text, (path, payload))
            assert 'class="notice"' not in response.text  # ?done= only says fixed text
            # The free-text filters alone: shown back in their fields, as text.
            if not shown or any(ord(c) < 32 for c in payload):
                continue
            response = await client.get(path, params=dict.fromkeys(shown, payload))
            if response.status_code == 400:  # an actor or action the API would refuse too
                assert set(shown) & {"actor", "action", "target"}, (path, payload)
                continue
            page = assert_inert(response.text, (path, payload))
            for name in shown:
                assert inputs(page)[name] == payload, (path, name)
    for name in ("from", "to"):
        for payload in XSS:
            for path in ("/console/usage", "/console/usage.csv"):
                response = await client.get(path, params={name: payload})
                assert response.status_code == 400 and is_console_page(response)
                assert_inert(response.text, (path, name, payload))


async def _pager(client):
    await signed_in(client)
    for n in range(26):  # one more than a page
        await client.post("/admin/tenants", json={"name": f"t{n:02}"}, headers=ADMIN)
    params = {"status": XSS[1], XSS[0]: XSS[2]}
    response = await client.get("/console/tenants", params=params)
    assert response.status_code == 200
    page = assert_inert(response.text, "pager")
    [pager] = [attrs["href"] for tag, attrs in page.elements if attrs.get("rel") == "next"]
    assert pager.startswith("/console/tenants?")
    assert not re.search(r"[<>\"' ]", pager), pager


async def _error_ids(client):
    await signed_in(client)
    for path in (
        f"/console/keys/{XSS_SEGMENT}",
        f"/console/keys/{XSS_SEGMENT}/revoke",
        f"/console/tenants/{XSS_SEGMENT}",
        f"/console/budgets/{XSS_SEGMENT}",
        f"/console/budgets/{XSS_SEGMENT}/delete",
        f"/console/webhooks/{XSS_SEGMENT}",
        "/console/keys/<svg onload=alert(1)>",
    ):
        response = await client.get(path)  # 400: not an id at all, as the API says
        assert response.status_code in (400, 404) and is_console_page(response), path
        assert_inert(response.text, path)


# --- hostile input: a 4xx page, never a 5xx ---------------------------------------------


async def _hostile_addresses(client, world):
    await signed_in(client)
    big = "a" * 15_000  # four of them still fit in the longest address a client sends
    cases = [
        "/console/tenants/ten_doesnotexist",
        "/console/keys/key_doesnotexist",
        "/console/keys/key_doesnotexist/revoke",
        "/console/budgets/bud_doesnotexist",
        "/console/budgets/bud_doesnotexist/delete",
        "/console/webhooks/whk_doesnotexist",
        f"/console/keys/{'k' * 5000}",
        f"/console/tenants/{'%FF' * 100}",
        "/console/tenants/%C0%AE%C0%AE",
        "/console/usage?from=yesterday",
        "/console/usage?from=2026-02-30",
        "/console/usage?to=2026-13-01",
        "/console/usage?from=2026-01-01T00:00",
        "/console/usage?from=+002026-01-01",
        "/console/usage?from=2026-06-01&to=2026-01-01",
        f"/console/usage?from={big}",
        "/console/usage.csv?from=2026-06-01&to=2026-01-01",
    ]
    for path in cases:
        response = await client.get(path)
        assert 400 <= response.status_code < 500, (path[:80], response.status_code)
        assert is_console_page(response), path[:80]
    fine = [  # odd, but only a filter or a cursor that matches nothing
        f"/console/tenants?name={big}",
        f"/console/tenants?cursor={big}",
        "/console/tenants?cursor=%FF%FE&status=%FF",
        "/console/tenants?cursor=' OR 1=1 --",
        "/console/tenants?name=%25&name=_",
        f"/console/keys?name={big}&tenant_id={big}&status={big}",
        "/console/keys?tenant_id=ten_x&tenant_id=ten_y",
        f"/console/keys/{world['key']}?cursor={big}",
        f"/console/audit?target={big}&actor={big}&action={big}&cursor={big}",
        f"/console/webhooks?cursor={big}",
        f"/console/keys/new?tenant_id={big}",
        "/console/usage?by=day&by=key",
        f"/console/usage?by={big}",
        "/console/usage?from=2026-01-01&to=2026-01-01",
    ]
    for path in fine:
        response = await client.get(path)
        assert response.status_code in (200, 400), (path[:80], response.status_code)
        assert is_console_page(response), path[:80]


async def _hostile_bodies(client, engine, world):
    csrf = await signed_in(client)
    token = f"csrf={csrf}".encode()
    key, budget, tenant = world["key"], world["budget"], world["tenant"]
    raw_bodies = [
        ("/console/tenants", b"name=&" + token),  # missing value
        ("/console/tenants", token),  # missing field
        ("/console/budgets", token + b"&limit_usd=5"),  # neither owner
        ("/console/budgets", token + f"&key_id={key}&tenant_id={tenant}&limit_usd=5".encode()),
        ("/console/keys", token + f"&tenant_id={tenant}".encode()),
        ("/console/keys", token + f"&tenant_id={tenant}&name=k&models=nope".encode()),
        ("/console/keys", token + f"&tenant_id={tenant}&name=k&expires_at=soon".encode()),
        ("/console/keys", token + f"&tenant_id={tenant}&name=k&expires_at=%00".encode()),
        (
            "/console/keys",
            token + f"&tenant_id={tenant}&name=k&requests_per_minute=%D9%A1".encode(),
        ),
        ("/console/keys", token + f"&tenant_id={tenant}&name=k&window_seconds=1e9".encode()),
        ("/console/keys", token + f"&tenant_id={tenant}&name=k&limit_usd=5&period=ever".encode()),
        ("/console/keys", token + f"&tenant_id={tenant}&name=k&limit_usd=5&thresholds=a".encode()),
        ("/console/keys", token + f"&tenant_id={tenant}&name={'k' * 5000}".encode()),
        (f"/console/keys/{key}/rotate", token + b"&grace_seconds=-1"),
        (f"/console/keys/{key}/rotate", token + b"&grace_seconds=1.5"),
        (f"/console/keys/{key}/rotate", token + b"&grace_seconds=9999999999999999"),
        (f"/console/budgets/{budget}", token + b"&limit_usd="),
        (f"/console/budgets/{budget}", token + b"&limit_usd=NaN"),
        (f"/console/budgets/{budget}", token + b"&limit_usd=1e999999"),
        (f"/console/budgets/{budget}", token + b"&limit_usd=-5"),
        (f"/console/budgets/{budget}", token + b"&limit_usd=5&thresholds=1000"),
        (f"/console/budgets/{budget}/top-up", token + b"&amount_usd=Infinity"),
        (f"/console/budgets/{budget}/top-up", token + b"&amount_usd=0.0000000001"),
        (f"/console/budgets/{budget}/top-up", token + b"&amount_usd=99999999999999999999"),
        (f"/console/tenants/{tenant}", token + b"&status=deleted"),
        (f"/console/tenants/{tenant}", token + b"&name=%1B%5B31m"),
        (f"/console/tenants/{tenant}", token + b"&name=" + b"n" * 300),
        ("/console/tenants/ten_doesnotexist", token + b"&name=x"),
        ("/console/keys/key_doesnotexist/rotate", token),
        ("/console/keys/key_doesnotexist/revoke", token),
        ("/console/budgets/bud_doesnotexist", token + b"&limit_usd=5"),
        ("/console/budgets/bud_doesnotexist/top-up", token + b"&amount_usd=5"),
        ("/console/budgets/bud_doesnotexist/reset", token),
        ("/console/budgets/bud_doesnotexist/delete", token),
        ("/console/tenants", token + b"&name=" + b"x" * 70_000),  # past the 64 KiB limit
        ("/console/tenants", b"&".join([b"f="] * 30_000) + b"&" + token),  # too many, too big
    ]
    for path, body in raw_bodies:
        response = await client.post(path, content=body, headers=FORM, follow_redirects=False)
        assert 400 <= response.status_code < 500, (path, body[:80], response.status_code)
        assert is_console_page(response), (path, body[:80])
    odd_but_valid = [  # each answered, none a 5xx
        (b"name=%FF%FE&" + token, FORM),  # not UTF-8 once decoded
        (b"name=\xff\xfe&" + token, FORM),  # not UTF-8 on the wire
        (b"name=a&name=b&" + token, FORM),  # a field twice
        (b"&&&name=c&&" + token + b"&&", FORM),
        (b"&".join([b"f="] * 8_000) + b"&name=d&" + token, FORM),  # many fields, in the limit
    ]
    for body, headers in odd_but_valid:
        response = await client.post(
            "/console/tenants", content=body, headers=headers, follow_redirects=False
        )
        assert response.status_code in (303, 400), (body[:60], response.status_code)
    multipart = [
        {"data": {"csrf": csrf, "name": "mp"}, "files": {"x": ("a.txt", b"hi")}},
        {"data": {"csrf": csrf}, "files": {"name": ("name.txt", b"evil")}},
        {
            "data": {"csrf": csrf, "name": "many"},
            "files": {f"f{n}": ("f", b"") for n in range(1100)},
        },
    ]
    for attempt in multipart:
        response = await client.post("/console/tenants", follow_redirects=False, **attempt)
        assert response.status_code in (303, 400, 413), response.status_code
    for content_type, body in (
        ("multipart/form-data", b"name=x&" + token),  # no boundary
        ("multipart/form-data; boundary=zz", b"--zz\r\ngarbage"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data\r\n\r\nx"),
        ("application/x-www-form-urlencoded; charset=utf-16", "name=x".encode("utf-16")),
    ):
        response = await client.post(
            "/console/tenants",
            content=body,
            headers={"content-type": content_type},
            follow_redirects=False,
        )
        assert 400 <= response.status_code < 500, (content_type, response.status_code)
        assert is_console_page(response)
    cookie = f"{COOKIE}={client.cookies[COOKIE]}"
    for headers in (
        [("content-type", "application/x-www-form-urlencoded"), ("cookie", cookie)],
        [("content-type", FORM["content-type"]), ("content-length", "10"), ("cookie", cookie)],
    ):
        status, answered, body = await raw_asgi(
            client,
            "POST",
            "/console/tenants",
            headers=headers,
            chunks=[token + b"&name=big&pad=", *([b"x" * 8192] * 12)],  # 96 KiB, chunked
        )
        assert status == 413 and answered["content-type"].startswith("text/html"), status
    assert len(await _rows(engine, select(tenants.c.id).where(tenants.c.name == "big"))) == 0


async def _sign_in_bodies(client):
    form = await client.get("/console/sign-in")
    token = _field(form.text, "sign_in_token")
    bodies = [
        f"sign_in_token={token}".encode(),  # no password
        f"sign_in_token={token}&password=%FF%FE&user=%FF".encode(),
        f"sign_in_token={token}&password=\xff".encode("latin-1"),
        f"sign_in_token={token}&user={'u' * 50_000}&password=x".encode(),
        f"sign_in_token={token}&user=%00&password=%00".encode(),
        f"sign_in_token={token}&user=a&user=b&password=x&password=y".encode(),
        f"sign_in_token={token}&sign_in_token=x&password=x".encode(),
        f"sign_in_token={token}&password={'p' * 70_000}".encode(),
    ]
    for body in bodies:
        client.cookies.set(SIGN_IN_COOKIE, token, path="/console")
        response = await client.post(
            "/console/sign-in",
            content=body,
            headers=FORM,
            follow_redirects=False,
        )
        assert 400 <= response.status_code < 500, (body[:60], response.status_code)
        assert is_console_page(response)
        assert f"{COOKIE}=" not in str(response.headers.get_list("set-cookie"))


async def test_nul_bytes_in_ids_and_filters_are_a_4xx_not_a_database_error(client):
    csrf = await signed_in(client)
    failed = []
    for path in (
        "/console/tenants?name=%00",
        "/console/tenants?cursor=%00",
        "/console/keys?tenant_id=%00",
        "/console/keys?name=%00",
        "/console/keys?cursor=%00",
        "/console/keys/new?tenant_id=%00",
        "/console/keys/%00",
        "/console/keys/key_x%00/revoke",
        "/console/tenants/%00",
        "/console/budgets/%00",
        "/console/budgets/%00/delete",
        "/console/webhooks/%00",
        "/console/webhooks?cursor=%00",
        "/console/audit?target=%00",
        "/console/audit?actor=%00",
        "/console/audit?action=%00",
        "/console/audit?cursor=%00",
    ):
        response = await client.get(path)
        if response.status_code >= 500:
            failed.append(path)
    for path in (
        "/console/keys/%00/revoke",
        "/console/keys/%00/rotate",
        "/console/budgets/%00",
        "/console/budgets/%00/reset",
        "/console/budgets/%00/top-up",
        "/console/budgets/%00/delete",
        "/console/tenants/%00",
    ):
        response = await submit(client, path, {"csrf": csrf, "amount_usd": "1", "name": "x"})
        if response.status_code >= 500:
            failed.append(f"POST {path}")
    assert failed == []


@ONE_DATABASE
async def test_usage_dates_at_the_end_of_the_calendar_are_a_4xx(client):
    await signed_in(client)
    for path in ("/console/usage?to=9999-12-31", "/console/usage.csv?to=9999-12-31"):
        response = await client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert is_console_page(response)


class _DrawnTooMuch(Exception):
    pass


@ONE_DATABASE
async def test_a_usage_range_of_millennia_is_refused_before_it_is_drawn(client, monkeypatch):
    drawn = console_usage.chart_data

    def bounded(report: Any, group: str, first: Any, last: Any) -> Any:
        if (last - first).days > 3660:  # ten years of days is already a long chart
            raise _DrawnTooMuch(f"{first} to {last}")  # cut it short: the test stays fast
        return drawn(report, group, first, last)

    monkeypatch.setattr(console_usage, "chart_data", bounded)
    await signed_in(client)
    response = await client.get("/console/usage?from=0001-01-01&to=9999-12-30")
    assert response.status_code < 500, response.status_code


@ONE_DATABASE
async def test_an_expiry_at_the_end_of_the_calendar_is_a_4xx(client, world):
    csrf = await signed_in(client)
    for expiry in ("0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00"):
        response = await submit(
            client,
            "/console/keys",
            {"csrf": csrf, "tenant_id": world["tenant"], "name": "k", "expires_at": expiry},
        )
        assert response.status_code == 400 and is_console_page(response), (expiry, response)


@ONE_DATABASE
async def test_a_rotation_grace_is_bounded_as_in_the_admin_api(client, engine, world):
    csrf = await signed_in(client)
    for grace in ("315360000", "10000000000000"):  # ten years; 317,000 years
        response = await submit(
            client,
            f"/console/keys/{world['key']}/rotate",
            {"csrf": csrf, "grace_seconds": grace},
        )
        assert response.status_code == 400 and is_console_page(response), (grace, response)
    async with database.read(engine) as conn:
        secrets_now = await conn.scalar(select(func.count()).select_from(key_secrets))
    assert secrets_now == 1  # no rotation happened


@ONE_DATABASE
async def test_a_sign_in_next_sent_as_a_file_is_a_4xx(client):
    form = await client.get("/console/sign-in")
    response = await client.post(
        "/console/sign-in",
        data={"sign_in_token": _field(form.text, "sign_in_token"), "password": ADMIN_TOKEN},
        files={"next": ("next.txt", b"/console/keys")},
        follow_redirects=False,
    )
    assert response.status_code < 500, response.status_code


@ONE_DATABASE
async def test_a_nul_byte_in_a_static_path_is_a_404(client):
    status, _, _ = await raw_asgi(client, "GET", "/console/static/\x00")
    assert status == 404


@ONE_DATABASE
async def test_a_static_404_does_not_tell_where_the_app_is_installed(client):
    status, _, body = await raw_asgi(client, "GET", "/console/static/vendor/")
    assert status == 404
    assert str(STATIC) not in body.decode()


@ONE_DATABASE
async def test_unknown_console_paths_and_methods_get_the_console_error_page(client):
    await signed_in(client)
    for method, path in (
        ("GET", "/console/nope"),
        ("GET", "/console/keys/a/b/c"),
        ("GET", "/console/sign-out"),
        ("PUT", "/console/tenants"),
    ):
        response = await client.request(method, path, follow_redirects=False)
        assert 400 <= response.status_code < 500
        assert is_console_page(response), (method, path, response.text[:100])


@ONE_DATABASE
async def test_the_usage_csv_does_not_carry_spreadsheet_formulas(client, engine):
    await signed_in(client)
    tenant = await client.post(
        "/admin/tenants", json={"name": '=HYPERLINK("https://evil.example","x")'}, headers=ADMIN
    )
    key = await client.post(
        "/admin/keys", json={"tenant_id": tenant.json()["id"], "name": "k"}, headers=ADMIN
    )
    now = database.utcnow()
    async with database.write(engine) as conn:
        await conn.execute(
            insert(ledger).values(
                id=new_id("req"),
                key_id=key.json()["id"],
                tenant_id=tenant.json()["id"],
                endpoint="transcription",
                status="succeeded",
                http_status=200,
                model_requested="openai/whisper-1",
                provider="openai",
                model="whisper-1",
                audio_ms=1000,
                cost_nanos=1000,
                created_at=now,
                completed_at=now,
            )
        )
    csv_text = (await client.get("/console/usage.csv")).text
    cells = [cell for line in csv_text.splitlines()[1:] for cell in line.split(",")]
    assert not [cell for cell in cells if cell.lstrip('"').startswith(("=", "+", "@"))]


# --- who may open the console -----------------------------------------------------------


async def _tenant_key_carriers(client, engine, world):
    secret = world["secret"]
    carriers = [
        {"authorization": f"Bearer {secret}"},
        {"authorization": "Basic " + base64.b64encode(f"user:{secret}".encode()).decode()},
        {"authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()},
        {"x-api-key": secret},
        {"x-bf-vk": secret},
        {"api-key": secret},
        {"cookie": f"{COOKIE}={secret}"},
        {"cookie": f"{SIGN_IN_COOKIE}={secret}"},
    ]
    before = await counts(engine)
    for headers in carriers:
        page = await client.get("/console", headers=headers, follow_redirects=False)
        assert page.status_code in REDIRECTS, headers
        form = await client.post(
            "/console/tenants",
            data={"name": "evil", "csrf": secret},
            headers=headers,
            follow_redirects=False,
        )
        assert form.status_code == 401, headers
    for user in ("", "alice"):
        refused = await sign_in(client, secret=secret, user=user)
        assert refused.status_code == 403 and "Tenant keys cannot" in refused.text
        assert f"{COOKIE}=" not in str(refused.headers.get_list("set-cookie"))
    assert await counts(engine) == before


async def _admin_headers(client, engine):
    await admin_users.create_admin_user(engine, "alice", PASSWORD, Actor("test"))
    carriers = [
        ADMIN,
        {"authorization": f"bearer {ADMIN_TOKEN}"},
        {"authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()},
        {"x-api-key": ADMIN_TOKEN},
        {"cookie": f"{COOKIE}={ADMIN_TOKEN}"},
    ]
    for headers in carriers:
        page = await client.get("/console/tenants", headers=headers, follow_redirects=False)
        assert page.status_code in REDIRECTS, headers
        form = await client.post(
            "/console/tenants", data={"name": "x", "csrf": "x"}, headers=headers
        )
        assert form.status_code == 401, headers
    assert await _rows(engine, select(tenants).where(tenants.c.name == "x")) == []


async def _deleted_user(client, engine):
    await admin_users.create_admin_user(engine, "alice", PASSWORD, Actor("test"))
    csrf = await signed_in(client, user="alice", secret=PASSWORD)
    await admin_users.delete_admin_user(engine, "alice", Actor("test"))
    assert not await opens(client)
    refused = await submit(client, "/console/tenants", {"name": "x", "csrf": csrf})
    assert refused.status_code == 401
    alice = console_sessions.c.admin == "user:alice"
    assert await _rows(engine, select(console_sessions).where(alice)) == []
    # Made again with the same name and password: the old cookie still opens nothing.
    await admin_users.create_admin_user(engine, "alice", PASSWORD, Actor("test"))
    assert not await opens(client)


async def _new_admin_token(client, settings):
    await signed_in(client)
    cookie = client.cookies[COOKIE]
    rotated = msgspec.structs.replace(settings, admin_token="a-brand-new-admin-token-0123456789")
    async with AsyncTestClient(app=create_app(rotated)) as restarted:
        restarted.cookies.set(COOKIE, cookie, path="/console")
        assert not await opens(restarted)
        refused = await sign_in(restarted, secret=ADMIN_TOKEN)
        assert refused.status_code == 401


# --- throttling -------------------------------------------------------------------------


@pytest.fixture
def hashes(client: AsyncTestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 check the app makes (real or dummy), by password."""
    checker = client.app.state.admin_passwords
    made: list[str] = []
    verify = checker._verify

    def counted(password: str, stored: str) -> bool:
        made.append(password)
        return verify(password, stored)

    monkeypatch.setattr(checker, "_verify", counted)
    return made


@pytest.fixture
async def addresses(client: AsyncTestClient) -> AsyncIterator[Any]:
    opened: list[httpx.AsyncClient] = []

    async def at(address: str) -> httpx.AsyncClient:
        opened.append(from_address(client, address))
        return opened[-1]

    yield at
    for other in opened:
        await other.aclose()


def _no_session_cookie(response: httpx.Response) -> bool:
    return f"{COOKIE}=" not in str(response.headers.get_list("set-cookie"))


async def _throttled_per_source(client, engine, hashes, addresses):
    await admin_users.create_admin_user(engine, "alice", PASSWORD, Actor("test"))
    attacker = await addresses("203.0.113.7")
    for _ in range(10):
        wrong = await sign_in(attacker, secret="not-the-admin-token")
        assert wrong.status_code == 401
    throttled = await sign_in(attacker, secret="not-the-admin-token")
    assert throttled.status_code == 429 and is_console_page(throttled)
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    counted = len(hashes)
    for user, secret, headers in (
        ("", ADMIN_TOKEN, {}),  # even the right token, from there
        ("alice", PASSWORD, {}),  # or the right password
        ("", ADMIN_TOKEN, {"x-forwarded-for": "198.51.100.1", "x-real-ip": "198.51.100.1"}),
        ("", ADMIN_TOKEN, {"forwarded": "for=198.51.100.1"}),
    ):
        attacker.headers.update(headers)
        response = await sign_in(attacker, secret=secret, user=user)
        assert response.status_code == 429, (user, headers)
        assert _no_session_cookie(response)
    assert len(hashes) == counted  # refused before any argon2
    elsewhere = await addresses("203.0.113.8")
    assert (await sign_in(elsewhere)).status_code == 303  # one source, not everyone


async def _throttled_per_user(client, engine, hashes, addresses):
    await admin_users.create_admin_user(engine, "Kate", PASSWORD, Actor("test"))
    for n in range(10):
        guesser = await addresses(f"192.0.2.{n + 1}")
        wrong = await sign_in(guesser, user="Kate", secret=f"guess number {n}")
        assert wrong.status_code == 401
    counted = len(hashes)
    fresh = await addresses("192.0.2.100")
    for spelling in ("Kate", "kate", "KATE", "\u212aate", " Kate "):  # \u212a: Kelvin sign
        response = await sign_in(fresh, user=spelling, secret=PASSWORD)
        assert response.status_code == 429, spelling
        assert int(response.headers["retry-after"]) >= 1
        assert _no_session_cookie(response)
    assert len(hashes) == counted  # no argon2 for a throttled name
    other = await addresses("192.0.2.101")
    assert (await sign_in(other)).status_code == 303  # the token is not that user


# --- headers and files ------------------------------------------------------------------


def assert_console_headers(headers: httpx.Headers | dict[str, str], where: Any) -> None:
    assert headers.get("content-security-policy") == CSP, where
    assert headers.get("x-frame-options") == "DENY", where
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy") == "same-origin", where


@ONE_DATABASE
async def test_every_console_answer_carries_the_security_headers(client, world):
    answers: list[tuple[str, httpx.Response]] = [
        ("sign-in page", await client.get("/console/sign-in")),
        ("to sign-in", await client.get("/console/keys", follow_redirects=False)),
        ("no session", await client.post("/console/tenants", data={"csrf": "x"})),
        ("bad token", await submit(client, "/console/sign-in", {"sign_in_token": "x"})),
        ("wrong secret", await sign_in(client, secret="not-the-admin-token")),
        ("signed in", await sign_in(client)),
    ]
    page = await client.get("/console")
    csrf = _field(page.text, "csrf")
    answers += [
        ("page", page),
        ("no csrf", await submit(client, "/console/tenants", {"name": "x"})),
        ("404 page", await client.get("/console/keys/key_nope")),
        ("404 path", await client.get("/console/no/such/page")),
        ("405", await client.get("/console/sign-out")),
        ("400", await client.get("/console/usage?from=nope")),
        ("413", await submit(client, "/console/tenants", {"csrf": csrf, "n": "x" * 70_000})),
        ("csv", await client.get("/console/usage.csv")),
        ("redirect", await submit(client, "/console/tenants", {"name": "t", "csrf": csrf})),
        (
            "secret",
            await submit(
                client, "/console/keys", {"csrf": csrf, "tenant_id": world["tenant"], "name": "k"}
            ),
        ),
    ]
    assert answers[-1][1].status_code == 201
    for where, response in answers:
        assert_console_headers(response.headers, where)
        assert response.headers.get("cache-control") == "no-store", where
    for path in ("/console/static/console.js", "/console/static/nope.js"):
        response = await client.get(path)
        assert_console_headers(response.headers, path)


@ONE_DATABASE
async def test_static_files_never_come_from_outside_the_static_directory(client):
    escapes = [
        "/console/static/../gate.py",
        "/console/static/../../console/gate.py",
        "/console/static/%2e%2e/gate.py",
        "/console/static/%2E%2E/%2E%2E/settings.py",
        "/console/static/..%2fgate.py",
        "/console/static/..%5cgate.py",
        "/console/static/..\\gate.py",
        "/console/static/vendor/../../gate.py",
        "/console/static/vendor/../../../main.py",
        "/console/static//etc/passwd",
        "/console/static/../templates/base.html",
        "/console/static/%c0%ae%c0%ae/gate.py",
        "/console/static/../../../../../../../../etc/passwd",
        "/console/static/",
        "/console/static",
    ]
    for path in escapes:
        status, headers, body = await raw_asgi(client, "GET", path)
        assert status == 404, (path, status)
        assert b"def gate" not in body and b"root:" not in body and b"{%" not in body, path
        assert headers.get("x-content-type-options") == "nosniff", path
    for path in ("/console/static/%2e%2e/gate.py", "/console/static/.%2e/__init__.py"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert "def gate" not in response.text
    served = await client.get("/console/static/console.js")
    assert served.status_code == 200
    assert served.headers["content-type"].startswith(("text/javascript", "application/javascript"))


async def test_secrets_are_shown_once_and_never_again(client, engine):
    csrf = await signed_in(client)
    created = await submit(client, "/console/tenants", {"name": "acme", "csrf": csrf})
    tenant = created.headers["location"].split("/")[-1].split("?")[0]
    made = await submit(client, "/console/keys", {"csrf": csrf, "tenant_id": tenant, "name": "k"})
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    secret = re.search(r'value="(sk-bf-[^"]+)"', made.text)
    assert secret
    [key_id] = [row.id for row in await _rows(engine, select(api_keys.c.id))]
    rotated = await submit(client, f"/console/keys/{key_id}/rotate", {"csrf": csrf})
    new_secret = re.search(r'value="(sk-bf-[^"]+)"', rotated.text)
    assert new_secret
    for path in (
        "/console",
        "/console/keys",
        f"/console/keys/{key_id}",
        f"/console/keys/{key_id}/revoke",
        f"/console/tenants/{tenant}",
        "/console/audit",
        f"/console/audit?target={key_id}",
    ):
        page = await client.get(path)
        assert page.status_code == 200
        for shown in (secret.group(1), new_secret.group(1)):
            assert shown not in page.text, path
            assert shown[len("sk-bf-") + 12 :] not in page.text, path  # nor its tail
    assert not any(secret.group(1) in str(e) for e in await audit.every_entry(engine))


async def _idle(client, engine):
    csrf = await signed_in(client)
    await _age_sessions(engine, seen_at=timedelta(minutes=31))
    refused = await submit(client, "/console/tenants", {"name": "x", "csrf": csrf})
    assert refused.status_code == 401
    assert not await opens(client)
    assert not await opens(client)  # the refusals did not touch it back to life


# --- the attacks above, grouped so that each group shares one running app ----------------


async def test_session_cookies_cannot_be_planted_forged_replayed_or_outlive_their_admin(
    client, engine, world, settings
):
    await _planted_cookie(client)
    await _forged_cookies(client, engine, world)
    await _after_sign_out(client, engine)
    client.cookies.clear()  # each attack below signs in afresh
    await _deleted_user(client, engine)
    client.cookies.clear()
    await _new_admin_token(client, settings)
    client.cookies.clear()
    await _idle(client, engine)


async def test_no_form_changes_anything_without_its_own_sessions_csrf_token(client, engine, world):
    await _crossed_csrf(client, engine)
    await _missing_csrf(client, engine, world)
    await _get_and_overrides(client, engine, world)


async def test_the_sign_in_form_needs_its_token_and_survives_hostile_bodies(client):
    await _sign_in_tokens(client)
    await _sign_in_bodies(client)


@ONE_DATABASE
async def test_next_never_sends_the_browser_to_another_site_nor_into_a_header(client):
    await _next_elsewhere(client)
    await _next_reflected(client)


async def test_stored_markup_is_text_on_every_page_and_data_in_the_chart(client, hostile):
    await _stored_pages(client, hostile)
    await _chart_data(client, hostile)


async def test_reflected_input_stays_inside_its_attribute_or_text(client, world):
    await _reflected_queries(client, world)
    await _pager(client)
    await _error_ids(client)


async def test_hostile_addresses_and_bodies_get_a_4xx_page_never_a_5xx(client, engine, world):
    await _hostile_addresses(client, world)
    await _hostile_bodies(client, engine, world)


async def test_no_credential_in_a_header_or_a_foreign_cookie_opens_the_console(
    client, engine, world
):
    await _tenant_key_carriers(client, engine, world)
    await _admin_headers(client, engine)


async def test_failed_sign_ins_are_throttled_per_source_and_per_user_before_any_hash(
    client, engine, hashes, addresses
):
    await _throttled_per_source(client, engine, hashes, addresses)
    await _throttled_per_user(client, engine, hashes, addresses)
