"""Admin API: tenants, as an admin sees them over HTTP."""

import pytest

from tests.conftest import ADMIN, bearer

pytestmark = pytest.mark.anyio


async def test_create_read_update_deactivate(client):
    created = await client.post(
        "/admin/tenants", json={"name": "acme", "metadata": {"plan": "pro"}}, headers=ADMIN
    )
    assert created.status_code == 201
    tenant = created.json()
    assert tenant["id"].startswith("ten_")
    assert tenant["status"] == "active"
    assert tenant["metadata"] == {"plan": "pro"}

    read = await client.get(f"/admin/tenants/{tenant['id']}", headers=ADMIN)
    assert read.json() == tenant

    patched = await client.patch(
        f"/admin/tenants/{tenant['id']}", json={"name": "acme-corp"}, headers=ADMIN
    )
    assert patched.status_code == 200
    assert patched.json()["name"] == "acme-corp"
    assert patched.json()["metadata"] == {"plan": "pro"}  # untouched

    gone = await client.delete(f"/admin/tenants/{tenant['id']}", headers=ADMIN)
    assert gone.status_code == 200
    assert gone.json()["status"] == "inactive"

    back = await client.patch(
        f"/admin/tenants/{tenant['id']}", json={"status": "active"}, headers=ADMIN
    )
    assert back.json()["status"] == "active"


async def test_deactivating_a_tenant_refuses_its_keys_until_reactivated(client, tenant, key):
    assert (await client.get("/v1/quota", headers=bearer(key["secret"]))).status_code == 200
    await client.delete(f"/admin/tenants/{tenant['id']}", headers=ADMIN)
    refused = await client.get("/v1/quota", headers=bearer(key["secret"]))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "tenant_inactive"
    new_key = await client.post(
        "/admin/keys", json={"tenant_id": tenant["id"], "name": "x"}, headers=ADMIN
    )
    assert new_key.status_code == 409
    assert new_key.json()["error"]["param"] == "tenant_id"

    await client.patch(f"/admin/tenants/{tenant['id']}", json={"status": "active"}, headers=ADMIN)
    assert (await client.get("/v1/quota", headers=bearer(key["secret"]))).status_code == 200


async def test_duplicate_name_is_a_conflict(client, tenant):
    again = await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    assert again.status_code == 409
    assert again.json()["error"]["param"] == "name"
    other = await client.post("/admin/tenants", json={"name": "globex"}, headers=ADMIN)
    renamed = await client.patch(
        f"/admin/tenants/{other.json()['id']}", json={"name": "acme"}, headers=ADMIN
    )
    assert renamed.status_code == 409


async def test_list_is_paginated_newest_first_and_filters_status(client):
    ids = []
    for n in range(5):
        response = await client.post("/admin/tenants", json={"name": f"t{n}"}, headers=ADMIN)
        ids.append(response.json()["id"])
    await client.delete(f"/admin/tenants/{ids[0]}", headers=ADMIN)

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/admin/tenants", params=params, headers=ADMIN)).json()
        assert len(page["data"]) <= 2
        seen += [tenant["id"] for tenant in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    inactive = await client.get("/admin/tenants", params={"status": "inactive"}, headers=ADMIN)
    assert [tenant["id"] for tenant in inactive.json()["data"]] == [ids[0]]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "plan": "pro"}, "plan"),
        ({"name": "ok", "metadata": "nope"}, "metadata"),
        ({"name": "ok", "metadata": {f"k{n}": n for n in range(51)}}, "metadata"),
    ],
)
async def test_bad_bodies_are_400s_naming_the_field(client, body, param):
    response = await client.post("/admin/tenants", json=body, headers=ADMIN)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert response.headers["x-should-retry"] == "false"


async def test_unknown_tenant_is_404(client):
    response = await client.get("/admin/tenants/ten_nope", headers=ADMIN)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
