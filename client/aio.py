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
transaction tracking, result conversion and exceptions are the DB-API's own code; only
the requests are awaited. The fetch methods are coroutines too (as in aiosqlite), even
though the rows are already in memory, so that a later streaming cursor keeps the API.
An asyncio.Lock keeps one connection's requests in order when several tasks share it.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from raftlite.client.cluster import (
    AsyncClusterSession, AsyncConnectionSetup, RequestKind, RetryPolicy, StatementInfo, StatementPlan, plan_statement,
)
from raftlite.client.connection import AsyncConnection as NodeConnection, RequestFailed
from raftlite.client.dbapi import (
    TIMEOUT_S_DEFAULT, CursorResults, StatementResult, checked_statement, wire_parameters,
)
from raftlite.client.errors import (
    DataError, Error, InterfaceError, OutcomeUnknownError, ProgrammingError, TransactionLostError,
)
from raftlite.client.types import Parameter, Python
from raftlite.core.wire import NodeInfo, ResultResponse, RowsResponse, Value, WireEncodeError

__all__ = ["Connection", "Cursor", "connect"]

_NOT_AN_ERROR = (1, "not an error")


def _statement_operation(sql: str, parameters: tuple[Value, ...], plan: StatementPlan):
    async def run(connection: NodeConnection, db_id: int) -> ResultResponse | RowsResponse:
        if plan.use_query:
            try:
                return await connection.query_sql(db_id, sql, parameters)
            except RequestFailed as failure:
                if (failure.code, failure.message) != _NOT_AN_ERROR:
                    raise
        return await connection.exec_sql(db_id, sql, parameters)

    return run


def _exec(sql: str):
    async def run(connection: NodeConnection, db_id: int) -> ResultResponse:
        return await connection.exec_sql(db_id, sql)

    return run


class Cursor(CursorResults):
    """An asyncio cursor: `await cursor.execute(...)`, `await cursor.fetchall()`, `async for`."""

    def __init__(self, connection: "Connection") -> None:
        self.connection = connection
        self.arraysize = 1
        self.closed = False
        self._reset()

    def _check(self) -> None:
        if self.closed:
            raise ProgrammingError("the cursor is closed")
        self.connection._check()

    async def execute(self, sql: str, parameters: Sequence[Parameter] | None = None) -> "Cursor":
        self._check()
        info = checked_statement(sql)
        result = await self.connection._run(sql, info, wire_parameters(parameters))
        self._reset()
        self._store(result)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Parameter]]) -> "Cursor":
        self._check()
        info = checked_statement(sql)
        if info.returns_rows and not info.dml:
            raise ProgrammingError("executemany() is for statements that do not return rows")
        self._reset()
        total = 0
        for parameters in seq_of_parameters:
            result = await self.connection._run(sql, info, wire_parameters(parameters))
            total += max(result.rowcount, 0)
            if result.lastrowid is not None:
                self.lastrowid = result.lastrowid
        self.rowcount = total
        return self

    async def executescript(self, sql: str) -> "Cursor":
        self._check()
        info = checked_statement(sql, script=True)
        if self.connection.in_transaction and not self.connection.autocommit:
            await self.connection.commit()
        self._reset()
        await self.connection._run(sql, info, (), force_exec=True)
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
        self.closed = True
        self._rows = None


class Connection:
    """An asyncio connection to a cluster. Use `await connect(...)`."""

    def __init__(self, session: AsyncClusterSession, *, autocommit: bool = False) -> None:
        self.session = session
        self.autocommit = autocommit
        self._in_transaction = False
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def _check(self) -> None:
        if self.session.closed:
            raise ProgrammingError("the connection is closed")

    async def _run(self, sql: str, info: StatementInfo, parameters: tuple[Value, ...], *,
                   force_exec: bool = False) -> StatementResult:
        async with self._lock:
            self._check()
            plan = plan_statement(info, autocommit=self.autocommit, in_transaction=self._in_transaction)
            if force_exec and plan.use_query:
                plan = StatementPlan(implicit_begin=plan.implicit_begin, kind=plan.kind, use_query=False,
                                     in_transaction_after=plan.in_transaction_after)
            if plan.implicit_begin:
                await self.session.call(RequestKind.BEGIN, _exec("BEGIN"))
                self._in_transaction = True
            try:
                response = await self.session.call(plan.kind, _statement_operation(sql, parameters, plan))
            except (TransactionLostError, OutcomeUnknownError):
                self._in_transaction = False
                raise
            except WireEncodeError as error:
                raise DataError(str(error)) from None
            self._in_transaction = plan.in_transaction_after
            return StatementResult.of(response)

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
        async with self._lock:
            self._check()
            if not self._in_transaction:
                return
            try:
                await self.session.call(RequestKind.COMMIT, _exec("COMMIT"))
            except (TransactionLostError, OutcomeUnknownError):
                self._in_transaction = False
                raise
            self._in_transaction = False

    async def rollback(self) -> None:
        async with self._lock:
            self._check()
            if not self._in_transaction:
                return
            self._in_transaction = False
            await self.session.call(RequestKind.ROLLBACK, _exec("ROLLBACK"))

    async def close(self) -> None:
        if self.session.closed:
            return
        if self._in_transaction:
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
