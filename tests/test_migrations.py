"""Migrations upgrade an empty database to head, agree with the models, and go back down."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from app import migrate
from app.database import create_engine
from app.models import Base
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
