"""Provider failures: fallbacks in order, clean 502/504s, failed calls recorded at zero cost."""

import asyncio
import concurrent.futures
import time
from datetime import timedelta

import httpx
import openai
import pytest

from app.billing import ledger
from app.storage import database
from app.storage.database import create_engine
from tests.fake_provider import TEXT
from tests.gateway import FIXTURES
from tests.processes import wav_of_size

SPEECH = FIXTURES / "speech.wav"


def _transcribe(gateway, key, model):
    with SPEECH.open("rb") as audio:
        return gateway.sdk(key["secret"]).audio.transcriptions.create(model=model, file=audio)


def test_a_5xx_falls_back_to_the_next_provider(gateway):
    key = gateway.new_key()
    gateway.script({"status": 500})
    result = _transcribe(gateway, key, "flaky/whisper-1")
    assert result.text == TEXT
    assert result.to_dict()["extra_fields"]["provider"] == "openai"
    assert len(gateway.upstream_requests()) == 2
    (call,) = gateway.calls(key)
    assert call["status"] == "succeeded"
    assert call["provider"] == "openai"
    assert call["attempts"] == 2
    assert call["model_requested"] == "flaky/whisper-1"


def test_a_refused_connection_falls_back(gateway):
    key = gateway.new_key()
    result = _transcribe(gateway, key, "down/whisper-1")
    assert result.text == TEXT
    (call,) = gateway.calls(key)
    assert call["provider"] == "groq"
    assert call["attempts"] == 2
    # Groq's 10 s minimum applies to the provider that served the call.
    assert call["cost_usd"] == "0.000308333"


def test_a_fallback_that_costs_more_holds_the_difference_first(gateway):
    """flaky/cheap ($0.001 a minute) holds 6 s of itself; its fallback costs six times as
    much, so the hold is raised before the fallback is tried, and the call costs that."""
    key = gateway.new_key(budgets=[{"limit_usd": "0.001", "period": "day"}])
    gateway.script({"status": 500})
    assert _transcribe(gateway, key, "flaky/cheap").text == TEXT
    (call,) = gateway.calls(key)
    assert (call["provider"], call["attempts"]) == ("openai", 2)
    assert (call["cost_usd"], call["hold_usd"], call["review"]) == (
        "0.000600000",
        "0.000600000",
        None,
    )
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert (budget["spent_usd"], budget["held_usd"]) == ("0.000600000", "0.000000000")


def test_a_fallback_the_budget_cannot_hold_is_not_tried(gateway):
    key = gateway.new_key(budgets=[{"limit_usd": "0.00035", "period": "day"}])
    gateway.script({"status": 500})
    with pytest.raises(openai.InternalServerError) as raised:
        _transcribe(gateway, key, "flaky/cheap")
    assert raised.value.status_code == 502
    assert len(gateway.upstream_requests()) == 1  # the fallback never went out
    (call,) = gateway.calls(key)
    assert (call["status"], call["cost_usd"], call["attempts"]) == ("failed", "0.000000000", 1)
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert (budget["spent_usd"], budget["held_usd"]) == ("0.000000000", "0.000000000")


def test_5xx_without_fallback_is_a_502_at_zero_cost(gateway):
    key = gateway.new_key()
    gateway.script(
        {"status": 503, "body": {"error": {"message": "overloaded", "type": "server_error"}}}
    )
    with pytest.raises(openai.InternalServerError) as raised:
        _transcribe(gateway, key, "openai/whisper-1")
    assert raised.value.status_code == 502
    assert raised.value.body["message"] == "openai: overloaded"
    (call,) = gateway.calls(key)
    assert call["status"] == "failed"
    assert call["http_status"] == 502
    assert call["cost_usd"] == "0.000000000"


def test_a_timeout_is_a_504(gateway):
    key = gateway.new_key()
    gateway.script({"delay": 1.5})
    with pytest.raises(openai.APIStatusError) as raised:
        _transcribe(gateway, key, "slow/whisper-1")
    assert raised.value.status_code == 504
    assert "did not answer within 0.5 s" in raised.value.body["message"]
    (call,) = gateway.calls(key)
    assert call["status"] == "failed"
    assert call["http_status"] == 504
    assert call["error_code"] == "upstream_timeout"


def test_provider_rate_limit_passes_through_as_429(gateway):
    key = gateway.new_key()
    gateway.script(
        {
            "status": 429,
            "body": {
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
        }
    )
    with pytest.raises(openai.RateLimitError) as raised:
        _transcribe(gateway, key, "openai/whisper-1")
    assert raised.value.body["code"] == "rate_limit_exceeded"
    assert raised.value.body["message"].startswith("openai: ")


def test_provider_rejecting_its_own_key_names_the_provider(gateway):
    key = gateway.new_key()
    gateway.script(
        {
            "status": 401,
            "body": {
                "error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}
            },
        }
    )
    with pytest.raises(openai.AuthenticationError) as raised:
        _transcribe(gateway, key, "openai/whisper-1")
    assert raised.value.body["message"] == "openai: Incorrect API key provided."
    assert raised.value.response.headers["x-should-retry"] == "false"


def test_an_upload_the_provider_never_reads_times_out_uncharged(gateway):
    """The provider takes the connection and never reads: the upload stalls. It ends at
    the provider's timeout (0.5 s here), charged nothing, since it never had the file."""
    key = gateway.new_key()
    gateway.script({"stall_upload": 2})
    started = time.monotonic()
    response = gateway.post_audio(key, "slow/whisper-1", wav_of_size(20_000_000))
    assert response.status_code == 504
    assert time.monotonic() - started < 1.8
    assert "nothing was charged" in response.json()["error"]["message"]
    (call,) = gateway.calls(key)
    assert (call["status"], call["cost_usd"], call["review"]) == ("failed", "0.000000000", None)
    (attempt,) = call["upstream_attempts"]
    assert (attempt["outcome"], attempt["error"]) == ("failed", "timeout")
    # The abandoned connection closes once its last buffered bytes are read: the provider
    # reads them when its stall ends (a socket that never drains is left to the provider).
    time.sleep(max(0.0, started + 2.5 - time.monotonic()))


def _call_while(gateway, key, behaviour, audio, during) -> httpx.Response:
    """A call the provider takes its time over (``behaviour``): ``during`` runs meanwhile."""
    gateway.script(behaviour)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(gateway.post_audio, key, "openai/whisper-1", audio)
        time.sleep(0.7)
        during()
        return answer.result(timeout=30)


def _sweep_everything_open(database_url: str) -> int:
    """What a sweeper does to rows it takes for lost, done now to every open row."""

    async def run() -> int:
        engine = create_engine(database_url)
        try:
            later = database.utcnow() + timedelta(hours=1)
            return await ledger.sweep(engine, reserved_before=later, forwarded_before=later)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_a_call_swept_before_its_last_bytes_went_is_never_completed(gateway, database_url):
    """The sweeper finished the row (as it does for a lost worker) while the upload was
    stalled (the socket buffers full): the attempt stops before the provider has it
    whole, and nothing is billed."""
    key = gateway.new_key()

    def sweep() -> None:
        assert _sweep_everything_open(database_url) == 1

    response = _call_while(gateway, key, {"stall_upload": 1.5}, wav_of_size(20_000_000), sweep)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "call_expired"
    assert "nothing was billed" in error["message"]
    (call,) = gateway.calls(key)  # released by the sweep, then settled as what happened
    assert (call["status"], call["error_code"]) == ("failed", "call_expired")
    assert (call["cost_usd"], call["review"]) == ("0.000000000", None)
    assert not any("billed_seconds" in r for r in gateway.upstream_requests())


def test_a_call_swept_while_the_provider_worked_is_corrected_when_it_answers(gateway, database_url):
    """Swept too early (charged its expected cost for review) while the provider was still
    working: the answer comes, and the row is corrected to what the call really cost."""
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "day"}])

    def sweep() -> None:
        assert _sweep_everything_open(database_url) == 1

    response = _call_while(gateway, key, {"delay": 1.5}, b"", sweep)
    assert response.status_code == 200, response.text
    (call,) = gateway.calls(key)
    assert (call["status"], call["cost_usd"], call["review"]) == ("succeeded", "0.000600000", None)
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert (budget["spent_usd"], budget["held_usd"]) == ("0.000600000", "0.000000000")
