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
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

from .cluster import AsyncClusterSession, AsyncConnectionSetup, RequestKind, RetryPolicy, run_awaited
from .connection import AsyncConnection as NodeConnection, RequestFailed
from .dbapi import (
    TIMEOUT_S_DEFAULT, ConnectionState, CursorResults, SqlCall, calls_as_steps, Steps, TransactionTracker, checked_many, checked_statement,
    wire_parameters,
)
from .errors import Error, InterfaceError
from .types import Parameter, Python
from ..core.wire import NodeInfo, ResultResponse, RowsResponse

__all__ = ["Connection", "Cursor", "connect"]

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
        result = await self.connection._drive(lambda tracker: tracker.statement(sql, checked_statement(sql),
                                                                                wire_parameters(parameters)))
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

    def __init__(self, session: AsyncClusterSession, *, autocommit: bool = False) -> None:
        super().__init__(session, autocommit=autocommit)
        self._lock = asyncio.Lock()

    @property
    def autocommit(self) -> bool:
        return self._tracker.autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._tracker.autocommit = bool(value)

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
                  autocommit: bool = False, retry_unknown_writes: bool = False,
                  policy: RetryPolicy | None = None, ssl_context=None,
                  on_connect: Callable[[AsyncConnectionSetup], Any] | None = None) -> Connection:
    """As raftlite.client.connect, for asyncio. `on_connect(setup)` may be a coroutine
    function: `async def setup(s): await s.execute("PRAGMA foreign_keys=OFF")`."""
    if not isinstance(database, str) or not database:
        raise InterfaceError("database must be a non-empty name")
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
    return Connection(session, autocommit=autocommit)
