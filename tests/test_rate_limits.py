"""Per-key rate limits: requests per minute, audio seconds per window, calls in flight;
a burst over several processes admits exactly the limit."""

import asyncio

import pytest

from tests.conftest import ADMIN
from tests.gateway import burst, process_env
from tests.processes import serving_many

MODEL = "openai/whisper-1"


def test_requests_per_minute(gateway):
    key = gateway.new_key(rate_limits={"requests_per_minute": 3})
    statuses = [gateway.post_audio(key, MODEL).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = gateway.post_audio(key, MODEL)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert "3 requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert len(gateway.upstream_requests()) == 3
    assert gateway.calls(key)[0]["status"] == "rejected"
    assert gateway.calls(key)[0]["http_status"] == 429

    quota = gateway.http.get("/v1/quota", headers={"authorization": f"Bearer {key['secret']}"})
    assert quota.json()["rate_limits"]["requests_per_minute"] == 3
    assert quota.json()["rate_use"]["requests_last_minute"] == 3


def test_audio_seconds_per_window(gateway):
    key = gateway.new_key(rate_limits={"audio_seconds_per_window": 10, "window_seconds": 3600})
    assert gateway.post_audio(key, MODEL).status_code == 200  # 5.8 s of 10
    refused = gateway.post_audio(key, MODEL)  # 11.7 s would exceed 10
    assert refused.status_code == 429
    assert "10 audio seconds per 3600 s" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) > 3500


def test_calls_in_flight(gateway, fake_provider):
    key = gateway.new_key(rate_limits={"max_concurrent": 1})
    fake_provider.script.latency = 0.5
    try:
        answers = sorted(
            asyncio.run(burst([gateway.url], key["secret"], 2)), key=lambda r: r.status_code
        )
    finally:
        fake_provider.script.latency = 0.0
    assert [r.status_code for r in answers] == [200, 429]
    assert "1 call in flight" in answers[1].json()["error"]["message"]
    assert gateway.post_audio(key, MODEL).status_code == 200  # the slot is free again


def test_limits_are_updated_and_cleared_by_admins(gateway):
    key = gateway.new_key(rate_limits={"requests_per_minute": 1})
    assert gateway.post_audio(key, MODEL).status_code == 200
    assert gateway.post_audio(key, MODEL).status_code == 429
    url = f"/admin/keys/{key['id']}"
    gateway.admin("PATCH", url, json={"rate_limits": {"requests_per_minute": 5}})
    assert gateway.post_audio(key, MODEL).status_code == 200
    cleared = gateway.admin("PATCH", url, json={"rate_limits": None})
    assert cleared["rate_limits"] is None
    bad = gateway.http.patch(url, json={"rate_limits": {"requests_per_minute": 0}}, headers=ADMIN)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "rate_limits.requests_per_minute"


def test_a_burst_across_processes_admits_exactly_the_limit(gateway, database_url, tmp_path):
    """4 processes on PostgreSQL, 2 on one SQLite file: 100 calls, 10 per minute, 10 pass."""
    processes = 4 if database_url.startswith("postgresql") else 2
    key = gateway.new_key(rate_limits={"requests_per_minute": 10})
    env = process_env(database_url, gateway.fake, tmp_path)
    with serving_many(env, tmp_path, processes) as urls:
        statuses = [r.status_code for r in asyncio.run(burst(urls, key["secret"], 100))]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 90
    assert len(gateway.upstream_requests()) == 10


@pytest.mark.parametrize(
    "limits",
    [{"requests_per_minute": -1}, {"window_seconds": 0}, {"max_concurrent": "many"}, {"rpm": 5}],
)
def test_bad_limits_are_400(gateway, limits):
    tenant = gateway.admin("POST", "/admin/tenants", json={"name": "t"})
    response = gateway.http.post(
        "/admin/keys",
        json={"tenant_id": tenant["id"], "name": "k", "rate_limits": limits},
        headers=ADMIN,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("rate_limits")
