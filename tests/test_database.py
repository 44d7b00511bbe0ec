"""Write transactions are serialised correctly on both backends: a read-then-write done by
many concurrent tasks, and by two processes on one database, loses no update and never
fails with "database is locked"."""

import asyncio
import sqlite3
import subprocess
import sys

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sql_errors
from sqlalchemy import text

from app.storage import driver
from app.storage.database import create_engine, store, write
from app.storage.driver import POSTGRES_POOL_SIZE, Statement, execute, fetch

pytestmark = pytest.mark.anyio

INCREMENTS = 60

_WORKER = """
import asyncio, sys
from sqlalchemy import text
from app.storage.database import create_engine, write

async def main(url, n):
    engine = create_engine(url)
    async def bump():
        async with write(engine) as conn:
            value = (await conn.execute(text("SELECT n FROM counter FOR_UPDATE"))).scalar_one()
            await asyncio.sleep(0)
            await conn.execute(text("UPDATE counter SET n = :n"), {"n": value + 1})
    await asyncio.gather(*(bump() for _ in range(n)))
    await engine.dispose()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _lock_clause(url: str) -> str:
    # PostgreSQL's read-then-write needs a row lock; SQLite's BEGIN IMMEDIATE already holds one.
    return "FOR UPDATE" if url.startswith("postgresql") else ""


async def _reset_counter(engine) -> None:
    async with write(engine) as conn:
        await conn.execute(text("DROP TABLE IF EXISTS counter"))
        await conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        await conn.execute(text("INSERT INTO counter VALUES (0)"))


async def _counter(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT n FROM counter"))).scalar_one()


async def test_concurrent_read_then_write_in_one_process(database_url: str):
    engine = create_engine(database_url)
    lock = _lock_clause(database_url)
    try:
        await _reset_counter(engine)

        async def bump() -> None:
            async with write(engine) as conn:
                value = (await conn.execute(text(f"SELECT n FROM counter {lock}"))).scalar_one()
                await asyncio.sleep(0)  # let other tasks try to interleave
                await conn.execute(text("UPDATE counter SET n = :n"), {"n": value + 1})

        await asyncio.gather(*(bump() for _ in range(INCREMENTS)))
        assert await _counter(engine) == INCREMENTS
    finally:
        await engine.dispose()


async def test_two_processes_share_one_database(database_url: str):
    engine = create_engine(database_url)
    try:
        await _reset_counter(engine)
        code = _WORKER.replace("FOR_UPDATE", _lock_clause(database_url))
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                code,
                database_url,
                str(INCREMENTS),
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        for worker in workers:
            _, stderr = await worker.communicate()
            assert worker.returncode == 0, stderr.decode()
            assert b"locked" not in stderr
        assert await _counter(engine) == 2 * INCREMENTS
    finally:
        await engine.dispose()


_ITEMS = sa.Table("store_items", sa.MetaData(), sa.Column("n", sa.Integer, unique=True))
_INSERT = Statement(sa.insert(_ITEMS).values(n=sa.bindparam("n")))
_ALL = Statement(sa.select(_ITEMS.c.n).order_by(_ITEMS.c.n))


class Refused(Exception):
    pass


async def _fresh_items(engine) -> None:
    async with write(engine) as conn:
        await conn.execute(text("DROP TABLE IF EXISTS store_items"))
        await conn.execute(text("CREATE TABLE store_items (n INTEGER UNIQUE)"))


async def _items(engine) -> list[int]:
    return [row.n for row in await store(engine).alone(lambda: (yield fetch(_ALL)))]


async def test_concurrent_store_writes_each_commit_or_undo_only_their_own(database_url: str):
    """The call path's writes started together (on SQLite, committed together): one that
    is refused, or breaks a constraint, after writing leaves nothing, and takes nothing
    of the others' with it."""
    engine = create_engine(database_url)
    try:
        await _fresh_items(engine)
        await store(engine).write(lambda: (yield execute(_INSERT, n=500)))

        def program(n: int):
            yield execute(_INSERT, n=n)
            yield execute(_INSERT, n=1000 + n)
            if n % 3 == 0:
                raise Refused(n)
            if n == 7:
                yield execute(_INSERT, n=500)  # taken
            return n

        results = await asyncio.gather(
            *(store(engine).write(lambda n=n: program(n)) for n in range(1, 13)),
            return_exceptions=True,
        )
        kept = [1, 2, 4, 5, 8, 10, 11]
        for n, result in zip(range(1, 13), results, strict=True):
            if n % 3 == 0:
                assert isinstance(result, Refused) and result.args == (n,)
            elif n == 7:
                assert isinstance(result, sql_errors.IntegrityError)
            else:
                assert result == n
        assert await _items(engine) == [*kept, 500, *(1000 + n for n in kept)]
    finally:
        await engine.dispose()


async def test_sqlite_store_writes_wait_for_another_process_lock(tmp_path):
    """While another process holds SQLite's write lock, the call path's writes wait on the
    writer thread and then all commit; one cancelled before its turn writes nothing."""
    path = tmp_path / "lock.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await _fresh_items(engine)
        other.execute("BEGIN IMMEDIATE")
        writes = [
            asyncio.ensure_future(store(engine).write(lambda n=n: (yield execute(_INSERT, n=n))))
            for n in range(5)
        ]
        writes[4].cancel()
        done, _ = await asyncio.wait(writes[:4], timeout=0.3)
        assert not done  # waiting for the lock, not failed with "database is locked"
        other.rollback()
        assert await asyncio.gather(*writes[:4]) == [1, 1, 1, 1]
        assert writes[4].cancelled()
        assert await _items(engine) == [0, 1, 2, 3]
    finally:
        other.close()
        await engine.dispose()


async def test_sqlite_store_write_that_cannot_open_the_database_fails(tmp_path):
    """A batch whose connection cannot even be opened answers every write with the
    database error (what the journal and the 503s act on), instead of leaving it waiting."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'earmark.db'}")
    try:
        writes = [store(engine).write(lambda n=n: (yield execute(_INSERT, n=n))) for n in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 10)
        assert all(isinstance(result, sql_errors.OperationalError) for result in results)
    finally:
        await engine.dispose()


_BACKEND = Statement(
    sa.text("SELECT pg_backend_pid() AS pid, pg_sleep(:seconds) IS NULL AS slept").columns(
        pid=sa.Integer, slept=sa.Boolean
    )
)


async def _backend(engine, seconds: float = 0) -> int:
    ((pid, _),) = await store(engine).alone(lambda: (yield fetch(_BACKEND, seconds=seconds)))
    return pid


@pytest.mark.postgres
async def test_postgres_store_lends_each_connection_to_one_operation_at_a_time(
    migrated_postgres: str,
):
    """More operations at once than connections: each waits for one, none shares one, and
    the process never holds more than its pool's size."""
    engine = create_engine(migrated_postgres)
    try:
        pids = await asyncio.wait_for(
            asyncio.gather(*(_backend(engine, 0.05) for _ in range(4 * POSTGRES_POOL_SIZE))), 30
        )
        assert len(set(pids)) == POSTGRES_POOL_SIZE
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_store_keeps_every_place_usable_through_cancels_and_dropped_connections(
    migrated_postgres: str,
):
    """A statement cancelled mid-way, waiters cancelled in the queue and connections the
    server closed leave every place usable; an error the server answered keeps its
    connection."""
    engine = create_engine(migrated_postgres)
    try:
        await _fresh_items(engine)
        insert = lambda: (yield execute(_INSERT, n=1))  # noqa: E731
        await store(engine).alone(insert)
        first = await _backend(engine)
        with pytest.raises(sql_errors.IntegrityError):
            await store(engine).alone(insert)
        assert await _backend(engine) == first  # the server answered: still usable

        sleeping = asyncio.ensure_future(_backend(engine, 30))
        await asyncio.sleep(0.3)
        sleeping.cancel()
        busy = [asyncio.ensure_future(_backend(engine, 0.3)) for _ in range(POSTGRES_POOL_SIZE)]
        waiting = [asyncio.ensure_future(_backend(engine)) for _ in range(3)]
        await asyncio.sleep(0.1)
        for waiter in waiting[:2]:
            waiter.cancel()
        pids = await asyncio.wait_for(asyncio.gather(*busy, waiting[2]), 30)
        assert len(set(pids[:-1])) == POSTGRES_POOL_SIZE

        # A waiter cancelled just after it was handed a connection passes it on.
        pool = store(engine)._pool()
        lent = [await pool.acquire() for _ in range(POSTGRES_POOL_SIZE)]
        late = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        pool.release(lent.pop(), None)
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        lent.append(await asyncio.wait_for(pool.acquire(), 5))
        for conn in lent:
            pool.release(conn, None)

        async with engine.connect() as conn:  # the server ends every connection the store has
            await conn.execute(
                text("SELECT pg_terminate_backend(p) FROM unnest(CAST(:pids AS int[])) AS p"),
                {"pids": list(set(pids))},
            )
        await asyncio.sleep(0.3)
        again = [_backend(engine, 0.05) for _ in range(2 * POSTGRES_POOL_SIZE)]
        fresh = await asyncio.wait_for(asyncio.gather(*again), 30)
        assert not set(fresh) & set(pids)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_store_replaces_a_connection_left_idle_too_long(
    migrated_postgres: str, monkeypatch: pytest.MonkeyPatch
):
    """A firewall may drop an idle connection without a word: one idle past
    ``IDLE_SECONDS`` is closed and a new one opened, not a statement left to time out."""
    engine = create_engine(migrated_postgres)
    try:
        first = await _backend(engine)
        assert await _backend(engine) == first
        monkeypatch.setattr(driver._Connections, "IDLE_SECONDS", 0)
        assert await _backend(engine) != first
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_closed_postgres_store_refuses_and_wakes_its_waiters(migrated_postgres: str):
    engine = create_engine(migrated_postgres)
    pool = store(engine)._pool()
    lent = [await pool.acquire() for _ in range(POSTGRES_POOL_SIZE)]
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.05)
    await engine.dispose()
    with pytest.raises(asyncpg.InterfaceError):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(asyncpg.InterfaceError):
        await pool.acquire()
    for conn in lent:  # what was lent when it closed comes back closed, and stays so
        pool.release(conn, None)
        assert conn.is_closed()


@pytest.mark.postgres
async def test_a_call_under_way_is_lent_a_connection_before_new_calls(migrated_postgres: str):
    """Every connection busy and a burst of new calls' work queued: the next connection
    freed goes to the sent mark of a call already admitted, so the burst cannot hold up
    a call a provider is working on (CI saw that mark wait 5 s behind 195 refusals)."""
    from app.billing import ledger
    from tests.conftest import empty_database
    from tests.ledger_calls import key_with_budgets, open_calls

    engine = create_engine(migrated_postgres)
    try:
        key_id, tenant_id = await key_with_budgets(engine)
        await open_calls(engine, key_id, tenant_id, "req_under_way")
        busy = [asyncio.ensure_future(_backend(engine, 0.3)) for _ in range(POSTGRES_POOL_SIZE)]
        await asyncio.sleep(0.1)
        finished: list[str] = []

        def tracked(label: str, work) -> asyncio.Future:
            future = asyncio.ensure_future(work)
            future.add_done_callback(lambda _: finished.append(label))
            return future

        new = [tracked("new", _backend(engine)) for _ in range(3 * POSTGRES_POOL_SIZE)]
        await asyncio.sleep(0.05)
        mark = tracked("mark", ledger.mark_sent(engine, "req_under_way"))
        await asyncio.wait_for(asyncio.gather(*busy, *new, mark), 30)
        assert mark.result()
        # Lent the first connection freed; behind the burst it would finish last.
        assert finished.index("mark") < POSTGRES_POOL_SIZE, finished
    finally:
        await engine.dispose()
        await empty_database(migrated_postgres)
