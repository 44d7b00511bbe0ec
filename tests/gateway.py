"""Earmark served on loopback in front of the fake provider, with helpers a test needs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN, ADMIN_TOKEN
from tests.fake_provider import API_KEY
from tests.processes import earmark_env, free_port
from tests.servers import ServerThread

FIXTURES = Path(__file__).parent / "fixtures"
SPEECH = (FIXTURES / "speech.wav").read_bytes()
KEY_ENV = "EARMARK_TEST_PROVIDER_KEY"

CONFIG = """
[providers.openai]
base_url = "{fake}/v1"
api_key_env = "{key_env}"
allow_raw_response = true
timeout_seconds = 5

[providers.openai.models.whisper-1]
price = {{ per_audio_minute = "0.006" }}
aliases = ["whisper"]

[providers.openai.models.gpt-4o-transcribe.price]
input_text_per_million = "2.50"
input_audio_per_million = "6.00"
output_per_million = "10.00"

[providers.openai.models.gpt-4o-mini-transcribe.price]
input_text_per_million = "1.25"
input_audio_per_million = "3.00"
output_per_million = "5.00"

[providers.openai.models.gpt-4o-transcribe-diarize]
price = {{ input_audio_per_million = "6.00", output_per_million = "10.00" }}

[providers.groq]
base_url = "{fake}/v1"
api_key_env = "{key_env}"

[providers.groq.models.whisper-large-v3]
price = {{ per_audio_hour = "0.111", minimum_seconds = "10" }}

[providers.azure]
kind = "azure"
base_url = "{fake}"
api_key_env = "{key_env}"
api_version = "2024-10-21"

[providers.azure.models.whisper-azure]
deployment = "whisper-1"
price = {{ per_audio_minute = "0.006" }}

[providers.flaky]
base_url = "{fake}/v1"
api_key_env = "{key_env}"

[providers.flaky.models.whisper-1]
price = {{ per_audio_minute = "0.006" }}
fallbacks = ["openai/whisper-1"]

[providers.flaky.models.cheap]
deployment = "whisper-1"
price = {{ per_audio_minute = "0.001" }}
fallbacks = ["openai/whisper-1"]

[providers.down]
base_url = "http://127.0.0.1:{closed}/v1"
api_key_env = "{key_env}"
connect_timeout_seconds = 2

[providers.down.models.whisper-1]
price = {{ per_audio_minute = "0.006" }}
fallbacks = ["groq/whisper-large-v3"]

[providers.slow]
base_url = "{fake}/v1"
api_key_env = "{key_env}"
timeout_seconds = 0.5

[providers.slow.models.whisper-1]
price = {{ per_audio_minute = "0.006" }}

[providers.cached]
base_url = "{fake}/v1"
api_key_env = "{key_env}"
cache = {{ ttl_seconds = 3600 }}

[providers.cached.models.whisper-1]
price = {{ per_audio_minute = "0.006" }}

[providers.cached.models.gpt-4o-stream]
deployment = "gpt-4o-transcribe"

[providers.cached.models.gpt-4o-stream.price]
input_text_per_million = "2.50"
input_audio_per_million = "6.00"
output_per_million = "10.00"

[providers.cached.models.paid-hits]
deployment = "whisper-1"
price = {{ per_audio_minute = "0.006" }}
cache = {{ ttl_seconds = 3600, hit_price = {{ per_audio_minute = "0.001" }} }}

[providers.cached.models.brief]
deployment = "whisper-1"
price = {{ per_audio_minute = "0.006" }}
cache = {{ ttl_seconds = 1, max_entries = 2 }}

[providers.cached.models.shared]
deployment = "whisper-1"
price = {{ per_audio_minute = "0.006" }}
cache = {{ ttl_seconds = 3600, shared_across_tenants = true }}

[providers.cached.models.tiny]
deployment = "whisper-1"
price = {{ per_audio_minute = "0.006" }}
cache = {{ max_entry_bytes = 10 }}
"""


class Gateway:
    def __init__(self, url: str, fake: str) -> None:
        self.url = url
        self.fake = fake
        self.http = httpx.Client(base_url=url, timeout=30)
        self._clients: list[OpenAI] = []

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, headers=ADMIN, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def new_key(self, tenant: str = "acme", **body: Any) -> dict[str, Any]:
        """A key of the tenant named ``tenant`` (created if need be)."""
        tenants = [t for t in self.admin("GET", "/admin/tenants")["data"] if t["name"] == tenant]
        owner = (
            tenants[0] if tenants else self.admin("POST", "/admin/tenants", json={"name": tenant})
        )
        return self.admin(
            "POST", "/admin/keys", json={"tenant_id": owner["id"], "name": "k", **body}
        )

    def sdk(self, secret: str) -> OpenAI:
        client = OpenAI(base_url=f"{self.url}/v1", api_key=secret, max_retries=0)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.http.close()

    def post_audio(
        self,
        key: dict[str, Any],
        model: str,
        audio: bytes = b"",
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> httpx.Response:
        """A transcription as curl would send it (``audio``: speech.wav by default)."""
        return self.http.post(
            "/v1/audio/transcriptions",
            headers={"authorization": f"Bearer {key['secret']}", **(headers or {})},
            data={"model": model, **fields},
            files={"file": ("speech.wav", audio or SPEECH, "audio/wav")},
        )

    def calls(self, key: dict[str, Any]) -> list[dict[str, Any]]:
        return self.admin("GET", f"/admin/keys/{key['id']}/calls")["data"]

    def upstream_requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.fake}/_requests").json()

    def script(self, *behaviours: dict[str, Any]) -> None:
        httpx.post(f"{self.fake}/_script", json=list(behaviours)).raise_for_status()


@contextmanager
def serve_gateway(
    database_url: str, fake_url: str, config_dir: Path, **settings: Any
) -> Iterator[Gateway]:
    config = config_dir / "earmark.toml"
    config.write_text(CONFIG.format(fake=fake_url, key_env=KEY_ENV, closed=free_port()))
    settings = Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        config_path=str(config),
        journal_dir=str(config_dir / "journal"),
        **settings,
    )
    with ServerThread(create_app(settings)) as server:
        gateway = Gateway(server.url, fake_url)
        try:
            yield gateway
        finally:
            gateway.close()


__all__ = ["API_KEY", "FIXTURES", "KEY_ENV", "Gateway", "scrape", "serve_gateway", "total"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, series), value in samples.items() if n == name and wanted <= series)


def process_env(database_url: str, fake_url: str, directory: Path) -> dict[str, str]:
    """Environment for `earmark serve` processes in front of the fake provider (whisper-1)."""
    config = directory / "earmark-processes.toml"
    config.write_text(
        f'[providers.openai]\nbase_url = "{fake_url}/v1"\napi_key_env = "{KEY_ENV}"\n'
        '[providers.openai.models.whisper-1]\nprice = { per_audio_minute = "0.006" }\n'
    )
    return earmark_env(
        database_url,
        EARMARK_ADMIN_TOKEN=ADMIN_TOKEN,
        EARMARK_CONFIG=str(config),
        EARMARK_JOURNAL_DIR=str(directory / "journal"),
        **{KEY_ENV: API_KEY},
    )


async def burst(urls: list[str], secret: str, n: int) -> list[httpx.Response | None]:
    """``n`` concurrent whisper-1 calls spread over ``urls``; None where the process died."""
    audio = (FIXTURES / "speech.wav").read_bytes()

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response | None:
        try:
            return await client.post(
                f"{urls[i % len(urls)]}/v1/audio/transcriptions",
                headers={"authorization": f"Bearer {secret}"},
                data={"model": "openai/whisper-1"},
                files={"file": ("speech.wav", audio, "audio/wav")},
            )
        except httpx.TransportError:
            return None

    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(n))))
