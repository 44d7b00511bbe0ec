"""SIGKILL a gateway process under load, twice: nothing lost, nothing charged twice, no
hold left behind after the sweep, and no upstream call without a hold.

The short form runs in the suite; `bench/chaos.py` runs more rounds.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import httpx
from sqlalchemy import func, select

from app import database, ledger
from app.database import create_engine
from app.models import ledger as ledger_table
from tests.conftest import ledger_invariants
from tests.gateway import burst, process_env
from tests.processes import free_port, serving

CALLS_PER_ROUND = 30


async def _kill_during_load(
    victim: subprocess.Popen, urls: list[str], secret: str
) -> list[tuple[int, str | None]]:
    load = asyncio.ensure_future(burst(urls, secret, CALLS_PER_ROUND))
    await asyncio.sleep(0.6)
    os.kill(victim.pid, signal.SIGKILL)
    return [(r.status_code, r.headers.get("x-request-id")) if r else (0, None) for r in await load]


def _start_victim(env: dict[str, str], log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("victim did not start")


def test_kill_9_under_load_loses_nothing(gateway, fake_provider, database_url, tmp_path):
    key = gateway.new_key(budgets=[{"limit_usd": "10", "period": "day"}])
    env = process_env(database_url, gateway.fake, tmp_path)
    fake_provider.script.latency = 0.4  # calls are in flight when the kill lands
    seen: list[tuple[int, str | None]] = []
    with serving(env, tmp_path / "survivor.log") as survivor:
        for round_ in range(2):
            with (tmp_path / f"victim-{round_}.log").open("wb") as log:
                victim, victim_url = _start_victim(env, log)

                urls = [victim_url, survivor]
                seen += asyncio.run(_kill_during_load(victim, urls, key["secret"]))
                victim.wait()
    fake_provider.script.latency = 0.0

    succeeded = {rid for status, rid in seen if status == 200}
    assert succeeded, "no call succeeded: the test proved nothing"
    assert any(status == 0 for status, _ in seen), "the kill landed on no call in flight"

    async def check() -> None:
        engine = create_engine(database_url)
        try:
            far_future = database.utcnow() + timedelta(days=1)  # as if the sweep interval passed
            await ledger.sweep(engine, reserved_before=far_future, forwarded_before=far_future)
            async with engine.connect() as conn:
                rows = {r.id: r for r in (await conn.execute(select(ledger_table))).all()}
                total = await conn.scalar(select(func.count()).select_from(ledger_table))
        finally:
            await engine.dispose()
        assert total == len(rows)  # no duplicate request ids
        assert not [r for r in rows.values() if r.status in ("reserved", "forwarded")]
        # Every answer a client received is settled in the ledger, charged once.
        for rid in succeeded:
            assert rows[rid].status == "succeeded"
            assert rows[rid].cost_nanos > 0
        # No upstream call without a hold: each one belongs to a row that was forwarded.
        went_upstream = [r for r in rows.values() if r.status in ("succeeded", "failed", "expired")]
        assert len(gateway.upstream_requests()) <= len(went_upstream)
        await ledger_invariants(database_url)

    asyncio.run(check())
