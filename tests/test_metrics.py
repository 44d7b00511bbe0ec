"""/metrics: what Prometheus scrapes agrees with the ledger, and its labels stay bounded."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from app import __version__
from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.gateway import FIXTURES, Gateway, scrape, total
from tests.servers import ServerThread

SPEECH = FIXTURES / "speech.wav"


def _transcribe(gateway: Gateway, secret: str, model: str = "openai/whisper-1") -> int:
    try:
        with SPEECH.open("rb") as audio:
            gateway.sdk(secret).audio.transcriptions.create(model=model, file=audio)
    except openai.APIStatusError as error:
        return error.status_code
    return 200


@pytest.fixture
def traffic(gateway: Gateway) -> dict:
    """Successes on three providers, an upstream failure that falls back, and one refusal
    of every kind."""
    key = gateway.new_key()
    poor = gateway.new_key(budgets=[{"limit_usd": "0.000001", "period": "month"}])
    slow = gateway.new_key(rate_limits={"requests_per_minute": 1})
    statuses = [
        _transcribe(gateway, key["secret"]),
        _transcribe(gateway, key["secret"], "gpt-4o-transcribe"),
        _transcribe(gateway, key["secret"], "groq/whisper-large-v3"),
        _transcribe(gateway, key["secret"], "down/whisper-1"),  # falls back to groq
        _transcribe(gateway, poor["secret"]),  # 402
        _transcribe(gateway, slow["secret"]),
        _transcribe(gateway, slow["secret"]),  # 429
        _transcribe(gateway, "sk-bf-not-a-key"),  # 401
        _transcribe(gateway, key["secret"], "openai/no-such-model"),  # 404
        _transcribe(gateway, key["secret"], ""),  # 400
    ]
    assert statuses == [200, 200, 200, 200, 402, 200, 429, 401, 404, 400]
    return {"keys": [key, poor, slow]}


def test_calls_audio_tokens_and_cost_equal_the_ledger(gateway: Gateway, traffic: dict) -> None:
    samples = scrape(gateway.url)
    report = gateway.admin("GET", "/admin/usage")["totals"]
    calls = [call for key in traffic["keys"] for call in gateway.calls(key)]

    assert (
        total(samples, "earmark_calls_total")
        == report["calls"] + report["refused"]
        == len(calls)
        == 9
    )
    by_outcome = defaultdict(int)
    for call in calls:
        by_outcome[call["status"]] += 1
    for outcome, count in by_outcome.items():
        assert total(samples, "earmark_calls_total", outcome=outcome) == count
    assert total(samples, "earmark_calls_total", outcome="succeeded", status="200") == 5
    assert total(samples, "earmark_calls_total", status="402", outcome="rejected") == 1
    assert math.isclose(
        total(samples, "earmark_audio_seconds_total"), float(Decimal(report["audio_seconds"]))
    )
    assert math.isclose(total(samples, "earmark_cost_usd_total"), float(report["cost_usd"]))
    for kind in ("input_text", "input_audio", "output"):
        assert total(samples, "earmark_tokens_total", kind=kind) == report[f"{kind}_tokens"]
    assert total(samples, "earmark_tokens_total", model="openai/gpt-4o-transcribe") > 0
    groq = {"model": "groq/whisper-large-v3", "provider": "groq"}
    assert total(samples, "earmark_calls_total", outcome="succeeded", **groq) == 2
    assert total(samples, "earmark_call_duration_seconds_count") == 9


def test_refusals_upstream_errors_and_holds(gateway: Gateway, traffic: dict) -> None:
    samples = scrape(gateway.url)
    for reason, count in [("auth", 1), ("budget", 1), ("rate_limit", 1), ("bad_input", 2)]:
        assert total(samples, "earmark_refusals_total", reason=reason) == count, reason
    assert total(samples, "earmark_upstream_errors_total", provider="down", kind="unreachable") == 1
    assert total(samples, "earmark_upstream_errors_total") == 1
    # Five answered attempts and the one that could not connect.
    assert total(samples, "earmark_upstream_request_duration_seconds_count") == 6
    assert total(samples, "earmark_holds_in_flight") == 0
    assert total(samples, "earmark_held_usd") == 0
    assert total(samples, "earmark_build_info", version=__version__) == 1


def test_http_requests_by_route_template(gateway: Gateway, traffic: dict) -> None:
    key = traffic["keys"][0]
    gateway.admin("GET", f"/admin/keys/{key['id']}")
    samples = scrape(gateway.url)
    route = {"route": "/v1/audio/transcriptions", "method": "POST"}
    assert total(samples, "earmark_http_requests_total", status="200", **route) == 5
    assert total(samples, "earmark_http_requests_total", status="401", **route) == 1
    assert total(samples, "earmark_http_requests_total", route="/admin/keys/{key_id}") >= 1
    buckets = {
        dict(series)["le"]
        for name, series in samples
        if name == "earmark_http_request_duration_seconds_bucket"
    }
    assert {"0.005", "60.0", "600.0", "+Inf"} <= buckets


def test_labels_are_bounded(gateway: Gateway, traffic: dict) -> None:
    """No key id, secret or tenant in any label, and no caller-chosen model name."""
    samples = scrape(gateway.url)
    secrets = {
        text
        for key in traffic["keys"]
        for text in (key["id"], key["tenant_id"], key["display_prefix"])
    }
    names = {label for _, series in samples for label, _ in series}
    assert not names & {"key", "key_id", "tenant", "tenant_id"}
    values = {value for _, series in samples for _, value in series}
    assert not values & secrets
    assert "openai/no-such-model" not in values
    models = {dict(series)["model"] for name, series in samples if name == "earmark_calls_total"}
    configured = {model.id for model in gateway.sdk(traffic["keys"][0]["secret"]).models.list()}
    assert models == configured | {"none"}  # "none": refused before a model was resolved


def test_tenant_label_when_configured(
    database_url: str, fake_provider, tmp_path, monkeypatch
) -> None:
    from tests.fake_provider import API_KEY
    from tests.gateway import CONFIG, KEY_ENV

    monkeypatch.setenv(KEY_ENV, API_KEY)
    config = tmp_path / "earmark.toml"
    config.write_text(CONFIG.format(fake=fake_provider.url, key_env=KEY_ENV, closed=1))
    settings = Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        config_path=str(config),
        metrics_tenant_label=True,
    )
    with ServerThread(create_app(settings)) as server:
        gateway = Gateway(server.url, fake_provider.url)
        try:
            key = gateway.new_key()
            assert _transcribe(gateway, key["secret"]) == 200
            samples = scrape(server.url)
        finally:
            gateway.close()
    tenant = key["tenant_id"]
    assert total(samples, "earmark_calls_total", tenant=tenant, outcome="succeeded") == 1
    assert total(samples, "earmark_cost_usd_total", tenant=tenant) > 0
    assert total(samples, "earmark_audio_seconds_total", tenant=tenant) > 0


def test_the_readme_lists_every_metric(gateway: Gateway, traffic: dict) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("### Metrics", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `(earmark_\w+)`", table, re.MULTILINE))
    exported = {re.sub(r"_(bucket|count|sum)$", "", name) for name, _ in scrape(gateway.url)}
    assert documented == exported
