"""The metered endpoint as a tenant sees it through the official OpenAI SDK, and the ledger
row each call leaves, on SQLite and PostgreSQL."""

import httpx
import openai
import pytest

from tests.audio_files import wav
from tests.fake_provider import API_KEY, TEXT
from tests.gateway import FIXTURES

SPEECH = FIXTURES / "speech.wav"
SPEECH_MS = 5849


def _only(calls: list[dict]) -> dict:
    assert len(calls) == 1, calls
    return calls[0]


def test_json_transcription_with_extra_fields_and_exact_cost(gateway):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        raw = gateway.sdk(key["secret"]).audio.transcriptions.with_raw_response.create(
            model="openai/whisper-1", file=audio
        )
    result = raw.parse()
    assert result.text == TEXT
    assert raw.status_code == 200
    assert raw.headers["x-bf-cache"] == "miss"  # on every answer, cached model or not
    body = result.to_dict()
    assert body["usage"] == {"type": "duration", "seconds": 6}  # the provider's, untouched
    extra = body["extra_fields"]
    assert extra["request_type"] == "transcription"
    assert extra["provider"] == "openai"
    assert extra["model_requested"] == "openai/whisper-1"
    assert extra["model_deployment"] == "whisper-1"
    assert extra["chunk_index"] == 0
    assert isinstance(extra["latency"], int)
    assert "raw_response" not in extra
    assert raw.headers["content-type"].startswith("application/json")

    call = _only(gateway.calls(key))
    assert call["id"] == raw.headers["x-request-id"]
    assert call["status"] == "succeeded"
    assert call["http_status"] == 200
    assert call["provider"] == "openai"
    assert call["model"] == "whisper-1"
    assert call["probed_audio_ms"] == SPEECH_MS
    assert call["audio_ms"] == 6000  # billed on the provider's reported seconds
    assert call["usage_source"] == "provider"
    assert call["cost_usd"] == "0.000600000"  # 6 s at $0.006 a minute
    assert call["upload_bytes"] == SPEECH.stat().st_size
    assert call["response_format"] == "json"
    assert call["stream"] is False


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats_come_back_as_plain_strings_and_are_still_metered(gateway, fmt):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        raw = gateway.sdk(key["secret"]).audio.transcriptions.with_raw_response.create(
            model="whisper", file=audio, response_format=fmt
        )
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    result = raw.parse()
    assert isinstance(result, str)
    assert TEXT in result
    if fmt == "vtt":
        assert result.startswith("WEBVTT")
    if fmt == "srt":
        assert result.startswith("1\n00:00:00,000 --> ")
    call = _only(gateway.calls(key))
    # No usage in text formats: the measured duration, billed in whole seconds as OpenAI does.
    assert call["probed_audio_ms"] == SPEECH_MS
    assert call["audio_ms"] == 6000
    assert call["usage_source"] == "probe"
    assert call["cost_usd"] == "0.000600000"


def test_verbose_json_with_word_timestamps(gateway):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        result = gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="openai/whisper-1",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.text == TEXT
    assert result.segments[0].text.strip() == TEXT
    assert result.words[0].word == "The"
    sent = gateway.upstream_requests()[-1]["fields"]
    assert sent["timestamp_granularities[]"] == ["word", "segment"]


def test_token_priced_model_records_tokens_by_kind(gateway):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        result = gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="gpt-4o-transcribe", file=audio, prompt="speech about foxes"
        )
    usage = result.usage
    assert usage.type == "tokens"
    call = _only(gateway.calls(key))
    assert call["input_text_tokens"] == usage.input_token_details.text_tokens == 3
    assert call["input_audio_tokens"] == usage.input_token_details.audio_tokens == 47
    assert call["output_tokens"] == usage.output_tokens
    assert call["total_tokens"] == usage.total_tokens
    # 3 text tokens at $2.50/M + 47 audio at $6/M + 16 output at $10/M
    assert call["cost_usd"] == "0.000449500"
    assert call["provider"] == "openai"


def test_text_from_a_token_priced_model_is_fetched_as_json_and_billed_its_tokens(gateway):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        result = gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=audio, response_format="text"
        )
    assert result == f"{TEXT}\n"
    assert gateway.upstream_requests()[-1]["fields"]["response_format"] == ["json"]
    call = _only(gateway.calls(key))
    assert call["usage_source"] == "provider"
    assert call["input_audio_tokens"] == 47
    assert call["response_format"] == "text"


def test_stream_is_relayed_event_by_event_with_usage(gateway):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        raw = gateway.sdk(key["secret"]).audio.transcriptions.with_raw_response.create(
            model="gpt-4o-transcribe", file=audio, stream=True
        )
        assert (raw.status_code, raw.headers["x-bf-cache"]) == (200, "miss")
        events = list(raw.parse())
    deltas = [event.delta for event in events if event.type == "transcript.text.delta"]
    done = events[-1]
    assert "".join(deltas).strip() == TEXT
    assert done.type == "transcript.text.done"
    assert done.usage.output_tokens == 16
    call = _only(gateway.calls(key))
    assert call["stream"] is True
    assert call["status"] == "succeeded"
    assert call["input_audio_tokens"] == 47
    assert call["usage_source"] == "provider"


def test_stream_goes_upstream_as_it_was_read(gateway):
    """`True` is read as true, so the provider is sent `true`: one told `True` could
    answer plain text without usage, and the call would be billed an estimate."""
    key = gateway.new_key()
    response = gateway.http.post(
        "/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {key['secret']}"},
        data={"model": "gpt-4o-transcribe", "stream": "True", "response_format": "text"},
        files={"file": ("speech.wav", SPEECH.read_bytes(), "audio/wav")},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert gateway.upstream_requests()[-1]["fields"]["stream"] == ["true"]
    call = _only(gateway.calls(key))
    assert (call["usage_source"], call["input_audio_tokens"], call["output_tokens"]) == (
        "provider",
        47,
        16,
    )


def test_a_file_a_sample_past_a_whole_second_is_billed_that_second(gateway):
    """Whisper sends no usage with `text`, so the gateway's measure bills: a duration cut
    down to the millisecond billed 1.0000625 s as 1 s, half of what the same file costs
    as `json`, billed by the provider's usage (found by an attack campaign)."""
    key = gateway.new_key()
    audio = wav(b"\x10\x00" * 16_001, rate=16_000)
    for response_format in ("text", "json"):
        answered = gateway.post_audio(
            key, "openai/whisper-1", audio, response_format=response_format
        )
        assert answered.status_code == 200, answered.text
    calls = gateway.calls(key)
    assert sorted(call["usage_source"] for call in calls) == ["probe", "provider"]
    assert [call["cost_usd"] for call in calls] == ["0.000200000"] * 2


def test_whisper_ignores_stream_as_openai_does(gateway):
    key = gateway.new_key()
    response = gateway.http.post(
        "/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {key['secret']}"},
        data={"model": "openai/whisper-1", "stream": "true"},
        files={"file": ("speech.wav", SPEECH.read_bytes(), "audio/wav")},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["text"] == TEXT


def test_diarized_json(gateway):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        result = gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=audio,
            response_format="diarized_json",
            chunking_strategy="auto",
        )
    body = result.to_dict()
    assert body["segments"][0]["speaker"] == "A"
    assert body["extra_fields"]["provider"] == "openai"


# The openai SDK marks translations.create deprecated; the endpoint is still OpenAI's and ours.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_translations(gateway, fmt):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        result = gateway.sdk(key["secret"]).audio.translations.create(
            model="openai/whisper-1", file=audio, response_format=fmt
        )
    assert TEXT in (result if isinstance(result, str) else result.text)
    assert gateway.upstream_requests()[-1]["path"] == "/v1/audio/translations"
    call = _only(gateway.calls(key))
    assert call["endpoint"] == "translation"
    assert call["status"] == "succeeded"


@pytest.mark.parametrize("operation", ["transcriptions", "translations"])
def test_a_path_the_lean_handler_leaves_to_the_router_is_the_same_call(gateway, operation):
    """Uploads are answered below Litestar's routing (``routes.audio.lean_uploads``); a
    path it does not match exactly (a trailing slash) goes through the router to the same
    call, forwarded, answered and billed alike."""
    key = gateway.new_key()
    for path in (f"/v1/audio/{operation}", f"/v1/audio/{operation}/"):
        response = gateway.http.post(
            path,
            headers={"authorization": f"Bearer {key['secret']}"},
            data={"model": "openai/whisper-1"},
            files={"file": ("speech.wav", SPEECH.read_bytes(), "audio/wav")},
        )
        assert response.status_code == 200, response.text
        assert response.json()["text"] == TEXT
        assert gateway.upstream_requests()[-1]["path"] == f"/v1/audio/{operation}"
    first, second = gateway.calls(key)
    for field in ("endpoint", "status", "audio_ms", "cost_usd"):
        assert first[field] == second[field], field
    assert first["endpoint"] == operation.removesuffix("s")


@pytest.mark.parametrize("ext", ["flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm"])
def test_every_audio_format_is_forwarded_and_probed(gateway, ext):
    key = gateway.new_key()
    path = FIXTURES / f"speech.{ext}"
    with path.open("rb") as audio:
        gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="openai/whisper-1", file=audio, response_format="text"
        )
    sent = gateway.upstream_requests()[-1]["file"]
    assert sent["size"] == path.stat().st_size
    assert sent["filename"] == path.name
    call = _only(gateway.calls(key))
    # As a decoder plays it (Opus packets count their encoder delay): within 0.12 s.
    assert SPEECH_MS - 10 <= call["probed_audio_ms"] <= SPEECH_MS + 120


def test_fields_are_forwarded_verbatim_and_secrets_stay_on_their_side(gateway):
    key = gateway.new_key()
    response = gateway.http.post(
        "/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {key['secret']}", "x-custom": "tenant-only"},
        data={
            "model": "whisper",
            "language": "en",
            "prompt": "foxes",
            "temperature": "0.2",
            "include[]": ["logprobs"],
            "timestamp_granularities[]": ["word", "segment"],
            "chunking_strategy[type]": "server_vad",
            "chunking_strategy[threshold]": "0.5",
            "known_speaker_names[]": ["alice", "bob"],
        },
        files={"file": ("speech.wav", SPEECH.read_bytes(), "audio/wav")},
    )
    assert response.status_code == 200, response.text
    upstream = gateway.upstream_requests()[-1]
    assert upstream["fields"] == {
        "model": ["whisper-1"],  # the alias resolved to the provider's name
        "language": ["en"],
        "prompt": ["foxes"],
        "temperature": ["0.2"],
        "include[]": ["logprobs"],
        "timestamp_granularities[]": ["word", "segment"],
        "chunking_strategy[type]": ["server_vad"],
        "chunking_strategy[threshold]": ["0.5"],
        "known_speaker_names[]": ["alice", "bob"],
        "response_format": ["json"],
    }
    assert upstream["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert key["secret"] not in str(upstream["headers"])
    assert "x-custom" not in upstream["headers"]
    assert API_KEY not in response.text
    assert API_KEY not in str(gateway.calls(key))


def test_azure_deployment_path_and_api_key_header(gateway):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio:
        result = gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="azure/whisper-azure", file=audio
        )
    assert result.text == TEXT
    upstream = gateway.upstream_requests()[-1]
    assert upstream["path"] == "/openai/deployments/whisper-1/audio/transcriptions"
    assert upstream["query"] == {"api-version": "2024-10-21"}
    assert upstream["headers"]["api-key"] == API_KEY
    assert "authorization" not in upstream["headers"]


def test_raw_response_only_when_asked_and_allowed(gateway):
    key = gateway.new_key()
    headers = {"authorization": f"Bearer {key['secret']}"}
    files = {"file": ("speech.wav", SPEECH.read_bytes(), "audio/wav")}
    asked = gateway.http.post(
        "/v1/audio/transcriptions",
        headers={**headers, "x-bf-send-back-raw-response": "true"},
        data={"model": "openai/whisper-1", "language": "en"},
        files=files,
    ).json()
    assert asked["extra_fields"]["raw_response"] == {
        "text": TEXT,
        "usage": {"type": "duration", "seconds": 6},
    }
    assert asked["extra_fields"]["raw_request"]["language"] == "en"
    not_allowed = gateway.http.post(
        "/v1/audio/transcriptions",
        headers={**headers, "x-bf-send-back-raw-response": "true"},
        data={"model": "groq/whisper-large-v3"},
        files=files,
    ).json()
    assert "raw_response" not in not_allowed["extra_fields"]


def test_provider_without_usage_is_billed_on_the_probe_with_its_minimum(gateway):
    key = gateway.new_key()
    with (FIXTURES / "silence-1s.wav").open("rb") as audio:
        result = gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="whisper-large-v3", file=audio
        )
    assert result.text == TEXT
    call = _only(gateway.calls(key))
    assert call["provider"] == "groq"
    assert call["audio_ms"] == 1000
    assert call["usage_source"] == "probe"
    # 1 s billed as Groq's 10 s minimum at $0.111 an hour.
    assert call["cost_usd"] == "0.000308333"


def test_token_priced_call_without_usage_is_billed_an_estimate_not_zero(gateway):
    key = gateway.new_key()
    gateway.script({"no_usage": True})
    with SPEECH.open("rb") as audio:
        gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="gpt-4o-transcribe", file=audio
        )
    call = _only(gateway.calls(key))
    assert call["usage_source"] == "estimate"
    assert call["input_audio_tokens"] == 59  # 5.849 s at 10 tokens a second, rounded up
    assert call["cost_usd"] != "0.000000000"


def test_models_lists_what_the_key_may_use(gateway):
    everything = gateway.new_key()
    listed = gateway.sdk(everything["secret"]).models.list()
    ids = {model.id for model in listed}
    assert {"openai/whisper-1", "groq/whisper-large-v3", "azure/whisper-azure"} <= ids
    narrow = gateway.new_key(allowed_models=["whisper", "groq/whisper-large-v3"])
    ids = {model.id for model in gateway.sdk(narrow["secret"]).models.list()}
    assert ids == {"openai/whisper-1", "groq/whisper-large-v3"}


@pytest.mark.parametrize(
    "behaviour, settled",
    [
        ({"chunk_delay": 0.3}, ("interrupted", "provider", None)),
        ({"chunk_delay": 0.3, "break_stream_after": 3}, ("interrupted", "expected", "uncertain")),
    ],
    ids=["provider-finishes", "provider-breaks-off"],
)
def test_a_stream_its_client_leaves_is_billed_what_the_provider_billed(gateway, behaviour, settled):
    """The provider goes on when the client leaves (a client may read every delta and
    leave just before the done event): the rest of its stream is read for the usage it
    billed. Broken off before that, the call is charged its expected cost, for review."""
    import time

    key = gateway.new_key()
    gateway.script(behaviour)
    with (
        httpx.Client(base_url=gateway.url, timeout=10) as client,
        client.stream(
            "POST",
            "/v1/audio/transcriptions",
            headers={"authorization": f"Bearer {key['secret']}"},
            data={"model": "gpt-4o-transcribe", "stream": "true"},
            files={"file": ("speech.wav", SPEECH.read_bytes(), "audio/wav")},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        next(response.iter_bytes())
    deadline = time.monotonic() + 10
    while (call := _only(gateway.calls(key)))["status"] == "forwarded":
        assert time.monotonic() < deadline, "the row was never settled"
        time.sleep(0.1)
    assert (call["status"], call["usage_source"], call["review"]) == settled
    if call["review"] is None:  # as the same call read to its end is billed
        assert (call["input_audio_tokens"], call["output_tokens"]) == (47, 16)
        assert call["cost_usd"] == "0.000442000"
    else:
        assert call["cost_usd"] == call["expected_usd"] != "0.000000000"


def test_sdk_sees_provider_errors_as_openai_errors(gateway):
    key = gateway.new_key()
    with SPEECH.open("rb") as audio, pytest.raises(openai.BadRequestError) as raised:
        gateway.sdk(key["secret"]).audio.transcriptions.create(
            model="gpt-4o-transcribe", file=audio, response_format="srt"
        )
    error = raised.value.body
    assert error["message"].startswith("openai: ")
    assert error["param"] == "response_format"
    call = _only(gateway.calls(key))
    assert call["status"] == "failed"
    assert call["http_status"] == 400
    assert call["cost_usd"] == "0.000000000"
