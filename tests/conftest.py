"""Shared fixtures: databases on SQLite and PostgreSQL, the app over AsyncTestClient.

PostgreSQL comes from EARMARK_TEST_POSTGRES_URL (a server database the suite may create
databases from, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/postgres). Without it the
PostgreSQL half of the suite is skipped with a loud reason, except under CI, where a
missing PostgreSQL fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app
from app.settings import Settings
from app.storage.database import create_engine, write
from app.storage.migrate import upgrade
from app.storage.models import Base, budget_counters, ledger, ledger_holds
from tests import openapi_drift

ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
POSTGRES_URL = os.environ.get("EARMARK_TEST_POSTGRES_URL")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def not_run(reason: str) -> NoReturn:
    """Skip loudly on a developer's machine; under CI a missing service is a failure."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _require_postgres() -> str:
    if POSTGRES_URL:
        return POSTGRES_URL
    not_run("EARMARK_TEST_POSTGRES_URL is not set: PostgreSQL tests NOT RUN")


def postgres_database(name: str) -> str:
    return make_url(_require_postgres()).set(database=name).render_as_string(hide_password=False)


async def _admin_sql(statement: str) -> None:
    engine = create_engine(_require_postgres(), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def create_postgres_database() -> str:
    name = f"earmark_test_{uuid.uuid4().hex[:12]}"
    await _admin_sql(f'CREATE DATABASE "{name}"')
    return postgres_database(name)


async def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    await _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "earmark.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres() -> Iterator[str]:
    url = asyncio.run(create_postgres_database())
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(drop_postgres_database(url))


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty SQLite database: for what does not depend on the database (the
    CLI's parsing and printing), run once."""
    path = tmp_path / "earmark.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A migrated, empty database of each kind (set up and emptied outside the event loop)."""
    if request.param == "sqlite":
        path = tmp_path / "earmark.db"
        shutil.copyfile(sqlite_template, path)
        url = f"sqlite+aiosqlite:///{path}"
    else:
        _require_postgres()
        url = request.getfixturevalue("migrated_postgres")
    yield url
    try:
        # Issue 4's invariant, after every database test: counters equal their ledger rows.
        asyncio.run(ledger_invariants(url))
    finally:
        if request.param == "postgres":  # the next test gets an empty database regardless
            asyncio.run(empty_database(url))


OPEN = ("reserved", "forwarded")


async def ledger_invariants(url: str) -> None:
    """Every counter equals its ledger rows: spent is the settled cost, held the open holds."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            counters = (await conn.execute(select(budget_counters))).all()
            for counter in counters:
                rows = (
                    select(ledger.c.status, ledger.c.cost_nanos, ledger_holds.c.amount_nanos)
                    .join(ledger_holds, ledger_holds.c.ledger_id == ledger.c.id)
                    .where(
                        ledger_holds.c.budget_id == counter.budget_id,
                        ledger_holds.c.period_start == counter.period_start,
                    )
                )
                calls = (await conn.execute(rows)).all()
                open_holds = sum(c.amount_nanos for c in calls if c.status in OPEN)
                settled = sum(c.cost_nanos for c in calls if c.status not in OPEN)
                assert counter.held_nanos == open_holds
                assert counter.spent_nanos == settled
            duplicates = await conn.scalar(
                select(func.count())
                .select_from(ledger)
                .group_by(ledger.c.id)
                .having(func.count() > 1)
            )
            assert duplicates is None
    finally:
        await engine.dispose()


async def empty_database(url: str) -> None:
    """Every row deleted: on a test's few rows a DELETE takes ~5 ms where a TRUNCATE, which
    makes each table's files anew, takes ~80. As a replica would, so that no trigger runs
    (the audit log's append-only guard, the foreign keys' checks)."""
    engine = create_engine(url)
    try:
        async with write(engine) as conn:
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
            for table in Base.metadata.sorted_tables:
                await conn.execute(table.delete())
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


# The models the admin API's tests name (no provider is reached through them).
ADMIN_TEST_CONFIG = """
[providers.openai]
base_url = "http://127.0.0.1:9/v1"
[providers.openai.models.whisper-1]
aliases = ["whisper"]
[providers.openai.models.gpt-4o-transcribe]
[providers.groq]
base_url = "http://127.0.0.1:9/v1"
[providers.groq.models.whisper-large-v3]
[providers.local]
kind = "local"
[providers.local.models.pocketsphinx]
engine = "pocketsphinx"
"""


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    config = tmp_path / "earmark.toml"
    config.write_text(ADMIN_TEST_CONFIG)
    return Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        journal_dir=str(tmp_path / "journal"),
        config_path=str(config),
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@pytest.fixture
async def tenant(client: AsyncTestClient) -> dict:
    response = await client.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
async def key(client: AsyncTestClient, tenant: dict) -> dict:
    """A fresh key of the ``tenant`` fixture, with its secret."""
    response = await client.post(
        "/admin/keys", json={"tenant_id": tenant["id"], "name": "default"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    return response.json()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[Any]:
    from tests.fake_provider import Script, create_fake_provider
    from tests.servers import ServerThread

    script = Script()
    with ServerThread(create_fake_provider(script), "tests.servers:ResettableProtocol") as server:
        server.script = script  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def gateway(
    database_url: str, fake_provider: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Earmark on loopback in front of the fake provider, on each database."""
    from app.gateway import form
    from tests.fake_provider import API_KEY
    from tests.gateway import KEY_ENV, serve_gateway

    fake_provider.script.reset()
    monkeypatch.setenv(KEY_ENV, API_KEY)
    held = form._Buffered.used
    with serve_gateway(database_url, fake_provider.url, tmp_path) as gateway:
        yield gateway
    assert form._Buffered.used == held, "a form was never closed: its memory stays counted"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a route answered a status its OpenAPI schema does not document."""
    missing = openapi_drift.undocumented()
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "the OpenAPI schema does not document what the routes answered:\n  " + (
            "\n  ".join(missing)
        )
        if reporter:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
