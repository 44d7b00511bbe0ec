"""Schema migrations: run Alembic to head, and tell whether a database is at head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.storage.database import write

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SchemaNotCurrent(Exception):
    """The database is not at the revision this code expects."""


def alembic_config(database_url: str | None = None) -> Config:
    ini = PROJECT_ROOT / "alembic.ini"
    if not ini.exists():
        raise SchemaNotCurrent(f"migrations not found: {ini} is missing")
    config = Config(str(ini))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str) -> None:
    """Upgrade to head from synchronous code (the CLI)."""
    command.upgrade(alembic_config(database_url), "head")


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    await _on_connection(engine, lambda config: command.upgrade(config, revision))


async def downgrade_engine(engine: AsyncEngine, revision: str = "base") -> None:
    await _on_connection(engine, lambda config: command.downgrade(config, revision))


async def _on_connection(engine: AsyncEngine, run: object) -> None:
    def _sync(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        run(config)  # type: ignore[operator]

    async with write(engine) as conn:
        await conn.run_sync(_sync)


def revisions_between(base: str | None, head: str | None) -> list[str]:
    """The revisions an upgrade from ``base`` to ``head`` applies, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    walked = script.walk_revisions(base or "base", head or "heads")
    return [
        f"{r.revision} ({r.doc})" if r.doc else r.revision
        for r in reversed(list(walked))
        if r.revision != base
    ]


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )


async def ensure_at_head(engine: AsyncEngine, expected: str | None) -> None:
    current = await current_revision(engine)
    if current != expected:
        raise SchemaNotCurrent(
            f"the database schema is at revision {current or '(empty)'} but this Earmark "
            f"needs {expected}: run `earmark migrate` (with the same EARMARK_DATABASE_URL)"
        )
