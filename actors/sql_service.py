"""SQL served on the leader of a database node: client sessions and their SQLite
connections, pipelined writes, reads held back until they cannot be lost, checkpoints,
and what a lost leadership undoes.

Theory of operation
-------------------
`SqlService` is the client-facing half of the database component (`DatabaseStateMachine`,
actors/database.py); the other half, `DatabaseReplica` (actors/database_replica.py),
applies committed entries to the files. It asks the raft node for what it needs through
the `StateMachineHost` handle (actors/state_machine.py): propose an entry and be told
when it applied, start a ReadIndex read, step down, ask for or abandon a snapshot.
Followers refuse SQL with 10250 (not leader).

On the leader, SQL runs at once on a connection opened through the capture VFS
(actors/sqlite_capture.py): the WAL pages a transaction writes are resolved at
its commit into page images, and that committed transaction becomes one raft entry.
The leader does not wait for the entry to commit before running the next statement
(pipelining); many entries share one raft append and one fsync (group commit). What a
client sees is held back until it cannot be lost:

- a write's answer goes out when its entry is committed and applied;
- a read's answer (computed at once, against a WAL that may hold transactions not yet
  committed) goes out when a ReadIndex round started after the request confirms the
  leadership and everything it could have seen is committed and applied.

The entries the leader ran itself are already in its WAL when they commit, and are not
written again (actors/database_replica.py counts them as `only_in_wal`).

Each client (a `Client` session: one dqlite connection) has its own SQLite connection
per database on the leader, as in dqlite, so what SQLite keeps per connection
(PRAGMA foreign_keys, recursive_triggers, case_sensitive_like, temp tables,
last_insert_rowid()) is that client's own. Foreign keys are on for a new connection,
as dqlite 1.18 does. The connections all go through the one capture of their database
(the VFS shim is per file), so every connection's commits are captured, in commit
order. The node keeps one connection of its own per database, which creates it and
checkpoints it. Client connections are bounded (`Config.client_connections_max`); a
session's connections close when it ends (`SessionClosed`) or leadership is lost. A
session whose connections were closed under it (leadership lost, or given up to make
room at the limit) is *expired*: its next request is refused with 10250, so that its
client reconnects (and re-applies its connection state), instead of running silently on
a fresh connection without it.

When the leader loses leadership it fails what it was holding (10506 for writes in the
log, 10250 for the rest), closes its connections, drops its WAL (which may hold
transactions that never commit) and brings its main files back to exactly the
committed prefix, by writing again the pages of the committed entries it had only in
its WAL. It checkpoints only when everything it ran is committed and no session is in
a transaction, so its main files never hold an uncommitted page.

Errors. An ordinary SQL error ends a request where SQLite stops: in a request of several
statements, those before it committed and are proposed, and the error is answered once
they are committed (SQLite's and dqlite's semantics). A storage error (SQLITE_IOERR and
its extended codes, SQLITE_FULL, SQLITE_NOMEM) met while the request wrote the WAL is
different: SQLite may have published the commit or not, and the capture may hold a
transaction SQLite then rolled back (see sqlite_capture). Nothing the request captured
is proposed; the leader steps down (`StateMachineHost.storage_failed`), which drops its WAL with its
connections, so the request certainly did not apply and is answered 10250; writes of
other clients already proposed end with 10506, as on any leadership loss.

Writes queue for the write lock instead of failing with SQLITE_BUSY: one session at a
time may hold an open write transaction; other writers wait in a bounded queue
("overloaded" when full). SQL that would break replication is refused by an authorizer.
"""

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import apsw

from ..core.frames import decode_database_entry, encode_database_entry
from . import database_files
from .contract import Client, Context
from .database_replica import DatabaseReplica
from .database_requests import (
    NOT_LEADER, SQLITE_AUTH, SQLITE_BUSY, SQLITE_CANTOPEN, SQLITE_ERROR, SQLITE_FULL, SQLITE_INTERRUPT, SQLITE_IOERR,
    SQLITE_NOMEM, Dump, Dumped, Execute, ExecuteResult, Interrupt, Interrupted, Open, Opened, Prepare, Prepared, Query,
    QueryResult, SessionClosed, SqlError,
)
from .sqlite_capture import CaptureVfs, open_another_connection, open_leader_connection
from .state_machine import StateMachineHost

__all__ = ["SqlService"]

# Primary codes that mean the leader's storage (or memory) failed, not the SQL.
STORAGE_ERRORS = frozenset({SQLITE_NOMEM, SQLITE_IOERR, SQLITE_FULL})
SQLITE_TOOBIG = 18
SESSION_EXPIRED = ("not leader: this connection's SQLite state on the leader is gone (leadership changed, or "
                   "its connections were given up at client_connections_max); reconnect")


def _end_statement(cursor) -> None:
    """Stop a read in progress (its statement reset, its read snapshot released) whatever
    SQLite says: it wrote nothing, so nothing is lost, and a failure here must not take
    the node down."""
    try:
        cursor.close(True)
    except apsw.Error:
        pass


def _is_storage_error(error: apsw.Error) -> bool:
    return getattr(error, "result", None) in STORAGE_ERRORS


def _errno_name(error: apsw.Error) -> str:
    """The errno an SQLite storage error stands for, as the node reports storage errors."""
    result = getattr(error, "result", None)
    return "ENOSPC" if result == SQLITE_FULL else "ENOMEM" if result == SQLITE_NOMEM else "EIO"


class _Refused(Exception):
    """A request refused before it ran; `response` is its answer."""

    def __init__(self, response: "SqlError") -> None:
        super().__init__(response.message)
        self.response = response


def _query_result(description: tuple, rows: tuple) -> QueryResult:
    """A QueryResult from a statement's (name, declared type) pairs and its rows."""
    return QueryResult(columns=tuple(name for name, _ in description), rows=rows,
                       column_types=tuple(declared or "" for _, declared in description))


def _sql_error(error: apsw.Error) -> SqlError:
    extended = getattr(error, "extendedresult", None)
    code = extended if extended else getattr(error, "result", SQLITE_ERROR)
    message = str(error)
    # apsw prefixes messages with the exception name ("ConstraintError: ..."); clients
    # expect SQLite's own message.
    if ": " in message and message.split(": ", 1)[0].endswith("Error"):
        message = message.split(": ", 1)[1]
    return SqlError(code=int(code), message=message)


# -- the authorizer --------------------------------------------------------------------------

_REFUSED_PRAGMAS = frozenset({
    "journal_mode", "locking_mode", "synchronous", "wal_checkpoint", "wal_autocheckpoint", "journal_size_limit",
    "mmap_size", "writable_schema",
})
# Pragmas that may be read but not set: page_size of an existing database; busy_timeout
# (the lock holder is the node's own thread: SQLite would only sleep, stalling the
# node); and settings that are process-wide, so one client would change every client's.
_REFUSED_PRAGMA_ASSIGNMENTS = frozenset({
    "page_size", "busy_timeout", "soft_heap_limit", "hard_heap_limit", "temp_store_directory", "data_store_directory",
})


def _authorizer(operation: int, first: str | None, second: str | None, database: str | None, trigger: str | None) -> int:
    if operation in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
        return apsw.SQLITE_DENY
    if operation == apsw.SQLITE_PRAGMA and first is not None:
        name = first.lower()
        if name in _REFUSED_PRAGMAS or (name in _REFUSED_PRAGMA_ASSIGNMENTS and second is not None):
            return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


def _refused_statement(sql: str) -> str | None:
    """Statements the authorizer cannot see clearly enough."""
    words = sql.lower().split()
    if "vacuum" in words and "into" in words:
        return "VACUUM INTO is not allowed: it writes a file outside replication"
    if "load_extension" in sql.lower():
        return "load_extension is not allowed"
    return None



class _NodeVfs(CaptureVfs):
    """The capture VFS, telling SQLite the time from the runtime's clock (so that
    `datetime('now')` follows the simulated clock under the simulator)."""

    JULIAN_DAY_OF_UNIX_EPOCH_MS = 210_866_760_000_000

    def __init__(self, name: str, wall_clock_ms) -> None:
        super().__init__(name)
        self.wall_clock_ms = wall_clock_ms

    def xCurrentTimeInt64(self) -> int:
        return self.JULIAN_DAY_OF_UNIX_EPOCH_MS + int(self.wall_clock_ms())


@dataclass(slots=True)
class _LongRead:
    client: Client
    database: str
    connection: apsw.Connection
    cursor: Any
    described: list
    min_index: int
    rows: list = field(default_factory=list)


def _single_select(sql: str) -> bool:
    """One statement that looks like a query. (A WITH ... INSERT slips through; the
    read-only connection refuses it and the request takes the normal path.)"""
    text = sql.strip().rstrip(";").strip()
    if not text or ";" in text:
        return False
    return text.split(None, 1)[0].lower() in ("select", "with")


@dataclass(slots=True)
class _Session:
    """One client's SQLite state on the leader: its own connection per database."""

    connections: dict[str, apsw.Connection] = field(default_factory=dict)
    transactions: set[str] = field(default_factory=set)   # databases with an open transaction


class SqlService:
    """SQL clients served on the leader: sessions, their connections, the write queue,
    reads in steps, checkpoints. Part of the database component (`DatabaseStateMachine`
    in actors/database.py), which hands it requests, timers and leadership changes."""

    CHECKPOINT = "checkpoint"
    # Checkpoint once this many transactions sit in the WAL and all are committed; past
    # twice as many, new work waits (in the queue) until that moment comes, so the WAL
    # stays bounded under a continuous load.
    CHECKPOINT_ENTRIES = 1000
    # Expired sessions remembered (a client of the real runtime always says goodbye, which
    # forgets it; this bounds the memory of clients that never do).
    EXPIRED_SESSIONS_MAX = 1 << 16

    def __init__(self, host: StateMachineHost, ctx: Context, replica: DatabaseReplica, *, write_queue_max: int) -> None:
        self.host = host
        self.ctx = ctx
        self.replica = replica
        self.write_queue_max = write_queue_max
        # Clients' own connections, least recently active first.
        self.sessions: dict[Client, _Session] = {}
        self.client_connections = 0                      # open connections of all sessions
        self.sessions_in_transaction: set[Client] = set()
        # Sessions whose connections were closed under them (see the module docstring),
        # oldest first; forgotten when the client goes away, or beyond EXPIRED_SESSIONS_MAX.
        self.expired: dict[Client, None] = {}
        # The node's own connection per database: creates the database, checkpoints it.
        self.node_connections: dict[str, apsw.Connection] = {}
        self.long_reads: deque[_LongRead] = deque()      # SELECTs stepping through their rows
        self.write_owner: Client | None = None     # session holding an open write transaction
        self.write_queue: deque[tuple[Client, Any]] = deque()
        # Set by the commit hook when it refused a transaction as too big (its size).
        self.too_big_vetoed: int | None = None
        self.last_executed_index = 0
        self.wal_entries = 0     # transactions run since the last checkpoint
        self.serving = False
        self.vfs = _NodeVfs(f"raftlite-node-{ctx.node_id}-{id(self)}", ctx.wall_clock_ms or ctx.now_ms)
        self.vfs_registered = True
        self.captures: dict[str, Any] = {}

    IDLE_TRANSACTION = "idle-transaction"

    def on_timer(self, timer: Hashable) -> bool:
        """The service's own timers; False for any other (the node then goes on with the
        raft core's output, as after every input)."""
        if timer == self.READ_STEP:
            self._read_step()
            return True
        if isinstance(timer, tuple) and timer[0] == self.IDLE_TRANSACTION:
            self._roll_back_idle_transactions(timer[1])
            return True
        return False

    # -- requests ----------------------------------------------------------------------

    def handle_request(self, client: Client, message: Any) -> bool:
        """A database request (actors/database_requests.py); False for any other."""
        match message:
            case SessionClosed():
                self._close_session(client)
            case Interrupt():
                self._interrupt(client, message.database)
            case Open() | Execute() | Query() | Prepare():
                self._sql_request(client, message)
            case Dump():
                self._dump(client, message.database)
            case _:
                return False
        return True

    def _sql_request(self, client: Client, message: Any) -> None:
        if not self.host.is_leader():
            self.ctx.reply(client, SqlError(code=NOT_LEADER, message="not leader"))
            return
        if client in self.expired:
            self.ctx.reply(client, SqlError(code=NOT_LEADER, message=SESSION_EXPIRED))
            return
        if not self._ready_to_serve() or self._wal_full(client):
            # A new leader serves once it committed an entry of its term and applied
            # everything committed; a full WAL waits for its checkpoint. Meanwhile
            # requests wait their turn.
            self._enqueue(client, message)
            return
        self._run(client, message)

    def _interrupt(self, client: Client, database: str) -> None:
        interrupted = SqlError(code=SQLITE_INTERRUPT, message="interrupted")
        for read in [r for r in self.long_reads if r.client == client and r.database == database]:
            self.long_reads.remove(read)
            _end_statement(read.cursor)
            self.ctx.reply(client, interrupted)
        if self.host.cancel_read(client, QueryResult):
            self.ctx.reply(client, interrupted)   # rows read, waiting for the ReadIndex round: not sent
        queued = [(c, m) for c, m in self.write_queue if c == client and getattr(m, "database", None) == database]
        for item in queued:
            self.write_queue.remove(item)
            self.ctx.reply(client, interrupted)
        self.ctx.reply(client, Interrupted())

    def _prepare(self, client: Client, message: Prepare) -> Prepared | SqlError:
        refusal = _refused_statement(message.sql)
        if refusal is not None:
            return SqlError(code=SQLITE_AUTH, message=refusal)
        try:
            connection = self._connection(client, message.database)
        except _Refused as refused:
            return refused.response
        compiled: list = []

        def stop_before_running(statement_cursor, sql, bindings) -> bool:
            compiled.append((statement_cursor.bindings_count, statement_cursor.get_description()))
            return False

        cursor = connection.cursor()
        cursor.exec_trace = stop_before_running
        try:
            cursor.execute(message.sql)
        except apsw.ExecTraceAbort:
            pass
        except apsw.BindingsError as error:
            # apsw binds before tracing, and says how many parameters it wanted.
            match = re.match(r"Statement has (\d+) bindings", str(error))
            if match is None:
                return _sql_error(error)
            try:
                cursor.execute(message.sql, (None,) * int(match.group(1)))
            except apsw.ExecTraceAbort:
                pass
        except apsw.Error as error:
            return _sql_error(error)
        finally:
            self._settle_connection(client, message.database, connection)
        if not compiled:
            return Prepared(parameter_count=0, columns=())
        count, description = compiled[0]
        return Prepared(parameter_count=count, columns=tuple(name for name, _ in description))

    def _dump(self, client: Client, database: str) -> None:
        def image() -> Dumped | SqlError:
            machine = self.replica
            if database not in machine.databases:
                return SqlError(code=SQLITE_ERROR, message=f"no such database: {database}")
            in_wal = [decoded for entry in machine.only_in_wal
                      if getattr(decoded := decode_database_entry(entry.data), "database", None) == database]
            main = database_files.committed_image(machine.path(database), in_wal)
            return Dumped(files=((database, main), (database + "-wal", b"")))

        if self.host.is_leader():
            self.host.start_read(client, response=image)
        else:
            # A follower's files hold exactly what it applied: a committed state.
            self.host.answer_from_applied_state(client, image)

    def _wal_full(self, client: Client) -> bool:
        # A session inside a transaction goes on: the checkpoint waits for it to end.
        return self.wal_entries >= 2 * self.CHECKPOINT_ENTRIES and not self._in_transaction(client)

    def _in_transaction(self, client: Client) -> bool:
        return client in self.sessions_in_transaction

    def _ready_to_serve(self) -> bool:
        if not self.serving and self.host.leader_caught_up():
            self.serving = True
        # While leadership is being handed over, raft drops proposals: a transaction
        # run now could not be proposed, yet would sit in this node's WAL. Requests
        # wait; they fail with 10250 if the transfer succeeds, run if it gives up.
        return self.serving and not self.host.transferring_leadership()

    def _enqueue(self, client: Client, message: Any) -> None:
        if len(self.write_queue) >= self.write_queue_max:
            self.ctx.reply(client, SqlError(code=SQLITE_BUSY, message="overloaded: too many requests waiting"))
            return
        self.write_queue.append((client, message))

    def _drain_queue(self) -> None:
        while self.write_queue and self.host.is_leader() and self._ready_to_serve():
            client, message = self.write_queue[0]
            if self.write_owner is not None and self.write_owner != client:
                return
            if self._wal_full(client):
                return
            self.write_queue.popleft()
            if not self._run(client, message, from_queue=True):
                return  # blocked again

    def _node_connection(self, client: Client, database: str) -> apsw.Connection:
        """The node's own connection to `database`: opened, and the database created (a
        replicated entry, proposed on behalf of `client`), on first use."""
        connection = self.node_connections.get(database)
        if connection is None:
            try:
                connection, capture = open_leader_connection(self.replica.path(database), self.vfs, database=database)
            except apsw.Error as error:
                raise _Refused(_sql_error(error)) from None
            connection.authorizer = _authorizer
            self.node_connections[database] = connection
            self.captures[database] = capture
            if capture.creation is not None:
                self._propose_entries(client, [capture.creation], response=None)
                capture.creation = None
        return connection

    def _connection(self, client: Client, database: str) -> apsw.Connection:
        """The client's own connection to `database`, opened on first use (_Refused when
        none can be had). Also marks the client as the most recently active."""
        session = self.sessions.pop(client, None)
        if session is not None:
            self.sessions[client] = session       # (re)inserted last: most recently active
            connection = session.connections.get(database)
            if connection is not None:
                return connection
        self._node_connection(client, database)
        self._make_room(client)
        try:
            connection = open_another_connection(self.replica.path(database), self.vfs)
        except apsw.Error as error:
            raise _Refused(_sql_error(error)) from None
        # dqlite 1.18 turns foreign keys on for every leader connection (src/leader.c up
        # to 1.18.1, db__open in src/db.c from 1.18.2; SQLite's own default is off). A
        # client may turn them off for itself.
        connection.config(apsw.SQLITE_DBCONFIG_ENABLE_FKEY, 1)
        connection.authorizer = _authorizer
        connection.set_commit_hook(lambda: self._veto_too_big(database))
        if session is None:
            session = self.sessions[client] = _Session()
        session.connections[database] = connection
        self.client_connections += 1
        return connection

    def _make_room(self, client: Client) -> None:
        """Before a new client connection: at `client_connections_max`, close those of the
        least recently active session that is idle (no transaction, nothing running or
        queued) and expire it; when none is, refuse with a clear error."""
        limit = self.ctx.config.client_connections_max
        if self.client_connections < limit:
            return
        busy = {queued for queued, _ in self.write_queue} | {read.client for read in self.long_reads}
        busy.add(client)
        for other, session in self.sessions.items():
            if other not in busy and not session.transactions and session.connections and other != self.write_owner:
                self._expire(other)
                return
        raise _Refused(SqlError(code=SQLITE_CANTOPEN, message=(
            f"too many client connections on the leader: all {limit} (client_connections_max) are in use "
            "by clients in a transaction or a request; retry later, or raise the limit")))

    def _expire(self, client: Client) -> None:
        session = self.sessions.pop(client)
        self.sessions_in_transaction.discard(client)
        self._close_session_connections(session)
        self.expired[client] = None
        while len(self.expired) > self.EXPIRED_SESSIONS_MAX:
            del self.expired[next(iter(self.expired))]

    def _close_session_connections(self, session: _Session) -> None:
        """Roll back and close a session's connections (closing one in WAL mode with
        NO_CKPT_ON_CLOSE writes nothing: the node's own connection keeps the WAL)."""
        for connection in session.connections.values():
            if not connection.get_autocommit():
                try:
                    connection.execute("ROLLBACK")
                except apsw.Error:
                    pass
            connection.close(True)
        self.client_connections -= len(session.connections)
        session.connections.clear()
        session.transactions.clear()

    def _settle_connection(self, client: Client, database: str, connection: apsw.Connection) -> None:
        """After a request: note whether the client's connection is inside a transaction
        (and whether it holds the write lock), and (re)arm the idle-transaction timer."""
        session = self.sessions.get(client)
        if session is None:
            return
        if not connection.get_autocommit():
            session.transactions.add(database)
            self.sessions_in_transaction.add(client)
            if self._holds_write_lock(connection):
                self.write_owner = client
            # (Re)armed by every request: measures idleness since the last one.
            self.ctx.set_timer((self.IDLE_TRANSACTION, client), self.ctx.config.transaction_idle_timeout_ms)
            return
        session.transactions.discard(database)
        if not session.transactions:
            self.sessions_in_transaction.discard(client)
            self.ctx.cancel_timer((self.IDLE_TRANSACTION, client))
        if self.write_owner == client and not any(map(self._holds_write_lock, session.connections.values())):
            self.write_owner = None

    def _roll_back_idle_transactions(self, client: Client) -> None:
        """The idle-transaction timeout: roll the client's transactions back (freeing the
        write lock); its connections and their state stay."""
        session = self.sessions.get(client)
        if session is None or not session.transactions:
            return
        if any(queued == client for queued, _ in self.write_queue):
            # Not idle: its next request waits for the lock. Look again later.
            self.ctx.set_timer((self.IDLE_TRANSACTION, client), self.ctx.config.transaction_idle_timeout_ms)
            return
        for database in list(session.transactions):
            connection = session.connections[database]
            try:
                connection.execute("ROLLBACK")
            except apsw.Error:
                pass
            self._settle_connection(client, database, connection)
        if self.host.is_leader():
            self._drain_queue()

    def _run(self, client: Client, message: Any, *, from_queue: bool = False) -> bool:
        """Run one request; False when it must wait for the write lock (it was queued)."""
        if isinstance(message, Open):
            try:
                self._connection(client, message.database)
            except _Refused as refused:
                self.ctx.reply(client, refused.response)
                return True
            self._respond_after_commit(client, Opened(database=message.database))
            return True
        if isinstance(message, Prepare):
            self._respond_after_commit(client, self._prepare(client, message))
            return True
        refusal = _refused_statement(message.sql)
        if refusal is not None:
            self.ctx.reply(client, SqlError(code=SQLITE_AUTH, message=refusal))
            return True
        if isinstance(message, Query) and not self._in_transaction(client) and _single_select(message.sql):
            if self._start_long_read(client, message):
                return True
        try:
            connection = self._connection(client, message.database)
        except _Refused as refused:
            self.ctx.reply(client, refused.response)   # nothing ran: nothing to wait for
            return True
        capture = self.captures[message.database]
        wal_writes_before = capture.wal_write_attempts
        try:
            cursor = connection.cursor()
            described: list[tuple] = []

            def note_columns(statement_cursor, sql, bindings) -> bool:
                # Each statement is described before it runs: a query that returns no
                # rows still has its column names (the last statement's are the answer).
                described.append(statement_cursor.get_description())
                return True

            cursor.exec_trace = note_columns
            cursor.execute(message.sql, message.params)
            rows = tuple(tuple(row) for row in cursor)
            columns = described[-1] if described else ()
        except apsw.BusyError as error:
            if getattr(error, "extendedresult", SQLITE_BUSY) == SQLITE_BUSY and self.write_owner not in (None, client):
                # Another session's open transaction holds the write lock: wait for it
                # (nothing took effect: the statement that needs the lock is where it stopped).
                if from_queue:
                    self.write_queue.appendleft((client, message))
                else:
                    self._enqueue(client, message)
                return False
            response: Any = _sql_error(error)
            rows, columns = (), ()
        except apsw.Error as error:
            if _is_storage_error(error) and capture.wal_write_attempts != wal_writes_before and self.too_big_vetoed is None:
                self._step_down_after_storage_error(client, capture, error)
                return True
            # An ordinary SQL error: what ran before it (earlier statements of the
            # request) stays committed and is proposed below; the error is the answer.
            # A transaction the commit hook refused as too big was rolled back: say why.
            response = _sql_error(error) if self.too_big_vetoed is None else self._too_big_refusal(capture)
            rows, columns = (), ()
        else:
            if isinstance(message, Query):
                response = _query_result(columns, rows)
            else:
                response = ExecuteResult(last_insert_id=connection.last_insert_rowid(), rows_affected=connection.changes())
        self._settle_connection(client, message.database, connection)
        committed = capture.take_committed()
        if committed:
            self._propose_entries(client, committed, response=response)
        else:
            self._respond_after_commit(client, response)
        if self.write_owner is None:
            self._drain_queue()
        return True

    def _step_down_after_storage_error(self, client: Client, capture: Any, error: apsw.Error) -> None:
        """A storage error while the request wrote the WAL: SQLite may or may not have
        published its commit, and the capture may hold a transaction SQLite rolled back.
        Propose none of it and stop leading: leadership loss (handled by the raft node's
        Ready loop, in this same handler) closes every connection and drops the WAL, so the request
        certainly did not apply: 10250. (Its client may retry it on the next leader.)"""
        capture.discard()
        self.host.storage_failed(_errno_name(error), "writing SQLite's WAL")
        self.ctx.reply(client, SqlError(code=NOT_LEADER, message=(
            f"not leader: the leader stepped down after a storage error while writing ({_sql_error(error).message or error.__class__.__name__}, "
            f"code {_sql_error(error).code}); the request was not applied")))

    # -- reads in bounded steps ----------------------------------------------------------

    READ_ROWS_PER_STEP = 2000
    READ_STEP = "read-step"

    def _start_long_read(self, client: Client, message: Query) -> bool:
        """Run a lone SELECT on its own read-only connection, a batch of rows per step
        (so a long query never holds the node's loop). False: use the normal path."""
        if message.database not in self.captures:
            return False    # the database does not exist yet: the normal path creates it
        try:
            # The client's own connection: its temp tables and pragmas (case_sensitive_like...) apply.
            connection = self._connection(client, message.database)
        except _Refused as refused:
            self.ctx.reply(client, refused.response)
            return True
        described: list[tuple] = []

        def note_columns(statement_cursor, sql, bindings) -> bool:
            if not statement_cursor.is_readonly:
                return False    # it writes after all (WITH ... INSERT): the normal path runs it
            described.append(statement_cursor.get_description())
            return True

        cursor = connection.cursor()
        cursor.exec_trace = note_columns
        try:
            cursor.execute(message.sql, message.params)
        except apsw.ExecTraceAbort:
            _end_statement(cursor)
            return False
        except apsw.Error as error:
            _end_statement(cursor)
            self._respond_after_commit(client, _sql_error(error))
            return True
        read = _LongRead(client, message.database, connection, cursor, described, self.last_executed_index)
        self.long_reads.append(read)
        self._read_step()
        return True

    def _read_step(self) -> None:
        if not self.long_reads:
            return
        read = self.long_reads[0]
        try:
            for _ in range(self.READ_ROWS_PER_STEP):
                row = next(read.cursor, None)
                if row is None:
                    self.long_reads.popleft()
                    _end_statement(read.cursor)
                    response = _query_result(read.described[-1] if read.described else (), tuple(read.rows))
                    self.host.start_read(read.client, response=response, min_index=read.min_index)
                    break
                read.rows.append(tuple(row))
        except apsw.Error as error:
            self.long_reads.popleft()
            _end_statement(read.cursor)
            self.host.start_read(read.client, response=_sql_error(error), min_index=read.min_index)
        if self.long_reads:
            self.ctx.set_timer(self.READ_STEP, 0.0)
        self.host.process()   # the ReadIndex rounds just started go out now

    def _holds_write_lock(self, connection: apsw.Connection) -> bool:
        # A transaction that has written holds SQLite's WAL write lock until it ends.
        return connection.txn_state("main") == apsw.mapping_txn_state["SQLITE_TXN_WRITE"]

    def _propose_entries(self, client: Client, entries: Sequence, *, response: Any) -> None:
        host = self.host
        for decoded in entries:
            index = host.propose(encode_database_entry(decoded))
            self.replica.executed_here[index] = host.term
            self.wal_entries += 1
            self.last_executed_index = index
        if response is not None and host.unsafe.acknowledge_before_commit:
            self.ctx.reply(client, response)   # a deliberate bug for tests: nothing is committed yet
        elif response is not None:
            # The answer waits for the last of its entries.
            host.answer_when_applied(self.last_executed_index, client, response)

    def _veto_too_big(self, database: str) -> bool:
        """SQLite's commit hook: True turns the COMMIT into a rollback. A transaction
        whose pages already spilled to the WAL take more than transaction_bytes_max is
        refused here, before SQLite publishes it (once published in the leader's WAL, only
        leadership loss could drop it; and once proposed, peers would refuse its append).
        The pages still in the connection's cache are not counted (at most its size, 2
        MiB by default): peers accept entries up to twice the limit for them."""
        capture = self.captures.get(database)
        if capture is None:
            return False
        spilled = capture.uncommitted_frame_count() * capture.page_size
        if spilled <= self.ctx.config.transaction_bytes_max:
            return False
        self.too_big_vetoed = spilled
        return True

    def _too_big_refusal(self, capture: Any) -> SqlError:
        spilled, self.too_big_vetoed = self.too_big_vetoed, None
        capture.forget_uncommitted()   # the rolled-back transaction's frames: their memory
        return SqlError(code=SQLITE_TOOBIG, message=(
            f"transaction too big: its pages take more than {spilled} bytes, above the limit of "
            f"{self.ctx.config.transaction_bytes_max} bytes (transaction_bytes_max); it was rolled back"))

    def _respond_after_commit(self, client: Client, response: Any) -> None:
        """Answer once leadership is confirmed and all this answer could depend on is
        committed and applied (a read through a pipelined leader)."""
        self.host.start_read(client, response=response, min_index=self.last_executed_index)

    def _close_session(self, client: Client) -> None:
        """The client went away: its transactions roll back, its connections close."""
        self.expired.pop(client, None)
        for read in [r for r in self.long_reads if r.client == client]:
            self.long_reads.remove(read)
            _end_statement(read.cursor)
        session = self.sessions.pop(client, None)
        self.sessions_in_transaction.discard(client)
        if session is not None:
            self._close_session_connections(session)
        self.ctx.cancel_timer((self.IDLE_TRANSACTION, client))
        if self.write_owner == client:
            self.write_owner = None
        self.write_queue = deque((c, m) for c, m in self.write_queue if c != client)
        if self.host.is_leader():
            self._drain_queue()

    def _close_connections(self) -> None:
        """Close every connection (leadership lost, or the process ends). Sessions that
        had connections expire: their state is gone."""
        for read in self.long_reads:
            _end_statement(read.cursor)
        self.long_reads.clear()
        for client, session in list(self.sessions.items()):
            self.ctx.cancel_timer((self.IDLE_TRANSACTION, client))
            self._expire(client)
        for connection in self.node_connections.values():
            connection.close(True)
        self.node_connections.clear()

    def close(self) -> None:
        """The process is going away: close every connection and unregister the VFS."""
        self._close_connections()
        if self.vfs_registered:
            self.vfs.unregister()
            self.vfs_registered = False

    # -- leadership and checkpoints ------------------------------------------------------

    def quiet(self) -> bool:
        """Nothing ran that is not committed, and no session holds a transaction."""
        return (self.last_executed_index <= self.host.applied_index and not self.long_reads
                and not self.sessions_in_transaction)

    def progressed(self) -> None:
        """The raft node applied what it could and answered reads: a leader runs queued
        work and checkpoints when it can."""
        if self.host.is_leader():
            self._drain_queue()
            self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        machine = self.replica
        if not self.host.is_leader():
            return   # (a step-down in this handler: leadership loss handling comes next)
        snapshot_due = self.host.snapshot_due()
        if not machine.only_in_wal or not self.quiet() or self.host.snapshot_in_progress is not None:
            return   # (a snapshot being read needs the main files as they are)
        if len(machine.only_in_wal) < self.CHECKPOINT_ENTRIES and not snapshot_due:
            return
        for database, connection in self.node_connections.items():
            try:
                connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
            except apsw.BusyError:
                # A reader holds the WAL after all: the entries stay counted as "only in
                # the WAL" (rewriting them later is idempotent); try at the next quiet moment.
                return
            except apsw.Error as error:
                if not _is_storage_error(error):
                    raise
                # The WAL is intact, the main file maybe half written: stop leading;
                # leadership loss rewrites the committed pages from the log's entries.
                self.host.storage_failed(_errno_name(error), "checkpointing SQLite's WAL")
                return
        machine.checkpointed()
        self.wal_entries = 0
        if snapshot_due:
            # Now, before the queue runs new work: under a steady load this quiet moment
            # may be the only one for a while (measured: without this, the leader
            # checkpointed at every quiet moment, 20 to 50 times a second, and never
            # got to its snapshot).
            self.host.take_snapshot_if_due()
        self._drain_queue()

    def leadership_lost(self) -> None:
        """Fail what is left, close every connection, drop the WAL and bring the main
        files back to exactly the committed prefix (see the module docstring)."""
        # The committed entries in the WAL are about to be written into the main files.
        self.host.abandon_snapshot()
        for read in self.long_reads:
            self.ctx.reply(read.client, SqlError(code=NOT_LEADER, message="not leader"))
        self._close_connections()
        for client, message in self.write_queue:
            self.ctx.reply(client, SqlError(code=NOT_LEADER, message="not leader"))
        self.write_queue.clear()
        self.write_owner = None
        self.wal_entries = 0
        self.serving = False
        for database in self.captures:
            self.vfs.stop_capturing(self.replica.path(database))
            if not self.host.unsafe.deposed_leader_keeps_wal:   # (the bug keeps uncommitted frames)
                database_files.discard_wal(self.replica.path(database))
        self.captures.clear()
        self.replica.rewrite_wal_only_entries()
        self.last_executed_index = 0
