"""Who gets in: tenant keys in every carrier, admins by token or user, and never one as
the other."""

import base64
import re

import pytest

from app.access import admin_users, key_format
from app.ops.audit import Actor
from tests.conftest import ADMIN, ADMIN_TOKEN, bearer

ACTOR = Actor("test")

pytestmark = pytest.mark.anyio


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    "carrier",
    [
        lambda s: {"authorization": f"Bearer {s}"},
        lambda s: {"x-bf-vk": s},
        lambda s: {"x-api-key": s},
        lambda s: {"api-key": s},
        lambda s: _basic("anything", s),
        # An OpenAI client sending a provider key as bearer and the Earmark key beside it.
        lambda s: {"authorization": "Bearer sk-proj-provider-key", "x-bf-vk": s},
    ],
    ids=["bearer", "x-bf-vk", "x-api-key", "api-key", "basic", "bearer-plus-x-bf-vk"],
)
async def test_every_key_carrier_reaches_quota(client, key, tenant, carrier):
    response = await client.get("/v1/quota", headers=carrier(key["secret"]))
    assert response.status_code == 200, response.text
    quota = response.json()
    assert quota["key_id"] == key["id"]
    assert quota["tenant_id"] == tenant["id"]
    assert quota["tenant_name"] == "acme"
    assert quota["status"] == "active"
    assert quota["allowed_models"] is None
    assert "secret" not in quota


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({}, "didn't provide an API key"),
        ({"authorization": "Bearer "}, "didn't provide an API key"),
        ({"authorization": "Bearer sk-proj-abc"}, "not an Earmark key"),
        ({"authorization": "Basic !!!notbase64"}, "didn't provide an API key"),
        ({"authorization": "Bearer " + key_format.generate()}, "Incorrect API key provided"),
        ({"x-api-key": "sk-bf-" + "a" * 49}, "checksum"),
        ({"authorization": "Bearer " + ADMIN_TOKEN}, "not an Earmark key"),
    ],
    ids=["none", "empty", "foreign", "garbage-basic", "unknown", "bad-checksum", "admin-token"],
)
async def test_missing_or_unknown_keys_are_401_in_the_openai_envelope(client, headers, needle):
    response = await client.get("/v1/quota", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert response.headers["x-request-id"].startswith("req_")


async def test_an_error_body_never_echoes_the_secret(client, key):
    mistyped = key["secret"][:-1] + ("A" if key["secret"][-1] != "A" else "B")
    response = await client.get("/v1/quota", headers=bearer(mistyped))
    assert response.status_code == 401
    assert mistyped not in response.text
    assert key["secret"][12:] not in response.text


async def test_an_expired_key_is_403(client, key, settings):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from app.storage.database import create_engine, write
    from app.storage.models import api_keys

    engine = create_engine(settings.database_url)
    try:
        async with write(engine) as conn:
            await conn.execute(
                update(api_keys).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    finally:
        await engine.dispose()
    response = await client.get("/v1/quota", headers=bearer(key["secret"]))
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "key_expired"
    assert re.search(r"expired at \d{4}-\d\d-\d\dT[\d:.]+Z\.$", error["message"]), error
    listed = await client.get("/admin/keys", params={"status": "expired"}, headers=ADMIN)
    assert [k["id"] for k in listed.json()["data"]] == [key["id"]]


@pytest.mark.parametrize(
    "carrier",
    [
        lambda s: {"authorization": f"Bearer {s}"},
        lambda s: {"x-bf-vk": s},
        lambda s: _basic("admin", s),
    ],
)
async def test_a_tenant_key_never_opens_admin(client, key, carrier):
    response = await client.get("/admin/keys", headers=carrier(key["secret"]))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_key_not_admin"


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": "Token x"}],
)
async def test_admin_needs_credentials(client, headers):
    response = await client.get("/admin/tenants", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_credentials"
    assert response.headers["www-authenticate"].startswith("Basic")


async def test_admin_users_log_in_with_basic_auth(client, engine):
    await admin_users.create_admin_user(engine, "alice", "correct horse battery", ACTOR)
    ok = await client.get("/admin/tenants", headers=_basic("alice", "correct horse battery"))
    assert ok.status_code == 200
    for user, password in [("alice", "wrong password!!"), ("mallory", "correct horse battery")]:
        refused = await client.get("/admin/tenants", headers=_basic(user, password))
        assert refused.status_code == 401


async def test_admin_passwords_are_argon2id_hashes(engine):
    from sqlalchemy import select

    from app.storage.models import admin_users as table

    await admin_users.create_admin_user(engine, "bob", "a long enough password", ACTOR)
    async with engine.connect() as conn:
        stored = (await conn.execute(select(table.c.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$")
    assert "a long enough password" not in stored


async def test_admin_user_rules(engine):
    from app.errors import Conflict, InvalidRequest

    with pytest.raises(InvalidRequest, match="12 characters"):
        await admin_users.create_admin_user(engine, "carol", "short", ACTOR)
    with pytest.raises(InvalidRequest):
        await admin_users.create_admin_user(engine, "has:colon", "a long enough password", ACTOR)
    await admin_users.create_admin_user(engine, "carol", "a long enough password", ACTOR)
    with pytest.raises(Conflict):
        await admin_users.create_admin_user(engine, "carol", "another long password", ACTOR)
