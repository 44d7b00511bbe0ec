"""The built-in local provider: real speech in, real words out, metered like any call, and
a long decode never stalls the gateway."""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import signal
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.main import create_app
from app.settings import Settings
from tests.audio_files import repacked, silent_flac
from tests.conftest import ADMIN_TOKEN
from tests.gateway import FIXTURES, Gateway
from tests.processes import children_named, earmark_env, serving
from tests.servers import ServerThread

MODEL = "local/pocketsphinx"
SAID = "The quick brown fox jumps over the lazy dog. Please call me tomorrow morning at seven."
CONTENT_WORDS = {
    "quick", "brown", "fox", "jumps", "lazy", "dog", "please", "call", "tomorrow", "morning",
    "seven",
}  # fmt: skip
SPEECH_MS = 5942  # local-speech.wav: 95,072 samples at 16 kHz


@pytest.fixture(scope="module")
def local(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Earmark with its built-in configuration (no EARMARK_CONFIG): the local provider."""
    database = tmp_path_factory.mktemp("local") / "earmark.db"
    shutil.copyfile(sqlite_template, database)
    settings = Settings(database_url=f"sqlite+aiosqlite:///{database}", admin_token=ADMIN_TOKEN)
    with ServerThread(create_app(settings)) as server:
        gateway = Gateway(server.url, "")
        try:
            yield gateway
        finally:
            gateway.close()


@pytest.fixture(scope="module")
def key(local: Gateway) -> dict[str, Any]:
    return local.new_key()


def _transcribe(local: Gateway, key: dict, name: str = "local-speech.wav", **options: Any):
    with (FIXTURES / name).open("rb") as audio:
        return local.sdk(key["secret"]).audio.transcriptions.create(
            model=MODEL, file=audio, **options
        )


def _heard(text: str) -> set[str]:
    return CONTENT_WORDS & set(re.findall(r"[a-z]+", text.lower()))


@pytest.mark.parametrize("name", ["local-speech.wav", "local-speech.ogg"])
def test_speech_comes_back_as_words_and_is_metered(local: Gateway, key: dict, name: str) -> None:
    result = _transcribe(local, key, name)
    assert len(_heard(result.text)) >= 0.6 * len(CONTENT_WORDS), result.text
    call = local.calls(key)[0]
    assert call["status"] == "succeeded"
    assert (call["provider"], call["model"]) == ("local", "pocketsphinx")
    assert abs(call["audio_ms"] - SPEECH_MS) <= 30  # the decoded duration
    assert call["usage_source"] == "provider"
    assert call["cost_usd"] == "0.000000000"


def test_verbose_json_has_segments_and_words(local: Gateway, key: dict) -> None:
    result = _transcribe(
        local, key, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert result.language == "english"
    assert abs(result.duration - SPEECH_MS / 1000) < 0.05
    assert result.segments and result.segments[0].start < result.segments[-1].end
    assert " ".join(s.text for s in result.segments) == result.text
    words = result.words
    assert [w.word for w in words] == result.text.split()
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    assert all(0 <= w.start < w.end <= result.duration + 0.05 for w in words)


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats(local: Gateway, key: dict, fmt: str) -> None:
    body = _transcribe(local, key, response_format=fmt)
    assert isinstance(body, str)
    assert len(_heard(body)) >= 0.6 * len(CONTENT_WORDS)
    if fmt == "srt":
        assert re.match(r"1\n00:00:0\d,\d{3} --> 00:00:0\d,\d{3}\n", body), body
    if fmt == "vtt":
        assert re.match(r"WEBVTT\n\n00:00:0\d\.\d{3} --> 00:00:0\d\.\d{3}\n", body), body


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's, not ours
def test_translation_of_english_is_its_transcript(local: Gateway, key: dict) -> None:
    with (FIXTURES / "local-speech.wav").open("rb") as audio:
        result = local.sdk(key["secret"]).audio.translations.create(model=MODEL, file=audio)
    assert len(_heard(result.text)) >= 0.6 * len(CONTENT_WORDS)


def test_silence_is_an_empty_transcript(local: Gateway, key: dict) -> None:
    assert _transcribe(local, key, "silence-1s.wav").text == ""


@pytest.mark.parametrize(
    ("options", "param"),
    [({"language": "fr"}, "file"), ({"response_format": "diarized_json"}, "response_format")],
)
def test_what_the_engine_cannot_do_is_a_400_naming_it(
    local: Gateway, key: dict, options: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _transcribe(local, key, **options)
    error = refused.value.body
    assert error["param"] == param
    assert "local" in error["message"]


def _long_wav(repeats: int) -> bytes:
    with wave.open(str(FIXTURES / "local-speech.wav")) as source:
        frames = source.readframes(source.getnframes())
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(frames * repeats)
    return buffer.getvalue()


def test_health_answers_while_long_files_are_decoded(local: Gateway, key: dict) -> None:
    """Two 30-second files at once on one worker process: the event loop stays free."""
    audio = _long_wav(5)
    results: list[int] = []

    def transcribe() -> None:
        response = httpx.post(
            f"{local.url}/v1/audio/transcriptions",
            headers={"authorization": f"Bearer {key['secret']}"},
            data={"model": MODEL},
            files={"file": ("long.wav", audio, "audio/wav")},
            timeout=300,
        )
        results.append(response.status_code)

    threads = [threading.Thread(target=transcribe) for _ in range(2)]
    for thread in threads:
        thread.start()
    answered_during = 0
    while any(thread.is_alive() for thread in threads):
        assert httpx.get(f"{local.url}/healthz", timeout=5).status_code == 200
        if all(thread.is_alive() for thread in threads) and not results:
            answered_during += 1
    for thread in threads:
        thread.join()
    assert results == [200, 200]
    assert answered_during >= 3


@pytest.mark.skipif(
    not os.environ.get("EARMARK_TEST_WHISPER_MODEL"),
    reason="EARMARK_TEST_WHISPER_MODEL (a faster-whisper model directory) is not set: "
    "faster-whisper test NOT RUN",
)
def test_faster_whisper_engine(tmp_path: Path, sqlite_template: Path) -> None:
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
    config = tmp_path / "earmark.toml"
    config.write_text(
        '[providers.local]\nkind = "local"\n'
        "[providers.local.models.whisper]\n"
        f'engine = "faster-whisper"\nmodel_path = "{os.environ["EARMARK_TEST_WHISPER_MODEL"]}"\n'
    )
    database = tmp_path / "earmark.db"
    shutil.copyfile(sqlite_template, database)
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{database}",
        admin_token=ADMIN_TOKEN,
        config_path=str(config),
    )
    with ServerThread(create_app(settings)) as server:
        gateway = Gateway(server.url, "")
        try:
            secret = gateway.new_key()["secret"]
            with (FIXTURES / "local-speech.wav").open("rb") as audio:
                result = gateway.sdk(secret).audio.transcriptions.create(
                    model="local/whisper", file=audio, response_format="verbose_json"
                )
        finally:
            gateway.close()
    assert len(_heard(result.text)) >= 0.8 * len(CONTENT_WORDS), result.text
    assert result.segments


def _workers_of(pid: int) -> set[int]:
    """Live spawned child processes of ``pid`` (local-engine workers; no resource tracker
    since nothing they share needs one)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z" and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


@pytest.fixture
def strict_local(sqlite_template: Path, tmp_path: Path) -> Iterator[Gateway]:
    """A local provider with a memory cap per worker and a timeout that six seconds of
    speech meets easily on a slow two-core machine (PocketSphinx decodes there at about
    half real time, first call included) and six minutes cannot."""
    config = tmp_path / "earmark.toml"
    config.write_text(
        '[providers.local]\nkind = "local"\ntimeout_seconds = 20\nmemory_limit_mb = 450\n'
        '[providers.local.models.pocketsphinx]\nengine = "pocketsphinx"\n'
    )
    database = tmp_path / "earmark.db"
    shutil.copyfile(sqlite_template, database)
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{database}",
        admin_token=ADMIN_TOKEN,
        config_path=str(config),
    )
    with ServerThread(create_app(settings)) as server:
        gateway = Gateway(server.url, "")
        try:
            yield gateway
        finally:
            gateway.close()


def test_a_timed_out_decode_is_killed_and_the_next_call_works(strict_local: Gateway) -> None:
    key = strict_local.new_key()
    before = _workers_of(os.getpid())
    assert _transcribe(strict_local, key).text  # this gateway's worker exists now
    (worker,) = _workers_of(os.getpid()) - before
    response = httpx.post(
        f"{strict_local.url}/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {key['secret']}"},
        data={"model": MODEL},
        files={"file": ("long.wav", _long_wav(60), "audio/wav")},  # six minutes of speech
        timeout=60,
    )
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert worker not in _workers_of(os.getpid())  # killed, not left decoding
    assert _transcribe(strict_local, key).text  # a fresh worker


def test_hours_of_audio_are_decoded_within_the_memory_cap(strict_local: Gateway) -> None:
    """Two hours decoded whole would be 230 MB of PCM held twice over; streamed, the
    worker stays under its 450 MB address-space cap."""
    key = strict_local.new_key()
    silence = silent_flac(2 * 3600, rate=16_000)
    result = strict_local.sdk(key["secret"]).audio.transcriptions.create(
        model=MODEL, file=("silence.flac", silence), response_format="verbose_json"
    )
    assert result.duration == 7200.0
    assert strict_local.calls(key)[0]["audio_ms"] == 7_200_000


def test_no_worker_outlives_the_gateway(sqlite_template: Path, tmp_path: Path) -> None:
    database = tmp_path / "earmark.db"
    shutil.copyfile(sqlite_template, database)
    settings = Settings(database_url=f"sqlite+aiosqlite:///{database}", admin_token=ADMIN_TOKEN)
    before = _workers_of(os.getpid())  # other gateways' workers, still serving
    with ServerThread(create_app(settings)) as server:
        gateway = Gateway(server.url, "")
        try:
            assert _transcribe(gateway, gateway.new_key()).text
            assert _workers_of(os.getpid()) - before
        finally:
            gateway.close()
    assert not _workers_of(os.getpid()) - before


def test_a_killed_gateway_takes_its_workers_with_it(tmp_path: Path) -> None:
    env = earmark_env(
        f"sqlite+aiosqlite:///{tmp_path / 'earmark.db'}", EARMARK_ADMIN_TOKEN=ADMIN_TOKEN
    )
    with serving(env, tmp_path / "earmark.log") as base:
        gateway = Gateway(base, "")
        try:
            assert _transcribe(gateway, gateway.new_key()).text
        finally:
            gateway.close()
        (serve,) = [pid for pid in children_named(os.getpid(), b"serve")]
        workers = _workers_of(serve)
        assert workers
        os.kill(serve, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_audio_that_changes_its_rate_midway_is_transcribed(local: Gateway, key: dict) -> None:
    """Such a stream made the resampler raise, and the worker die (a 502)."""
    rates = [192_000] * 4 + [8_000] * 2
    native = silent_flac(len(rates) * 65_535 / 192_000, rate=192_000, frame_rates=rates)
    data = repacked(native, "flac", "matroska", 1)
    response = local.post_audio(key, MODEL, data)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["seconds"] > 17
