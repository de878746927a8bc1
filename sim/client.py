"""A synchronous client for a simulated database cluster: what tests and research
scripts use to talk SQL to the simulator (the wire client comes with the real runtime).

    client = SimDatabaseClient(sim)
    client.execute("CREATE TABLE t (a)")
    with client.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
    rows = client.query("SELECT a FROM t").rows

Each call advances simulated time until the answer arrives. Like a dqlite driver, it
finds the leader itself and retries what is safe to retry: a request refused with
10250 (certainly not applied). A 10506 (outcome unknown) raises `OutcomeUnknown` and is
never retried behind the caller's back.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ..actors.contract import Client
from ..actors.database import (
    LEADERSHIP_LOST, NOT_LEADER, Execute, ExecuteResult, Query, QueryResult, SessionClosed, SqlError,
)
from .simulation import Simulation

__all__ = ["OutcomeUnknown", "SimDatabaseClient", "SqlFailure", "Unavailable"]


class SqlFailure(Exception):
    def __init__(self, error: SqlError) -> None:
        super().__init__(f"{error.message} (code {error.code})")
        self.code = error.code
        self.message = error.message


class OutcomeUnknown(SqlFailure):
    """Leadership was lost after the write entered the log: it may or may not commit."""


class Unavailable(Exception):
    """No leader answered within the client's timeout; nothing was applied."""


@dataclass
class SimDatabaseClient:
    sim: Simulation
    database: str = "app"
    timeout_ms: float = 10_000.0
    step_ms: float = 1.0

    def _call(self, message: Any, *, node: int | None = None, session: Client | None = None) -> Any:
        deadline = self.sim.now_ms + self.timeout_ms
        while self.sim.now_ms < deadline:
            target = node if node is not None else self.sim.leader()
            if target is None:
                self.sim.run_for(10 * self.step_ms)
                continue
            client = self.sim.submit(target, message, client=session)
            start = len(self.sim.replies[client]) if session is not None else 0
            while len(self.sim.replies[client]) == start and self.sim.now_ms < deadline:
                self.sim.run_for(self.step_ms)
            answers = self.sim.replies[client][start:]
            if not answers:
                break
            answer = answers[0]
            if isinstance(answer, SqlError):
                if answer.code == NOT_LEADER and node is None and session is None:
                    continue  # certainly not applied: find the leader and try again
                if answer.code == LEADERSHIP_LOST:
                    raise OutcomeUnknown(answer)
                raise SqlFailure(answer)
            return answer
        raise Unavailable(f"no answer within {self.timeout_ms:.0f} ms of simulated time")

    def execute(self, sql: str, params: tuple = ()) -> ExecuteResult:
        return self._call(Execute(database=self.database, sql=sql, params=params))

    def query(self, sql: str, params: tuple = ()) -> QueryResult:
        return self._call(Query(database=self.database, sql=sql, params=params))

    @contextmanager
    def transaction(self) -> Iterator["_Transaction"]:
        """BEGIN ... COMMIT on one session with the current leader (ROLLBACK on error)."""
        leader = self.sim.leader()
        if leader is None:
            raise Unavailable("no leader")
        self.sim._next_client += 1
        transaction = _Transaction(self, leader, Client(self.sim._next_client))
        transaction.execute("BEGIN")
        try:
            yield transaction
        except BaseException:
            try:
                transaction.execute("ROLLBACK")
            except (SqlFailure, Unavailable):
                pass
            raise
        else:
            transaction.execute("COMMIT")
        finally:
            self.sim.submit(leader, SessionClosed(), client=transaction.session)


@dataclass
class _Transaction:
    client: SimDatabaseClient
    node: int
    session: Client

    def execute(self, sql: str, params: tuple = ()) -> ExecuteResult:
        return self.client._call(Execute(database=self.client.database, sql=sql, params=params),
                                 node=self.node, session=self.session)

    def query(self, sql: str, params: tuple = ()) -> QueryResult:
        return self.client._call(Query(database=self.client.database, sql=sql, params=params),
                                 node=self.node, session=self.session)
