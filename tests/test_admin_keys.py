"""Admin API: virtual keys, including what the database keeps of them."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from app.storage.database import create_engine
from app.storage.models import Base
from tests.conftest import ADMIN, bearer

pytestmark = pytest.mark.anyio


def _future(**delta) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def test_create_shows_the_secret_once(client, tenant):
    response = await client.post(
        "/admin/keys",
        json={
            "tenant_id": tenant["id"],
            "name": "ci",
            "metadata": {"team": "speech"},
            "expires_at": _future(days=30),
            "allowed_models": ["openai/whisper-1", "gpt-4o-transcribe"],
        },
        headers=ADMIN,
    )
    assert response.status_code == 201
    created = response.json()
    assert created["id"].startswith("key_")
    assert created["secret"].startswith("sk-bf-")
    assert created["display_prefix"] == created["secret"][:12]
    assert created["status"] == "active"
    assert created["allowed_models"] == ["openai/whisper-1", "gpt-4o-transcribe"]

    shown = await client.get(f"/admin/keys/{created['id']}", headers=ADMIN)
    assert "secret" not in shown.json()
    assert created["secret"] not in shown.text
    listed = await client.get("/admin/keys", headers=ADMIN)
    assert created["secret"] not in listed.text


async def test_the_database_never_holds_a_secret(client, key, settings):
    rotated = await client.post(
        f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": 60}, headers=ADMIN
    )
    secrets = [key["secret"], rotated.json()["secret"]]
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                rows = (await conn.execute(text(f"SELECT * FROM {table.name}"))).all()
                dump = repr(rows)
                for secret in secrets:
                    assert secret not in dump
                    assert secret[12:30] not in dump  # not even a fragment past the prefix
    finally:
        await engine.dispose()


async def test_update_fields_and_clear_them_with_null(client, key):
    url = f"/admin/keys/{key['id']}"
    expires = _future(hours=1)
    patched = await client.patch(
        url,
        json={"name": "renamed", "expires_at": expires, "allowed_models": ["whisper-1"]},
        headers=ADMIN,
    )
    assert patched.status_code == 200
    body = patched.json()
    assert body["name"] == "renamed"
    assert datetime.fromisoformat(body["expires_at"]) == datetime.fromisoformat(expires)
    assert body["allowed_models"] == ["whisper-1"]

    cleared = await client.patch(
        url, json={"expires_at": None, "allowed_models": None}, headers=ADMIN
    )
    assert cleared.json()["expires_at"] is None
    assert cleared.json()["allowed_models"] is None
    assert cleared.json()["name"] == "renamed"


async def test_revoke_is_immediate_and_idempotent(client, key):
    assert (await client.get("/v1/quota", headers=bearer(key["secret"]))).status_code == 200
    first = await client.post(f"/admin/keys/{key['id']}/revoke", headers=ADMIN)
    assert first.status_code == 200
    assert first.json()["status"] == "revoked"
    refused = await client.get("/v1/quota", headers=bearer(key["secret"]))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "key_revoked"
    assert refused.headers["x-should-retry"] == "false"
    second = await client.post(f"/admin/keys/{key['id']}/revoke", headers=ADMIN)
    assert second.json()["revoked_at"] == first.json()["revoked_at"]
    rotate = await client.post(f"/admin/keys/{key['id']}/rotate", headers=ADMIN)
    assert rotate.status_code == 409


async def test_rotate_without_grace_ends_the_old_secret_at_once(client, key):
    rotated = await client.post(f"/admin/keys/{key['id']}/rotate", headers=ADMIN)
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["id"] == key["id"]
    assert body["secret"] != key["secret"]
    assert body["display_prefix"] == body["secret"][:12]
    assert body["previous_secret_valid_until"] is None
    assert (await client.get("/v1/quota", headers=bearer(body["secret"]))).json()["key_id"] == key[
        "id"
    ]
    old = await client.get("/v1/quota", headers=bearer(key["secret"]))
    assert old.status_code == 401
    assert "rotation" in old.json()["error"]["message"]


async def test_rotate_with_grace_keeps_the_old_secret_until_it_ends(client, key, settings):
    rotated = (
        await client.post(
            f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": 3600}, headers=ADMIN
        )
    ).json()
    assert rotated["previous_secret_valid_until"] is not None
    for secret in (key["secret"], rotated["secret"]):
        assert (await client.get("/v1/quota", headers=bearer(secret))).status_code == 200

    # End the grace period in the database, as time passing would.
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE key_secrets SET valid_until = :past WHERE valid_until IS NOT NULL"),
                {
                    "past": datetime(2000, 1, 1, tzinfo=UTC)
                    if "postgresql" in settings.database_url
                    else "2000-01-01 00:00:00"
                },
            )
    finally:
        await engine.dispose()
    assert (await client.get("/v1/quota", headers=bearer(key["secret"]))).status_code == 401
    assert (await client.get("/v1/quota", headers=bearer(rotated["secret"]))).status_code == 200

    # A second rotation ends every earlier secret, and never extends a shorter grace.
    again = (await client.post(f"/admin/keys/{key['id']}/rotate", headers=ADMIN)).json()
    assert (await client.get("/v1/quota", headers=bearer(rotated["secret"]))).status_code == 401
    assert (await client.get("/v1/quota", headers=bearer(again["secret"]))).status_code == 200


async def test_delete_hides_the_key_and_refuses_it(client, key):
    deleted = await client.delete(f"/admin/keys/{key['id']}", headers=ADMIN)
    assert deleted.status_code == 204
    assert (await client.get(f"/admin/keys/{key['id']}", headers=ADMIN)).status_code == 404
    assert key["id"] not in (await client.get("/admin/keys", headers=ADMIN)).text
    refused = await client.get("/v1/quota", headers=bearer(key["secret"]))
    assert refused.status_code == 401
    # Its history stays readable: the ledger keeps its rows and usage counts them.
    history = await client.get(f"/admin/keys/{key['id']}/calls", headers=ADMIN)
    assert history.status_code == 200, history.text
    assert history.json()["data"] == []
    unknown = await client.get("/admin/keys/key_never/calls", headers=ADMIN)
    assert unknown.status_code == 404


async def test_list_filters_by_tenant_and_status_and_paginates(client, tenant):
    other = (await client.post("/admin/tenants", json={"name": "globex"}, headers=ADMIN)).json()
    ids = []
    for n in range(5):
        created = await client.post(
            "/admin/keys", json={"tenant_id": tenant["id"], "name": f"k{n}"}, headers=ADMIN
        )
        ids.append(created.json()["id"])
    await client.post("/admin/keys", json={"tenant_id": other["id"], "name": "g"}, headers=ADMIN)
    await client.post(f"/admin/keys/{ids[1]}/revoke", headers=ADMIN)
    await client.patch(
        f"/admin/keys/{ids[2]}", json={"expires_at": _future(seconds=1)}, headers=ADMIN
    )

    seen, cursor = [], None
    while True:
        params = {"tenant_id": tenant["id"], "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/admin/keys", params=params, headers=ADMIN)).json()
        seen += [k["id"] for k in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))

    revoked = await client.get("/admin/keys", params={"status": "revoked"}, headers=ADMIN)
    assert [k["id"] for k in revoked.json()["data"]] == [ids[1]]
    active = await client.get(
        "/admin/keys", params={"status": "active", "tenant_id": tenant["id"]}, headers=ADMIN
    )
    assert ids[1] not in [k["id"] for k in active.json()["data"]]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x"}, "tenant_id"),
        ({"tenant_id": "TENANT"}, "name"),
        ({"tenant_id": "TENANT", "name": "x", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"tenant_id": "TENANT", "name": "x", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"tenant_id": "TENANT", "name": "x", "expires_at": "tomorrow"}, "expires_at"),
        (
            {"tenant_id": "TENANT", "name": "x", "allowed_models": ["whisper", "nope-model"]},
            "allowed_models",
        ),
        ({"tenant_id": "TENANT", "name": "x", "allowed_models": []}, "allowed_models"),
        (
            {"tenant_id": "TENANT", "name": "x", "allowed_models": ["has space"]},
            "allowed_models[0]",
        ),
        ({"tenant_id": "TENANT", "name": "x", "allowed_models": "whisper-1"}, "allowed_models"),
        ({"tenant_id": "TENANT", "name": "x", "secret": "sk-bf-mine"}, "secret"),
        ({"tenant_id": "ten_missing", "name": "x"}, "tenant_id"),
    ],
)
async def test_bad_key_bodies_name_the_field(client, tenant, body, param):
    body = {k: (tenant["id"] if v == "TENANT" else v) for k, v in body.items()}
    response = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param, response.json()


async def test_a_model_the_gateway_does_not_serve_is_never_allowed(client, tenant, key):
    """A typo would make the key useless without a word: refused, naming the entry."""
    body = {"tenant_id": tenant["id"], "name": "x", "allowed_models": ["whisper", "nope-model"]}
    created = await client.post("/admin/keys", json=body, headers=ADMIN)
    updated = await client.patch(
        f"/admin/keys/{key['id']}", json={"allowed_models": ["nope-model"]}, headers=ADMIN
    )
    for response, index in ((created, 1), (updated, 0)):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "model_not_found"
        assert error["message"].startswith(
            f"allowed_models[{index}]: 'nope-model' is not a model on this gateway"
        )
    # Every spelling of a served model is fine: canonical, bare, alias.
    body["allowed_models"] = ["openai/whisper-1", "whisper-large-v3", "whisper"]
    assert (await client.post("/admin/keys", json=body, headers=ADMIN)).status_code == 201


async def test_an_unknown_model_is_allowed_only_when_the_operator_says_so(client, tenant, key):
    """A model configured later can be allowed ahead of time, but only explicitly; the key
    can't use it until the catalog serves it."""
    body = {"tenant_id": tenant["id"], "name": "early", "allowed_models": ["next-model"]}
    refused = await client.post("/admin/keys", json=body, headers=ADMIN)
    assert "allow_unknown_models=true" in refused.json()["error"]["message"]
    params = {"allow_unknown_models": "true"}
    created = await client.post("/admin/keys", json=body, params=params, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["allowed_models"] == ["next-model"]
    patch = {"allowed_models": ["whisper", "later-model"]}
    path = f"/admin/keys/{key['id']}"
    assert (await client.patch(path, json=patch, headers=ADMIN)).status_code == 400
    updated = await client.patch(path, json=patch, params=params, headers=ADMIN)
    assert updated.json()["allowed_models"] == ["whisper", "later-model"]
    models = await client.get("/v1/models", headers=bearer(created.json()["secret"]))
    assert models.json()["data"] == []


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/admin/keys/key_nope", "GET", None),
        ("/admin/keys/key_nope", "PATCH", {"name": "x"}),
        ("/admin/keys/key_nope", "DELETE", None),
        ("/admin/keys/key_nope/revoke", "POST", None),
        ("/admin/keys/key_nope/rotate", "POST", None),
    ],
)
async def test_unknown_key_is_404_everywhere(client, path, method, body):
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "key_not_found"


async def test_grace_period_is_bounded(client, key):
    response = await client.post(
        f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": -1}, headers=ADMIN
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "grace_seconds"
