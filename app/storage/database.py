"""The SQLAlchemy engine and the two kinds of transaction Earmark runs.

SQLite is set up for several writers across processes: WAL (readers never block the
writer), a long busy timeout, and write transactions that take the write lock up front with
``BEGIN IMMEDIATE``. A deferred transaction that reads and then writes can fail with
"database is locked" under contention no matter the timeout; an immediate one waits its
turn instead. Within one process, SQLite writers also queue on an asyncio lock: SQLite's
busy handler sleeps in coarse steps (up to 25 ms) however soon the lock frees, so only
writers of other processes should ever meet it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, event, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.storage.driver import SQLITE_BUSY_TIMEOUT_MS, PostgresStore, SqliteStore, Store

_WRITE = "earmark_write"
_sqlite_writers: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()
_stores: weakref.WeakKeyDictionary[AsyncEngine, Store] = weakref.WeakKeyDictionary()


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc_text(value: datetime) -> str:
    """An instant as the API writes it: RFC 3339 in UTC with ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def store(engine: AsyncEngine) -> Store:
    """The call path's bare-driver access to the engine's database (``app.storage.driver``)."""
    return _stores[engine]


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """The SQLAlchemy engine, and beside it the bare-driver ``store`` of the same database,
    closed when the engine is disposed."""
    if not url.startswith("sqlite"):
        if "poolclass" not in kwargs:
            # At most 10 connections a process (4 here, 6 in the call path's pool): 4
            # workers stay well inside PostgreSQL's default max_connections of 100; a
            # burst queues for a connection instead.
            kwargs.setdefault("pool_size", 2)
            kwargs.setdefault("max_overflow", 2)
            kwargs.setdefault("pool_pre_ping", True)
        engine = create_async_engine(url, **kwargs)
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        _attach(engine, PostgresStore(dsn, engine.dialect))
        return engine

    engine = create_async_engine(url, **kwargs)
    _sqlite_writers[engine] = asyncio.Lock()
    _attach(engine, SqliteStore(engine.url.database or "", engine.dialect))

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN (see _begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _attach(engine: AsyncEngine, store: Store) -> None:
    _stores[engine] = store
    event.listen(engine.sync_engine, "engine_disposed", lambda _engine: store.close())


@asynccontextmanager
async def write(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that will write: on SQLite it holds the write lock from its first line."""
    lock = _sqlite_writers.get(engine)
    if lock is None:
        async with _transaction(engine) as conn:
            yield conn
        return
    async with lock, _transaction(engine) as conn:
        yield conn


@asynccontextmanager
async def _transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as conn:
        await conn.execution_options(**{_WRITE: True})
        async with conn.begin():
            yield conn


@asynccontextmanager
async def read(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction: begun by the first statement, rolled back on return."""
    async with engine.connect() as conn:
        yield conn


async def names(conn: AsyncConnection, table: Table, ids: set[str]) -> dict[str, str]:
    """The ``name`` of each row of ``table`` with one of these ids, by id (the labels a
    report or a page shows beside ids)."""
    if not ids:
        return {}
    query = select(table.c.id, table.c.name).where(table.c.id.in_(sorted(ids)))
    return {row.id: row.name for row in await conn.execute(query)}


async def delete_expired(engine: AsyncEngine, table: Table, now: datetime | None = None) -> int:
    """Delete the rows of ``table`` whose ``expires_at`` has come; how many there were."""
    async with write(engine) as conn:
        result = await conn.execute(delete(table).where(table.c.expires_at <= (now or utcnow())))
    return result.rowcount
