"""PEP 249 (DB-API 2.0) over a raftlite or dqlite cluster.

    import raftlite.client
    connection = raftlite.client.connect("10.0.0.1:9001,10.0.0.2:9001", database="app", timeout=10)
    with connection:                     # commit on success, rollback on an exception
        connection.execute("INSERT INTO t VALUES (?, ?)", (1, "one"))
    rows = connection.execute("SELECT * FROM t").fetchall()

Theory of operation
-------------------
A `Connection` owns one `ClusterSession` (raftlite.client.cluster): a single reused
connection to the leader, found by discovery, with the retry policy around each
request. Every statement is sent as EXEC_SQL or, when it returns rows, QUERY_SQL with
its parameters (qmark, numeric or named: raftlite.client.compat binds them by
position, as the wire carries them); the whole result is read before `execute` returns (a cursor's
rows live in memory). dqlite 1.11 refuses QUERY_SQL for a statement without result
columns ("not an error", before running it), so such a refusal is re-sent as EXEC_SQL.

Transactions follow Python's sqlite3 (3.12's `autocommit` attribute included). By
default (`autocommit=LEGACY_TRANSACTION_CONTROL`, isolation_level "") an INSERT /
UPDATE / DELETE / REPLACE outside a transaction first sends BEGIN (`begin` /
isolation_level choose BEGIN DEFERRED, IMMEDIATE or EXCLUSIVE), and `commit()` /
`rollback()` send COMMIT / ROLLBACK, all as EXEC_SQL as the Go driver does; other
statements (SELECT, DDL, PRAGMA) run on their own. isolation_level None or
`autocommit=True` make every statement its own transaction (an explicit BEGIN in SQL
still opens one); `autocommit=False` opens a transaction before any statement outside
one (PEP 249's mode; opened at the first statement rather than at once, so an idle
connection holds nothing on the leader). What happens when the leader changes depends on where the request was
(the table in raftlite.client.cluster): reads and refused requests are retried; an
autocommit write or a COMMIT whose outcome is unknown raises OutcomeUnknownError; a
statement of an open transaction raises TransactionLostError (nothing applied).

`threadsafety` is 1: threads may share the module, not a connection (a lock still
keeps one connection's requests from interleaving).
"""

import importlib.util
import sqlite3
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .cluster import (
    ClusterSession, ConnectionSetup, RequestKind, RetryPolicy, StatementInfo, describe_statement, plan_statement,
    run_blocking,
)
from .compat import Row, bind_parameters, checked_row_factory, local_copy, text_converter
from .retrying import ATTEMPTS_DEFAULT, is_retryable, run_transaction_steps
from .connection import Connection as NodeConnection, RequestFailed
from .errors import (
    DataError, DatabaseError, Error, IntegrityError, InterfaceError, InternalError, NoLeaderError,
    NotSupportedError, OperationalError, OutcomeUnknownError, ProgrammingError, TransactionLostError, Warning,
)
from .types import (
    BINARY, DATETIME, NUMBER, ROWID, STRING, Binary, Date, DateFromTicks, Parameter, Python, Time,
    TimeFromTicks, Timestamp, TimestampFromTicks, description_type_codes, row_from_wire,
)
from ..core.wire import DumpFile, NodeInfo, ResultResponse, RowsResponse, Value, WireEncodeError

__all__ = [
    "BINARY", "Binary", "Connection", "Cursor", "DATETIME", "DataError", "DatabaseError", "Date",
    "DateFromTicks", "Error", "IntegrityError", "LEGACY_TRANSACTION_CONTROL", "InterfaceError", "InternalError", "NUMBER",
    "NoLeaderError", "NotSupportedError", "OperationalError", "OutcomeUnknownError", "ProgrammingError",
    "ROWID", "Row", "STRING", "Time", "TimeFromTicks", "Timestamp", "TimestampFromTicks", "TransactionLostError",
    "Warning", "apilevel", "connect", "is_retryable", "paramstyle", "run_transaction", "sqlite_version",
    "sqlite_version_info", "threadsafety",
]

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"   # PEP 249 names one; "numeric" (?NNN) and "named" (:name, $name, @name) work too


def _node_sqlite_version() -> str:
    """The SQLite raftlite's nodes run (apsw's, when this installation has it); a
    dqlite cluster or another installation may run another: ask the server with
    `SELECT sqlite_version()`."""
    if importlib.util.find_spec("apsw") is not None:
        import apsw
        return apsw.sqlite_lib_version()
    return sqlite3.sqlite_version


sqlite_version = _node_sqlite_version()
sqlite_version_info = tuple(int(part) for part in sqlite_version.split(".")[:3])

# Python 3.12's sqlite3.LEGACY_TRANSACTION_CONTROL: transactions follow isolation_level.
LEGACY_TRANSACTION_CONTROL = -1
_BEGIN_STATEMENTS = {"": "BEGIN", "DEFERRED": "BEGIN DEFERRED", "IMMEDIATE": "BEGIN IMMEDIATE",
                     "EXCLUSIVE": "BEGIN EXCLUSIVE"}
_NOT_REPLICABLE = ("{name}: refused, because the function would live in this client process while the SQL "
                   "runs on the cluster's leader (and is replicated from there); define it in SQL (a view, "
                   "a generated column) or compute it in Python around the query")


def checked_isolation_level(level: Any) -> str | None:
    """sqlite3's isolation_level values: None (autocommit) or "", DEFERRED, IMMEDIATE, EXCLUSIVE."""
    if level is None:
        return None
    if not isinstance(level, str) or level.upper() not in _BEGIN_STATEMENTS:
        raise ValueError("isolation_level must be None, '', 'DEFERRED', 'IMMEDIATE' or 'EXCLUSIVE', "
                         f"not {level!r}")
    return level.upper()


def checked_autocommit(value: Any) -> bool | int:
    if value is True or value is False or value == LEGACY_TRANSACTION_CONTROL:
        return value if isinstance(value, bool) else LEGACY_TRANSACTION_CONTROL
    raise ValueError(f"autocommit must be True, False or LEGACY_TRANSACTION_CONTROL (-1), not {value!r}")

TIMEOUT_S_DEFAULT = 10.0
_NOT_AN_ERROR = (1, "not an error")   # dqlite 1.11's answer to QUERY_SQL of a statement without columns


@dataclass(slots=True, kw_only=True)
class StatementResult:
    """What one statement answered, converted for Python."""

    columns: tuple[str, ...] | None = None     # None: the statement answered no result set
    rows: list[tuple[Python, ...]] = field(default_factory=list)
    type_codes: list[int | None] = field(default_factory=list)
    rowcount: int = -1
    lastrowid: int | None = None

    @classmethod
    def of(cls, response: ResultResponse | RowsResponse | None) -> "StatementResult":
        match response:
            case RowsResponse(columns=columns, rows=rows) if columns:
                return cls(columns=columns, rows=[row_from_wire(row) for row in rows],
                           type_codes=description_type_codes(len(columns), rows))
            case ResultResponse(last_insert_id=last_insert_id, rows_affected=rows_affected):
                return cls(rowcount=rows_affected, lastrowid=last_insert_id)
        return cls()  # ROWS without columns (a write sent as QUERY_SQL), or nothing at all


@dataclass(frozen=True, slots=True)
class SqlCall:
    """One request a statement needs: `kind` decides what may be retried on a new leader
    (raftlite.client.cluster); sent as QUERY_SQL when `use_query`, else as EXEC_SQL."""

    kind: RequestKind
    sql: str
    parameters: tuple[Value, ...] = ()
    use_query: bool = False


_T = TypeVar("_T")
# What a TransactionTracker method returns: a generator of the calls to make, each sent
# back its answer (or thrown its exception), returning the method's result.
Steps = Generator[SqlCall, Any, _T]


class TransactionTracker:
    """A connection's statements and transaction state, with no I/O (sans-I/O): each
    method is a generator of the `SqlCall`s to make. `Connection` here drives them with
    blocking calls and raftlite.client.aio's with awaited ones, so the rules (implicit
    BEGIN, what a lost leader does to an open transaction, executescript's commit) are
    written once."""

    def __init__(self, *, autocommit: bool | int = LEGACY_TRANSACTION_CONTROL, isolation_level: str | None = "") -> None:
        self.autocommit = checked_autocommit(autocommit)
        self.isolation_level = checked_isolation_level(isolation_level)
        self.in_transaction = False
        self.total_changes = 0     # rows changed by this connection's DML statements (sqlite3's total_changes)

    @property
    def begin_sql(self) -> str:
        """The BEGIN sent for implicit (and run_transaction's) transactions."""
        return _BEGIN_STATEMENTS[self.isolation_level or ""]

    def _modes(self) -> tuple[bool, bool]:
        """(every statement on its own, a transaction before any statement): sqlite3's
        autocommit=True, autocommit=False (PEP 249), or legacy control by isolation_level."""
        if self.autocommit is True:
            return True, False
        if self.autocommit is False:
            return False, True
        return self.isolation_level is None, False

    def statement(self, sql: str, info: StatementInfo, parameters: tuple[Value, ...], *,
                  force_exec: bool = False, implicit_begin: bool = True) -> Steps[StatementResult]:
        autocommit, begin_before_any = self._modes()
        autocommit = autocommit or not implicit_begin
        plan = plan_statement(info, autocommit=autocommit, in_transaction=self.in_transaction,
                              begin_before_any=begin_before_any)
        if plan.implicit_begin:
            yield SqlCall(RequestKind.BEGIN, self.begin_sql)
            self.in_transaction = True
        try:
            response = yield SqlCall(plan.kind, sql, parameters, use_query=plan.use_query and not force_exec)
        except (TransactionLostError, OutcomeUnknownError):
            self.in_transaction = False
            raise
        except WireEncodeError as error:
            raise DataError(str(error)) from None
        self.in_transaction = plan.in_transaction_after
        result = StatementResult.of(response)
        if info.dml and result.rowcount > 0:
            self.total_changes += result.rowcount
        return result

    def begin(self) -> Steps[None]:
        """Opens a transaction (in the begin mode) unless one is open."""
        if self.in_transaction:
            return
        yield SqlCall(RequestKind.BEGIN, self.begin_sql)
        self.in_transaction = True

    def many(self, sql: str, info: StatementInfo,
             seq_of_parameters: Iterable[Sequence[Parameter]]) -> Steps[tuple[int, int | None]]:
        """executemany: the statement once per parameter sequence; (total rowcount, last rowid)."""
        total, lastrowid = 0, None
        for parameters in seq_of_parameters:
            result = yield from self.statement(sql, info, wire_parameters(sql, parameters))
            total += max(result.rowcount, 0)
            if result.lastrowid is not None:
                lastrowid = result.lastrowid
        return total, lastrowid

    def script(self, sql: str, info: StatementInfo) -> Steps[None]:
        """executescript, as sqlite3 (3.12) runs it: under legacy transaction control a
        pending transaction is committed first and the script gets no implicit BEGIN
        (its own BEGIN / COMMIT are its transaction control); with autocommit=False it
        runs inside the connection's transaction."""
        legacy = not isinstance(self.autocommit, bool)   # LEGACY_TRANSACTION_CONTROL
        if self.in_transaction and legacy:
            yield from self.commit()
        yield from self.statement(sql, info, (), force_exec=True, implicit_begin=not legacy)

    def commit(self) -> Steps[None]:
        if not self.in_transaction:
            return
        try:
            yield SqlCall(RequestKind.COMMIT, "COMMIT")
        except (TransactionLostError, OutcomeUnknownError):
            self.in_transaction = False   # lost with its leader: no transaction is open any more
            raise
        self.in_transaction = False

    def rollback(self) -> Steps[None]:
        if not self.in_transaction:
            return
        self.in_transaction = False   # a transaction lost with its leader counts as rolled back
        yield SqlCall(RequestKind.ROLLBACK, "ROLLBACK")


def statement_operation(call: SqlCall):
    """`call` as a session operation (blocking variant)."""

    def run(connection: NodeConnection, db_id: int) -> ResultResponse | RowsResponse:
        if call.use_query:
            try:
                return connection.query_sql(db_id, call.sql, call.parameters)
            except RequestFailed as failure:
                if (failure.code, failure.message) != _NOT_AN_ERROR:
                    raise
        return connection.exec_sql(db_id, call.sql, call.parameters)

    return run


def calls_as_steps(calls: Steps[_T], session: Any, operation_of: Callable[[SqlCall], Any]):
    """A TransactionTracker generator as session steps (raftlite.client.cluster's
    run_blocking / run_awaited carry them out): each SqlCall becomes one
    `session.call(kind, operation_of(call))`, its answer or exception passed back."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = calls.throw(error) if error is not None else calls.send(answer)
        except StopIteration as stop:
            return stop.value
        answer, error = None, None
        try:
            answer = yield lambda: session.call(call.kind, operation_of(call))
        except BaseException as failure:   # handed to the tracker, which decides
            error = failure


def checked_statement(sql: str, *, script: bool = False) -> StatementInfo:
    if not isinstance(sql, str):
        raise ProgrammingError(f"SQL must be a str, not {type(sql).__name__}")
    info = describe_statement(sql)
    if not script and info.statement_count > 1:
        raise ProgrammingError("execute() runs one statement at a time; use executescript() for several")
    return info


def checked_many(sql: str) -> StatementInfo:
    info = checked_statement(sql)
    if info.returns_rows and not info.dml:
        raise ProgrammingError("executemany() is for statements that do not return rows")
    return info


def wire_parameters(sql: str, parameters: Any) -> tuple[Value, ...]:
    """sqlite3-style parameters (a sequence or a mapping) as the positional wire list."""
    return bind_parameters(sql, parameters)


class CursorResults:
    """What the blocking and the asyncio cursor share: the connection they belong to,
    their open/closed state and the result set they hand out."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.arraysize = 1
        self.closed = False
        self._row_factory = connection.row_factory   # as sqlite3: the connection's, when the cursor is made
        self._reset()

    @property
    def row_factory(self) -> Any:
        """Called as row_factory(cursor, row) for each fetched row (None: plain tuples)."""
        return self._row_factory

    @row_factory.setter
    def row_factory(self, factory: Any) -> None:
        self._row_factory = checked_row_factory(factory)

    def _check(self) -> None:
        if self.closed:
            raise ProgrammingError("the cursor is closed")
        self.connection._check()

    def _close(self) -> None:
        self.closed = True
        self._rows = None

    def _reset(self) -> None:
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[tuple[Python, ...]] | None = None
        self._position = 0

    def _store(self, result: StatementResult) -> None:
        if result.columns is None:
            self.description = None
            self._rows = None
        else:
            self.description = tuple((name, code, None, None, None, None, None)
                                     for name, code in zip(result.columns, result.type_codes))
            convert = text_converter(self.connection.text_factory)
            self._rows = result.rows if convert is None else [
                tuple(convert(value) if isinstance(value, str) else value for value in row) for row in result.rows]
        self._position = 0
        self.rowcount = result.rowcount
        if result.lastrowid is not None:
            self.lastrowid = result.lastrowid

    def _take(self, count: int | None) -> list[tuple[Python, ...]]:
        if self._rows is None:
            raise ProgrammingError("no result set: execute a statement that returns rows first")
        end = len(self._rows) if count is None else min(self._position + max(count, 0), len(self._rows))
        taken = self._rows[self._position:end]
        self._position = end
        if self._row_factory is not None:
            return [self._row_factory(self, row) for row in taken]
        return taken

    def _fetchone(self) -> tuple[Python, ...] | None:
        taken = self._take(1)
        return taken[0] if taken else None

    def _fetchmany(self, size: int | None) -> list[tuple[Python, ...]]:
        return self._take(self.arraysize if size is None else size)

    def _fetchall(self) -> list[tuple[Python, ...]]:
        return self._take(None)

    def setinputsizes(self, sizes: Any) -> None:
        """PEP 249: accepted and ignored."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """PEP 249: accepted and ignored."""


class ConnectionState:
    """What the blocking and the asyncio connection share: the session, the transaction
    tracker, and the state they report."""

    def __init__(self, session: Any, *, autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
                 isolation_level: str | None = "") -> None:
        self.session = session
        self._tracker = TransactionTracker(autocommit=autocommit, isolation_level=isolation_level)
        self._row_factory: Any = None
        self.text_factory: Any = str   # TEXT values: str, bytes, or a callable given the UTF-8 bytes

    @property
    def row_factory(self) -> Any:
        """row_factory(cursor, row) for the rows of cursors made after it is set, as in
        sqlite3; `raftlite.client.Row` (or sqlite3.Row, which stands for it) gives
        access by column name."""
        return self._row_factory

    @row_factory.setter
    def row_factory(self, factory: Any) -> None:
        self._row_factory = checked_row_factory(factory)

    @property
    def isolation_level(self) -> str | None:
        """sqlite3's: None means autocommit (when `autocommit` is LEGACY_TRANSACTION_CONTROL);
        otherwise the BEGIN sent for implicit transactions ('', DEFERRED, IMMEDIATE, EXCLUSIVE)."""
        return self._tracker.isolation_level

    @property
    def total_changes(self) -> int:
        """Rows inserted, updated or deleted through this connection, counted from each
        DML statement's answer (an executescript counts its last statement only)."""
        return self._tracker.total_changes

    def _refuse(self, name: str) -> None:
        raise NotSupportedError(_NOT_REPLICABLE.format(name=name))

    def create_function(self, name: str, *_args: Any, **_kwargs: Any) -> None:
        self._refuse(f"create_function({name!r})")

    def create_aggregate(self, name: str, *_args: Any, **_kwargs: Any) -> None:
        self._refuse(f"create_aggregate({name!r})")

    def create_window_function(self, name: str, *_args: Any, **_kwargs: Any) -> None:
        self._refuse(f"create_window_function({name!r})")

    def create_collation(self, name: str, *_args: Any, **_kwargs: Any) -> None:
        self._refuse(f"create_collation({name!r})")

    def set_authorizer(self, *_args: Any, **_kwargs: Any) -> None:
        self._refuse("set_authorizer")

    def set_progress_handler(self, *_args: Any, **_kwargs: Any) -> None:
        self._refuse("set_progress_handler")

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (sqlite3's attribute of the same name)."""
        return self._tracker.in_transaction

    def _check(self) -> None:
        if self.session.closed:
            raise ProgrammingError("the connection is closed")


class Cursor(CursorResults):
    """A PEP 249 cursor. Rows are read whole by execute() and handed out by the fetch methods."""

    def execute(self, sql: str, parameters: Sequence[Parameter] | None = None) -> "Cursor":
        self._check()
        info = checked_statement(sql)
        values = wire_parameters(sql, parameters)
        result = self.connection._drive(lambda tracker: tracker.statement(sql, info, values))
        self._reset()
        self._store(result)
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Parameter]]) -> "Cursor":
        """Runs a statement once per parameter sequence; rowcount is the total."""
        self._check()
        info = checked_many(sql)
        self._reset()
        self.rowcount, self.lastrowid = self.connection._drive(lambda tracker: tracker.many(sql, info,
                                                                                           seq_of_parameters))
        return self

    def executescript(self, sql: str) -> "Cursor":
        """Runs several statements in one EXEC_SQL (no parameters); a pending implicit
        transaction is committed first, as sqlite3 does."""
        self._check()
        info = checked_statement(sql, script=True)
        self._reset()
        self.connection._drive(lambda tracker: tracker.script(sql, info))
        return self

    def fetchone(self) -> tuple[Python, ...] | None:
        self._check()
        return self._fetchone()

    def fetchmany(self, size: int | None = None) -> list[tuple[Python, ...]]:
        self._check()
        return self._fetchmany(size)

    def fetchall(self) -> list[tuple[Python, ...]]:
        self._check()
        return self._fetchall()

    def __iter__(self) -> Iterator[tuple[Python, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        self._close()

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()


class Connection(ConnectionState):
    """A PEP 249 connection to a cluster (its leader, wherever it moves). Use `connect()`."""

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(self, session: ClusterSession, *, autocommit: bool | int = LEGACY_TRANSACTION_CONTROL,
                 isolation_level: str | None = "") -> None:
        super().__init__(session, autocommit=autocommit, isolation_level=isolation_level)
        self._lock = threading.RLock()

    # -- state -------------------------------------------------------------------------

    @property
    def autocommit(self) -> bool | int:
        """Python 3.12's sqlite3 attribute: True (each statement on its own), False (a
        transaction is always open: BEGIN before the first statement after connect,
        commit or rollback) or LEGACY_TRANSACTION_CONTROL (-1, the default: an implicit
        BEGIN before INSERT / UPDATE / DELETE / REPLACE unless isolation_level is None)."""
        return self._tracker.autocommit

    @autocommit.setter
    def autocommit(self, value: bool | int) -> None:
        """Turning autocommit on commits an open transaction first, as sqlite3 does."""
        value = checked_autocommit(value)
        if value is True and self._tracker.in_transaction:
            self.commit()
        self._tracker.autocommit = value

    @ConnectionState.isolation_level.setter   # type: ignore[attr-defined]
    def isolation_level(self, level: str | None) -> None:
        """Setting None commits an open transaction first, as sqlite3 does."""
        level = checked_isolation_level(level)
        if level is None and self._tracker.in_transaction:
            self.commit()
        self._tracker.isolation_level = level

    # -- statements --------------------------------------------------------------------

    def _drive(self, steps_of: Callable[[TransactionTracker], Steps[_T]]) -> _T:
        """Run one TransactionTracker method's calls, holding the lock throughout."""
        with self._lock:
            self._check()
            return run_blocking(calls_as_steps(steps_of(self._tracker), self.session, statement_operation))

    def cursor(self) -> Cursor:
        self._check()
        return Cursor(self)

    def execute(self, sql: str, parameters: Sequence[Parameter] | None = None) -> Cursor:
        """A new cursor's execute (sqlite3's shortcut)."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Parameter]]) -> Cursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql: str) -> Cursor:
        return self.cursor().executescript(sql)

    def begin(self) -> None:
        """Sends BEGIN (in the connection's begin mode) unless a transaction is open."""
        self._drive(TransactionTracker.begin)

    def commit(self) -> None:
        """Sends COMMIT if a transaction is open. OutcomeUnknownError when the leader was
        lost after COMMIT went out; TransactionLostError when it was lost before."""
        self._drive(TransactionTracker.commit)

    def rollback(self) -> None:
        """Sends ROLLBACK if a transaction is open (a transaction lost with its leader
        counts as rolled back)."""
        self._drive(TransactionTracker.rollback)

    def close(self) -> None:
        """Rolls back an open transaction (best effort) and closes the leader connection."""
        with self._lock:
            if self.session.closed:
                return
            if self._tracker.in_transaction:
                try:
                    self.rollback()
                except Error:
                    pass  # closing drops the server's transaction anyway
            self.session.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, exception_type: type | None, *_rest: object) -> None:
        """As sqlite3: commit when the block succeeded, roll back when it raised."""
        if exception_type is None:
            self.commit()
        else:
            self.rollback()

    # -- the database's files ----------------------------------------------------------

    def dump(self) -> tuple[DumpFile, ...]:
        """The database's files as the leader holds them (DUMP): the main file and its WAL,
        each with .name and .data. Committed transactions only."""
        self._check()
        database = self.session.database
        return self.session.call(RequestKind.READ, lambda connection, _db_id: connection.dump(database))

    def iterdump(self) -> Iterator[str]:
        """The database as SQL text, statement by statement: sqlite3's own iterdump of a DUMP."""
        with local_copy(self.dump(), self.session.database) as local:
            lines = list(local.iterdump())
        return iter(lines)

    def backup(self, target: sqlite3.Connection, **options: Any) -> None:
        """Copies the database into `target`, a Python sqlite3 connection (e.g. to a
        file: `connection.backup(sqlite3.connect("copy.db"))`); `options` are
        sqlite3.Connection.backup's (pages, progress, name, sleep)."""
        if not isinstance(target, sqlite3.Connection):
            raise NotSupportedError("backup() copies into a sqlite3.Connection; to copy between clusters, "
                                    "replay iterdump() on the other one")
        with local_copy(self.dump(), self.session.database) as local:
            local.backup(target, **options)

    # -- cluster -----------------------------------------------------------------------

    def leader(self) -> NodeInfo | None:
        """The current leader (id and address)."""
        self._check()
        return self.session.call(RequestKind.READ, lambda connection, _db_id: connection.leader())

    def cluster(self) -> tuple[NodeInfo, ...]:
        """Every member with its role, as the leader knows them."""
        self._check()
        return self.session.call(RequestKind.READ, lambda connection, _db_id: connection.cluster())


def connection_modes(autocommit: Any, isolation_level: Any, begin: str | None) -> tuple[bool | int, str | None]:
    """connect()'s transaction options, checked (InterfaceError with the reason)."""
    try:
        if begin is not None:
            if not isinstance(begin, str) or begin.upper() not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
                raise ValueError(f"begin must be 'deferred', 'immediate' or 'exclusive', not {begin!r}")
            if isolation_level not in ("", None) and isolation_level.upper() != begin.upper():
                raise ValueError(f"begin={begin!r} and isolation_level={isolation_level!r} disagree")
            isolation_level = begin if isolation_level is not None else None
        return checked_autocommit(autocommit), checked_isolation_level(isolation_level)
    except ValueError as error:
        raise InterfaceError(str(error)) from None


def run_transaction(connection: Connection, fn: Callable[[Connection], _T], *, attempts: int = ATTEMPTS_DEFAULT,
                    idempotent: bool = False) -> _T:
    """Runs fn(connection) in a transaction (BEGIN in the connection's begin mode, then
    COMMIT) and returns its value; when it fails with an error after which nothing was
    applied (is_retryable: a lost transaction, BUSY, no leader) it rolls back, backs off
    and runs fn again, up to `attempts` times. OutcomeUnknownError is retried only when
    `idempotent=True` says running fn twice is harmless."""
    return run_blocking(run_transaction_steps(connection, fn, attempts=attempts, idempotent=idempotent,
                                              random_source=connection.session._random))


def connect(addresses: str | Sequence[str], *, database: str = "main", timeout: float = TIMEOUT_S_DEFAULT,
            autocommit: bool | int = LEGACY_TRANSACTION_CONTROL, isolation_level: str | None = "",
            begin: str | None = None, retry_unknown_writes: bool = False,
            policy: RetryPolicy | None = None, ssl_context=None,
            on_connect: Callable[[ConnectionSetup], Any] | None = None) -> Connection:
    """Connects to the leader of the cluster at `addresses` ("host:port,host:port" or a
    list) and opens `database`. `timeout` (seconds) bounds each operation, leader
    discovery and retries included. `retry_unknown_writes=True` re-sends an autocommit
    write whose outcome is unknown (it may then be applied twice). NoLeaderError when
    no leader answers within `timeout`. `ssl_context` (an ssl.SSLContext with the
    cluster's CA, and a client certificate when the nodes require one) makes every
    connection TLS.

    `on_connect(setup)` runs on every new connection to a leader (the first, and each
    one after a failover or reconnect), before anything else is sent on it: the place
    to (re-)apply per-connection state the leader does not keep across connections,
    e.g. `lambda setup: setup.execute("PRAGMA foreign_keys=OFF")` (see
    raftlite.client.cluster).

    Transactions follow Python's sqlite3: `autocommit` (True, False, or the default
    LEGACY_TRANSACTION_CONTROL) and `isolation_level` (None: autocommit; '' or
    DEFERRED / IMMEDIATE / EXCLUSIVE: the BEGIN of implicit transactions).
    `begin="immediate"` is isolation_level="IMMEDIATE": a transaction takes the write
    lock at BEGIN, so one that reads and then writes waits for other writers instead
    of failing with SQLITE_BUSY_SNAPSHOT (517) when one committed after its read."""
    if not isinstance(database, str) or not database:
        raise InterfaceError("database must be a non-empty name")
    autocommit, isolation_level = connection_modes(autocommit, isolation_level, begin)
    if policy is None:
        policy = RetryPolicy(timeout_s=timeout, retry_unknown_writes=retry_unknown_writes)
    session = ClusterSession(addresses, database=database, policy=policy, ssl_context=ssl_context,
                             on_connect=on_connect)
    connection = Connection(session, autocommit=autocommit, isolation_level=isolation_level)
    try:
        session.call(RequestKind.READ, lambda _connection, db_id: db_id)   # find the leader now
    except BaseException:
        session.close()
        raise
    return connection
