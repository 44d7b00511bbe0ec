"""Attacks a tenant with a valid key sends, through the gateway: forged audio billed
less, budgets overspent, files read on the server, other tenants stalled, unbounded
fields. Each checks what the tenant sees, what the ledger holds, and what the provider
was sent."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.access import admin_users
from app.ops.audit import Actor
from app.storage.database import create_engine
from tests.audio_files import encode, fmt_chunk, forge_streaminfo, riff, silent_flac, tone
from tests.gateway import FIXTURES, SPEECH, Gateway

ACTOR = Actor("test")

WHISPER = "openai/whisper-1"  # $0.006 a minute: $0.0001 a second


def _budget(gateway: Gateway, key: dict) -> dict:
    (budget,) = gateway.admin("GET", f"/admin/budgets?key_id={key['id']}")["data"]
    return budget


def _refused(gateway: Gateway, key: dict, response: httpx.Response, status: int, code: str):
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert gateway.upstream_requests() == []
    (call,) = gateway.calls(key)
    assert (call["status"], call["http_status"], call["cost_usd"]) == (
        "rejected",
        status,
        "0.000000000",
    )
    return response.json()["error"]


# --- The meter measures the audio --------------------------------------------------------


def test_a_wav_hiding_its_audio_in_a_second_data_chunk_is_billed_in_full(gateway: Gateway):
    """Answered with the whole transcript as text (no usage from the provider), it was
    billed 100 ms: now every second FFmpeg plays."""
    audio = riff((b"fmt ", fmt_chunk()), (b"data", tone(0.1)), (b"data", tone(59.4)))
    key = gateway.new_key()
    response = gateway.post_audio(key, WHISPER, audio, response_format="text")
    assert response.status_code == 200, response.text
    (call,) = gateway.calls(key)
    assert call["usage_source"] == "probe"
    assert call["audio_ms"] >= 59_400
    assert Decimal(call["cost_usd"]) >= Decimal("0.00594")


def test_a_flac_claiming_one_second_cannot_overspend_a_budget(gateway: Gateway):
    forged = forge_streaminfo(encode("flac", "flac", tone(59.4)), 16_000)  # says 1 s
    key = gateway.new_key(budgets=[{"limit_usd": "0.0065", "period": "day"}])
    first = gateway.post_audio(key, WHISPER, forged, response_format="text")
    assert first.status_code == 200, first.text
    second = gateway.post_audio(key, WHISPER, forged, response_format="text")
    assert second.status_code == 402, second.text
    assert len(gateway.upstream_requests()) == 1
    budget = _budget(gateway, key)
    assert Decimal(budget["spent_usd"]) >= Decimal("0.00594")
    assert Decimal(budget["spent_usd"]) <= Decimal(budget["limit_usd"])
    assert Decimal(budget["held_usd"]) == 0


def test_the_audio_seconds_rate_limit_counts_the_real_audio(gateway: Gateway):
    forged = forge_streaminfo(encode("flac", "flac", tone(40)), 16_000)
    key = gateway.new_key(rate_limits={"audio_seconds_per_window": 30, "window_seconds": 60})
    response = gateway.post_audio(key, WHISPER, forged)
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"]


def test_hours_of_silence_claiming_one_second_are_refused_before_any_hold(gateway: Gateway):
    key = gateway.new_key(budgets=[{"limit_usd": "100", "period": "day"}])
    bomb = silent_flac(10 * 3600, claim_samples=8_000)
    error = _refused(gateway, key, gateway.post_audio(key, WHISPER, bomb), 400, "audio_too_long")
    assert error["param"] == "file"
    assert "max_audio_seconds" in error["message"]
    assert Decimal(_budget(gateway, key)["held_usd"]) == 0


# --- FFmpeg opens nothing but the upload ------------------------------------------------


def test_a_wav_a_providers_ffmpeg_reads_as_g729_is_refused(gateway: Gateway):
    """8 kHz PCM by its header (billed 30 s), ACT voice to a full FFmpeg (8 minutes)."""
    data = bytearray(riff((b"fmt ", fmt_chunk(8_000)), (b"data", tone(30, rate=8_000))))
    data[44:512] = bytes(468)
    data[256] = 0x84
    key = gateway.new_key()
    response = gateway.post_audio(key, WHISPER, bytes(data))
    error = _refused(gateway, key, response, 400, "ambiguous_container")
    assert "ACT" in error["message"]


def test_a_concat_list_naming_a_server_file_is_not_audio(gateway: Gateway):
    key = gateway.new_key()
    target = FIXTURES / "speech.wav"
    listing = f"ffconcat version 1.0\nfile {target}\n".encode()
    response = gateway.post_audio(key, WHISPER, listing)
    error = _refused(gateway, key, response, 400, "invalid_audio")
    assert str(FIXTURES) not in response.text
    assert "Error" not in error["message"]  # no decoder exception class or text


# --- Nothing a tenant sends stalls the others -------------------------------------------


def _poll_health(url: str, stop: threading.Event, slowest: list[float]) -> None:
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            started = time.monotonic()
            assert client.get(f"{url}/healthz").status_code == 200
            slowest.append(time.monotonic() - started)
            time.sleep(0.02)


def test_health_answers_while_wavs_of_empty_chunks_arrive(gateway: Gateway):
    """Three million empty JUNK chunks froze /healthz for half a minute."""
    junk = riff((b"fmt ", fmt_chunk()), *[(b"JUNK", b"")] * 300_000, (b"data", tone(1)))
    keys = [gateway.new_key(), gateway.new_key(budgets=[{"limit_usd": "0", "period": "day"}])]
    stop, times = threading.Event(), []
    poller = threading.Thread(target=_poll_health, args=(gateway.url, stop, times))
    poller.start()
    try:

        async def flood() -> list[int]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
                sends = [
                    client.post(
                        "/v1/audio/transcriptions",
                        headers={"authorization": f"Bearer {keys[n % 2]['secret']}"},
                        data={"model": WHISPER},
                        files={"file": ("junk.wav", junk, "audio/wav")},
                    )
                    for n in range(6)
                ]
                return [r.status_code for r in await asyncio.gather(*sends)]

        statuses = asyncio.run(flood())
    finally:
        stop.set()
        poller.join()
    assert sorted(set(statuses)) == [400, 402]  # too many chunks; a budget with no room
    assert times and max(times) < 1.0


def test_a_rate_limited_key_is_refused_again_before_its_upload_is_read(gateway: Gateway):
    key = gateway.new_key(rate_limits={"requests_per_minute": 1})
    assert gateway.post_audio(key, WHISPER).status_code == 200
    assert gateway.post_audio(key, WHISPER).status_code == 429  # measured, then refused
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\n"
            b"authorization: Bearer " + key["secret"].encode() + b"\r\n"
            b"content-type: multipart/form-data; boundary=b\r\ncontent-length: 20000000\r\n\r\n"
        )
        answer = b""
        while b"requests per minute" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 429 ")
    assert b"retry-after: " in answer


def test_a_used_up_budget_is_refused_before_the_body_is_read(gateway: Gateway):
    key = gateway.new_key(budgets=[{"limit_usd": "0", "period": "day"}])
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\n"
            b"authorization: Bearer " + key["secret"].encode() + b"\r\n"
            b"content-type: multipart/form-data; boundary=b\r\ncontent-length: 20000000\r\n\r\n"
            b"--b\r\n"
        )  # and not one more byte of the 20 MB it announced
        answer = b""
        while b"is used up" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 402 ")
    assert b"x-should-retry: false" in answer
    assert b"is used up" in answer
    (call,) = gateway.calls(key)
    assert (call["status"], call["error_code"]) == ("rejected", "budget_exceeded")


# --- Every field bounded, every malformed thing a 4xx -----------------------------------


def _form(*parts: bytes) -> bytes:
    return b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + b"--b--\r\n"


def _field(name: str, value: bytes, headers: bytes = b"") -> bytes:
    return f'content-disposition: form-data; name="{name}"\r\n'.encode() + headers + b"\r\n" + value


_FILE = b'content-disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + SPEECH
_MODEL = _field("model", WHISPER.encode())


@pytest.mark.parametrize(
    ("parts", "status", "param", "code"),
    [
        ((_MODEL, _field("prompt", b"p" * 20_000), _FILE), 400, "prompt", "field_too_long"),
        ((_field("model", b"m" * 300), _FILE), 400, "model", None),
        ((_field("model", b"openai/whisper-1\x00"), _FILE), 400, "model", None),
        ((_MODEL, _field("language", b"\xff\xfe en"), _FILE), 400, "language", None),
        (
            (
                _MODEL,
                _field("language", b"en", b"content-type: text/plain; charset=latin-1\r\n"),
                _FILE,
            ),
            400,
            "language",
            "unsupported_charset",
        ),
        (
            (_MODEL, _field("prompt", b"aGk=", b"content-transfer-encoding: base64\r\n"), _FILE),
            400,
            "prompt",
            "unsupported_encoding",
        ),
        (
            (_MODEL, *[_field(f"x{n}", b"1") for n in range(100)], _FILE),
            400,
            None,
            "too_many_fields",
        ),
        ((_MODEL, _field("n" * 200, b"1"), _FILE), 400, None, "invalid_field_name"),
    ],
    ids=[
        "long-prompt",
        "long-model",
        "nul-model",
        "not-utf8",
        "latin-1",
        "base64",
        "many-fields",
        "long-name",
    ],
)
def test_malformed_fields_are_400s_naming_them(gateway: Gateway, parts, status, param, code):
    key = gateway.new_key()
    response = gateway.http.post(
        "/v1/audio/transcriptions",
        headers={
            "authorization": f"Bearer {key['secret']}",
            "content-type": "multipart/form-data; boundary=b",
        },
        content=_form(*parts),
    )
    error = _refused(gateway, key, response, status, code or response.json()["error"]["code"])
    assert error["param"] == param


@pytest.mark.parametrize(
    "disposition",
    [
        b'form-data; name="file"',
        b'form-data; name="file"; filename=""',
        b"form-data; name=\"file\"; filename*=UTF-8''%E2%82%AC.wav",
    ],
    ids=["no-filename", "empty-filename", "extended-filename-only"],
)
def test_a_file_part_without_a_usable_name_is_forwarded_under_one(gateway: Gateway, disposition):
    key = gateway.new_key()
    response = gateway.http.post(
        "/v1/audio/transcriptions",
        headers={
            "authorization": f"Bearer {key['secret']}",
            "content-type": "multipart/form-data; boundary=b",
        },
        content=_form(_MODEL, b"content-disposition: " + disposition + b"\r\n\r\n" + SPEECH),
    )
    assert response.status_code == 200, response.text
    assert gateway.upstream_requests()[-1]["file"]["filename"] == "audio.wav"


def test_a_28_mb_upload_is_413_naming_the_limit(gateway: Gateway):
    key = gateway.new_key()
    response = gateway.post_audio(key, WHISPER, SPEECH + b"\0" * 28_000_000)
    error = _refused(gateway, key, response, 413, "file_too_large")
    assert "26214400" in error["message"]


# --- Admin sign-in cannot be made to burn CPU -------------------------------------------


@pytest.fixture
def admin_user(gateway: Gateway, database_url: str) -> tuple[str, str]:
    async def create() -> None:
        engine = create_engine(database_url)
        try:
            await admin_users.create_admin_user(engine, "root", "correct horse battery", ACTOR)
        finally:
            await engine.dispose()

    asyncio.run(create())
    return "root", "correct horse battery"


def _sign_in(gateway: Gateway, user: str, password: str, source: str) -> httpx.Response:
    return gateway.http.get(
        "/admin/tenants", auth=(user, password), headers={"x-forwarded-for": source}
    )


def test_failed_sign_ins_are_throttled_per_source_and_per_user(gateway: Gateway, admin_user):
    user, password = admin_user
    for _ in range(10):
        assert _sign_in(gateway, user, "wrong password!", "10.0.0.1").status_code == 401
    throttled = _sign_in(gateway, user, password, "10.0.0.1")
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert throttled.json()["error"]["code"] == "too_many_attempts"
    # The user name is throttled from anywhere; another name from elsewhere is not.
    assert _sign_in(gateway, user, password, "10.0.0.2").status_code == 429
    assert _sign_in(gateway, "someone", "whatever123456", "10.0.0.3").status_code == 401
    assert (
        gateway.http.get(
            "/admin/tenants",
            headers={"authorization": "Bearer " + "x" * 30, "x-forwarded-for": "10.0.0.4"},
        ).status_code
        == 401
    )


def test_simultaneous_attempts_and_other_spellings_do_not_slip_past(gateway: Gateway, admin_user):
    """Forty wrong passwords at once made 33 hashes; "\u212aate" was another name."""
    user, password = admin_user

    async def together() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            sends = [
                client.get(
                    "/admin/tenants",
                    auth=(user, f"wrong password {n}"),
                    headers={"x-forwarded-for": "10.5.0.1"},
                )
                for n in range(40)
            ]
            return [r.status_code for r in await asyncio.gather(*sends)]

    statuses = asyncio.run(together())
    assert statuses.count(401) <= 10  # at most ten hashes
    assert set(statuses) <= {401, 429, 503}
    # The same name, spelt otherwise, is the same throttled name.
    assert _sign_in(gateway, user.upper(), password, "10.5.0.2").status_code == 429


def test_a_name_that_does_not_exist_costs_no_hash(gateway: Gateway, admin_user):
    user, _ = admin_user

    def cpu_of(name: str, sources: str) -> float:
        started = time.process_time()
        for n in range(5):
            assert _sign_in(gateway, name, "wrong password!", f"{sources}.{n}").status_code == 401
        return time.process_time() - started

    cpu_of("nobody", "10.1.0")  # the first unknown name times one real check
    known = cpu_of(user, "10.2.0")
    unknown = cpu_of("nobody-else", "10.3.0")
    assert unknown < known / 3, (unknown, known)


def test_a_flood_of_sign_ins_does_not_delay_a_tenants_audio(gateway: Gateway, admin_user):
    """Sign-ins hash in their own pool: the audio call is answered before they are."""
    user, _ = admin_user
    key = gateway.new_key()
    finished: list[str] = []

    def sign_in(n: int) -> None:
        _sign_in(gateway, f"{user}{n}", "wrong password!", f"10.9.0.{n}")
        finished.append("sign-in")

    def transcribe() -> None:
        response = gateway.post_audio(key, WHISPER, (FIXTURES / "speech.mp3").read_bytes())
        assert response.status_code == 200
        finished.append("audio")

    threads: list[Any] = [threading.Thread(target=sign_in, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    audio = threading.Thread(target=transcribe)
    audio.start()
    for thread in [*threads, audio]:
        thread.join()
    assert finished.index("audio") < len(finished) - 1
    assert finished[-1] == "sign-in"
