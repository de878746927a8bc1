"""The database node: replicated SQLite as a component the raft node drives.

Theory of operation
-------------------
A database node is a `RaftNode` (actors/raft_node.py) whose state machine is a
`DatabaseStateMachine`: a set of SQLite databases in the directory the runtime hands it
(`ctx.scratch_dir`). The raft log is the truth; the SQLite files are derived state,
rebuilt from the latest snapshot plus the committed log after any restart.

The node and the database meet through one interface, `StateMachine`
(actors/state_machine.py): the node hands the component committed entries, asks it for
snapshots, gives it snapshots to restore, tells it of leadership changes, and passes it
the requests and timers it does not know; the component asks the node back only through
the `StateMachineHost` handle it gets at start. Composition, not inheritance: the node
does not know what SQL is, and the database does not see the node's bookkeeping.

The component has two halves, each in a module of its own:

- `DatabaseReplica` (actors/database_replica.py) applies committed entries to the files,
  and takes and restores snapshots of them, in bounded steps;
- `SqlService` (actors/sql_service.py) serves SQL clients on the leader: their sessions
  and connections, pipelined writes proposed as raft entries, reads held back until they
  cannot be lost, checkpoints, and what a lost leadership undoes.

`DatabaseStateMachine` routes the node's calls to the half that answers them. Its
requests and answers are in actors/database_requests.py (named here too, for the
callers that import them from this module). `DatabaseNode` only builds a raft node with
this component and names it for inspection (`database_machine`); it overrides no handler.
"""

from typing import Any, Hashable

from ..core.errors import LeadershipLost, NotLeader, RaftError
from ..core.invariant import present
from ..core.raft_types import Entry
from . import database_files
from .contract import Client, Context
from .database_replica import DatabaseReplica
from .database_requests import (
    LEADERSHIP_LOST, NOT_LEADER, SQLITE_AUTH, SQLITE_BUSY, SQLITE_CANTOPEN, SQLITE_ERROR, SQLITE_FULL, SQLITE_INTERRUPT,
    SQLITE_IOERR, SQLITE_NOMEM, Dump, Dumped, Execute, ExecuteResult, Interrupt, Interrupted, Open, Opened, Prepare,
    Prepared, Query, QueryResult, SessionClosed, SqlError,
)
from .raft_node import RaftNode
from .sql_service import SqlService
from .state_machine import StateMachine, StateMachineHost, Steps

__all__ = [
    "DatabaseNode", "DatabaseStateMachine", "Dump", "Dumped", "Execute", "ExecuteResult", "Interrupt", "Interrupted",
    "Open", "Opened", "Prepare", "Prepared", "Query", "QueryResult", "SessionClosed", "SqlError",
    "LEADERSHIP_LOST", "NOT_LEADER", "SQLITE_AUTH", "SQLITE_BUSY", "SQLITE_CANTOPEN", "SQLITE_ERROR", "SQLITE_FULL",
    "SQLITE_INTERRUPT", "SQLITE_IOERR", "SQLITE_NOMEM",
]


class DatabaseStateMachine(StateMachine):
    """Replicated SQLite, as the raft node's state machine: the replica's files and, on
    the leader, the SQL service. Made at every start of the node (`start` clears the
    scratch directory: the files are rebuilt from raft storage)."""

    works_in_steps = True

    def __init__(self, *, write_queue_max: int = 1024) -> None:
        self.write_queue_max = write_queue_max
        self.replica: DatabaseReplica | None = None
        self.sql: SqlService | None = None

    # Both halves are made by `start`; the node calls nothing else before it (bar `close`,
    # which checks), so the other calls reach them through these.

    @property
    def _replica(self) -> DatabaseReplica:
        return present(self.replica, "database state machine used before start")

    @property
    def _sql(self) -> SqlService:
        return present(self.sql, "database state machine used before start")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, host: StateMachineHost, ctx: Context) -> None:
        if ctx.scratch_dir is None:
            raise ValueError("the database node needs a scratch directory for its SQLite files")
        self.replica = DatabaseReplica(ctx.scratch_dir)
        self.sql = SqlService(host, ctx, self.replica, write_queue_max=self.write_queue_max)
        # The SQLite files are derived state: rebuilt from raft storage at every start.
        database_files.clear_directory(ctx.scratch_dir)

    def close(self) -> None:
        if self.sql is not None:
            self.sql.close()

    # -- applying the log: the replica -----------------------------------------------------

    def apply(self, entry: Entry) -> Any:
        return self._replica.apply(entry)

    def apply_steps(self, entry: Entry, step_bytes: int) -> Steps:
        return self._replica.apply_steps(entry, step_bytes)

    def applies_during_snapshot(self, entry: Entry) -> bool:
        return self._replica.applies_during_snapshot(entry)

    def flush(self) -> None:
        self._replica.flush()

    # -- snapshots -----------------------------------------------------------------------

    def can_snapshot(self) -> bool:
        """Only when the main files hold exactly the applied state and the leader is
        quiet (nothing it ran awaits its commit, no session is in a transaction)."""
        return self._replica.main_files_complete() and self._sql.quiet()

    def snapshot(self) -> bytes:
        return self._replica.snapshot()

    def snapshot_steps(self, step_bytes: int) -> Steps:
        return self._replica.snapshot_steps(step_bytes)

    def restore(self, data: bytes) -> None:
        self._replica.restore(data)

    def restore_steps(self, data: bytes, step_bytes: int) -> Steps:
        return self._replica.restore_steps(data, step_bytes)

    # -- leadership and clients: the SQL service -------------------------------------------

    def leadership_lost(self) -> None:
        self._sql.leadership_lost()

    def read(self) -> Any:
        return self._replica.read()

    def handle_request(self, client: Client, message: Any) -> bool:
        return self._sql.handle_request(client, message)

    def on_timer(self, timer: Hashable) -> bool:
        return self._sql.on_timer(timer)

    def refusal(self, error: RaftError) -> Any:
        """Refusals in dqlite's terms, for raft's requests too."""
        if isinstance(error, NotLeader):
            return SqlError(code=NOT_LEADER, message="not leader")
        if isinstance(error, LeadershipLost):
            return SqlError(code=LEADERSHIP_LOST, message="leadership lost")
        return SqlError(code=SQLITE_ERROR, message=str(error))

    def progressed(self) -> None:
        self._sql.progressed()


class DatabaseNode(RaftNode):
    """A raft node serving SQL: a `RaftNode` driving a `DatabaseStateMachine`. Requests:
    those of actors/database_requests.py and of actors/raft_requests.py."""

    def __init__(self, *, bootstrap, settings=None, write_queue_max: int = 1024) -> None:
        super().__init__(bootstrap=bootstrap, settings=settings,
                         state_machine_factory=lambda: DatabaseStateMachine(write_queue_max=write_queue_max))

    @property
    def database_machine(self) -> DatabaseReplica | None:
        """The replica's files (which databases, where, what only the WAL holds), for
        the simulator's checkers and tests; None before the node started."""
        machine = self.state_machine
        return machine.replica if isinstance(machine, DatabaseStateMachine) else None
