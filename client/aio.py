"""The asyncio API of the raftlite client: the DB-API's behaviour, awaited.

    from raftlite.client import aio
    connection = await aio.connect("10.0.0.1:9001,10.0.0.2:9001", database="app")
    async with connection:               # commit on success, rollback on an exception
        await connection.execute("INSERT INTO t VALUES (?)", (1,))
    cursor = await connection.execute("SELECT * FROM t")
    rows = await cursor.fetchall()
    await connection.close()

Theory of operation
-------------------
The same as raftlite.client.dbapi, over an `AsyncClusterSession`: the statement plan,
transaction tracking (dbapi's sans-I/O `TransactionTracker`), result conversion and
exceptions are the DB-API's own code; only the requests are awaited. The fetch methods are coroutines too (as in aiosqlite), even
though the rows are already in memory, so that a later streaming cursor keeps the API.
An asyncio.Lock keeps one connection's requests in order when several tasks share it.
"""

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

from .cluster import AsyncClusterSession, AsyncConnectionSetup, RequestKind, RetryPolicy, parse_addresses, run_awaited
from .connection import AsyncConnection as NodeConnection, RequestFailed
from .compat import local_copy
from .dbapi import (
    LEGACY_TRANSACTION_CONTROL, TIMEOUT_S_DEFAULT, ConnectionState, CursorResults, SqlCall, calls_as_steps, Steps,
    TransactionTracker, checked_autocommit, checked_isolation_level, checked_many, checked_statement,
    connection_modes, wire_parameters,
)
from .errors import Error, InterfaceError, NotSupportedError
from .retrying import ATTEMPTS_DEFAULT, run_transaction_steps
from .types import Parameter, Python
from ..core.wire import DumpFile, NodeInfo, ResultResponse, RowsResponse

__all__ = ["Connection", "Cursor", "Pool", "connect", "create_pool", "run_transaction"]

_NOT_AN_ERROR = (1, "not an error")
_T = TypeVar("_T")


def _operation(call: SqlCall):
    """`call` as a session operation (awaited variant of dbapi.statement_operation)."""

    async def run(connection: NodeConnection, db_id: int) -> ResultResponse | RowsResponse:
        if call.use_query:
            try:
                return await connection.query_sql(db_id, call.sql, call.parameters)
            except RequestFailed as failure:
                if (failure.code, failure.message) != _NOT_AN_ERROR:
                    raise
        return await connection.exec_sql(db_id, call.sql, call.parameters)

    return run


class Cursor(CursorResults):
    """An asyncio cursor: `await cursor.execute(...)`, `await cursor.fetchall()`, `async for`."""

    async def execute(self, sql: str, parameters: Sequence[Parameter] | None = None) -> "Cursor":
        self._check()
        info = checked_statement(sql)
        values = wire_parameters(sql, parameters)
        result = await self.connection._drive(lambda tracker: tracker.statement(sql, info, values))
        self._reset()
        self._store(result)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Parameter]]) -> "Cursor":
        self._check()
        info = checked_many(sql)
        self._reset()
        self.rowcount, self.lastrowid = await self.connection._drive(lambda tracker: tracker.many(sql, info,
                                                                                                 seq_of_parameters))
        return self

    async def executescript(self, sql: str) -> "Cursor":
        self._check()
        info = checked_statement(sql, script=True)
        self._reset()
        await self.connection._drive(lambda tracker: tracker.script(sql, info))
        return self

    async def fetchone(self) -> tuple[Python, ...] | None:
        self._check()
        return self._fetchone()

    async def fetchmany(self, size: int | None = None) -> list[tuple[Python, ...]]:
        self._check()
        return self._fetchmany(size)

    async def fetchall(self) -> list[tuple[Python, ...]]:
        self._check()
        return self._fetchall()

    async def __aiter__(self) -> AsyncIterator[tuple[Python, ...]]:
        while (row := await self.fetchone()) is not None:
            yield row

    async def close(self) -> None:
        self._close()


class Connection(ConnectionState):
    """An asyncio connection to a cluster. Use `await connect(...)`."""

    def __init__(self, session: AsyncClusterSession, *, autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
                 isolation_level: str | None = "") -> None:
        super().__init__(session, autocommit=autocommit, isolation_level=isolation_level)
        self._lock = asyncio.Lock()

    @property
    def autocommit(self) -> bool | int:
        """As the DB-API connection's; setting it cannot send COMMIT from a property, so
        turning autocommit on (or isolation_level to None) with a transaction open is
        refused: `await commit()` first."""
        return self._tracker.autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        value = checked_autocommit(value)
        if value is True and self._tracker.in_transaction:
            raise InterfaceError("a transaction is open: await commit() or rollback() before turning autocommit on")
        self._tracker.autocommit = value

    @ConnectionState.isolation_level.setter   # type: ignore[attr-defined]
    def isolation_level(self, level: str | None) -> None:
        level = checked_isolation_level(level)
        if level is None and self._tracker.in_transaction:
            raise InterfaceError("a transaction is open: await commit() or rollback() before isolation_level None")
        self._tracker.isolation_level = level

    async def _drive(self, steps_of: Callable[[TransactionTracker], Steps[_T]]) -> _T:
        """Run one TransactionTracker method's calls, holding the lock throughout."""
        async with self._lock:
            self._check()
            return await run_awaited(calls_as_steps(steps_of(self._tracker), self.session, _operation))

    def cursor(self) -> Cursor:
        self._check()
        return Cursor(self)

    async def execute(self, sql: str, parameters: Sequence[Parameter] | None = None) -> Cursor:
        return await self.cursor().execute(sql, parameters)

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Parameter]]) -> Cursor:
        return await self.cursor().executemany(sql, seq_of_parameters)

    async def executescript(self, sql: str) -> Cursor:
        return await self.cursor().executescript(sql)

    async def begin(self) -> None:
        await self._drive(TransactionTracker.begin)

    async def commit(self) -> None:
        await self._drive(TransactionTracker.commit)

    async def rollback(self) -> None:
        await self._drive(TransactionTracker.rollback)

    async def close(self) -> None:
        if self.session.closed:
            return
        if self._tracker.in_transaction:
            try:
                await self.rollback()
            except Error:
                pass  # closing drops the server's transaction anyway
        await self.session.close()

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, exception_type: type | None, *_rest: object) -> None:
        if exception_type is None:
            await self.commit()
        else:
            await self.rollback()

    async def dump(self) -> tuple[DumpFile, ...]:
        """As the DB-API connection's dump()."""
        self._check()
        database = self.session.database

        async def ask(connection: NodeConnection, _db_id: int) -> tuple[DumpFile, ...]:
            return await connection.dump(database)

        return await self.session.call(RequestKind.READ, ask)

    async def iterdump(self) -> list[str]:
        """As the DB-API connection's iterdump(), the statements as a list."""
        with local_copy(await self.dump(), self.session.database) as local:
            return list(local.iterdump())

    async def backup(self, target: sqlite3.Connection, **options: Any) -> None:
        """As the DB-API connection's backup() (the local copy blocks the loop while it runs)."""
        if not isinstance(target, sqlite3.Connection):
            raise NotSupportedError("backup() copies into a sqlite3.Connection")
        with local_copy(await self.dump(), self.session.database) as local:
            local.backup(target, **options)

    async def leader(self) -> NodeInfo | None:
        self._check()

        async def ask(connection: NodeConnection, _db_id: int) -> NodeInfo | None:
            return await connection.leader()

        return await self.session.call(RequestKind.READ, ask)

    async def cluster(self) -> tuple[NodeInfo, ...]:
        self._check()

        async def ask(connection: NodeConnection, _db_id: int) -> tuple[NodeInfo, ...]:
            return await connection.cluster()

        return await self.session.call(RequestKind.READ, ask)


async def connect(addresses: str | Sequence[str], *, database: str = "main", timeout: float = TIMEOUT_S_DEFAULT,
                  autocommit: bool | int = LEGACY_TRANSACTION_CONTROL, isolation_level: str | None = "",
                  begin: str | None = None, retry_unknown_writes: bool = False,
                  policy: RetryPolicy | None = None, ssl_context=None,
                  on_connect: Callable[[AsyncConnectionSetup], Any] | None = None) -> Connection:
    """As raftlite.client.connect, for asyncio. `on_connect(setup)` may be a coroutine
    function: `async def setup(s): await s.execute("PRAGMA foreign_keys=OFF")`."""
    if not isinstance(database, str) or not database:
        raise InterfaceError("database must be a non-empty name")
    autocommit, isolation_level = connection_modes(autocommit, isolation_level, begin)
    if policy is None:
        policy = RetryPolicy(timeout_s=timeout, retry_unknown_writes=retry_unknown_writes)
    session = AsyncClusterSession(addresses, database=database, policy=policy, ssl_context=ssl_context,
                                  on_connect=on_connect)

    async def found(_connection: NodeConnection, db_id: int) -> int:
        return db_id

    try:
        await session.call(RequestKind.READ, found)
    except BaseException:
        await session.close()
        raise
    return Connection(session, autocommit=autocommit, isolation_level=isolation_level)


async def run_transaction(connection: Connection, fn: Callable[[Connection], Any], *,
                          attempts: int = ATTEMPTS_DEFAULT, idempotent: bool = False) -> Any:
    """As raftlite.client.run_transaction; `fn` may be a coroutine function."""
    return await run_awaited(run_transaction_steps(connection, fn, attempts=attempts, idempotent=idempotent,
                                                   random_source=connection.session._random))


class Pool:
    """Up to `size` connections to one cluster for tasks to share, one task per
    connection at a time: `async with pool.acquire() as connection:`. Connections are
    opened when first needed; one handed back with a transaction still open is rolled
    back, and one that was closed is replaced. A single connection cannot be shared by
    concurrent tasks (their transactions would interleave on it): that is what the
    pool is for."""

    def __init__(self, connect_new: Callable[[], Any], size: int) -> None:
        if not isinstance(size, int) or size < 1:
            raise InterfaceError(f"pool size must be a positive integer, got {size!r}")
        self.size = size
        self._connect_new = connect_new
        self._idle: list[Connection] = []
        self._opened = 0          # connections open or being opened
        self._available = asyncio.Condition()
        self.closed = False

    async def _take(self) -> Connection:
        async with self._available:
            while True:
                if self.closed:
                    raise InterfaceError("the pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._opened < self.size:
                    self._opened += 1
                    break
                await self._available.wait()
        try:
            return await self._connect_new()
        except BaseException:
            async with self._available:
                self._opened -= 1
                self._available.notify()
            raise

    async def _give_back(self, connection: Connection) -> None:
        if not connection.closed and connection.in_transaction:
            try:
                await connection.rollback()
            except Error:
                await connection.close()
        async with self._available:
            if connection.closed or self.closed:
                self._opened -= 1
                if not connection.closed:
                    await connection.close()
            else:
                self._idle.append(connection)
            self._available.notify()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A connection for this task alone until the block ends (waits while all `size` are in use)."""
        connection = await self._take()
        try:
            yield connection
        finally:
            await self._give_back(connection)

    async def close(self) -> None:
        """Closes the idle connections now and the others as they are handed back."""
        async with self._available:
            self.closed = True
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
            self._available.notify_all()
        for connection in idle:
            await connection.close()

    async def __aenter__(self) -> "Pool":
        return self

    async def __aexit__(self, *_exception: object) -> None:
        await self.close()


def create_pool(addresses: str | Sequence[str], *, size: int = 10, **connect_options: Any) -> Pool:
    """A `Pool` of up to `size` connections made by `connect(addresses, **connect_options)`."""
    parse_addresses(addresses)   # a bad address is reported now, not at the first acquire
    return Pool(lambda: connect(addresses, **connect_options), size)
