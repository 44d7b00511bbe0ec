"""The call path's transactions on the bare drivers: stdlib ``sqlite3`` and ``asyncpg``.

SQLAlchemy stays the schema of record: the statements are Core statements, compiled once
per dialect to the driver's own SQL (``Statement``). What this module removes is the
per-statement cost of SQLAlchemy's async layer (a greenlet switch, a thread hop through
aiosqlite, result processing: about 1 ms a statement against 0.05-0.2 ms on the driver).

A transaction is written once, as a *program*: a generator that yields operations
(``fetch``, ``execute``, ``execute_many``) and receives their results; the store is given
a function that makes one, so it can run it again. ``Store.write`` runs it on SQLite on
the event loop's thread, committed with the other transactions of the same loop turn
(group commit), or on a writer thread when another process holds the lock; on
PostgreSQL on an asyncpg pool, each statement prepared once per connection, again after
a deadlock or serialization failure. A driver's error becomes the SQLAlchemy error it
would have been, so ``errors.database_unavailable`` reads both alike.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
from collections import deque, namedtuple
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import msgspec
from sqlalchemy import Insert
from sqlalchemy import exc as sql_errors
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement

from app.errors import database_unavailable

T = TypeVar("T")
logger = logging.getLogger("earmark")
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connections of the call path's pool, per process (SQLAlchemy's own pool has the rest).
POSTGRES_POOL_SIZE = 6


class Statement:
    """A Core statement with named ``bindparam``s (or one per dialect, by name), compiled
    once per dialect. SQLAlchemy can execute ``statement`` too, with the same params."""

    def __init__(
        self,
        statement: ClauseElement | Mapping[str, ClauseElement],
        columns: Sequence[str] | None = None,
    ) -> None:
        self.by_dialect = dict(statement) if isinstance(statement, Mapping) else None
        self.statement = next(iter(statement.values())) if self.by_dialect else statement
        self.columns = list(columns) if columns is not None else None  # an INSERT's columns
        selected = getattr(self.statement, "selected_columns", None)
        self.Row = namedtuple("Row", [c.key for c in selected]) if selected is not None else None
        self._compiled: dict[str, tuple[str, list[str], dict[str, Any]]] = {}

    def for_dialect(self, name: str) -> ClauseElement:
        return self.by_dialect[name] if self.by_dialect else self.statement

    def compiled(self, dialect: Dialect) -> tuple[str, list[str], dict[str, Any]]:
        found = self._compiled.get(dialect.name)
        if found is None:
            statement = self.for_dialect(dialect.name)
            kwargs: dict[str, Any] = {"dialect": dialect}
            if self.columns is not None:
                kwargs["column_keys"] = self.columns
            compiled = statement.compile(**kwargs)
            defaults = dict(compiled.params)
            if isinstance(statement, Insert):
                for column in statement.table.columns:
                    default = column.default
                    if default is not None and default.is_scalar:
                        defaults.setdefault(column.key, None)
                        if defaults[column.key] is None:
                            defaults[column.key] = default.arg
            found = (compiled.string, list(compiled.positiontup or []), defaults)
            self._compiled[dialect.name] = found
        return found

    def rows(self, values: list[Sequence[Any]]) -> list[Any]:
        return [self.Row(*row) for row in values] if self.Row else [tuple(v) for v in values]


@dataclass(frozen=True, slots=True)
class Op:
    kind: str  # rows | execute | many
    statement: Statement
    params: Any  # a mapping, or (many) a list of mappings


def fetch(statement: Statement, **params: Any) -> Op:
    """Yield it: receives the rows (tuples in the statement's column order)."""
    return Op("rows", statement, params)


def execute(statement: Statement, **params: Any) -> Op:
    """Yield it: receives the number of rows changed."""
    return Op("execute", statement, params)


def execute_many(statement: Statement, rows: list[Mapping[str, Any]]) -> Op:
    return Op("many", statement, rows)


Program = Generator[Op, Any, T]
Make = Callable[[], Program[T]]
# PostgreSQL's "try the transaction again": a deadlock, a serialization failure.
_RETRY_SQLSTATES = ("40P01", "40001")
_RETRIES = 3


def utc(value: Any) -> datetime | None:
    """A timestamp column's value, whichever driver read it: aware UTC, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json(value: Any) -> Any:
    """A JSON column's value: sqlite3 and asyncpg both hand back its text."""
    return msgspec.json.decode(value) if isinstance(value, str | bytes) else value


_PLAIN = frozenset((str, int, float, bool, bytes, type(None)))  # as both drivers take them


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):  # as SQLAlchemy stores it: naive UTC text, microseconds
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return value


def _postgres_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return value


def _bound(
    store: Store, op: Op, convert: Callable[[Any], Any]
) -> tuple[str, list[Any] | list[list[Any]]]:
    """The operation's SQL for the store's dialect and its arguments in the driver's form
    (a list of argument lists for ``execute_many``), traced if asked. Most of a call's
    ~90 values are plain and go as they are; ``convert`` gets the others."""
    sql, names, defaults = op.statement.compiled(store.dialect)
    rows = []
    for params in op.params if op.kind == "many" else (op.params,):
        args = [params[name] if name in params else defaults.get(name) for name in names]
        rows.append([a if type(a) in _PLAIN else convert(a) for a in args])
    if store.trace:
        for args in rows:
            store.trace(sql, args)
    return sql, rows if op.kind == "many" else rows[0]


async def _drive(program: Program[T], perform: Callable[[Op], Awaitable[Any]]) -> T:
    """Run ``program``, each operation by ``perform``, which answers what the program is
    sent back: rows, a count of rows changed, or None for ``execute_many``."""
    result: Any = None
    while True:
        try:
            op = program.send(result)
        except StopIteration as done:
            return done.value
        result = await perform(op)


async def run_on(conn: Any, program: Program[T]) -> T:
    """Run ``program`` inside a transaction SQLAlchemy already holds (an admin change, the
    sweeper): a step written once serves both kinds of caller."""

    async def perform(op: Op) -> Any:
        found = await conn.execute(op.statement.for_dialect(conn.dialect.name), op.params)
        if op.kind == "rows":
            return op.statement.rows(found.all())
        return None if op.kind == "many" else found.rowcount

    return await _drive(program, perform)


class Store:
    """The call path's database, beside the SQLAlchemy engine of the same URL."""

    # Called with each statement's SQL and arguments before it runs (tests read plans).
    trace: Callable[[str, Sequence[Any]], None] | None = None
    TOGETHER_AT_MOST = 64

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # ``together``'s items, by event loop and kind of statement.
        self._together: dict[tuple[asyncio.AbstractEventLoop, str], _Together] = {}

    # ``under_way``, on each of these: the work of a call already admitted (the sent mark,
    # its settle, a fallback's hold), which PostgreSQL lends the next free connection
    # before new calls' work (``_Connections``). SQLite runs writes as they come.

    async def write(self, make: Make[T], under_way: bool = False) -> T:
        raise NotImplementedError

    async def alone(self, make: Make[T], under_way: bool = False) -> T:
        """A program of one statement, run outside any transaction (one round trip): a
        read, or a write that is atomic on its own."""
        raise NotImplementedError

    async def together(
        self,
        kind: str,
        item: Any,
        make: Callable[[list[Any]], Program[list[T]]],
        under_way: bool = False,
    ) -> T:
        """``item``'s result from ``make``'s program of one statement for a list of items
        (one result per item, in order), run ``alone``: at once if no statement of this
        ``kind`` is in flight on this event loop, else once it is done, with every other
        item that came meanwhile. Under load several calls share a statement and its
        commit; alone, a call waits for nothing. An item whose caller is cancelled before
        its statement runs is left out of it. A database that cannot be reached fails
        every item of the statement; any other error is taken for one item's, and each is
        run again on its own, so one bad item fails only its own caller. A statement takes
        at most ``TOGETHER_AT_MOST`` items."""
        loop = asyncio.get_running_loop()
        key = (loop, kind)
        queue = self._together.get(key)
        if queue is not None:
            future: asyncio.Future[T] = loop.create_future()
            queue.waiting.append((item, future))
            return await future
        queue = self._together[key] = _Together()
        try:
            (result,) = await self.alone(functools.partial(make, [item]), under_way)
            return result
        finally:
            if queue.waiting:
                queue.task = loop.create_task(self._run_together(key, queue, make, under_way))
            else:
                del self._together[key]

    async def _run_together(
        self,
        key: tuple[asyncio.AbstractEventLoop, str],
        queue: _Together,
        make: Callable[[list[Any]], Program[list[Any]]],
        under_way: bool,
    ) -> None:
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        try:
            while queue.waiting:
                batch = queue.waiting[: self.TOGETHER_AT_MOST]
                del queue.waiting[: self.TOGETHER_AT_MOST]
                if batch := [(item, future) for item, future in batch if not future.done()]:
                    _resolve(await self._outcomes(batch, make, under_way))
            del self._together[key]
        except BaseException as error:  # nobody is left waiting forever
            self._together.pop(key, None)
            for _, future in [*batch, *queue.waiting]:
                if future.done():
                    continue
                if isinstance(error, asyncio.CancelledError):  # with its event loop
                    future.cancel()
                else:
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise

    async def _outcomes(
        self,
        batch: list[tuple[Any, asyncio.Future[Any]]],
        make: Callable[[list[Any]], Program[list[Any]]],
        under_way: bool,
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        items = [item for item, _ in batch]
        try:
            results = await self.alone(functools.partial(make, items), under_way)
        except Exception as error:
            if len(batch) == 1 or database_unavailable(error):  # the same for every item
                return [(future, None, error) for _, future in batch]
            outcomes = []
            for item, future in batch:
                outcomes.extend(await self._outcomes([(item, future)], make, under_way))
            return outcomes
        return [(future, result, None) for (_, future), result in zip(batch, results, strict=True)]

    def close(self) -> None:
        raise NotImplementedError


class SqliteStore(Store):
    """Write transactions run inline, on the event loop's thread: a statement on SQLite in
    WAL mode (no fsync at commit) takes tens of microseconds, a hop to a thread and back
    hundreds, and a commit (a WAL append of every page changed) more than the statements
    of a call's transaction together. So the transactions started in one turn of the loop
    run together at its next turn, each in a savepoint, and commit once (``write``).
    Inline, the connection never waits for a lock (busy timeout 0) and never checkpoints
    (the writer thread checkpoints the WAL every ``CHECKPOINT_EVERY`` inline commits); a
    batch that would wait, because another process or this one's writer thread holds the
    write lock, is run again transaction by transaction on the writer thread, which waits
    its turn (``BEGIN IMMEDIATE``, across processes). A statement run alone that would
    wait goes to a thread of its own (with a busy timeout: a single-statement write may
    wait there too), never behind the writer thread's queue of transactions."""

    CHECKPOINT_EVERY = 1_000

    def __init__(self, path: str, dialect: Dialect) -> None:
        super().__init__(dialect)
        self.path = path
        self._threads: dict[str, ThreadPoolExecutor] = {}
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._inline_commits = 0

    def _connection(self, inline: bool) -> sqlite3.Connection:
        """This thread's connection (inline: the one that never waits)."""
        name = "inline" if inline else "waiting"
        conn = getattr(self._local, name, None)
        if conn is None:
            if self.path in ("", ":memory:"):
                raise ValueError("Earmark needs a SQLite file, not an in-memory database")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={0 if inline else SQLITE_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            if inline:
                conn.execute("PRAGMA wal_autocheckpoint=0")
            setattr(self._local, name, conn)
            with self._lock:
                self._connections.append(conn)
        return conn

    def _run(self, program: Program[T], begin: str | None, inline: bool = False) -> T:
        conn = self._connection(inline)
        try:
            try:
                if begin:
                    conn.execute(begin)
                result = self._steps(conn, program)
                if conn.in_transaction:
                    conn.commit()
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            return result
        except sqlite3.Error as error:
            if inline and _busy(error):
                raise
            raise _sqlalchemy_error(error) from error

    def _steps(self, conn: sqlite3.Connection, program: Program[T]) -> T:
        result: Any = None
        while True:
            try:
                op = program.send(result)
            except StopIteration as done:
                return done.value
            sql, args = _bound(self, op, _sqlite_value)
            if op.kind == "many":
                conn.executemany(sql, args)
                result = None
                continue
            cursor = conn.execute(sql, args)
            result = op.statement.rows(cursor.fetchall()) if op.kind == "rows" else cursor.rowcount

    def _thread(self, kind: str) -> ThreadPoolExecutor:
        thread = self._threads.get(kind)
        if thread is None:
            with self._lock:
                thread = self._threads.setdefault(
                    kind, ThreadPoolExecutor(1, thread_name_prefix=f"earmark-sqlite-{kind}")
                )
        return thread

    async def write(self, make: Make[T], under_way: bool = False) -> T:
        """Join the transactions this event loop commits at its next turn (group commit):
        each runs in a savepoint of its own, so a refusal undoes only its own work, and
        they reach the WAL in one append, the pages they share (the budget counters, the
        ledger's last pages) written once. Under load that is several calls per commit;
        alone, one turn of the loop later than running at once."""
        loop = asyncio.get_running_loop()
        batch = getattr(self._local, "batch", None)
        if batch is None or batch.loop is not loop:
            batch = self._local.batch = _Batch(loop)
            loop.call_soon(self._commit, batch)
        future: asyncio.Future[Any] = loop.create_future()
        batch.programs.append((make, future))
        result = await future
        if result is _WAIT:  # the lock is taken: wait for it on the writer thread
            return await loop.run_in_executor(
                self._thread("write"), self._run, make(), "BEGIN IMMEDIATE"
            )
        return result

    def _commit(self, batch: _Batch) -> None:
        if self._local.batch is batch:
            self._local.batch = None
        programs = [(make, future) for make, future in batch.programs if not future.done()]
        if not programs:
            return
        conn: sqlite3.Connection | None = None
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn = self._connection(inline=True)
            conn.execute("BEGIN IMMEDIATE")
            for make, future in programs:
                conn.execute("SAVEPOINT program")
                try:
                    outcomes.append((future, self._steps(conn, make()), None))
                except Exception as error:
                    if isinstance(error, sqlite3.Error) and _busy(error):
                        raise
                    conn.execute("ROLLBACK TO program")
                    if isinstance(error, sqlite3.Error):
                        error = _converted(error)
                    outcomes.append((future, None, error))
                conn.execute("RELEASE program")
            conn.commit()
        except BaseException as error:
            if conn is not None and conn.in_transaction:
                conn.rollback()
            if isinstance(error, sqlite3.Error) and _busy(error):
                outcomes = [(future, _WAIT, None) for _, future in programs]
            else:
                outcomes = [
                    (future, None, _converted(error) if isinstance(error, sqlite3.Error) else error)
                    for _, future in programs
                ]
            if not isinstance(error, Exception):
                _resolve(outcomes)
                raise
        else:
            self._inline_commits += 1
            if self._inline_commits % self.CHECKPOINT_EVERY == 0:
                self._thread("write").submit(self._checkpoint)
        _resolve(outcomes)

    async def alone(self, make: Make[T], under_way: bool = False) -> T:
        """One statement, so no transaction around it."""
        try:
            return self._run(make(), None, inline=True)
        except sqlite3.OperationalError:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread("alone"), self._run, make(), None)

    def _checkpoint(self) -> None:
        """Move the WAL's pages into the database as far as readers allow (not waiting for
        them), so the WAL does not grow without bound."""
        try:
            self._connection(inline=False).execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as error:
            logger.warning("SQLite checkpoint failed: %s", error)

    def close(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, {}
        for thread in threads.values():
            thread.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def _busy(error: sqlite3.Error) -> bool:
    """Another connection holds the lock this one needs (SQLITE_BUSY or SQLITE_LOCKED)."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF in (5, 6)


_WAIT = object()  # a batch's answer to a program it could not run: the lock was taken


@dataclass(slots=True)
class _Batch:
    """The write transactions one event loop commits together at its next turn."""

    loop: asyncio.AbstractEventLoop
    programs: list[tuple[Make[Any], asyncio.Future[Any]]] = field(default_factory=list)


@dataclass(slots=True)
class _Together:
    """``Store.together``'s items of one kind on one event loop, while a statement of that
    kind is in flight: those waiting for the next, and the task that runs them."""

    waiting: list[tuple[Any, asyncio.Future[Any]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def _converted(error: sqlite3.Error) -> Exception:
    converted = _sqlalchemy_error(error)
    converted.__cause__ = error
    return converted


def _resolve(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """Answer each write of a batch, but those whose callers were cancelled meanwhile."""
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class _Connections:
    """One event loop's asyncpg connections for the call path, each lent to one operation
    at a time. asyncpg's own pool costs ~40 µs of CPU per acquire and release (its
    holders, queue and reset), as much as half a statement's round trip; lending from a
    list costs almost nothing. A connection that a failure may have left mid-protocol
    (anything but an error the server answered, or still in a transaction) is closed, not
    lent again, and its place is free for a new one; so is one left idle for
    ``IDLE_SECONDS`` (a firewall may have dropped it without a word). The work of calls
    under way is lent the next free connection before new calls' work: a burst of new
    calls (each a key, an open, perhaps a refusal's row) cannot hold up, behind hundreds
    of their statements, the sent mark or the settle of a call a provider is working on."""

    IDLE_SECONDS = 300

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size = dsn, size
        self._idle: list[tuple[Any, float]] = []  # with when each was put back
        self._all: set[Any] = set()
        self._opening = 0
        self._closed = False
        # Each waiter gets a connection, or None: a place is free, open one. Those of calls
        # under way are served first.
        self._under_way: deque[asyncio.Future[Any]] = deque()
        self._waiters: deque[asyncio.Future[Any]] = deque()

    async def acquire(self, under_way: bool = False) -> Any:
        waiters = self._under_way if under_way else self._waiters
        first = True
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the call path's connections are closed")
            while self._idle:
                conn, since = self._idle.pop()
                if not conn.is_closed() and time.monotonic() - since < self.IDLE_SECONDS:
                    return conn
                self._drop(conn)
            if len(self._all) + self._opening < self.size:
                return await self._open()
            waiter = asyncio.get_running_loop().create_future()
            # One woken for a free place that another took meanwhile keeps its turn.
            (waiters.append if first else waiters.appendleft)(waiter)
            first = False
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._hand_on(waiter.result())
                raise
            if conn is not None:
                return conn

    async def _open(self) -> Any:
        self._opening += 1
        try:
            conn = await asyncpg.connect(self.dsn, timeout=10, command_timeout=60)
        except BaseException:
            self._opening -= 1
            self._hand_on(None)
            raise
        self._opening -= 1
        self._all.add(conn)
        if self._closed:
            self._drop(conn)
            raise asyncpg.InterfaceError("the call path's connections are closed")
        return conn

    def release(self, conn: Any, error: BaseException | None) -> None:
        clean = error is None or isinstance(error, asyncpg.PostgresError)
        if clean and not self._closed and not conn.is_closed() and not conn.is_in_transaction():
            self._hand_on(conn)
            return
        self._drop(conn)
        self._hand_on(None)

    def _drop(self, conn: Any) -> None:
        self._all.discard(conn)
        conn.terminate()

    def _next_waiter(self) -> asyncio.Future[Any] | None:
        """The first waiter still waiting, a call's under way before a new call's."""
        for waiters in (self._under_way, self._waiters):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    return waiter
        return None

    def _hand_on(self, conn: Any) -> None:
        """To the next waiter, or back to the idle list."""
        if (waiter := self._next_waiter()) is not None:
            waiter.set_result(conn)
        elif conn is not None:
            self._idle.append((conn, time.monotonic()))

    def terminate(self) -> None:
        """Close every connection, lent or not; waiting or later acquires fail."""
        self._closed = True
        for conn in self._all:
            conn.terminate()
        self._all.clear()
        self._idle.clear()
        while (waiter := self._next_waiter()) is not None:
            waiter.set_result(None)  # it finds the pool closed


class PostgresStore(Store):
    """Connections per event loop (an asyncpg connection belongs to the loop that made
    it)."""

    def __init__(self, dsn: str, dialect: Dialect) -> None:
        super().__init__(dialect)
        self.dsn = dsn
        self._pools: dict[asyncio.AbstractEventLoop, _Connections] = {}

    def _pool(self) -> _Connections:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _Connections(self.dsn, POSTGRES_POOL_SIZE)
        return pool

    async def _run(self, make: Make[T], transaction: bool, under_way: bool) -> T:
        for attempt in range(_RETRIES):
            try:
                return await self._attempt(make(), transaction, under_way)
            except sql_errors.DBAPIError as error:
                sqlstate = getattr(error.orig, "sqlstate", None)
                if sqlstate not in _RETRY_SQLSTATES or attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _attempt(self, program: Program[T], transaction: bool, under_way: bool) -> T:
        try:
            pool = self._pool()
            conn = await pool.acquire(under_way)
            failure: BaseException | None = None
            try:
                if not transaction:
                    return await self._steps(conn, program)
                async with conn.transaction():
                    return await self._steps(conn, program)
            except BaseException as error:
                failure = error
                raise
            finally:
                pool.release(conn, failure)
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # a connection left mid-operation by a failure
            OSError,  # TimeoutError too: connecting, or a statement, took too long
        ) as error:
            raise _sqlalchemy_error(error) from error

    async def _steps(self, conn: Any, program: Program[T]) -> T:
        async def perform(op: Op) -> Any:
            sql, args = _bound(self, op, _postgres_value)
            if op.kind == "many":
                await conn.executemany(sql, args)
                return None
            if op.kind == "rows":
                return op.statement.rows(await conn.fetch(sql, *args))
            status = await conn.execute(sql, *args)
            return int(status.rsplit(" ", 1)[-1])

        return await _drive(program, perform)

    async def write(self, make: Make[T], under_way: bool = False) -> T:
        return await self._run(make, True, under_way)

    async def alone(self, make: Make[T], under_way: bool = False) -> T:
        """One statement, so no transaction around it: one round trip."""
        return await self._run(make, False, under_way)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.terminate()
        self._pools.clear()


def _sqlalchemy_error(error: BaseException) -> Exception:
    """The SQLAlchemy error the same failure raises through the engine."""
    if isinstance(error, sqlite3.IntegrityError | asyncpg.IntegrityConstraintViolationError):
        return sql_errors.IntegrityError("", None, error)  # type: ignore[arg-type]
    unreachable = (
        OSError
        | asyncpg.InternalClientError
        | sqlite3.OperationalError  # locked past the busy timeout, disk I/O, cannot open
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
    )
    if isinstance(error, unreachable):
        return sql_errors.OperationalError("", None, error)  # type: ignore[arg-type]
    return sql_errors.DBAPIError("", None, error)  # type: ignore[arg-type]
