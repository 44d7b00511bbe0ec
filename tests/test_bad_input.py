"""Every bad input gets a 4xx naming the problem, nothing goes upstream, and the call is
recorded as rejected at zero cost."""

import math
from fractions import Fraction

import pytest

from app.gateway.form import MAX_FILE_BYTES
from tests.gateway import FIXTURES
from tests.processes import wav_of_size

SPEECH = (FIXTURES / "speech.wav").read_bytes()


def _post(gateway, key, data=None, files=None, **kwargs):
    return gateway.http.post(
        "/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {key['secret']}", **kwargs.pop("headers", {})},
        data=data,
        files=files,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("data", "files", "status", "param", "needle"),
    [
        ({}, [("model", (None, b"openai/whisper-1"))], 400, "file", "Missing the audio file"),
        (
            {"model": "openai/whisper-1"},
            {"file": ("a.wav", b"", "audio/wav")},
            400,
            "file",
            "empty",
        ),
        (
            {"model": "openai/whisper-1"},
            {"file": ("a.wav", (FIXTURES / "not-audio.txt").read_bytes(), "audio/wav")},
            400,
            "file",
            "not audio",
        ),
        ({}, {"file": ("a.wav", SPEECH, "audio/wav")}, 400, "model", "Missing `model`"),
        (
            {"model": "nope/model"},
            {"file": ("a.wav", SPEECH, "audio/wav")},
            404,
            "model",
            "does not exist",
        ),
        (
            {"model": "whisper-1"},
            {"file": ("a.wav", SPEECH, "audio/wav")},
            400,
            "model",
            "several providers",
        ),
        (
            {"model": "openai/whisper-1", "response_format": "mp3"},
            {"file": ("a.wav", SPEECH, "audio/wav")},
            400,
            "response_format",
            "must be one of",
        ),
        (
            {"model": "openai/whisper-1", "stream": "maybe"},
            {"file": ("a.wav", SPEECH, "audio/wav")},
            400,
            "stream",
            "true or false",
        ),
        (
            {"model": "openai/whisper-1", "temperature": "hot"},
            {"file": ("a.wav", SPEECH, "audio/wav")},
            400,
            "temperature",
            "from 0 to 1",
        ),
        (
            {"model": "openai/whisper-1", "temperature": "\u0660"},  # an Arabic-Indic zero
            {"file": ("a.wav", SPEECH, "audio/wav")},
            400,
            "temperature",
            "from 0 to 1",
        ),
        (
            {"model": ["openai/whisper-1", "groq/whisper-large-v3"]},
            {"file": ("a.wav", SPEECH, "audio/wav")},
            400,
            "model",
            "more than once",
        ),
        (
            {"model": "openai/whisper-1"},
            [("file", ("a.wav", SPEECH, "audio/wav")), ("file", ("b.wav", SPEECH, "audio/wav"))],
            400,
            "file",
            "exactly one",
        ),
        (
            {"model": "openai/whisper-1"},
            [("file", ("a.wav", SPEECH, "audio/wav")), ("prompt", ("p.txt", b"x", "text/plain"))],
            400,
            "prompt",
            "Only `file`",
        ),
    ],
    ids=[
        "no-file",
        "empty-file",
        "not-audio",
        "no-model",
        "unknown-model",
        "ambiguous-model",
        "bad-format",
        "bad-stream",
        "bad-temperature",
        "non-ascii-temperature",
        "two-models",
        "two-files",
        "file-in-prompt",
    ],
)
def test_bad_fields_are_refused_before_upstream(gateway, data, files, status, param, needle):
    key = gateway.new_key()
    response = _post(gateway, key, data=data, files=files)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert needle in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert response.headers["x-request-id"]
    assert gateway.upstream_requests() == []
    (call,) = gateway.calls(key)
    assert call["id"] == response.headers["x-request-id"]
    assert call["status"] == "rejected"
    assert call["http_status"] == status
    assert call["cost_usd"] == "0.000000000"


def test_a_model_the_key_may_not_use_is_403(gateway):
    key = gateway.new_key(allowed_models=["groq/whisper-large-v3"])
    response = _post(
        gateway,
        key,
        data={"model": "openai/whisper-1"},
        files={"file": ("a.wav", SPEECH, "audio/wav")},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert gateway.upstream_requests() == []


def test_one_byte_over_25_mib_is_413_and_nothing_is_sent(gateway):
    key = gateway.new_key()
    response = _post(
        gateway,
        key,
        data={"model": "openai/whisper-1"},
        files={"file": ("big.wav", wav_of_size(MAX_FILE_BYTES + 1 + 1), "audio/wav")},
    )
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "file"
    assert gateway.upstream_requests() == []


def test_exactly_25_mib_is_accepted_and_forwarded_whole(gateway):
    key = gateway.new_key()
    response = _post(
        gateway,
        key,
        data={"model": "openai/whisper-1", "response_format": "text"},
        files={"file": ("big.wav", wav_of_size(MAX_FILE_BYTES), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    assert gateway.upstream_requests()[-1]["file"]["size"] == MAX_FILE_BYTES
    (call,) = gateway.calls(key)
    assert call["upload_bytes"] == MAX_FILE_BYTES
    samples = (MAX_FILE_BYTES - 44) // 2
    assert call["probed_audio_ms"] == math.ceil(Fraction(samples * 1000, 16_000))


def test_a_body_far_over_the_limit_is_413_before_it_is_read(gateway):
    key = gateway.new_key()
    response = _post(
        gateway,
        key,
        content=b"x" * (31 * 1024 * 1024),
        headers={"content-type": "multipart/form-data; boundary=abc"},
    )
    assert response.status_code == 413
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"model": "whisper-1"}', "application/json"),
        (b"--abc\r\ngarbage", "multipart/form-data; boundary=abc"),
        (b"model=whisper-1", "application/x-www-form-urlencoded"),
    ],
    ids=["json", "malformed-multipart", "urlencoded"],
)
def test_a_body_that_is_not_multipart_is_a_400(gateway, content, content_type):
    key = gateway.new_key()
    response = _post(gateway, key, content=content, headers={"content-type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "The request body must be multipart/form-data with the audio in a `file` field."
    )
    assert gateway.upstream_requests() == []


def test_unauthenticated_calls_never_reach_the_provider(gateway):
    response = gateway.http.post(
        "/v1/audio/transcriptions",
        data={"model": "openai/whisper-1"},
        files={"file": ("a.wav", SPEECH, "audio/wav")},
    )
    assert response.status_code == 401
    assert gateway.upstream_requests() == []
