"""A gateway whose database goes away refuses calls with 503 and sends nothing upstream."""

import asyncio

import pytest
from sqlalchemy import make_url

from tests.conftest import ADMIN_TOKEN, empty_database
from tests.fake_provider import API_KEY
from tests.gateway import FIXTURES, KEY_ENV, Gateway
from tests.servers import ServerThread, TcpProxy


@pytest.mark.postgres
def test_database_down_is_503_and_nothing_goes_upstream(
    migrated_postgres, fake_provider, tmp_path, monkeypatch
):
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
    settings = Settings(database_url=proxied, admin_token=ADMIN_TOKEN, config_path=str(config))
    try:
        with ServerThread(create_app(settings)) as server:
            gateway = Gateway(server.url, fake_provider.url)
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
            gateway.close()
    finally:
        proxy.close()
        asyncio.run(empty_database(migrated_postgres))  # the next test starts from nothing
