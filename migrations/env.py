"""Alembic environment, async: migrations run on the same engine setup as the service.

A caller already inside an event loop (the tests, the server) passes an open sync
connection in ``config.attributes["connection"]``; the CLI lets this file run its own loop.
"""

import asyncio

from alembic import context
from sqlalchemy import Connection, pool

from app.settings import load_settings
from app.storage.database import create_engine, write
from app.storage.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    return config.attributes.get("database_url") or load_settings().database_url


def _render_item(kind: str, obj: object, autogen_context: object) -> str | bool:
    """Write UTCDateTime as a plain timestamptz, so revisions never import app code."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with write(engine) as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    asyncio.run(_run_async())
