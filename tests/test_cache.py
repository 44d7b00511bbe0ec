"""The exact-match cache: an identical call is answered without the provider, billed at the
hit price, and any change of audio or parameter, expiry or opt-out goes upstream."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.billing.metering import Usage
from app.catalog import Catalog
from app.config import parse_config
from app.gateway import cache
from app.storage import database
from app.storage.models import transcription_cache
from tests.conftest import ADMIN_TOKEN
from tests.gateway import CONFIG, FIXTURES, KEY_ENV, Gateway, scrape, total
from tests.processes import earmark_env, free_port, serving_many

SPEECH = (FIXTURES / "speech.wav").read_bytes()
OTHER = (FIXTURES / "local-speech.wav").read_bytes()


def _post(
    gateway: Gateway,
    key: dict,
    model: str = "cached/whisper-1",
    audio: bytes = SPEECH,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    response = gateway.post_audio(key, model, audio, headers, **fields)
    assert response.status_code == 200, response.text
    return response


def _upstream_count(gateway: Gateway) -> int:
    return len(gateway.upstream_requests())


def test_identical_call_is_answered_from_the_cache(gateway: Gateway) -> None:
    key = gateway.new_key()
    first = _post(gateway, key, response_format="verbose_json")
    sent = _upstream_count(gateway)
    second = _post(gateway, key, response_format="verbose_json")
    assert _upstream_count(gateway) == sent  # nothing went upstream
    assert (first.headers["x-bf-cache"], second.headers["x-bf-cache"]) == ("miss", "hit")
    fresh, cached = first.json(), second.json()
    assert fresh.pop("extra_fields")["cache_debug"] == {"cache_hit": False}
    extra = cached.pop("extra_fields")
    assert cached == fresh  # the same answer
    debug = extra["cache_debug"]
    assert debug["cache_hit"] is True and debug["hit_type"] == "direct"
    assert (debug["requested_provider"], debug["requested_model"]) == ("cached", "whisper-1")
    assert len(debug["cache_id"]) == 64
    miss, hit = sorted(gateway.calls(key), key=lambda call: call["created_at"])
    assert (miss["usage_source"], hit["usage_source"]) == ("provider", "cache")
    assert hit["status"] == "succeeded" and hit["attempts"] == 0
    assert hit["audio_ms"] == miss["audio_ms"]
    assert hit["cost_usd"] == "0.000000000" != miss["cost_usd"]  # hits are free by default
    samples = scrape(gateway.url)
    model = {"model": "cached/whisper-1"}
    assert total(samples, "earmark_cache_lookups_total", result="hit", **model) == 1
    assert total(samples, "earmark_cache_lookups_total", result="miss", **model) == 1


def test_a_hit_is_billed_at_its_own_price(gateway: Gateway) -> None:
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "day"}])
    _post(gateway, key, "cached/paid-hits")
    _post(gateway, key, "cached/paid-hits")
    miss, hit = sorted(gateway.calls(key), key=lambda call: call["created_at"])
    assert hit["usage_source"] == "cache"
    # The 6 s the provider reported, at $0.001 a minute instead of the provider's $0.006.
    assert (miss["cost_usd"], hit["cost_usd"]) == ("0.000600000", "0.000100000")
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert budget["spent_usd"] == "0.000700000"


def test_a_hit_needs_room_for_its_own_price_only(gateway: Gateway) -> None:
    """The cache is asked before the budget: a budget with room for a hit's price but not
    for the provider's is still answered from the cache, and a miss is refused."""
    key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "day"}])
    _post(gateway, key, "cached/paid-hits")  # $0.0006 at the provider's price
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    # Room for $0.0002 more: a hit ($0.0001), never another 6 s upstream ($0.0006).
    gateway.admin("PATCH", f"/admin/budgets/{budget['id']}", json={"limit_usd": "0.0008"})
    sent = _upstream_count(gateway)
    hit = _post(gateway, key, "cached/paid-hits")
    assert hit.headers["x-bf-cache"] == "hit" and _upstream_count(gateway) == sent
    miss = gateway.post_audio(key, "cached/paid-hits", OTHER)
    assert miss.status_code == 402, miss.text
    assert miss.json()["error"]["code"] == "budget_exceeded"
    (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
    assert budget["spent_usd"] == "0.000700000"


@pytest.mark.parametrize(
    "change",
    [
        {"language": "de"},
        {"prompt": "Speech about foxes."},
        {"response_format": "text"},
        {"temperature": "0.2"},
        {"timestamp_granularities[]": "word", "response_format": "verbose_json"},
        {"audio": OTHER},
        {"model": "openai/whisper-1"},  # no cache on that provider at all
    ],
    ids=lambda change: next(iter(change)),
)
def test_any_change_misses(gateway: Gateway, change: dict) -> None:
    key = gateway.new_key()
    _post(gateway, key)
    sent = _upstream_count(gateway)
    _post(gateway, key, **change)
    assert _upstream_count(gateway) == sent + 1


def test_entries_belong_to_the_tenant_that_made_them(gateway: Gateway) -> None:
    """Tenant B sending A's exact bytes neither gets A's transcript nor learns, with
    no-store, that A sent them; a model shared across tenants may answer B."""
    alice, bob = gateway.new_key(), gateway.new_key(tenant="bob")
    _post(gateway, alice)
    probe = _post(gateway, bob, headers={"x-bf-cache": "no-store"})
    assert probe.headers["x-bf-cache"] == "miss"
    assert probe.json()["extra_fields"]["cache_debug"] == {"cache_hit": False}
    assert _upstream_count(gateway) == 2
    assert _post(gateway, bob).headers["x-bf-cache"] == "miss"  # bob's own entry, now
    assert _post(gateway, bob).headers["x-bf-cache"] == "hit"
    assert _upstream_count(gateway) == 3

    _post(gateway, alice, model="cached/shared")
    shared = _post(gateway, bob, model="cached/shared")
    assert shared.headers["x-bf-cache"] == "hit"
    assert _upstream_count(gateway) == 4


def test_aliases_and_stream_flag_share_an_entry(gateway: Gateway) -> None:
    """Same route, same semantic parameters: `stream` and the spelling of the model do
    not change the answer of whisper-1 (which ignores stream)."""
    key = gateway.new_key()
    _post(gateway, key)
    sent = _upstream_count(gateway)
    assert _post(gateway, key, stream="false").headers["x-bf-cache"] == "hit"
    assert _upstream_count(gateway) == sent


def test_entries_expire(gateway: Gateway) -> None:
    key = gateway.new_key()
    _post(gateway, key, "cached/brief")
    assert _post(gateway, key, "cached/brief").headers["x-bf-cache"] == "hit"
    time.sleep(1.1)  # the model's TTL is one second
    assert _post(gateway, key, "cached/brief").headers["x-bf-cache"] == "miss"


def test_bounds_evict_the_oldest_and_skip_large_answers(gateway: Gateway) -> None:
    key = gateway.new_key()
    for language in ("en", "de", "fr"):  # three entries; the model keeps two
        _post(gateway, key, "cached/brief", language=language)
    assert _post(gateway, key, "cached/brief", language="fr").headers["x-bf-cache"] == "hit"
    assert _post(gateway, key, "cached/brief", language="en").headers["x-bf-cache"] == "miss"
    _post(gateway, key, "cached/tiny")  # its answers are over max_entry_bytes
    assert _post(gateway, key, "cached/tiny").headers["x-bf-cache"] == "miss"


def test_request_and_key_opt_outs(gateway: Gateway) -> None:
    key = gateway.new_key()
    no_store = {"x-bf-cache": "no-store"}
    assert _post(gateway, key, headers=no_store).headers["x-bf-cache"] == "miss"
    assert _post(gateway, key).headers["x-bf-cache"] == "miss"  # nothing was stored
    sent = _upstream_count(gateway)
    refreshed = _post(gateway, key, headers={"x-bf-cache": "no-cache"})
    assert _upstream_count(gateway) == sent + 1  # not read, though an entry exists
    assert "cache_debug" in refreshed.json()["extra_fields"]

    opted_out = gateway.new_key(cache=False)
    assert opted_out["cache"] is False
    sent = _upstream_count(gateway)
    response = _post(gateway, opted_out)
    assert _upstream_count(gateway) == sent + 1
    assert response.headers["x-bf-cache"] == "miss"  # on every answer: not from the cache
    assert "cache_debug" not in response.json()["extra_fields"]
    url = f"/admin/keys/{opted_out['id']}"
    assert gateway.admin("PATCH", url, json={"cache": True})["cache"] is True
    assert _post(gateway, opted_out).headers["x-bf-cache"] == "hit"


def test_streams_are_kept_as_their_final_result_and_replayed_as_a_stream(gateway: Gateway) -> None:
    key = gateway.new_key()
    client = gateway.sdk(key["secret"])

    def stream() -> list[Any]:
        with (FIXTURES / "speech.wav").open("rb") as audio:
            return list(
                client.audio.transcriptions.create(
                    model="cached/gpt-4o-stream", file=audio, stream=True
                )
            )

    fresh = stream()
    sent = _upstream_count(gateway)
    replayed = stream()
    assert _upstream_count(gateway) == sent
    assert [e.type for e in replayed] == ["transcript.text.delta", "transcript.text.done"]
    assert replayed[-1].text == fresh[-1].text
    assert replayed[-1].usage == fresh[-1].usage
    assert "".join(e.delta for e in fresh[:-1]).strip() == replayed[0].delta.strip()
    # The same parameters without `stream` are answered from the same entry, as JSON.
    with (FIXTURES / "speech.wav").open("rb") as audio:
        plain = client.audio.transcriptions.create(model="cached/gpt-4o-stream", file=audio)
    assert plain.text == fresh[-1].text
    assert _upstream_count(gateway) == sent
    calls = sorted(gateway.calls(key), key=lambda call: call["created_at"])
    assert [c["usage_source"] for c in calls] == ["provider", "cache", "cache"]
    assert calls[1]["input_audio_tokens"] == calls[0]["input_audio_tokens"]


def test_two_processes_share_hits(database_url: str, fake_provider: Any, tmp_path) -> None:
    from tests.fake_provider import API_KEY

    config = tmp_path / "earmark.toml"
    config.write_text(CONFIG.format(fake=fake_provider.url, key_env=KEY_ENV, closed=free_port()))
    env = earmark_env(
        database_url,
        EARMARK_ADMIN_TOKEN=ADMIN_TOKEN,
        EARMARK_CONFIG=str(config),
        **{KEY_ENV: API_KEY},
    )
    with serving_many(env, tmp_path, 2) as (first, second):
        a, b = Gateway(first, fake_provider.url), Gateway(second, fake_provider.url)
        try:
            key = a.new_key()
            assert _post(a, key).headers["x-bf-cache"] == "miss"
            sent = _upstream_count(a)
            assert _post(b, key).headers["x-bf-cache"] == "hit"
            assert _upstream_count(b) == sent
        finally:
            a.close()
            b.close()


@pytest.mark.anyio
async def test_expired_entries_are_purged(engine: Any) -> None:
    catalog = Catalog(
        parse_config(
            '[providers.p]\nbase_url = "http://x"\ncache = { ttl_seconds = 60 }\n'
            '[providers.p.models.m]\nprice = { per_audio_minute = "0.006" }\n'
        )
    )
    route = catalog.routes["p/m"]
    now = database.utcnow()
    for n, when in enumerate((now - timedelta(seconds=120), now)):
        lookup = cache.Lookup(key=f"{n:064}", config=route.cache, read=True, write=True)
        await cache.store(engine, lookup, route, "text/plain", b"hi", Usage(audio_ms=1), when)
    assert await cache.find(engine, f"{0:064}") is None  # expired: never served
    assert (await cache.find(engine, f"{1:064}")).body == b"hi"
    assert await cache.purge_expired(engine) == 1
    async with database.read(engine) as conn:
        keys = (await conn.execute(transcription_cache.select())).all()
    assert [row.key for row in keys] == [f"{1:064}"]
