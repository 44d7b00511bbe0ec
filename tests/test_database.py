"""Write transactions are serialised correctly on both backends: a read-then-write done by
many concurrent tasks, and by two processes on one database, loses no update and never
fails with "database is locked"."""

import asyncio
import subprocess
import sys

import pytest
from sqlalchemy import text

from app.database import create_engine, write

pytestmark = pytest.mark.anyio

INCREMENTS = 60

_WORKER = """
import asyncio, sys
from sqlalchemy import text
from app.database import create_engine, write

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
