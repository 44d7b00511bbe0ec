"""An answer the provider gave reaches the tenant and stays in the ledger even when the
database fails after it: the settlement waits in the local journal and is applied, once,
when the database answers again (by the sweeper, or by the next process to start)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url, select

from app.access import keys, tenants
from app.billing import ledger
from app.main import create_app
from app.ops.audit import Actor
from app.ops.journal import Journal
from app.runtime.executors import FairPool
from app.schemas import BudgetCreate, KeyCreate, TenantCreate
from app.settings import Settings, Sweeping
from app.storage import database
from app.storage.models import budget_counters
from app.storage.models import ledger as ledger_table
from tests.conftest import ADMIN_TOKEN, empty_database, ledger_invariants
from tests.fake_provider import API_KEY, TEXT
from tests.gateway import KEY_ENV, Gateway
from tests.servers import ServerThread, TcpProxy

ACTOR = Actor("test")

COST = "0.000600000"  # speech.wav: 6 s billed at $0.006 a minute


@contextmanager
def _gateway(database_url: str, fake: str, directory: Path) -> Iterator[Gateway]:
    config = directory / "earmark.toml"
    config.write_text(
        f'[providers.openai]\nbase_url = "{fake}/v1"\napi_key_env = "{KEY_ENV}"\n'
        '[providers.openai.models.whisper-1]\nprice = { per_audio_minute = "0.006" }\n'
    )
    settings = Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        config_path=str(config),
        journal_dir=str(directory / "journal"),
        sweeping=Sweeping(interval_seconds=0.3),
    )
    with ServerThread(create_app(settings)) as server:
        gateway = Gateway(server.url, fake)
        try:
            yield gateway
        finally:
            gateway.close()


@pytest.fixture
def proxy(migrated_postgres: str) -> Iterator[tuple[TcpProxy, str]]:
    url = make_url(migrated_postgres)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        yield proxy, proxied
    finally:
        proxy.close()
        asyncio.run(empty_database(migrated_postgres))


def _answered_while_the_database_is_cut(gateway: Gateway, proxy: TcpProxy, key: dict) -> Any:
    """A call whose provider answers after the gateway lost its database."""
    gateway.script({"delay": 1.0})
    answers: list[httpx.Response] = []
    call = threading.Thread(
        target=lambda: answers.append(gateway.post_audio(key, "openai/whisper-1"))
    )
    call.start()
    deadline = time.monotonic() + 5
    while not gateway.upstream_requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    proxy.cut()  # the provider is working on it; the ledger row is `forwarded`
    call.join()
    (answer,) = answers
    return answer


def _wait_for(gateway: Gateway, key: dict, status: str) -> dict:
    deadline = time.monotonic() + 15
    while True:
        try:
            calls = gateway.calls(key)
        except (AssertionError, httpx.HTTPError):
            calls = []
        if calls and calls[0]["status"] == status:
            return calls[0]
        assert time.monotonic() < deadline, calls
        time.sleep(0.2)


@pytest.mark.postgres
def test_an_answer_survives_the_database_going_away(proxy, fake_provider, tmp_path, monkeypatch):
    cut, url = proxy
    monkeypatch.setenv(KEY_ENV, API_KEY)
    fake_provider.script.reset()
    with _gateway(url, fake_provider.url, tmp_path) as gateway:
        key = gateway.new_key(budgets=[{"limit_usd": "1", "period": "day"}])
        answer = _answered_while_the_database_is_cut(gateway, cut, key)
        assert answer.status_code == 200, answer.text  # the tenant keeps what was paid for
        assert answer.json()["text"] == TEXT
        assert list((tmp_path / "journal").glob("*.jsonl"))
        cut.restore()
        call = _wait_for(gateway, key, "succeeded")  # the sweeper applied the journal
        assert (call["cost_usd"], call["usage_source"]) == (COST, "provider")
        assert not list((tmp_path / "journal").glob("*.jsonl"))
        (budget,) = gateway.admin("GET", "/admin/budgets", params={"key_id": key["id"]})["data"]
        assert (budget["spent_usd"], budget["held_usd"]) == (COST, "0.000000000")
        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert 'earmark_journal_settlements_total{event="kept"} 1.0' in metrics
        assert 'earmark_journal_settlements_total{event="applied"} 1.0' in metrics
    asyncio.run(ledger_invariants(url))


@pytest.mark.postgres
def test_a_restarted_gateway_applies_what_it_kept(proxy, fake_provider, tmp_path, monkeypatch):
    cut, url = proxy
    monkeypatch.setenv(KEY_ENV, API_KEY)
    fake_provider.script.reset()
    with _gateway(url, fake_provider.url, tmp_path) as gateway:
        key = gateway.new_key()
        assert _answered_while_the_database_is_cut(gateway, cut, key).status_code == 200
    # It stopped before the database came back: the next process to start settles it.
    cut.restore()
    with _gateway(url, fake_provider.url, tmp_path) as gateway:
        (call,) = gateway.calls(key)
        assert (call["status"], call["cost_usd"]) == ("succeeded", COST)
    asyncio.run(ledger_invariants(url))


@pytest.mark.anyio
async def test_a_kept_settlement_is_applied_once_even_after_a_sweep(engine, tmp_path):
    """Replayed twice, or after the sweeper charged the row its expected cost: the call
    ends charged what it really cost, once."""
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    budget = BudgetCreate(limit_usd="1", period="none")
    key = await keys.create_key(
        engine, "", KeyCreate(tenant_id=tenant.id, name="k", budgets=[budget]), ACTOR
    )
    files = FairPool("files", 1)
    journal = Journal(tmp_path, files)
    settlement = ledger.Settlement(
        status="succeeded", http_status=200, provider="p", model="m", attempts=1,
        cost_nanos=500, latency_ms=1,
    )  # fmt: skip
    for call_id, swept in (("req_plain", False), ("req_swept", True)):
        opening = ledger.Opening(
            id=call_id, key_id=key.id, tenant_id=tenant.id, endpoint="transcription",
            model_requested="m", expected_nanos=800, hold_nanos=900,
        )  # fmt: skip
        age = timedelta(hours=2 if swept else 0)
        await ledger.open_call(engine, opening, "p", "m", now=database.utcnow() - age)
        assert await ledger.mark_sent(engine, call_id)  # it went upstream, and was answered
        if swept:
            hour_ago = database.utcnow() - timedelta(hours=1)
            assert await ledger.sweep(engine, reserved_before=hour_ago, forwarded_before=hour_ago)
        await journal.append(call_id, settlement)
    assert await journal.replay(engine) == 2
    assert await journal.replay(engine) == 0  # nothing left to apply
    await journal.append("req_plain", settlement)  # a line kept twice
    assert await journal.replay(engine) == 0
    async with engine.connect() as conn:
        rows = {r.id: r for r in (await conn.execute(select(ledger_table))).all()}
        (counter,) = (await conn.execute(select(budget_counters))).all()
    assert {r.id: (r.status, r.cost_nanos) for r in rows.values()} == {
        "req_plain": ("succeeded", 500),
        "req_swept": ("succeeded", 500),
    }
    assert (counter.spent_nanos, counter.held_nanos) == (1000, 0)
    files.close()


@pytest.mark.anyio
async def test_lines_that_cannot_be_read_are_set_aside_and_never_stop_the_replay(engine, tmp_path):
    """A journal left by a dead process with a corrupt line and a line cut off mid-write:
    the good line is applied, the two others kept aside for an operator, the file gone,
    and the next round has nothing to choke on."""
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    key = await keys.create_key(engine, "", KeyCreate(tenant_id=tenant.id, name="k"), ACTOR)
    opening = ledger.Opening(
        id="req_kept", key_id=key.id, tenant_id=tenant.id, endpoint="transcription",
        model_requested="m", expected_nanos=600, hold_nanos=600,
    )  # fmt: skip
    await ledger.open_call(engine, opening, "p", "m")
    settlement = ledger.Settlement(
        status="succeeded", http_status=200, provider="p", model="m", attempts=1,
        cost_nanos=600, latency_ms=1,
    )  # fmt: skip
    files = FairPool("files", 1)
    journal = Journal(tmp_path, files)
    await journal.append("req_kept", settlement)
    good = journal.path.read_bytes()
    journal.path.unlink()
    dead = tmp_path / "settlements-999999999-0a0b0c0d.jsonl"  # no such process
    dead.write_bytes(b'{"call_id": "req_x", "settle' + b"\n" + good + b'{"call_id": "req_y"')
    assert await journal.replay(engine) == 1
    assert not dead.exists()
    kept = (tmp_path / "unreadable-settlements.jsonl").read_bytes().splitlines()
    assert kept == [b'{"call_id": "req_x", "settle', b'{"call_id": "req_y"']
    assert await journal.replay(engine) == 0
    async with engine.connect() as conn:
        (row,) = (await conn.execute(select(ledger_table))).all()
    assert (row.status, row.cost_nanos) == ("succeeded", 600)
    files.close()
