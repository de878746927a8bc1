"""Talking to a cluster rather than a node: leader discovery, the retry policy, and
what a statement does to a transaction. Shared by the DB-API (`raftlite.client.dbapi`)
and the asyncio API (`raftlite.client.aio`).

Theory of operation
-------------------
Discovery, as dqlite's drivers do it. `KnownNodes` holds the addresses given by the
user plus those learnt from CLUSTER answers, the last leader first. To find the leader
a session asks each address LEADER; a node naming itself is used as is, a node naming
another one makes the session connect there and ask again (a node is trusted only for
its own leadership). On the leader it sends CLIENT then OPEN(database), and asks CLUSTER
to learn every member (so one seed address is enough). The connection is then reused
for every request until it fails.

Connection state. The leader keeps one SQLite connection per client connection (as
dqlite does): pragmas such as foreign_keys or case_sensitive_like, and temp tables,
belong to that connection and are gone when the session reconnects (after a failover,
or any failure that drops the connection). `on_connect`, when given, is called with a
`ConnectionSetup` on every new connection to a leader, after OPEN and before the
request that needed the connection, to (re-)apply that state. A refusal that means
"not the leader" (10250, 10506) or a broken connection while it runs counts as a failed
discovery attempt (the next candidate is tried); any other SQL error it meets is raised
to the caller, its message prefixed "on_connect:".

Retries. Each request carries a `RequestKind` saying what re-sending it could do, and
each failure is a `Failure` saying how far the request got. `decide(kind, failure)` is
the whole policy, one table:

  failure \\ kind          READ / BEGIN   WRITE              IN_TRANSACTION  COMMIT
  NOT_SENT                retry          retry              lost            lost
  NOT_LEADER (10250)      retry          retry              lost            lost
  BUSY (5, not applied)   retry          retry              fail            fail
  LEADERSHIP_LOST (10506) retry          unknown            lost            unknown
  BROKEN_AFTER_SEND       retry          unknown            lost            unknown
  anything else           fail           fail               fail            fail

"retry" reconnects (rediscovering the leader) after a capped exponential backoff with
jitter, until the session's deadline; "unknown" raises OutcomeUnknownError without
re-sending, unless the caller opted in (`retry_unknown_writes`), which turns it into a
retry for WRITE (never for COMMIT: the transaction it would commit is gone). "lost"
raises TransactionLostError: an open transaction lives only on the leader's
connection and its statements are replicated only at COMMIT, so a leader change
before COMMIT went out means nothing of it was applied. A ROLLBACK that meets any
leadership failure has nothing left to undo and succeeds.

NOT_SENT is certain only before the request's bytes left: a failed connect, a node
that refused discovery, or a reused connection whose peer had already closed it (the
session checks that before sending: after a leader dies, its connections read EOF, and
a write sent into such a socket would otherwise be reported as "unknown").

Statements. `describe_statement` scans SQL text (strings, quoted names and comments
skipped) and says whether it only reads, whether it returns rows, whether it is DML,
and what it does to a transaction (BEGIN / COMMIT / ROLLBACK). The scan is
conservative where it matters: a statement is a read only if it certainly writes
nothing, because reads are re-sent freely. `plan_statement` turns that into what to
send: QUERY_SQL or EXEC_SQL, an implicit BEGIN first (PEP 249's non-autocommit mode
opens a transaction before INSERT / UPDATE / DELETE / REPLACE, as Python's sqlite3
does), and the request's kind. SAVEPOINT / RELEASE are not tracked as transaction
boundaries: open transactions with BEGIN. `parameter_slots` / `parameter_positions`
use the same scan (`_literal_end` knows the quoting) to number a statement's
parameters as SQLite does, for raftlite.client.compat's binding of named ones.
"""

import asyncio
import enum
import inspect
import os
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .connection import (
    AsyncConnection, Connection, ConnectionBroken, ConnectionBusy, RequestFailed, parse_address,
)
from .errors import (
    Error, InterfaceError, NoLeaderError, OperationalError, OutcomeUnknownError, TransactionLostError,
    error_from_failure,
)
from .types import parameters_to_wire, row_from_wire
from ..core.wire import ErrorCode, NodeInfo, WireProtocolError

__all__ = [
    "AsyncClusterSession", "AsyncConnectionSetup", "ClusterSession", "ConnectionSetup", "Decision", "Failure",
    "KnownNodes", "RequestKind", "RetryPolicy", "StatementInfo", "StatementPlan", "decide", "describe_statement",
    "failure_of", "parameter_positions", "parameter_slots", "parse_addresses", "plan_statement",
]

T = TypeVar("T")

KNOWN_NODES_MAX = 64
_SQLITE_BUSY = 5


def parse_addresses(addresses: str | Sequence[str]) -> tuple[str, ...]:
    """"h1:p1,h2:p2" (or a sequence of "host:port") -> the addresses, checked; InterfaceError
    with a one-line reason when one is not an address."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    parsed: list[str] = []
    for item in items:
        address = item.strip()
        if not address:
            continue
        try:
            parse_address(address)
        except ValueError as error:
            raise InterfaceError(str(error)) from None
        if address not in parsed:
            parsed.append(address)
    if not parsed:
        raise InterfaceError("no node address given (expected host:port[,host:port...])")
    return tuple(parsed)


# -- the retry policy ------------------------------------------------------------------

class RequestKind(enum.Enum):
    READ = "read"                      # changes nothing: re-sent freely
    BEGIN = "begin"                    # opens a transaction: nothing to lose yet
    WRITE = "write"                    # an autocommit write: applied at most once
    IN_TRANSACTION = "in-transaction"  # a statement of an open transaction
    COMMIT = "commit"                  # ends an open transaction, applying it
    ROLLBACK = "rollback"              # ends an open transaction, applying nothing


class Failure(enum.Enum):
    NOT_SENT = "not sent"                      # certainly never reached a leader
    NOT_LEADER = "not leader"                  # 10250: refused, certainly not applied
    BUSY = "busy"                              # SQLITE_BUSY: refused, not applied
    LEADERSHIP_LOST = "leadership lost"        # 10506: outcome unknown
    BROKEN_AFTER_SEND = "broken after send"    # connection failed once the request was out
    OTHER = "other"                            # an SQL error and the like


class Decision(enum.Enum):
    RETRY = "retry"
    OUTCOME_UNKNOWN = "outcome unknown"
    TRANSACTION_LOST = "transaction lost"
    DONE = "done"        # a ROLLBACK whose transaction is gone anyway
    FAIL = "fail"


_RETRY_ALWAYS = frozenset({RequestKind.READ, RequestKind.BEGIN})
_LEADERSHIP_FAILURES = frozenset({Failure.NOT_SENT, Failure.NOT_LEADER, Failure.LEADERSHIP_LOST,
                                  Failure.BROKEN_AFTER_SEND})


def decide(kind: RequestKind, failure: Failure, *, retry_unknown_writes: bool = False) -> Decision:
    """What to do after `failure` of a request of `kind` (the table in the module docstring)."""
    if failure is Failure.OTHER:
        return Decision.FAIL
    if kind is RequestKind.ROLLBACK:
        return Decision.DONE if failure in _LEADERSHIP_FAILURES else Decision.FAIL
    if kind in _RETRY_ALWAYS:
        return Decision.RETRY
    if kind is RequestKind.WRITE:
        if failure in (Failure.NOT_SENT, Failure.NOT_LEADER, Failure.BUSY):
            return Decision.RETRY
        return Decision.RETRY if retry_unknown_writes else Decision.OUTCOME_UNKNOWN
    if failure is Failure.BUSY:
        return Decision.FAIL
    if kind is RequestKind.COMMIT and failure in (Failure.LEADERSHIP_LOST, Failure.BROKEN_AFTER_SEND):
        return Decision.OUTCOME_UNKNOWN
    return Decision.TRANSACTION_LOST


def failure_of(error: BaseException, *, sent: bool) -> Failure:
    """The `Failure` an exception from the low-level connection stands for; `sent` says
    whether the request's bytes may have left."""
    match error:
        case RequestFailed(code=ErrorCode.NOT_LEADER):
            return Failure.NOT_LEADER
        case RequestFailed(code=ErrorCode.LEADERSHIP_LOST):
            return Failure.LEADERSHIP_LOST
        case RequestFailed(code=code) if code & 0xFF == _SQLITE_BUSY:
            return Failure.BUSY
        case RequestFailed():
            return Failure.OTHER
        case ConnectionBroken() | WireProtocolError() | OSError() | TimeoutError():
            return Failure.BROKEN_AFTER_SEND if sent else Failure.NOT_SENT
    return Failure.OTHER


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long and how often a session retries. `timeout_s` bounds one operation,
    discovery and retries included; backoff doubles from `backoff_initial_s` up to
    `backoff_max_s`, each delay shortened by up to `jitter_fraction` at random."""

    timeout_s: float = 10.0
    backoff_initial_s: float = 0.02
    backoff_max_s: float = 1.0
    backoff_multiplier: float = 2.0
    jitter_fraction: float = 0.5
    probe_timeout_s: float = 2.0      # one connect + LEADER exchange during discovery
    retry_unknown_writes: bool = False

    def validate(self) -> "RetryPolicy":
        if not self.timeout_s > 0:
            raise InterfaceError(f"timeout must be positive, got {self.timeout_s}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise InterfaceError("backoff: need 0 < backoff_initial_s <= backoff_max_s")
        if self.backoff_multiplier < 1 or not 0 <= self.jitter_fraction <= 1 or not self.probe_timeout_s > 0:
            raise InterfaceError("backoff: need backoff_multiplier >= 1, 0 <= jitter_fraction <= 1, "
                                 "probe_timeout_s > 0")
        return self

    def backoff_s(self, attempt: int, unit_random: float) -> float:
        """The delay before retry number `attempt` (0-based); `unit_random` in [0, 1)."""
        base = min(self.backoff_initial_s * self.backoff_multiplier ** min(attempt, 64), self.backoff_max_s)
        return base * (1.0 - self.jitter_fraction * unit_random)


# -- statements ------------------------------------------------------------------------

_WRITE_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER"})
_DML_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
_ROWS_WORDS = frozenset({"SELECT", "VALUES", "WITH", "EXPLAIN", "PRAGMA"})
_READ_PRAGMAS_WITH_ARGUMENT = frozenset({
    "TABLE_INFO", "TABLE_XINFO", "TABLE_LIST", "INDEX_INFO", "INDEX_XINFO", "INDEX_LIST",
    "FOREIGN_KEY_LIST", "FOREIGN_KEY_CHECK", "INTEGRITY_CHECK", "QUICK_CHECK",
})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementInfo:
    statement_count: int
    read_only: bool                 # every statement certainly writes nothing
    returns_rows: bool              # the (single) statement is expected to answer rows
    dml: bool                       # some statement is INSERT / UPDATE / DELETE / REPLACE
    transaction_effects: tuple[str, ...]   # "BEGIN" / "COMMIT" / "ROLLBACK", in order


def _literal_end(sql: str, index: int) -> int | None:
    """Where the comment, string or quoted name starting at `index` ends (None when
    none starts there). The one place that knows SQLite's quoting: `_tokens` and
    `parameter_slots` both skip through it."""
    char = sql[index]
    if sql.startswith("--", index):
        newline = sql.find("\n", index)
        return len(sql) if newline < 0 else newline + 1
    if sql.startswith("/*", index):
        end = sql.find("*/", index + 2)
        return len(sql) if end < 0 else end + 2
    if char in "'\"`[":
        closing = "]" if char == "[" else char
        index += 1
        while index < len(sql):
            if sql[index] == closing:
                if closing != "]" and sql.startswith(closing * 2, index):
                    index += 2
                    continue
                break
            index += 1
        return index + 1
    return None


def _tokens(sql: str) -> list[list[str]]:
    """The statements of `sql`, each as its tokens: upper-cased words, single punctuation
    characters, and "<literal>" for strings and quoted names."""
    statements: list[list[str]] = []
    current: list[str] = []
    index, length = 0, len(sql)
    while index < length:
        char = sql[index]
        if char.isspace():
            index += 1
        elif (end := _literal_end(sql, index)) is not None:
            if char in "'\"`[":
                current.append("<literal>")
            index = end
        elif char == ";":
            # A trigger's body holds statements: only "END;" ends CREATE TRIGGER.
            in_trigger = current[:1] == ["CREATE"] and "TRIGGER" in current[:4]
            if in_trigger and current[-1:] != ["END"]:
                current.append(";")
            elif current:
                statements.append(current)
                current = []
            index += 1
        elif match := _WORD.match(sql, index):
            current.append(match.group().upper())
            index = match.end()
        else:
            current.append(char)
            index += 1
    if current:
        statements.append(current)
    return statements


# SQLite's parameter forms: ?, ?NNN, :name, @name, $name (a name as SQLite's tokenizer
# takes it; $name's Tcl-style "::" and "(...)" suffixes are not supported).
_PARAMETER = re.compile(r"\?([0-9]*)|([:@$])([A-Za-z0-9_$]+)")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|0[xX][0-9A-Fa-f]+")


def parameter_slots(sql: str) -> list[int | str]:
    """The parameters of `sql` in text order, each as the 1-based index SQLite gives it
    (`?` and `?NNN`) or its name with its prefix (":id", "$id", "@id"), found by the
    same scan as `describe_statement` (strings, quoted names and comments skipped). A
    bare `?` is numbered after the largest index so far, as SQLite numbers it; a name
    gets its index in `parameter_positions`."""
    slots: list[int | str] = []
    largest = 0
    names: dict[str, int] = {}
    index, length = 0, len(sql)
    while index < length:
        if (end := _literal_end(sql, index)) is not None:
            index = end
        elif (word := _WORD.match(sql, index)) or (word := _NUMBER.match(sql, index)):
            index = word.end()    # x$y is one name, 1e5 one number: no parameter inside
        elif parameter := _PARAMETER.match(sql, index):
            digits, prefix, name = parameter.groups()
            if prefix:
                slot: int | str = prefix + name
                if slot not in names:
                    largest += 1
                    names[slot] = largest
            elif digits:
                slot = int(digits)
                if not 1 <= slot <= 250_000:
                    raise ValueError(f"?{digits}: a parameter number must be between 1 and 250000")
                largest = max(largest, slot)
            else:
                largest += 1
                slot = largest
            slots.append(slot)
            index = parameter.end()
        else:
            index += 1
    return slots


def parameter_positions(sql: str) -> tuple[int, dict[str, int]]:
    """How many positions SQLite binds for `sql` and the position of each named
    parameter (what sqlite3_bind_parameter_count / _index answer)."""
    count = 0
    names: dict[str, int] = {}
    for slot in parameter_slots(sql):
        if isinstance(slot, str):
            if slot not in names:
                count += 1
                names[slot] = count
        else:
            count = max(count, slot)
    return count, names


def _writes(tokens: list[str]) -> bool:
    """A write keyword not used as a function name (replace(...) is a read)."""
    return any(token in _WRITE_WORDS and tokens[position + 1:position + 2] != ["("]
               for position, token in enumerate(tokens))


def _statement_reads_only(tokens: list[str]) -> bool:
    first = tokens[0]
    if "RETURNING" in tokens:
        return False
    if first in ("SELECT", "VALUES", "WITH"):
        return not _writes(tokens)
    if first == "EXPLAIN":
        return True
    if first == "PRAGMA":
        if "=" in tokens:
            return False
        if "(" not in tokens:
            return True
        name = tokens[tokens.index("(") - 1]
        return name in _READ_PRAGMAS_WITH_ARGUMENT
    return False


def _statement_returns_rows(tokens: list[str]) -> bool:
    first = tokens[0]
    if "RETURNING" in tokens:
        return True
    if first == "WITH":
        return not _writes(tokens)
    if first == "PRAGMA":
        return "=" not in tokens
    return first in _ROWS_WORDS


def _transaction_effect(tokens: list[str]) -> str | None:
    match tokens[0]:
        case "BEGIN":
            return "BEGIN"
        case "COMMIT" | "END":
            return "COMMIT"
        case "ROLLBACK" if "TO" not in tokens:
            return "ROLLBACK"
    return None


def describe_statement(sql: str) -> StatementInfo:
    """What SQL text does, as far as retries and transactions care."""
    statements = _tokens(sql)
    effects = tuple(effect for tokens in statements if (effect := _transaction_effect(tokens)) is not None)
    return StatementInfo(
        statement_count=len(statements),
        read_only=bool(statements) and all(_statement_reads_only(tokens) for tokens in statements),
        returns_rows=len(statements) == 1 and _statement_returns_rows(statements[0]),
        dml=any(tokens[0] in _DML_WORDS or (tokens[0] == "WITH" and _writes(tokens)) for tokens in statements),
        transaction_effects=effects,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementPlan:
    implicit_begin: bool        # send BEGIN first (non-autocommit mode, DML outside a transaction)
    kind: RequestKind
    use_query: bool             # QUERY_SQL (rows) rather than EXEC_SQL
    in_transaction_after: bool  # whether a transaction is open once it succeeded


def plan_statement(info: StatementInfo, *, autocommit: bool, in_transaction: bool,
                   begin_before_any: bool = False) -> StatementPlan:
    """How to send a statement given the connection's transaction state. Outside a
    transaction and not in autocommit, DML gets an implicit BEGIN first (sqlite3's
    legacy control), and so does every statement with `begin_before_any` (sqlite3's
    autocommit=False, where a transaction is always open)."""
    after = in_transaction
    for effect in info.transaction_effects:
        after = effect == "BEGIN"
    implicit_begin = (not autocommit and not in_transaction and (info.dml or begin_before_any)
                      and "BEGIN" not in info.transaction_effects)
    if implicit_begin:
        after = "COMMIT" not in info.transaction_effects and "ROLLBACK" not in info.transaction_effects
    inside = in_transaction or implicit_begin
    effects = info.transaction_effects
    if inside:
        if "COMMIT" in effects:
            kind = RequestKind.COMMIT
        elif effects[:1] == ("ROLLBACK",) and info.statement_count == 1:
            kind = RequestKind.ROLLBACK
        else:
            kind = RequestKind.IN_TRANSACTION
    elif effects == ("BEGIN",) and info.statement_count == 1:
        kind = RequestKind.BEGIN
    elif info.read_only:
        kind = RequestKind.READ
    else:
        kind = RequestKind.WRITE
    return StatementPlan(implicit_begin=implicit_begin, kind=kind, use_query=info.returns_rows,
                         in_transaction_after=after)


# -- discovery -------------------------------------------------------------------------

class KnownNodes:
    """The addresses a session may ask for the leader: the last leader first, then the
    user's seeds, then members learnt from CLUSTER (bounded by KNOWN_NODES_MAX)."""

    def __init__(self, seeds: Sequence[str]) -> None:
        self.seeds = tuple(seeds)
        self.learnt: list[str] = []
        self.leader: str | None = None

    def candidates(self) -> list[str]:
        ordered = ([self.leader] if self.leader else []) + list(self.seeds) + self.learnt
        return list(dict.fromkeys(ordered))

    def learn(self, nodes: Sequence[NodeInfo]) -> None:
        for node in nodes:
            if node.address and node.address not in self.seeds and node.address not in self.learnt:
                try:
                    parse_address(node.address)
                except ValueError:
                    continue  # a member with an address we could not dial anyway
                if len(self.learnt) >= KNOWN_NODES_MAX:
                    self.learnt.pop(0)
                self.learnt.append(node.address)


class _Unreachable(Exception):
    """Discovery found no leader this round; the message says why, per address."""


def _setup_failure(failure: RequestFailed) -> RequestFailed:
    """A FAILURE met by the on_connect hook, its message saying where it came from."""
    return RequestFailed(failure.code, f"on_connect: {failure.message}")


class ConnectionSetup:
    """What an `on_connect` hook gets: the new leader connection, to run SQL on before
    anything else does (`execute` returns the rows, if the statement answers any)."""

    def __init__(self, connection: Connection, db_id: int) -> None:
        self._connection = connection
        self._db_id = db_id

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> list[tuple]:
        wire_parameters = parameters_to_wire(parameters)
        try:
            if describe_statement(sql).returns_rows:
                return [row_from_wire(row) for row in self._connection.query_sql(self._db_id, sql, wire_parameters).rows]
            self._connection.exec_sql(self._db_id, sql, wire_parameters)
        except RequestFailed as failure:
            raise _setup_failure(failure) from None
        return []


class AsyncConnectionSetup:
    """The asyncio twin of ConnectionSetup: `await setup.execute(...)`."""

    def __init__(self, connection: AsyncConnection, db_id: int) -> None:
        self._connection = connection
        self._db_id = db_id

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> list[tuple]:
        wire_parameters = parameters_to_wire(parameters)
        try:
            if describe_statement(sql).returns_rows:
                rows = (await self._connection.query_sql(self._db_id, sql, wire_parameters)).rows
                return [row_from_wire(row) for row in rows]
            await self._connection.exec_sql(self._db_id, sql, wire_parameters)
        except RequestFailed as failure:
            raise _setup_failure(failure) from None
        return []


class _SessionBase:
    def __init__(self, addresses: str | Sequence[str], *, database: str, policy: RetryPolicy,
                 ssl_context: "ssl.SSLContext | None" = None, on_connect: Callable[[Any], Any] | None = None) -> None:
        if on_connect is not None and not callable(on_connect):
            raise InterfaceError(f"on_connect must be callable, not {type(on_connect).__name__}")
        self.on_connect = on_connect   # run on every new leader connection (module docstring)
        self.nodes = KnownNodes(parse_addresses(addresses))
        self.ssl_context = ssl_context   # TLS for every connection when set
        self.database = database
        self.policy = policy.validate()
        self.client_id = random.Random(os.urandom(8)).getrandbits(63) or 1
        self._random = random.Random(os.urandom(8))
        self._last_reasons = "no address tried"
        self.closed = False

    def _reasons(self, reasons: list[str]) -> str:
        """Why discovery failed; the previous round's reasons when the deadline left no
        time to try any address in this one."""
        if reasons:
            self._last_reasons = "; ".join(reasons[-6:])
        return self._last_reasons

    def _deadline(self) -> float:
        return time.monotonic() + self.policy.timeout_s

    def _check_open(self) -> None:
        if self.closed:
            raise InterfaceError("the connection is closed")

    def _gave_up(self, reason: str) -> NoLeaderError:
        return NoLeaderError(f"no leader answered within {self.policy.timeout_s:g} s "
                             f"(nodes: {', '.join(self.nodes.candidates())}): {reason}")

    def _backoff(self, attempt: int, deadline: float) -> float:
        return min(self.policy.backoff_s(attempt, self._random.random()), max(deadline - time.monotonic(), 0.0))

    def _outcome(self, decision: Decision, error: BaseException, kind: RequestKind, address: str) -> Error | None:
        """The exception to raise for a final decision (None for DONE)."""
        match decision:
            case Decision.DONE:
                return None
            case Decision.OUTCOME_UNKNOWN:
                what = "the COMMIT" if kind is RequestKind.COMMIT else "the write"
                hint = "" if kind is RequestKind.COMMIT else "; connect with retry_unknown_writes=True to retry"
                return OutcomeUnknownError(
                    f"{what} reached the leader {address} and then the leader was lost ({error}); it may or may "
                    f"not have been applied and was not re-sent{hint}",
                    code=error.code if isinstance(error, RequestFailed) else None)
            case Decision.TRANSACTION_LOST:
                return TransactionLostError(
                    f"the leader changed during the transaction ({address}: {error}); nothing in it was "
                    "committed: run it again from BEGIN",
                    code=error.code if isinstance(error, RequestFailed) else None)
        if isinstance(error, RequestFailed):
            return error_from_failure(error.code, error.message)
        if isinstance(error, ConnectionBusy):
            return InterfaceError(str(error))
        return OperationalError(f"{address}: {error}")

    # -- the session's logic, written once ----------------------------------------------
    # Each method below is a generator of steps: zero-argument callables that do one piece
    # of I/O (connect, send a request, close, sleep). `run_blocking` calls them in turn;
    # `run_awaited` awaits what they return. The value goes back into the generator and an
    # exception is thrown in at the same point, so discovery and the retry policy read
    # as plain code and serve ClusterSession and AsyncClusterSession alike. The
    # subclasses supply the I/O: _open_connection, _close_connection, _sleep, _setup.

    def _open_connection(self, address: str, timeout_s: float) -> Any:
        raise NotImplementedError

    def _close_connection(self, connection: Any) -> Any:
        raise NotImplementedError

    def _sleep(self, seconds: float) -> Any:
        raise NotImplementedError

    def _setup(self, connection: Any, db_id: int) -> Any:
        raise NotImplementedError

    def _drop_steps(self):
        if self._connection is not None:
            connection, self._connection = self._connection, None
            yield lambda: self._close_connection(connection)

    def _probe_steps(self, address: str, deadline: float):
        timeout_s = max(min(self.policy.probe_timeout_s, deadline - time.monotonic()), 0.01)
        connection = yield lambda: self._open_connection(address, timeout_s)
        try:
            leader = yield connection.leader
        except BaseException:
            yield lambda: self._close_connection(connection)
            raise
        return connection, leader

    def _discover_steps(self, deadline: float):
        reasons: list[str] = []
        for address in self.nodes.candidates():
            if time.monotonic() >= deadline:
                break
            try:
                connection, leader = yield from self._probe_steps(address, deadline)
            except (ConnectionBroken, RequestFailed, WireProtocolError, OSError) as error:
                reasons.append(f"{address}: {error}")
                continue
            if leader is None:
                yield lambda: self._close_connection(connection)
                reasons.append(f"{address}: knows no leader")
                continue
            if leader.address != address:
                yield lambda: self._close_connection(connection)
                try:
                    connection, confirmed = yield from self._probe_steps(leader.address, deadline)
                except (ConnectionBroken, RequestFailed, WireProtocolError, OSError) as error:
                    reasons.append(f"{address} names {leader.address}: {error}")
                    continue
                if confirmed is None or confirmed.address != leader.address:
                    yield lambda: self._close_connection(connection)
                    reasons.append(f"{address} names {leader.address}, which does not claim leadership")
                    continue
            try:
                connection.timeout_s = max(deadline - time.monotonic(), 0.01)
                yield lambda: connection.client(self.client_id)
                self._db_id = yield lambda: connection.open(self.database)
                try:
                    self.nodes.learn((yield connection.cluster))
                except RequestFailed:
                    pass  # membership is a hint; the request itself decides
                if self.on_connect is not None:
                    yield lambda: self.on_connect(self._setup(connection, self._db_id))
            except (ConnectionBroken, RequestFailed, WireProtocolError, OSError) as error:
                yield lambda: self._close_connection(connection)
                if isinstance(error, RequestFailed) and error.code not in (ErrorCode.NOT_LEADER,
                                                                           ErrorCode.LEADERSHIP_LOST):
                    raise error_from_failure(error.code, error.message) from None
                reasons.append(f"{leader.address}: {error}")
                continue
            except BaseException:
                yield lambda: self._close_connection(connection)   # the hook's own exception goes to the caller
                raise
            self.nodes.leader = leader.address
            return connection
        raise _Unreachable(self._reasons(reasons))

    def _call_steps(self, kind: "RequestKind", operation: Callable[[Any, int], Any]):
        """`operation(connection, db_id)` on the leader under the retry policy; its value,
        or None when a ROLLBACK found its transaction already gone."""
        self._check_open()
        deadline = self._deadline()
        attempt = 0
        in_transaction = kind in (RequestKind.IN_TRANSACTION, RequestKind.COMMIT, RequestKind.ROLLBACK)
        while True:
            error: BaseException
            sent = False
            address = self.connected_to or "?"
            try:
                if self._connection is not None and self._connection.peer_closed():
                    yield from self._drop_steps()
                if self._connection is None:
                    if in_transaction:
                        raise ConnectionBroken("the connection holding the transaction is gone")
                    self._connection = yield from self._discover_steps(deadline)
                connection = self._connection
                address = connection.address
                connection.timeout_s = max(deadline - time.monotonic(), 0.01)
                sent = True
                return (yield lambda: operation(connection, self._db_id))
            except _Unreachable as unreachable:
                error = unreachable
                failure = Failure.NOT_SENT
            except (RequestFailed, ConnectionBroken, WireProtocolError, OSError) as raised:
                error = raised
                failure = failure_of(raised, sent=sent)
            except ConnectionBusy as busy:
                raise InterfaceError(str(busy)) from None
            if failure is not Failure.OTHER and failure is not Failure.BUSY:
                yield from self._drop_steps()  # the next attempt rediscovers the leader
            decision = decide(kind, failure, retry_unknown_writes=self.policy.retry_unknown_writes)
            if decision is Decision.RETRY:
                if time.monotonic() >= deadline:
                    raise self._gave_up(str(error))
                pause = self._backoff(attempt, deadline)
                yield lambda: self._sleep(pause)
                attempt += 1
                continue
            outcome = self._outcome(decision, error, kind, address)
            if outcome is None:
                return None
            raise outcome from (error if isinstance(error, (RequestFailed, ConnectionBroken)) else None)


def run_blocking(steps: Generator[Callable[[], Any], Any, T]) -> T:
    """Carry out a session generator (above) with blocking calls."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            value = step()
        except BaseException as failure:   # thrown in: the generator's own handlers decide
            error = failure


async def run_awaited(steps: Generator[Callable[[], Any], Any, T]) -> T:
    """Carry out a session generator (above), awaiting what each step returns."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        try:
            value = step()
            if inspect.isawaitable(value):
                value = await value
        except BaseException as failure:   # thrown in: the generator's own handlers decide
            error = failure


_Operation = Callable[[Any, int], T]


class ClusterSession(_SessionBase):
    """A blocking session with the cluster's leader: one reused connection, discovery
    and the retry policy around every request."""

    def __init__(self, addresses: str | Sequence[str], *, database: str, policy: RetryPolicy = RetryPolicy(),
                 ssl_context: "ssl.SSLContext | None" = None, on_connect: Callable[[ConnectionSetup], Any] | None = None) -> None:
        super().__init__(addresses, database=database, policy=policy, ssl_context=ssl_context, on_connect=on_connect)
        self._connection: Connection | None = None
        self._db_id = 0

    @property
    def connected_to(self) -> str | None:
        return None if self._connection is None or self._connection.closed else self._connection.address

    def close(self) -> None:
        self.closed = True
        self.drop()

    def drop(self) -> None:
        """Closes the leader connection (the next request rediscovers the leader)."""
        run_blocking(self._drop_steps())

    def _open_connection(self, address: str, timeout_s: float) -> Connection:
        return Connection.connect(address, timeout_s=timeout_s, ssl_context=self.ssl_context)

    def _close_connection(self, connection: Connection) -> None:
        connection.close()

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _setup(self, connection: Connection, db_id: int) -> ConnectionSetup:
        return ConnectionSetup(connection, db_id)

    def call(self, kind: RequestKind, operation: _Operation[T]) -> T | None:
        """Runs `operation(connection, db_id)` on the leader under the retry policy.
        Returns its value, or None when a ROLLBACK found its transaction already gone."""
        return run_blocking(self._call_steps(kind, operation))

    def leader(self) -> NodeInfo | None:
        """The leader as the cluster names it (None when no node knows one)."""
        return self.call(RequestKind.READ, lambda connection, _db: connection.leader())

    def node(self, address: str) -> Connection:
        """A plain connection straight to one node (for DESCRIBE, WEIGHT, DUMP of that node)."""
        try:
            parse_address(address)
            return Connection.connect(address, timeout_s=self.policy.timeout_s, ssl_context=self.ssl_context)
        except ValueError as error:
            raise InterfaceError(str(error)) from None
        except ConnectionBroken as error:
            raise OperationalError(str(error)) from None


_AsyncOperation = Callable[[Any, int], Awaitable[T]]


class AsyncClusterSession(_SessionBase):
    """The asyncio twin of ClusterSession: the same discovery and policy, awaited."""

    def __init__(self, addresses: str | Sequence[str], *, database: str, policy: RetryPolicy = RetryPolicy(),
                 ssl_context: "ssl.SSLContext | None" = None,
                 on_connect: Callable[[AsyncConnectionSetup], Any] | None = None) -> None:
        super().__init__(addresses, database=database, policy=policy, ssl_context=ssl_context, on_connect=on_connect)
        self._connection: AsyncConnection | None = None
        self._db_id = 0

    @property
    def connected_to(self) -> str | None:
        return None if self._connection is None or self._connection.closed else self._connection.address

    async def close(self) -> None:
        self.closed = True
        await self.drop()

    async def drop(self) -> None:
        await run_awaited(self._drop_steps())

    def _open_connection(self, address: str, timeout_s: float) -> Awaitable[AsyncConnection]:
        return AsyncConnection.connect(address, timeout_s=timeout_s, ssl_context=self.ssl_context)

    def _close_connection(self, connection: AsyncConnection) -> Awaitable[None]:
        return connection.wait_closed()

    def _sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)

    def _setup(self, connection: AsyncConnection, db_id: int) -> AsyncConnectionSetup:
        return AsyncConnectionSetup(connection, db_id)

    async def call(self, kind: RequestKind, operation: _AsyncOperation[T]) -> T | None:
        """Awaits `operation(connection, db_id)` on the leader under the retry policy."""
        return await run_awaited(self._call_steps(kind, operation))


