"""A gateway whose database goes away refuses calls with 503 and sends nothing upstream,
or stops an upload before the provider has it whole, saying that nothing was billed."""

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import make_url

from tests.conftest import ADMIN_TOKEN, empty_database
from tests.fake_provider import API_KEY
from tests.gateway import FIXTURES, KEY_ENV, Gateway
from tests.processes import wav_of_size
from tests.servers import ServerThread, TcpProxy


@contextmanager
def _behind_a_proxy(
    migrated_postgres, fake_provider, tmp_path, monkeypatch
) -> Iterator[tuple[Gateway, TcpProxy]]:
    """Earmark whose PostgreSQL connections all go through a proxy the test can cut."""
    from app.main import create_app
    from app.settings import Settings

    url = make_url(migrated_postgres)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    config = tmp_path / "earmark.toml"
    config.write_text(
        f'[providers.openai]\nbase_url = "{fake_provider.url}/v1"\napi_key_env = "{KEY_ENV}"\n'
        '[providers.openai.models.whisper-1]\nprice = { per_audio_minute = "0.006" }\n'
    )
    monkeypatch.setenv(KEY_ENV, API_KEY)
    fake_provider.script.reset()
    settings = Settings(
        database_url=proxied,
        admin_token=ADMIN_TOKEN,
        config_path=str(config),
        journal_dir=str(tmp_path / "journal"),
    )
    try:
        with ServerThread(create_app(settings)) as server:
            gateway = Gateway(server.url, fake_provider.url)
            try:
                yield gateway, proxy
            finally:
                gateway.close()
    finally:
        proxy.close()
        asyncio.run(empty_database(migrated_postgres))  # the next test starts from nothing


@pytest.mark.postgres
def test_database_down_is_503_and_nothing_goes_upstream(
    migrated_postgres, fake_provider, tmp_path, monkeypatch
):
    with _behind_a_proxy(migrated_postgres, fake_provider, tmp_path, monkeypatch) as (
        gateway,
        proxy,
    ):
        key = gateway.new_key()
        audio = {"file": ("speech.wav", (FIXTURES / "speech.wav").read_bytes(), "audio/wav")}
        headers = {"authorization": f"Bearer {key['secret']}"}
        ok = gateway.http.post(
            "/v1/audio/transcriptions",
            headers=headers,
            data={"model": "whisper-1"},
            files=audio,
        )
        assert ok.status_code == 200
        sent = len(gateway.upstream_requests())

        proxy.cut()
        for _ in range(3):
            down = gateway.http.post(
                "/v1/audio/transcriptions",
                headers=headers,
                data={"model": "whisper-1"},
                files=audio,
            )
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "database_unavailable"
            assert down.headers["retry-after"] == "1"
        assert gateway.http.get("/readyz").status_code == 503
        assert len(gateway.upstream_requests()) == sent


@pytest.mark.postgres
def test_database_down_during_an_upload_stops_it_before_its_last_bytes(
    migrated_postgres, fake_provider, tmp_path, monkeypatch
):
    """The call was admitted and is uploading (the provider stalls) when the database goes:
    the row cannot say the request is about to be whole, so it is never completed, and the
    tenant hears that nothing was billed."""
    with _behind_a_proxy(migrated_postgres, fake_provider, tmp_path, monkeypatch) as (
        gateway,
        proxy,
    ):
        key = gateway.new_key()
        gateway.script({"stall_upload": 1.5})
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                gateway.post_audio, key, "openai/whisper-1", wav_of_size(20_000_000)
            )
            time.sleep(0.7)
            proxy.cut()
            response = answer.result(timeout=30)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "database_unavailable"
        assert "nothing was billed" in error["message"]
        assert not any("billed_seconds" in r for r in gateway.upstream_requests())
