"""A gateway whose database goes away refuses calls with 503 and sends nothing upstream."""

import asyncio
import threading

import pytest
from sqlalchemy import make_url

from tests.conftest import ADMIN_TOKEN, empty_database
from tests.fake_provider import API_KEY
from tests.gateway import FIXTURES, KEY_ENV, Gateway
from tests.processes import free_port
from tests.servers import ServerThread


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that a test can cut, as a database restart would."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cut(), self.loop).result()

    def close(self) -> None:
        if self.server is not None and self.server.is_serving():
            self.cut()
        asyncio.run_coroutine_threadsafe(self._drain(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    async def _drain(self) -> None:
        assert self.server is not None
        await self.server.wait_closed()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


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
