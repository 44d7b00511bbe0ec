"""What the provider billed is what the ledger charges, whatever fails: a timeout or a
reset after the provider did the work is charged its expected cost and listed for review;
a reset during the upload is not charged, and sent once more; a fallback after an
uncertain attempt is charged too; an overrun of the hold is charged and flagged; and the
tenant is told which it was."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import openai
import pytest
from openai import OpenAI

from tests.audio_files import tone, wav
from tests.gateway import FIXTURES, Gateway, scrape, total
from tests.processes import wav_of_size

SPEECH = FIXTURES / "speech.wav"
COST = "0.000600000"  # speech.wav at $0.006 a minute: 6 s, billed in whole seconds


def _billed(gateway: Gateway, wait_for: int = 0) -> list[float]:
    """What the fake provider billed (it finishes its work after the gateway gave up)."""
    deadline = time.monotonic() + 5
    while True:
        billed = [r["billed_seconds"] for r in gateway.upstream_requests() if "billed_seconds" in r]
        if len(billed) >= wait_for or time.monotonic() > deadline:
            return billed
        time.sleep(0.05)


def _review(gateway: Gateway) -> list[dict]:
    return gateway.admin("GET", "/admin/calls", params={"review": "true"})["data"]


@pytest.mark.parametrize(
    ("model", "behaviour", "status", "kind"),
    [
        ("slow/whisper-1", {"delay": 1.5}, 504, "timeout"),
        ("openai/whisper-1", {"reset": "after_work"}, 502, "reset"),
    ],
    ids=["answer-after-the-timeout", "reset-after-the-work"],
)
def test_work_the_provider_did_without_answering_is_charged_for_review(
    gateway: Gateway, model, behaviour, status, kind
):
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "day"}])
    gateway.script(behaviour)
    with pytest.raises(openai.APIStatusError) as raised, SPEECH.open("rb") as audio:
        gateway.sdk(key["secret"]).audio.transcriptions.create(model=model, file=audio)
    assert raised.value.status_code == status
    message = raised.value.body["message"]
    assert "may have done the work" in message and f"${COST}" in message
    assert _billed(gateway, wait_for=1)  # it did the work, and bills it
    (call,) = gateway.calls(key)
    assert (call["status"], call["cost_usd"], call["review"]) == ("failed", COST, "uncertain")
    assert call["usage_source"] == "expected"
    (attempt,) = call["upstream_attempts"]
    assert (attempt["outcome"], attempt["error"]) == ("uncertain", kind)
    assert attempt["charged_nanos"] == 600_000
    assert [c["id"] for c in _review(gateway)] == [call["id"]]
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert (budget["spent_usd"], budget["held_usd"]) == (COST, "0.000000000")
    samples = scrape(gateway.url)
    assert total(samples, "earmark_uncertain_attempts_total", provider=model.split("/")[0]) == 1


def test_an_sdk_does_not_retry_work_a_provider_may_have_billed(gateway: Gateway):
    """The OpenAI SDK retries a 5xx twice by default; after an uncertain attempt the
    answer says x-should-retry: false, so the work is not sent (and billed) again."""
    key = gateway.new_key()
    gateway.script({"reset": "after_work"})
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=key["secret"])  # default retries
    try:
        with pytest.raises(openai.APIStatusError) as raised, SPEECH.open("rb") as audio:
            client.audio.transcriptions.create(model="openai/whisper-1", file=audio)
    finally:
        client.close()
    assert raised.value.status_code == 502
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(_billed(gateway, wait_for=1)) == 1
    assert len(gateway.calls(key)) == 1


def test_a_connection_dropped_during_the_upload_is_sent_once_more(gateway: Gateway):
    """The provider closed the connection before it had the whole request (as it does to
    a pooled keep-alive connection it let go idle): it cannot have done the work, so the
    request goes once more, and the tenant gets its answer, billed once."""
    key = gateway.new_key()
    gateway.script({"reset": "during_upload"})
    big = wav_of_size(20_000_000)  # larger than the socket buffers: the upload is cut
    result = gateway.sdk(key["secret"]).audio.transcriptions.create(
        model="openai/whisper-1", file=("a.wav", big)
    )
    assert result.text
    assert len(_billed(gateway)) == 1
    (call,) = gateway.calls(key)
    assert (call["status"], call["review"]) == ("succeeded", None)
    assert Decimal(call["cost_usd"]) == Decimal(call["expected_usd"]) > 0
    assert [(a["outcome"], a["error"], a["charged_nanos"]) for a in call["upstream_attempts"]] == [
        ("failed", "dropped", 0),
        ("answered", None, 0),
    ]
    samples = scrape(gateway.url)
    assert total(samples, "earmark_upstream_errors_total", provider="openai", kind="dropped") == 1


def test_a_reset_during_the_upload_is_not_charged(gateway: Gateway):
    key = gateway.new_key()
    gateway.script({"reset": "during_upload"}, {"reset": "during_upload"})  # and its retry
    big = wav_of_size(20_000_000)  # larger than the socket buffers: the upload is cut
    response = gateway.post_audio(key, "openai/whisper-1", big)
    assert response.status_code == 502, response.text
    message = response.json()["error"]["message"]
    assert "before it had the whole request" in message
    assert "nothing was charged" in message
    assert "x-should-retry" not in response.headers  # an SDK may send it again
    assert _billed(gateway) == []
    (call,) = gateway.calls(key)
    assert (call["cost_usd"], call["review"]) == ("0.000000000", None)
    attempts = call["upstream_attempts"]
    assert [(a["outcome"], a["error"]) for a in attempts] == [("failed", "dropped")] * 2
    assert all(a["bytes_sent"] < 20_000_000 for a in attempts)


def test_a_refusal_while_the_upload_is_still_going_reaches_the_tenant(gateway: Gateway):
    """A provider (or its edge) may refuse on the headers, with most of a large upload
    still to come: its 429 is what the tenant gets, not a 502 for a lost connection, and
    the upload is not sent again."""
    key = gateway.new_key()
    gateway.script({"status": 429, "early": True})
    big = wav_of_size(20_000_000)  # far more than the socket buffers hold
    with pytest.raises(openai.RateLimitError) as raised:
        gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="openai/whisper-1", file=("a.wav", big)
        )
    assert raised.value.body["code"] == "rate_limit_exceeded"
    assert _billed(gateway) == []
    (call,) = gateway.calls(key)
    assert (call["http_status"], call["cost_usd"], call["review"]) == (429, "0.000000000", None)
    (attempt,) = call["upstream_attempts"]
    assert (attempt["outcome"], attempt["http_status"]) == ("refused", 429)
    assert (  # and the next call goes
        gateway.sdk(key["secret"])
        .audio.transcriptions.create(model="openai/whisper-1", file=("a.wav", wav_of_size(100_000)))
        .text
    )


def test_a_fallback_after_an_uncertain_attempt_is_charged_as_well(gateway: Gateway):
    """Both providers may bill: the ledger shows both attempts and charges both."""
    key = gateway.new_key()
    gateway.script({"reset": "after_work"})
    with SPEECH.open("rb") as audio:
        result = gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="flaky/whisper-1", file=audio
        )
    assert result.to_dict()["extra_fields"]["provider"] == "openai"
    assert len(_billed(gateway)) == 2
    (call,) = gateway.calls(key)
    assert (call["status"], call["review"]) == ("succeeded", "uncertain")
    assert call["cost_usd"] == "0.001200000"
    assert [(a["provider"], a["outcome"]) for a in call["upstream_attempts"]] == [
        ("flaky", "uncertain"),
        ("openai", "answered"),
    ]


@pytest.mark.parametrize(
    ("behaviour", "says", "kind"),
    [
        ({"break_stream_after": 3}, "broke off the stream", "broken_stream"),
        # An event larger than a transcript can be is not held: the stream ends there.
        (
            {"answer_bytes": 17 << 20, "as": "event"},
            "openai sent an event larger than 16 MiB",
            "malformed",
        ),
    ],
    ids=["broken-off", "event-too-large"],
)
def test_a_stream_broken_off_is_charged_its_expected_cost(
    gateway: Gateway, behaviour: dict, says: str, kind: str
):
    key = gateway.new_key()
    gateway.script(behaviour)
    with SPEECH.open("rb") as audio:
        stream = gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="openai/gpt-4o-transcribe", file=audio, stream=True
        )
        with pytest.raises(openai.APIError) as raised:
            list(stream)
    assert says in str(raised.value)
    (call,) = gateway.calls(key)
    assert (call["status"], call["review"]) == ("interrupted", "uncertain")
    assert Decimal(call["cost_usd"]) == Decimal(call["expected_usd"]) > 0
    assert (call["error_code"], call["upstream_attempts"][0]["error"]) == (kind, kind)
    assert total(scrape(gateway.url), "earmark_uncertain_attempts_total", provider="openai") == 1


@pytest.mark.parametrize("how", ["whole", "chunked"])
def test_an_answer_too_large_to_hold_is_charged_for_review(gateway: Gateway, how: str):
    """A provider that did the work but answers more than a transcript can be (17 MiB)
    does not take the gateway's memory: a 502, charged its expected cost for review."""
    key = gateway.new_key()
    gateway.script({"answer_bytes": 17 << 20, "as": how})
    response = gateway.post_audio(key, "openai/whisper-1")
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_malformed"
    assert "openai sent an answer larger than 16 MiB" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert len(_billed(gateway)) == 1
    (call,) = gateway.calls(key)
    assert (call["cost_usd"], call["review"]) == (COST, "uncertain")
    assert call["error_code"] == "upstream_malformed"
    assert call["upstream_attempts"][0]["error"] == "malformed"


def test_a_refusal_with_a_body_too_large_is_still_a_refusal(gateway: Gateway):
    """Only its first 16 MiB are read; a refusal billed nothing, so nothing is charged."""
    key = gateway.new_key()
    gateway.script({"status": 429, "answer_bytes": 17 << 20})
    response = gateway.post_audio(key, "openai/whisper-1")
    assert response.status_code == 429, response.text[:200]
    (call,) = gateway.calls(key)
    assert (call["cost_usd"], call["review"]) == ("0.000000000", None)
    assert call["upstream_attempts"][0]["outcome"] == "refused"


def test_a_relayed_refusal_after_an_uncertain_attempt_says_what_was_charged(gateway: Gateway):
    """flaky resets after doing the work (charged, for review); its fallback answers 503.
    The 502 the tenant gets says that the call was charged, and how much."""
    key = gateway.new_key()
    gateway.script({"reset": "after_work"}, {"status": 503})
    response = gateway.post_audio(key, "flaky/whisper-1")
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert message.startswith("openai: ")
    assert f"charged its expected cost (${COST})" in message
    (call,) = gateway.calls(key)
    assert (call["status"], call["cost_usd"], call["review"]) == ("failed", COST, "uncertain")


def test_a_provider_reporting_more_than_was_held_is_charged_and_flagged(gateway: Gateway):
    key = gateway.new_key()
    gateway.script({"report_seconds": 100})
    gateway.post_audio(key, "openai/whisper-1").raise_for_status()
    (call,) = gateway.calls(key)
    assert call["cost_usd"] == "0.010000000"  # what the provider says it billed
    assert call["hold_usd"] == COST
    assert call["review"] == "hold_overrun"
    assert total(scrape(gateway.url), "earmark_hold_overruns_total", model="openai/whisper-1") == 1


def _eight_callers_at_once(gateway: Gateway, key: dict, max_retries: int) -> list[str]:
    """Eight SDK clients' calls at once, retrying as the SDK does: each one's final status."""
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=key["secret"], max_retries=max_retries)

    def one() -> str:
        try:
            with SPEECH.open("rb") as audio:
                client.audio.transcriptions.create(model="openai/whisper-1", file=audio)
        except openai.APIStatusError as error:
            return str(error.status_code)
        return "200"

    async def everyone() -> list[str]:
        return list(await asyncio.gather(*(asyncio.to_thread(one) for _ in range(8))))

    try:
        return asyncio.run(everyone())
    finally:
        client.close()


def test_the_sdks_retries_get_exactly_k_answers_from_a_budget_that_fits_k(gateway: Gateway):
    """Eight callers at once, a budget for three at their real cost: the five that cannot
    fit yet are told to retry (429 budget_busy), and once the three settle, that nothing
    is left (402)."""
    key = gateway.new_key(budgets=[{"limit_usd": "0.0018", "period": "day"}])
    gateway.script(*[{"delay": 0.3}] * 3)
    outcomes = _eight_callers_at_once(gateway, key, max_retries=3)
    assert sorted(outcomes) == ["200"] * 3 + ["402"] * 5
    assert len(_billed(gateway)) == 3
    refusals = [c for c in gateway.calls(key) if c["status"] == "rejected"]
    assert {c["error_code"] for c in refusals} == {"budget_busy", "budget_exceeded"}


def test_callers_told_to_wait_get_in_when_the_calls_in_flight_fail(gateway: Gateway):
    """A budget for three; the first two calls in flight are refused by the provider
    (charged nothing): callers told 429 budget_busy retry, get in, and three answers come."""
    key = gateway.new_key(budgets=[{"limit_usd": "0.0018", "period": "day"}])
    failing = {"delay": 0.4, "status": 400}
    gateway.script(failing, failing, *[{"delay": 0.4}] * 8)
    outcomes = _eight_callers_at_once(gateway, key, max_retries=4)
    assert outcomes.count("200") == 3
    assert outcomes.count("400") == 2
    busy = [c for c in gateway.calls(key) if c["error_code"] == "budget_busy"]
    assert busy  # some were told to wait, and then got in or were refused for good


def test_a_short_file_after_a_long_one_still_fits_exactly(gateway: Gateway):
    """Holds are the expected cost, not a padded one: $0.0008 fits 2 s and 6 s exactly."""
    key = gateway.new_key(budgets=[{"limit_usd": "0.0008", "period": "day"}])
    assert gateway.post_audio(key, "openai/whisper-1", wav(tone(2))).status_code == 200
    assert gateway.post_audio(key, "openai/whisper-1").status_code == 200
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert budget["spent_usd"] == budget["limit_usd"] == "0.000800000"
