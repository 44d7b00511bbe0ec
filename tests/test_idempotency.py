"""Idempotency-Key on the audio endpoints: the official SDK's own retries after a timeout
are answered with the first call's answer and billed once; duplicates running at once
reach the provider once; a reused key with another request is a 422; a failed call lets
its retry run anew."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.gateway import SPEECH, Gateway, process_env
from tests.processes import serving_many

COST = "0.000600000"  # speech.wav, 6 s at $0.006 a minute


def _post(gateway: Gateway, key: dict[str, Any], idempotency_key: str, **fields: Any) -> Any:
    return gateway.post_audio(
        key, "openai/whisper-1", headers={"idempotency-key": idempotency_key}, **fields
    )


def _spent(gateway: Gateway, key: dict[str, Any]) -> str:
    return gateway.admin("GET", f"/admin/budgets/{key['budgets'][0]['id']}")["spent_usd"]


def test_the_sdks_retry_after_a_timeout_is_answered_once_and_billed_once(gateway):
    """The provider takes 1.5 s; the SDK gives up after 1 s and retries with the same
    headers, so with the same key: it waits while the first runs (409, Retry-After), then
    gets its answer. One upstream call, one charge, the replay counted on the row."""
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "month"}])
    gateway.script({"delay": 1.5})
    client = gateway.sdk(key["secret"]).with_options(timeout=1.0, max_retries=5)
    retried = client.audio.transcriptions.with_raw_response.create(
        model="openai/whisper-1",
        file=("speech.wav", SPEECH, "audio/wav"),
        extra_headers={"Idempotency-Key": "upload-7f3a"},
    )
    assert retried.headers["idempotent-replayed"] == "true"
    first = gateway.calls(key)
    assert len(first) == 1 and first[0]["status"] == "succeeded"
    assert len(gateway.upstream_requests()) == 1
    assert _spent(gateway, key) == COST
    assert first[0]["replays"] >= 1 and first[0]["cost_usd"] == COST
    # Later retries too, as long as the answer is kept.
    again = _post(gateway, key, "upload-7f3a")
    assert again.status_code == 200 and again.json()["text"] == retried.parse().text
    assert again.headers["idempotent-replayed"] == "true" and "x-bf-cache" in again.headers
    assert len(gateway.upstream_requests()) == 1 and _spent(gateway, key) == COST


def test_duplicates_at_once_reach_the_provider_once(gateway):
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "month"}])
    gateway.script({"delay": 0.5})
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _post(gateway, key, "dup-1"), range(6)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 409}
    running = [a for a in answers if a.status_code == 409]
    assert all(a.json()["error"]["code"] == "idempotency_key_in_use" for a in running)
    assert all(int(a.headers["retry-after"]) >= 1 for a in running)
    time.sleep(0.1)
    assert _post(gateway, key, "dup-1").status_code == 200
    assert len(gateway.upstream_requests()) == 1 and _spent(gateway, key) == COST


def test_a_key_reused_for_another_request_is_refused(gateway):
    key = gateway.new_key()
    assert _post(gateway, key, "k-1").status_code == 200
    other = _post(gateway, key, "k-1", language="fr")
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert "k-1" in other.json()["error"]["message"]
    # Another tenant key may use the same Idempotency-Key for its own request.
    assert _post(gateway, gateway.new_key("other"), "k-1", language="fr").status_code == 200
    assert len(gateway.upstream_requests()) == 2


def test_a_failed_call_lets_its_retry_run(gateway):
    key = gateway.new_key()
    gateway.script({"status": 500})
    assert _post(gateway, key, "k-2").status_code == 502
    retried = _post(gateway, key, "k-2")
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    assert len(gateway.upstream_requests()) == 2


@pytest.mark.parametrize(
    ("value", "fields"),
    [("x" * 256, {}), ("clé", {}), ("tab\there", {}), ("ok", {"stream": "true"})],
)
def test_a_bad_key_or_a_stream_is_a_400(gateway, value, fields):
    key = gateway.new_key()
    answer = gateway.http.post(
        "/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {key['secret']}", "idempotency-key": value.encode()},
        data={"model": "openai/gpt-4o-transcribe", **fields},
        files={"file": ("speech.wav", SPEECH, "audio/wav")},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "Idempotency-Key"
    assert gateway.upstream_requests() == []


def test_the_sdk_sees_a_conflict_it_must_not_retry_as_an_error(gateway):
    key = gateway.new_key()
    assert _post(gateway, key, "k-3").status_code == 200
    with pytest.raises(openai.UnprocessableEntityError):
        gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="openai/whisper-1",
            file=("other.wav", SPEECH + b"\x00\x00", "audio/wav"),
            extra_headers={"Idempotency-Key": "k-3"},
        )


def test_duplicates_on_several_processes_reach_the_provider_once(gateway, database_url, tmp_path):
    """The same retry sent at once to 4 gateway processes on PostgreSQL (2 on SQLite): one
    claims the key and calls the provider; the others wait (409) and then replay."""
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "month"}])
    gateway.script({"delay": 1.0})
    processes = 4 if database_url.startswith("postgresql") else 2
    env = process_env(database_url, gateway.fake, tmp_path)

    async def send(urls: list[str]) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{urls[n % len(urls)]}/v1/audio/transcriptions",
                        headers={
                            "authorization": f"Bearer {key['secret']}",
                            "idempotency-key": "across",
                        },
                        data={"model": "openai/whisper-1"},
                        files={"file": ("speech.wav", SPEECH, "audio/wav")},
                    )
                    for n in range(2 * processes)
                )
            )

    with serving_many(env, tmp_path, processes) as urls:
        first = asyncio.run(send(urls))
        time.sleep(1.5)
        again = asyncio.run(send(urls))
    assert sorted({r.status_code for r in first}) in ([200], [200, 409])
    assert [r.status_code for r in again] == [200] * len(again)
    assert all(r.headers.get("idempotent-replayed") == "true" for r in again)
    assert len({r.json()["text"] for r in again}) == 1
    assert len(gateway.upstream_requests()) == 1 and _spent(gateway, key) == COST


def test_a_failure_billed_for_review_is_kept_so_its_retry_is_not_billed_again(gateway):
    """The provider did the work and reset: the call is charged for review (502). Its
    retry with the key gets the same 502 again, unbilled, and never reaches the provider."""
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "month"}])
    gateway.script({"reset": "after_work"})
    first = _post(gateway, key, "k-4")
    assert first.status_code == 502 and _spent(gateway, key) == COST
    again = _post(gateway, key, "k-4")
    assert again.status_code == 502 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-should-retry"] == "false"
    assert len(gateway.upstream_requests()) == 1 and _spent(gateway, key) == COST
