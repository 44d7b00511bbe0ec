"""How long each admin console page takes to render on a large ledger: every page of
/console, server-side, on a database of 100,000 ledger rows (50 tenants, 500 keys, budgets
on some keys and tenants, 90 days of calls), on SQLite or, given ``--postgres-url``, on a
fresh PostgreSQL database created on that server for the run and dropped afterwards.

    python -m bench.console_pages [--rows 100000] [--requests 30]
        [--postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]

The app runs in-process (litestar's AsyncTestClient, its lifespan included: the sweeper
and the webhook worker run as they would in production), signed in as the admin token.
Each page is fetched once to warm up, then ``--requests`` times; the table shows p50, p95
and max wall time per request, which includes the test client's own cost: /healthz (no
database, no template) measured the same way shows what that is.
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
from datetime import datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import func, insert, make_url, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import budgets, database, keys, tenants, webhooks
from app.database import create_engine
from app.main import create_app
from app.models import audit_log, budget_counters, ledger, upstream_attempts
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
from bench.ledger_scale import ACTOR, _admin_sql, _database

ADMIN_TOKEN = "bench-admin-token-0123456789"
NAME = "console"  # the database: console.db on SQLite, earmark_bench_console on PostgreSQL
BATCH = 5000
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
    ("whisper-large-v3", "groq", "whisper-large-v3", 111_000_000_000 / 3_600_000 / 1000),
    ("pocketsphinx", "local", "pocketsphinx", 0.0),
]
KEY_KINDS = ("web", "mobile", "batch", "ivr", "notes", "captions", "search", "support")
PERIODS = ("day", "week", "month")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(prefix: str, at: datetime, rng: random.Random) -> str:
    """An id as ``app.ids.new_id`` makes it, but for the instant ``at``: the seeded rows
    are ordered by id as they are by time, like real ones."""
    value = int(at.timestamp() * 1000) << 80 | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"


class Seeded:
    """What was seeded, and the ids the pages are opened with."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.busiest_tenant = ""
        self.busiest_key = ""
        self.busiest_key_rows = 0
        self.busiest_tenant_rows = 0
        self.budget = ""
        self.key_name = ""


async def _insert(engine: AsyncEngine, table: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), BATCH):
        async with database.write(engine) as conn:
            await conn.execute(insert(table), rows[start : start + BATCH])


async def seed(url: str, rows: int, tenant_count: int, key_count: int, days: int) -> Seeded:
    """Tenants, keys and budgets through the service functions (so audited as the API's
    are), then ``rows`` settled calls inserted directly, as ``bench.ledger_scale`` does,
    spread over ``days`` and over the keys (a few keys make most of the calls)."""
    rng = random.Random(SEED)
    seeded = Seeded()
    engine = create_engine(url)
    try:
        tenant_ids = []
        for n in range(tenant_count):
            tenant = await tenants.create_tenant(
                engine, TenantCreate(name=f"Tenant {n:03d}"), ACTOR
            )
            tenant_ids.append(tenant.id)
        key_list: list[tuple[str, str]] = []  # (key id, tenant id)
        key_budgets: dict[str, list[tuple[str, str]]] = defaultdict(list)  # key: (budget, period)
        for n in range(key_count):
            tenant_id = tenant_ids[n % tenant_count]
            period = PERIODS[n // 5 % 3]
            created = await keys.create_key(
                engine,
                "",
                KeyCreate(
                    tenant_id=tenant_id,
                    name=f"{KEY_KINDS[n % len(KEY_KINDS)]}-{n:04d}",
                    rate_limits=RateLimits(requests_per_minute=600, max_concurrent=20)
                    if n % 3 == 0
                    else None,
                    budgets=[BudgetCreate(limit_usd="500", period=period, thresholds=[50, 80])]
                    if n % 5 == 0
                    else [],
                ),
                ACTOR,
            )
            key_list.append((created.id, tenant_id))
            key_budgets[created.id] = [(b.id, b.period) for b in created.budgets]
        tenant_budgets: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for n, tenant_id in enumerate(tenant_ids):
            if n % 2 == 0:
                budget = await budgets.create_budget(
                    engine, BudgetCreate(limit_usd="5000", period="month"), ACTOR,
                    tenant_id=tenant_id,
                )  # fmt: skip
                tenant_budgets[tenant_id].append((budget.id, budget.period))
        # Some history for the audit trail: revocations, rotations, renames, webhooks.
        for key_id, _ in key_list[-20:]:
            await keys.revoke_key(engine, key_id, ACTOR)
        for key_id, _ in key_list[-40:-20]:
            await keys.rotate_key(engine, "", key_id, 0, ACTOR)
        for tenant_id in tenant_ids[:5]:
            tenant = await tenants.get_tenant(engine, tenant_id)
            update = TenantUpdate(name=f"{tenant.name} (renamed)")
            await tenants.update_tenant(engine, tenant_id, update, ACTOR)
        for n in range(3):
            hook = WebhookCreate(
                url=f"http://127.0.0.1:9/hooks/{n}",
                event_types=["budget.threshold", "budget.exhausted"],
            )
            await webhooks.create_endpoint(engine, hook, ACTOR, allow_private=True)

        # Calls: key k makes a share ~ 1/(k+1) of them (Zipf), so the first key is busiest.
        weights = [1 / (n + 1) for n in range(key_count)]
        chosen = rng.choices(range(key_count), weights=weights, k=rows)
        now = database.utcnow()
        span = days * 86400 - 120  # none in the last two minutes: every row is settled
        times = sorted(now - timedelta(seconds=120 + rng.random() * span) for _ in range(rows))
        calls, attempts = [], []
        spent: Counter[tuple[str, datetime]] = Counter()
        per_key: Counter[str] = Counter()
        per_tenant: Counter[str] = Counter()
        for created_at, k in zip(times, chosen, strict=True):
            key_id, tenant_id = key_list[k]
            requested, provider, model, nanos_per_ms = MODELS[k % len(MODELS)]
            audio_ms = rng.randint(2_000, 600_000)
            draw = rng.random()
            status = "succeeded" if draw < 0.95 else "failed" if draw < 0.98 else "rejected"
            cost = round(audio_ms * nanos_per_ms) if status == "succeeded" else 0
            latency = rng.randint(300, 20_000)
            call_id = ulid("req", created_at, rng)
            row: dict[str, Any] = {
                "id": call_id,
                "key_id": key_id,
                "tenant_id": tenant_id,
                "endpoint": "transcription",
                "status": status,
                "model_requested": requested,
                "attempts": 0,
                "stream": False,
                "upload_bytes": audio_ms * 32,
                "probed_audio_ms": audio_ms,
                "audio_ms": None,
                "provider": None,
                "model": None,
                "response_format": None,
                "usage_source": None,
                "upstream_latency_ms": None,
                "sent_at": None,
                "cost_nanos": cost,
                "expected_nanos": round(audio_ms * nanos_per_ms),
                "hold_nanos": round(audio_ms * nanos_per_ms * 1.2),
                "created_at": created_at,
                "completed_at": created_at + timedelta(milliseconds=latency),
            }
            if status == "rejected":
                row.update(http_status=429, error_code="rate_limited", latency_ms=1)
            else:
                ok = status == "succeeded"
                row.update(
                    http_status=200 if ok else 502,
                    error_code=None if ok else "upstream_error",
                    provider=provider,
                    model=model,
                    attempts=1,
                    response_format="json",
                    audio_ms=audio_ms if ok else None,
                    usage_source="probe" if ok else None,
                    latency_ms=latency,
                    upstream_latency_ms=latency - 20,
                    sent_at=created_at + timedelta(milliseconds=10),
                )
                attempts.append(
                    {
                        "call_id": call_id,
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
                )
            calls.append(row)
            per_key[key_id] += 1
            per_tenant[tenant_id] += 1
            for budget_id, period in key_budgets[key_id] + tenant_budgets[tenant_id]:
                spent[budget_id, budgets.period_bounds(period, created_at)[0]] += cost
        await _insert(engine, ledger, calls)
        await _insert(engine, upstream_attempts, attempts)
        counters = [
            {"budget_id": b, "period_start": start, "spent_nanos": s, "held_nanos": 0,
             "top_up_nanos": 0}
            for (b, start), s in spent.items()
        ]  # fmt: skip
        await _insert(engine, budget_counters, counters)

        seeded.busiest_key, seeded.busiest_key_rows = per_key.most_common(1)[0]
        seeded.busiest_tenant, seeded.busiest_tenant_rows = per_tenant.most_common(1)[0]
        seeded.key_name = KEY_KINDS[0]
        # The budget with most periods: the busiest day budget, with a few changes.
        day_budgets = [b for k, _ in key_list for b, p in key_budgets[k] if p == "day"]
        seeded.budget = day_budgets[0]
        for limit in ("600", "700", "800"):
            await budgets.update_budget(engine, seeded.budget, BudgetUpdate(limit_usd=limit), ACTOR)
        seeded.counts = {
            "tenants": tenant_count,
            "keys": key_count,
            "budgets": sum(map(len, key_budgets.values())) + sum(map(len, tenant_budgets.values())),
            "ledger rows": len(calls),
            "upstream attempts": len(attempts),
            "budget counters": len(counters),
        }
        async with database.read(engine) as conn:
            audit_rows = await conn.scalar(select(func.count()).select_from(audit_log))
        seeded.counts["audit entries"] = int(audit_rows or 0)
    finally:
        await engine.dispose()
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
    key, tenant = seeded.busiest_key, seeded.busiest_tenant
    listed: list[tuple[str, str]] = [
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
    listed += [
        ("/console/budgets/{day budget}", f"/console/budgets/{seeded.budget}"),
        ("/console/usage (30 days by tenant)", "/console/usage"),
        ("/console/usage?by=model", "/console/usage?by=model"),
        ("/console/usage.csv", "/console/usage.csv"),
        ("/console/models", "/console/models"),
        ("/console/webhooks", "/console/webhooks"),
        ("/console/audit", "/console/audit"),
    ]
    return listed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(
    settings: Settings, seeded: Seeded, requests: int
) -> list[tuple[str, list[float]]]:
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
                assert response.status_code == 200, (path, response.status_code)
            results.append((label, times))
    return results


def table(results: list[tuple[str, list[float]]]) -> str:
    baseline = statistics.median(results[0][1])
    width = max(len(label) for label, _ in results)
    lines = [
        f"| {'page':{width}} | p50 ms | p95 ms | max ms | p50 - baseline |",
        f"|{'-' * (width + 2)}|-------:|-------:|-------:|---------------:|",
    ]
    for label, times in results:
        p50 = statistics.median(times)
        extra = "" if label.startswith("/healthz") else f"{p50 - baseline:.1f}"
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
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    kind = "postgres" if args.postgres_url else "sqlite"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="earmark-bench-console-") as directory:
        work = Path(directory)
        if args.postgres_url:
            drop = f'DROP DATABASE IF EXISTS "earmark_bench_{NAME}" WITH (FORCE)'
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
    shown = make_url(url).render_as_string(hide_password=True)
    print(f"\n{kind}: {shown}")
    print(", ".join(f"{count:,} {name}" for name, count in seeded.counts.items()))
    print(
        f"busiest tenant: {seeded.busiest_tenant_rows:,} rows; "
        f"busiest key: {seeded.busiest_key_rows:,} rows; calls over the last {args.days} days"
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
