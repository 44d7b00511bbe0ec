"""Cross-cutting behaviour of the app: request ids, error envelopes, probes, OpenAPI."""

import pytest

from app.routes import audio
from tests import openapi_drift
from tests.conftest import ADMIN, bearer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/nowhere", 404),
        ("PUT", "/healthz", 405),
        ("GET", "/v1/quota", 401),
    ],
)
async def test_every_response_carries_a_fresh_request_id(client, method, path, status):
    first = await client.request(method, path)
    second = await client.request(method, path)
    assert first.status_code == status
    assert first.headers["x-request-id"].startswith("req_")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    if status >= 400:
        assert set(first.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"name": ', "not valid JSON"),
        (b"name=acme", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"", "JSON request body is required"),
    ],
)
async def test_bad_json_bodies_are_400_envelopes(client, body, needle):
    response = await client.post(
        "/admin/tenants", content=body, headers={**ADMIN, "content-type": "application/json"}
    )
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]


async def test_readyz_reports_the_schema_revision(client):
    from app.storage.migrate import head_revision

    response = await client.get("/readyz")
    assert response.json() == {"status": "ready", "schema_revision": head_revision()}


async def test_openapi_documents_the_admin_and_tenant_api(client):
    spec = (await client.get("/schema/openapi.json")).json()
    paths = spec["paths"]
    for path in [
        "/admin/tenants",
        "/admin/tenants/{tenant_id}",
        "/admin/keys",
        "/admin/keys/{key_id}",
        "/admin/keys/{key_id}/revoke",
        "/admin/keys/{key_id}/rotate",
        "/v1/quota",
        "/healthz",
        "/readyz",
    ]:
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    key_create = next(value for name, value in schemas.items() if name.endswith("KeyCreate"))
    assert {"tenant_id", "name", "expires_at", "allowed_models", "metadata"} <= set(
        key_create["properties"]
    )
    assert set(spec["components"]["securitySchemes"]) == {"virtualKey", "adminToken", "adminUser"}


async def test_an_upload_that_fails_unexpectedly_is_a_500_envelope(client, key, monkeypatch):
    """Uploads are answered below Litestar's routing (``routes.audio.lean_uploads``): a bug
    there still gets the error envelope, the request id and its count in the metrics, and
    says nothing of itself."""

    async def broken(*_: object) -> None:
        raise RuntimeError("a secret detail of the bug")

    monkeypatch.setattr(audio, "handle_call", broken)
    # The bug is planted: its 500 is not an answer for the OpenAPI document to list.
    planted = ("post", "/v1/audio/transcriptions", 500)
    seen_before = planted in openapi_drift.SEEN
    response = await client.post(
        "/v1/audio/transcriptions",
        headers=bearer(key["secret"]),
        data={"model": "whisper-1"},
        files={"file": ("speech.wav", b"RIFF", "audio/wav")},
    )
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"
    assert "secret detail" not in response.text
    assert response.headers["x-request-id"].startswith("req_")
    metrics = (await client.get("/metrics")).text
    counted = 'route="/v1/audio/transcriptions",status="500"} 1.0'
    assert any(line.endswith(counted) for line in metrics.splitlines()), metrics
    if not seen_before:
        openapi_drift.SEEN.discard(planted)
