"""Several gateway processes on one database: a revoke through one is effective on the
other at once, and `--workers 2` serves from both workers."""

import httpx

from tests.conftest import ADMIN, ADMIN_TOKEN, bearer
from tests.gateway import scrape, total
from tests.processes import earmark_env, serving


def test_revoke_through_one_process_is_effective_on_another(database_url, tmp_path):
    env = earmark_env(database_url, EARMARK_ADMIN_TOKEN=ADMIN_TOKEN)
    with serving(env, tmp_path / "a.log") as a, serving(env, tmp_path / "b.log") as b:
        tenant = httpx.post(f"{a}/admin/tenants", json={"name": "acme"}, headers=ADMIN).json()
        key = httpx.post(
            f"{a}/admin/keys", json={"tenant_id": tenant["id"], "name": "k"}, headers=ADMIN
        ).json()
        assert httpx.get(f"{b}/v1/quota", headers=bearer(key["secret"])).status_code == 200

        assert httpx.post(f"{a}/admin/keys/{key['id']}/revoke", headers=ADMIN).status_code == 200
        refused = httpx.get(f"{b}/v1/quota", headers=bearer(key["secret"]))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "key_revoked"

        rotated_key = httpx.post(
            f"{b}/admin/keys", json={"tenant_id": tenant["id"], "name": "r"}, headers=ADMIN
        ).json()
        new = httpx.post(f"{b}/admin/keys/{rotated_key['id']}/rotate", headers=ADMIN).json()
        assert httpx.get(f"{a}/v1/quota", headers=bearer(rotated_key["secret"])).status_code == 401
        assert httpx.get(f"{a}/v1/quota", headers=bearer(new["secret"])).status_code == 200


def test_two_workers_serve_the_same_database(database_url, tmp_path):
    env = earmark_env(database_url, EARMARK_ADMIN_TOKEN=ADMIN_TOKEN)
    with serving(env, tmp_path / "w.log", "--workers", "2") as base:
        tenant = httpx.post(f"{base}/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        assert tenant.status_code == 201
        key = httpx.post(
            f"{base}/admin/keys",
            json={"tenant_id": tenant.json()["id"], "name": "k"},
            headers=ADMIN,
        ).json()
        # New connections spread over both workers; every one must authenticate the key.
        for _ in range(20):
            with httpx.Client() as fresh:
                assert (
                    fresh.get(f"{base}/v1/quota", headers=bearer(key["secret"])).status_code == 200
                )
        # Whichever worker answers the scrape counts every worker's requests.
        for _ in range(4):  # scrape() opens a new connection each time
            samples = scrape(base)
            quota = {"route": "/v1/quota", "method": "GET", "status": "200"}
            assert total(samples, "earmark_http_requests_total", **quota) == 20
