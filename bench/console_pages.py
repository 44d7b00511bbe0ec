"""How long each admin console page takes to render on a large ledger: every page of
/console, server-side, on a database of 100,000 ledger rows (50 tenants, 500 keys, budgets
on some keys and tenants, 90 days of calls), on SQLite or, given ``--postgres-url``, on a
fresh PostgreSQL database created on that server for the run and dropped afterwards.

    python -m bench.console_pages [--rows 100000] [--requests 30]
        [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]

The app runs in-process (litestar's AsyncTestClient, its lifespan included: the sweeper
and the webhook worker run as they would in production), signed in with the admin token.
Each page is fetched once to warm up, then ``--requests`` times; the table shows p50, p95
and max wall time per request, which includes the test client's own cost: /healthz (no
database, no template) measured the same way shows what that is.

The overview and the tenant page add up the current calendar month, so what they cost
grows with the day of the month; the usage page adds up the last 30 days whatever the date.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import func, insert, make_url, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access import keys, tenants
from app.billing import budgets
from app.main import create_app
from app.ops import webhooks
from app.schemas import (
    BudgetCreate,
    BudgetUpdate,
    KeyCreate,
    RateLimits,
    TenantCreate,
    TenantUpdate,
    WebhookCreate,
)
from app.settings import Settings
from app.storage import database
from app.storage.database import create_engine
from app.storage.models import audit_log, budget_counters, ledger, upstream_attempts
from bench.ledger_scale import ACTOR, _admin_sql, _database

ADMIN_TOKEN = "bench-admin-token-0123456789"
NAME = "console"  # the database: console.db on SQLite, earmark_bench_console on PostgreSQL
BATCH = 5000  # rows an INSERT, as bench.ledger_scale fills its ledger
SEED = 20261203

CONFIG = """
[providers.openai]
base_url = "http://127.0.0.1:9/v1"
[providers.openai.models.whisper-1]
price = { per_audio_minute = "0.006" }
aliases = ["whisper"]
[providers.openai.models.gpt-4o-transcribe.price]
input_text_per_million = "2.50"
input_audio_per_million = "6.00"
output_per_million = "10.00"
[providers.groq]
base_url = "http://127.0.0.1:9/v1"
[providers.groq.models.whisper-large-v3]
price = { per_audio_hour = "0.111", minimum_seconds = "10" }
[providers.local]
kind = "local"
[providers.local.models.pocketsphinx]
engine = "pocketsphinx"
price = { per_audio_minute = "0" }
"""
# (model asked for, provider, provider's model, nano-dollars per audio millisecond)
MODELS = [
    ("whisper-1", "openai", "whisper-1", 100.0),
    ("gpt-4o-transcribe", "openai", "gpt-4o-transcribe", 100.0),
    ("whisper-large-v3", "groq", "whisper-large-v3", 111e9 / 3_600_000 / 1000),
    ("pocketsphinx", "local", "pocketsphinx", 0.0),
]
KEY_KINDS = ("web", "mobile", "batch", "ivr", "notes", "captions", "search", "support")
PERIODS = ("day", "week", "month")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass
class Seeded:
    """What was seeded, and the ids the pages are opened with."""

    counts: dict[str, int] = field(default_factory=dict)
    busiest_tenant: str = ""
    busiest_tenant_rows: int = 0
    busiest_key: str = ""
    busiest_key_rows: int = 0
    budget: str = ""  # the busiest key's day budget: one period a day of history
    webhook: str = ""
    key_name: str = KEY_KINDS[0]  # what the key list is filtered by
    month_rows: int = 0  # calls since the start of this month (the overview adds them up)
    last_30_days_rows: int = 0  # what the usage page adds up


@dataclass
class Owners:
    """The tenants and keys made through the service functions, and their budgets."""

    keys: list[tuple[str, str]] = field(default_factory=list)  # (key id, tenant id)
    # Budget ids and periods on each key and each tenant.
    budgets: defaultdict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def ulid(prefix: str, at: datetime, rng: random.Random) -> str:
    """An id as ``app.ids.new_id`` makes it, but for the instant ``at``: the seeded rows
    are ordered by id as they are by time, like real ones."""
    value = int(at.timestamp() * 1000) << 80 | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"


async def _insert(engine: AsyncEngine, table: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), BATCH):
        async with database.write(engine) as conn:
            await conn.execute(insert(table), rows[start : start + BATCH])


async def _owners(engine: AsyncEngine, tenant_count: int, key_count: int, seeded: Seeded) -> Owners:
    """Tenants, keys (every third rate-limited), budgets on every fifth key and every
    other tenant, and some history for the audit trail, all through the service functions
    the admin API uses, so audited as its changes are."""
    owners = Owners()
    tenant_ids = []
    for n in range(tenant_count):
        tenant = await tenants.create_tenant(engine, TenantCreate(name=f"Tenant {n:03d}"), ACTOR)
        tenant_ids.append(tenant.id)
    for n in range(key_count):
        tenant_id = tenant_ids[n % tenant_count]
        limit = BudgetCreate(limit_usd="500", period=PERIODS[n // 5 % 3], thresholds=[50, 80])
        created = await keys.create_key(
            engine,
            "",
            KeyCreate(
                tenant_id=tenant_id,
                name=f"{KEY_KINDS[n % len(KEY_KINDS)]}-{n:04d}",
                rate_limits=RateLimits(requests_per_minute=600, max_concurrent=20)
                if n % 3 == 0
                else None,
                budgets=[limit] if n % 5 == 0 else [],
            ),
            ACTOR,
        )
        owners.keys.append((created.id, tenant_id))
        owners.budgets[created.id] = [(b.id, b.period) for b in created.budgets]
    for tenant_id in tenant_ids[::2]:
        limit = BudgetCreate(limit_usd="5000", period="month")
        budget = await budgets.create_budget(engine, limit, ACTOR, tenant_id=tenant_id)
        owners.budgets[tenant_id].append((budget.id, budget.period))
    for key_id, _ in owners.keys[-20:]:
        await keys.revoke_key(engine, key_id, ACTOR)
    for key_id, _ in owners.keys[-40:-20]:
        await keys.rotate_key(engine, "", key_id, 0, ACTOR)
    for tenant_id in tenant_ids[:5]:
        tenant = await tenants.get_tenant(engine, tenant_id)
        rename = TenantUpdate(name=f"{tenant.name} (renamed)")
        await tenants.update_tenant(engine, tenant_id, rename, ACTOR)
    for n in range(3):
        hook = WebhookCreate(url=f"http://127.0.0.1:9/hooks/{n}", event_types=["budget.threshold"])
        created_hook = await webhooks.create_endpoint(engine, hook, ACTOR, allow_private=True)
        seeded.webhook = created_hook.id
    # The busiest key (the first) has a day budget: a page of periods, and a few changes.
    seeded.budget = owners.budgets[owners.keys[0][0]][0][0]
    for limit_usd in ("600", "700", "800"):
        change = BudgetUpdate(limit_usd=limit_usd)
        await budgets.update_budget(engine, seeded.budget, change, ACTOR)
    return owners


def _call(
    rng: random.Random, created_at: datetime, key_id: str, tenant_id: str, model_index: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One settled ledger row (the columns bench.ledger_scale fills, and the usage and
    attempts a real call records), and its upstream attempt (None: refused before)."""
    requested, provider, model, nanos_per_ms = MODELS[model_index]
    audio_ms = rng.randint(2_000, 600_000)
    draw = rng.random()
    status = "succeeded" if draw < 0.95 else "failed" if draw < 0.98 else "rejected"
    ok = status == "succeeded"
    expected = round(audio_ms * nanos_per_ms)
    cost = expected if ok else 0
    latency = rng.randint(300, 20_000)
    tokens = requested == "gpt-4o-transcribe" and ok
    row: dict[str, Any] = {
        "id": ulid("req", created_at, rng),
        "key_id": key_id,
        "tenant_id": tenant_id,
        "endpoint": "transcription",
        "status": status,
        "http_status": 429,
        "error_code": "rate_limited",
        "model_requested": requested,
        "provider": None,
        "model": None,
        "attempts": 0,
        "response_format": None,
        "stream": False,
        "upload_bytes": audio_ms * 32,
        "probed_audio_ms": audio_ms,
        "audio_ms": audio_ms if ok else None,
        "input_text_tokens": 0 if tokens else None,
        "input_audio_tokens": audio_ms // 100 if tokens else None,
        "output_tokens": audio_ms // 400 if tokens else None,
        "total_tokens": audio_ms // 100 + audio_ms // 400 if tokens else None,
        "usage_source": ("provider" if tokens else "probe") if ok else None,
        "cost_nanos": cost,
        "expected_nanos": expected,
        "hold_nanos": round(expected * 1.2),
        "latency_ms": 1,
        "upstream_latency_ms": None,
        "created_at": created_at,
        "sent_at": None,
        "completed_at": created_at + timedelta(milliseconds=latency),
    }
    if status == "rejected":
        return row, None
    row.update(
        http_status=200 if ok else 502,
        error_code=None if ok else "upstream_error",
        provider=provider,
        model=model,
        attempts=1,
        response_format="json",
        latency_ms=latency,
        upstream_latency_ms=latency - 20,
        sent_at=created_at + timedelta(milliseconds=10),
    )
    attempt = {
        "call_id": row["id"],
        "n": 1,
        "provider": provider,
        "model": model,
        "started_at": created_at + timedelta(milliseconds=5),
        "outcome": "answered" if ok else "failed",
        "http_status": 200 if ok else 502,
        "error": None if ok else "http_502",
        "bytes_sent": audio_ms * 32,
        "latency_ms": latency - 20,
        "charged_nanos": cost,
    }
    return row, attempt


async def _calls(
    engine: AsyncEngine, owners: Owners, rows: int, days: int, seeded: Seeded
) -> dict[str, int]:
    """``rows`` settled calls over the last ``days``: key k makes a share ~ 1/(k+1) of
    them (Zipf), so a few keys make most; the budgets' counters hold what they cost."""
    rng = random.Random(SEED)
    weights = [1 / (n + 1) for n in range(len(owners.keys))]
    chosen = rng.choices(range(len(owners.keys)), weights=weights, k=rows)
    now = database.utcnow()
    span = days * 86400 - 120  # none in the last two minutes: every row is settled
    times = sorted(now - timedelta(seconds=120 + rng.random() * span) for _ in range(rows))
    calls, attempts = [], []
    spent: Counter[tuple[str, datetime]] = Counter()
    per_key: Counter[str] = Counter()
    per_tenant: Counter[str] = Counter()
    for created_at, k in zip(times, chosen, strict=True):
        key_id, tenant_id = owners.keys[k]
        row, attempt = _call(rng, created_at, key_id, tenant_id, k % len(MODELS))
        calls.append(row)
        if attempt:
            attempts.append(attempt)
        per_key[key_id] += 1
        per_tenant[tenant_id] += 1
        for budget_id, period in owners.budgets[key_id] + owners.budgets[tenant_id]:
            spent[budget_id, budgets.period_bounds(period, created_at)[0]] += row["cost_nanos"]
    counters = [
        {"budget_id": b, "period_start": start, "spent_nanos": s, "held_nanos": 0,
         "top_up_nanos": 0}
        for (b, start), s in spent.items()
    ]  # fmt: skip
    await _insert(engine, ledger, calls)
    await _insert(engine, upstream_attempts, attempts)
    await _insert(engine, budget_counters, counters)
    seeded.busiest_key, seeded.busiest_key_rows = per_key.most_common(1)[0]
    seeded.busiest_tenant, seeded.busiest_tenant_rows = per_tenant.most_common(1)[0]
    month_start = budgets.period_bounds("month", now)[0]
    thirty_days = datetime.combine(
        (now - timedelta(days=29)).date(), datetime.min.time(), now.tzinfo
    )
    seeded.month_rows = sum(1 for t in times if t >= month_start)
    seeded.last_30_days_rows = sum(1 for t in times if t >= thirty_days)
    return {
        "ledger rows": len(calls),
        "upstream attempts": len(attempts),
        "budget counters": len(counters),
    }


async def seed(url: str, rows: int, tenant_count: int, key_count: int, days: int) -> Seeded:
    """The admin objects through the service functions, then the calls inserted directly
    in batches, as ``bench.ledger_scale`` fills its ledger."""
    seeded = Seeded()
    engine = create_engine(url)
    try:
        owners = await _owners(engine, tenant_count, key_count, seeded)
        counts = await _calls(engine, owners, rows, days, seeded)
        async with database.read(engine) as conn:
            audit_rows = await conn.scalar(select(func.count()).select_from(audit_log))
    finally:
        await engine.dispose()
    budget_count = sum(len(on) for on in owners.budgets.values())
    seeded.counts = {
        "tenants": tenant_count,
        "keys": key_count,
        "budgets": budget_count,
        **counts,
        "audit entries": int(audit_rows or 0),
    }
    return seeded


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    if not found:
        raise SystemExit(f"no {name} field in the page")
    return unescape(found.group(1))


async def sign_in(client: AsyncTestClient) -> None:
    """As tests/test_console.py does: the form's own token, then the admin token."""
    form = await client.get("/console/sign-in")
    response = await client.post(
        "/console/sign-in",
        data={
            "sign_in_token": _field(form.text, "sign_in_token"),
            "next": _field(form.text, "next"),
            "user": "",
            "password": ADMIN_TOKEN,
        },
        follow_redirects=False,
    )
    if response.status_code != 303:
        raise SystemExit(f"sign-in failed: {response.status_code} {response.text[:500]}")


def _next_page(html: str) -> str | None:
    found = re.search(r'<a href="([^"]*)" rel="next"', html)
    return unescape(found.group(1)) if found else None


async def pages(client: AsyncTestClient, seeded: Seeded) -> list[tuple[str, str]]:
    """(label, path) of every page timed, in the order of the table."""
    key, tenant, budget = seeded.busiest_key, seeded.busiest_tenant, seeded.budget
    listed = [
        ("/healthz (harness baseline)", "/healthz"),
        ("/console", "/console"),
        ("/console/tenants", "/console/tenants"),
        ("/console/tenants/{busiest}", f"/console/tenants/{tenant}"),
        ("/console/keys", "/console/keys"),
        (f"/console/keys?name={seeded.key_name}", f"/console/keys?name={seeded.key_name}"),
        ("/console/keys/{busiest} (calls)", f"/console/keys/{key}"),
    ]
    second = _next_page((await client.get(f"/console/keys/{key}")).text)
    if second:
        listed.append(("/console/keys/{busiest}?cursor=(page 2)", second))
    return [
        *listed,
        ("/console/budgets/{day budget}", f"/console/budgets/{budget}"),
        ("/console/usage (30 days by tenant)", "/console/usage"),
        ("/console/usage?by=model", "/console/usage?by=model"),
        ("/console/usage.csv", "/console/usage.csv"),
        ("/console/models", "/console/models"),
        ("/console/webhooks", "/console/webhooks"),
        ("/console/webhooks/{id}", f"/console/webhooks/{seeded.webhook}"),
        ("/console/audit", "/console/audit"),
        ("/console/keys/new", "/console/keys/new"),
        ("/console/keys/{busiest}/revoke", f"/console/keys/{key}/revoke"),
        ("/console/budgets/{day budget}/delete", f"/console/budgets/{budget}/delete"),
    ]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(
    settings: Settings, seeded: Seeded, requests: int
) -> list[tuple[str, list[float]]]:
    """Each page's request times in ms, after one request to warm it up."""
    results = []
    async with AsyncTestClient(app=create_app(settings)) as client:
        await sign_in(client)
        for label, path in await pages(client, seeded):
            warm = await client.get(path, follow_redirects=False)
            if warm.status_code != 200:
                raise SystemExit(f"{path}: {warm.status_code} {warm.text[:500]}")
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                response = await client.get(path, follow_redirects=False)
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{path}: {response.status_code}")
            results.append((label, times))
    return results


def table(results: list[tuple[str, list[float]]]) -> str:
    """Markdown: p50, p95 and max per page, and p50 less the baseline's (the first row)."""
    baseline = statistics.median(results[0][1])
    width = max(len(label) for label, _ in results)
    lines = [
        f"| {'page':{width}} | p50 ms | p95 ms | max ms | p50 - baseline |",
        f"|{'-' * (width + 2)}|-------:|-------:|-------:|---------------:|",
    ]
    for n, (label, times) in enumerate(results):
        p50 = statistics.median(times)
        extra = f"{p50 - baseline:.1f}" if n else ""
        lines.append(
            f"| {label:{width}} | {p50:6.1f} | {percentile(times, 0.95):6.1f} "
            f"| {max(times):6.1f} | {extra:>14} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="ledger rows to seed")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--days", type=int, default=90, help="the calls span this many days")
    parser.add_argument(
        "--postgres-url",
        help="run on PostgreSQL instead of SQLite: a server URL to create (and afterwards "
        "drop) the database earmark_bench_console on",
    )
    args = parser.parse_args()
    for noisy in ("httpx", "alembic"):  # a line per request, per migration otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    kind = "postgres" if args.postgres_url else "sqlite"
    drop = f'DROP DATABASE IF EXISTS "earmark_bench_{NAME}" WITH (FORCE)'
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="earmark-bench-console-") as directory:
        work = Path(directory)
        if args.postgres_url:
            await _admin_sql(args.postgres_url, drop)  # what an interrupted run left
        url = await _database(kind, args.postgres_url, work, NAME)
        try:
            started = time.perf_counter()
            seeded = await seed(url, args.rows, args.tenants, args.keys, args.days)
            if kind == "postgres":  # what autovacuum does soon after a bulk load
                await _admin_sql(url, "VACUUM ANALYZE")
            seeding = time.perf_counter() - started
            config = work / "earmark.toml"
            config.write_text(CONFIG)
            settings = Settings(
                database_url=url,
                admin_token=ADMIN_TOKEN,
                config_path=str(config),
                journal_dir=str(work / "journal"),
            )
            started = time.perf_counter()
            results = await measure(settings, seeded, args.requests)
            measuring = time.perf_counter() - started
        finally:
            if args.postgres_url:
                await _admin_sql(args.postgres_url, drop)
    print(f"\n{kind}: {make_url(url).render_as_string(hide_password=True)}")
    print(", ".join(f"{count:,} {name}" for name, count in seeded.counts.items()))
    print(
        f"calls over the last {args.days} days: {seeded.last_30_days_rows:,} in the last 30 "
        f"(the usage page), {seeded.month_rows:,} this month (the overview); busiest tenant "
        f"{seeded.busiest_tenant_rows:,}, busiest key {seeded.busiest_key_rows:,}"
    )
    print(
        f"seeding {seeding:.1f} s, measuring {measuring:.1f} s, whole run "
        f"{time.perf_counter() - began:.1f} s; {args.requests} requests per page after one "
        "warm-up\n"
    )
    print(table(results))
    print(
        "\nWall time of each in-process request (AsyncTestClient → ASGI app → database),"
        " so it includes the test client's cost; /healthz, measured the same way, is that"
        " baseline."
    )


if __name__ == "__main__":
    asyncio.run(main())
