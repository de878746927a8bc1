"""What a client may ask of a database node, and what it gets back: one home for the SQL
requests and answers of the database actor (actors/database.py), and for the error codes
its answers carry.

A new SQL request is one dataclass here plus its case in
`DatabaseStateMachine.handle_request` (actors/database.py); the wire server
(io/wire_server.py), the admin connection (io/admin.py) and the simulator's clients
(sim/client.py) map their own formats onto these. Requests the raft node itself answers
(membership, leadership transfer, status) are in actors/raft_requests.py; a database node
answers those too, its refusals given as `SqlError`.
"""

from dataclasses import dataclass

__all__ = [
    "Dump", "Dumped", "Execute", "ExecuteResult", "Interrupt", "Interrupted", "Open", "Opened", "Prepare", "Prepared",
    "Query", "QueryResult", "SessionClosed", "SqlError",
    "LEADERSHIP_LOST", "NOT_LEADER", "SQLITE_AUTH", "SQLITE_BUSY", "SQLITE_CANTOPEN", "SQLITE_ERROR", "SQLITE_FULL",
    "SQLITE_INTERRUPT", "SQLITE_IOERR", "SQLITE_NOMEM",
]

# dqlite's own error codes: this node does not lead (the request certainly did not apply);
# leadership was lost while the write was in the log (its outcome is unknown).
NOT_LEADER = 10250
LEADERSHIP_LOST = 10506
# SQLite's primary result codes the node answers with.
SQLITE_ERROR = 1
SQLITE_BUSY = 5
SQLITE_NOMEM = 7
SQLITE_INTERRUPT = 9
SQLITE_IOERR = 10
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_AUTH = 23


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Open:
    database: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Execute:
    """Run SQL (all statements); answer the last insert id and the rows changed."""

    database: str
    sql: str
    params: tuple = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """Run SQL and return its rows (writes are allowed and replicated too)."""

    database: str
    sql: str
    params: tuple = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed:
    """The client went away: roll back its open transaction, if any."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Interrupt:
    """Stop this client's request in progress on `database`: a SELECT still stepping
    through its rows or not answered yet, or a request still waiting for the write lock. That request fails
    with SQLITE_INTERRUPT (9); the interrupt itself is answered `Interrupted`. A statement
    that runs within one step cannot be stopped half way (the node runs one handler at a
    time); one that already wrote and was proposed is past interrupting."""

    database: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    """Compile `sql` (its first statement) without running it: how many parameters it
    takes and which columns it returns. Leader only, like every SQL request."""

    database: str
    sql: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Dump:
    """The database's files as of a committed state: on the leader after a ReadIndex
    round (linearizable), on a follower what it has applied."""

    database: str


# -- answers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Interrupted:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    parameter_count: int
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Dumped:
    files: tuple[tuple[str, bytes], ...]   # (name, bytes): the database and its (empty) WAL


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    database: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecuteResult:
    last_insert_id: int
    rows_affected: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]
    # Declared column types ("" for none), for the wire's DATETIME/BOOLEAN conventions.
    column_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SqlError:
    code: int
    message: str
