"""Migrations upgrade an empty database to head, agree with the models, and go back down."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app.billing import budgets
from app.storage import migrate
from app.storage.database import create_engine
from app.storage.models import Base
from tests.conftest import create_postgres_database, drop_postgres_database

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    url = await create_postgres_database()
    yield url
    await drop_postgres_database(url)


async def _tables(engine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_upgrade_check_and_downgrade_round_trip(empty_url: str):
    engine = create_engine(empty_url)
    try:
        assert await migrate.current_revision(engine) is None
        with pytest.raises(migrate.SchemaNotCurrent, match="earmark migrate"):
            await migrate.ensure_at_head(engine, migrate.head_revision())

        await migrate.upgrade_engine(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
        await migrate.ensure_at_head(engine, migrate.head_revision())
        assert {table.name for table in Base.metadata.sorted_tables} <= await _tables(engine)

        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
        assert diff == [], f"models and migrations disagree: {diff}"

        await migrate.downgrade_engine(engine)
        assert await _tables(engine) <= {"alembic_version"}
        assert await migrate.current_revision(engine) is None
        await migrate.upgrade_engine(engine)  # and up again: downgrade left nothing behind
    finally:
        await engine.dispose()


def test_revision_files_are_dated_and_each_can_downgrade():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = list(script.walk_revisions())
    assert revisions
    for revision in revisions:
        path = Path(revision.path)
        assert path.name[:10].replace("_", "").isdigit(), path.name
        assert "def downgrade() -> None:\n    pass" not in path.read_text(), path.name


async def test_budget_events_move_into_the_audit_trail_and_back(empty_url: str):
    """The budget events kept before the audit trail become its rows (same order, users
    named as the trail names them), and go back on a downgrade."""
    engine = create_engine(empty_url)
    try:
        await migrate.upgrade_engine(engine, "9f3b7c2e5a10")
        async with engine.begin() as conn:
            for statement in (
                "INSERT INTO tenants (id, name, name_key, status, metadata, created_at, "
                "updated_at) VALUES ('ten_1', 't', 't', 'active', '{}', :at, :at)",
                "INSERT INTO budgets (id, tenant_id, limit_nanos, period, created_at, "
                "updated_at) VALUES ('bud_1', 'ten_1', 5, 'day', :at, :at)",
                "INSERT INTO budget_events (id, budget_id, action, actor, details, created_at) "
                "VALUES ('evt_01A', 'bud_1', 'create', 'token', '{\"period\": \"day\"}', :at), "
                "('evt_01B', 'bud_1', 'top_up', 'alice', '{\"amount_usd\": \"2\"}', :at), "
                "('evt_01C', 'bud_1', 'reset', 'cli:root', '{}', :at)",
            ):
                await conn.execute(text(statement), {"at": datetime(2026, 1, 2, tzinfo=UTC)})
        await migrate.upgrade_engine(engine)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT id, actor, action, target_type, target_id FROM audit_log")
                )
            ).all()
        assert sorted(tuple(row) for row in rows) == [
            ("aud_01A", "token", "budget.create", "budget", "bud_1"),
            ("aud_01B", "user:alice", "budget.top_up", "budget", "bud_1"),
            ("aud_01C", "cli:root", "budget.reset", "budget", "bud_1"),
        ]
        events = await budgets.events(engine, "bud_1")
        assert [(e.action, e.details) for e in events] == [
            ("create", {"period": "day"}),
            ("top_up", {"amount_usd": "2"}),
            ("reset", {}),
        ]
        await migrate.downgrade_engine(engine, "9f3b7c2e5a10")
        async with engine.connect() as conn:
            back = (await conn.execute(text("SELECT id, actor, action FROM budget_events"))).all()
        assert sorted(tuple(row) for row in back) == [
            ("evt_01A", "token", "create"),
            ("evt_01B", "alice", "top_up"),
            ("evt_01C", "cli:root", "reset"),
        ]
    finally:
        await engine.dispose()


def test_the_open_function_writes_every_column_an_opening_does():
    """``earmark_open`` names the ledger columns it writes: a column added to an opening
    and not to the function would be dropped silently on PostgreSQL's batched path."""
    import importlib.util

    from app.billing import ledger

    script = ScriptDirectory.from_config(migrate.alembic_config())
    revision = script.get_revision("d4a7e9b1c3f6")
    assert revision is not None and revision.path is not None
    spec = importlib.util.spec_from_file_location("open_function", revision.path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = [name.strip() for name in module.ROW.split(",")]
    assert written == ledger._ROW_COLUMNS
