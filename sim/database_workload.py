"""A key-value workload for the database actor in the simulator, and its final checks.

Each write inserts one new key through the leader (a client that knows where the leader
is; the interesting faults are the cluster's, not discovery). Outcomes are kept per key,
Jepsen-style: `ok` (acknowledged: must be present for ever), `fail` (certainly not
applied: 10250 or an SQL error; must be absent), `info` (outcome unknown: 10506, or no
answer; may be either). After the final heal every live replica must hold the same rows
and those rows must fit the outcomes.

Reads go along with the writes: every other tick one `SELECT k FROM kv`, usually to the leader,
sometimes to any node (a follower must refuse it). An answered read must be
linearizable with respect to the writes, which here means: it holds every key
acknowledged before the read was sent (no stale read), no key whose write was not yet
sent when the answer arrived, no key reported failed, and no key missing from the final
state (no client ever reads a value that later disappears). Times are taken when the
workload looks (each tick), which only ever widens the windows: the checks may miss a
violation by a tick, never report a false one.
"""

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field

import apsw

from ..actors.database import NOT_LEADER, Execute, ExecuteResult, Query, QueryResult, SessionClosed, SqlError
from .rng import derive_rng
from .simulation import NodeState, Simulation

__all__ = ["KeyValueLoad", "read_replica", "replica_page_digest"]

WRITE_SQL = (
    "CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v BLOB); "
    "INSERT INTO kv VALUES (?, randomblob(8))"
)
TRANSACTION_STEPS = ("BEGIN", WRITE_SQL, "COMMIT")
READ_SQL = "SELECT k FROM kv"


def _params(sql: str, key: int) -> tuple:
    return (key,) if sql == WRITE_SQL else ()


def read_replica(sim: Simulation, node: int, database: str, sql: str) -> list[tuple] | None:
    """Rows from a copy of a replica's files (main file and WAL); None if it has none."""
    return _with_replica_copy(sim, node, database, lambda connection, _: [tuple(row) for row in connection.execute(sql)])


def replica_page_digest(sim: Simulation, node: int, database: str) -> str | None:
    """SHA-256 of a replica's main file after a full checkpoint of a copy of its files:
    on a leader that folds its WAL in; a follower keeps no WAL. Identical replicas give
    identical digests, page for page."""
    def digest(connection, path: str) -> str:
        connection.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        with open(path, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()[:16]

    return _with_replica_copy(sim, node, database, digest)


def _with_replica_copy(sim: Simulation, node: int, database: str, use):
    """`use(connection, path)` on an integrity-checked copy of a replica's files (the
    node's own files stay untouched); None if the node has no such database."""
    actor = sim.nodes[node].actor
    machine = getattr(actor, "database_machine", None)
    if machine is None or database not in machine.databases:
        return None
    path = machine.path(database)
    directory = tempfile.mkdtemp(prefix="raftlite-replica-")
    copy = f"{directory}/copy"
    try:
        shutil.copy(path, copy)
        try:
            shutil.copy(path + "-wal", copy + "-wal")
        except FileNotFoundError:
            pass
        connection = apsw.Connection(copy)
        try:
            check = connection.execute("PRAGMA integrity_check").get
            if check != "ok":
                raise AssertionError(f"node {node}: integrity_check says {check}")
            return use(connection, copy)
        finally:
            connection.close()
    finally:
        shutil.rmtree(directory)


@dataclass
class KeyValueLoad:
    sim: Simulation
    interval_ms: float
    stop_at_ms: float
    database: str = "app"
    outcomes: dict[int, str] = field(default_factory=dict)   # key -> ok / fail / info
    pending: dict = field(default_factory=dict)              # client -> key
    sent_at: dict[int, float] = field(default_factory=dict)  # key -> when its write was sent
    acknowledged_at: dict[int, float] = field(default_factory=dict)  # key -> when seen acknowledged
    reads_pending: dict = field(default_factory=dict)        # client -> (sent at, node)
    reads: list = field(default_factory=list)                # (sent at, answered by, node, keys)
    reads_refused: int = 0

    def start(self) -> None:
        self.rng = derive_rng(self.sim.seed, "workload")
        self.sim.call_later(self.interval_ms, self._tick)

    def _tick(self) -> None:
        self.collect()
        if self.sim.now_ms >= self.stop_at_ms:
            if self.pending:
                # No new writes, but transactions under way are driven to their end (a
                # client that vanished would hold the write lock until the idle timeout).
                self.sim.call_later(self.interval_ms, self._tick)
            return
        leader = self.sim.leader()
        if leader is not None:
            key = len(self.outcomes) + 1
            self.outcomes[key] = "info"   # until an answer says otherwise
            # Every third write is an interactive transaction: BEGIN, the write, COMMIT,
            # three requests on one session.
            steps = TRANSACTION_STEPS if key % 3 == 0 else (WRITE_SQL,)
            client = self.sim.submit(leader, Execute(database=self.database, sql=steps[0], params=_params(steps[0], key)))
            self.pending[client] = (key, steps, 0, leader)
            self.sent_at[key] = self.sim.now_ms
            # A read every other tick: mostly from the leader, one in four from any node.
            node = leader if self.rng.random() < 0.75 else self.rng.choice(self.sim.node_ids)
            if key % 2 == 0 and self.sim.nodes[node].state == NodeState.UP:
                reader = self.sim.submit(node, Query(database=self.database, sql=READ_SQL))
                self.reads_pending[reader] = (self.sim.now_ms, node)
        self.sim.call_later(self.interval_ms, self._tick)

    def collect(self) -> None:
        now = self.sim.now_ms
        for reader in list(self.reads_pending):
            answers = self.sim.replies.get(reader)
            if not answers:
                continue
            sent, node = self.reads_pending.pop(reader)
            (answer,) = answers
            if isinstance(answer, QueryResult):
                self.reads.append((sent, now, node, frozenset(key for (key,) in answer.rows)))
            elif isinstance(answer, SqlError) and answer.code == NOT_LEADER:
                self.reads_refused += 1
        for client in list(self.pending):
            answers = self.sim.replies.get(client)
            if not answers:
                continue
            key, steps, step, node = self.pending[client]
            if len(answers) <= step:
                continue
            answer = answers[step]
            last_step = step == len(steps) - 1
            if isinstance(answer, ExecuteResult) and not last_step:
                self.pending[client] = (key, steps, step + 1, node)
                sql = steps[step + 1]
                self.sim.submit(node, Execute(database=self.database, sql=sql, params=_params(sql, key)), client=client)
                continue
            del self.pending[client]
            if isinstance(answer, ExecuteResult):
                self.outcomes[key] = "ok"
                self.acknowledged_at[key] = now
            elif isinstance(answer, SqlError) and answer.code != 10506:
                # Certainly not applied: refused, or the transaction never committed.
                self.outcomes[key] = "fail"
            if not last_step:
                self.sim.submit(node, SessionClosed(), client=client)

    @property
    def acknowledged(self) -> int:
        return sum(1 for outcome in self.outcomes.values() if outcome == "ok")

    def check(self) -> list[str]:
        """Replicas identical, intact, and consistent with the outcomes."""
        self.collect()
        problems = []
        contents = {}
        for node_id in self.sim.node_ids:
            if self.sim.nodes[node_id].state != NodeState.UP:
                continue
            try:
                rows = read_replica(self.sim, node_id, self.database, "SELECT k, v FROM kv ORDER BY k")
            except (AssertionError, apsw.Error) as error:
                problems.append(f"node {node_id}: {error}")
                continue
            contents[node_id] = rows or []
        try:
            images = self._page_digests()
        except (AssertionError, apsw.Error) as error:
            problems.append(str(error))
            images = {}
        if len(set(images.values())) > 1:
            problems.append(f"database files differ page by page after a checkpoint (digests {images})")
        if len({tuple(rows) for rows in contents.values()}) > 1:
            sizes = {node: len(rows) for node, rows in contents.items()}
            problems.append(f"replicas differ (rows per node: {sizes})")
        if contents:
            rows = next(iter(contents.values()))
            present = {key for key, _ in rows}
            lost = sorted(k for k, outcome in self.outcomes.items() if outcome == "ok" and k not in present)
            phantom = sorted(k for k, outcome in self.outcomes.items() if outcome == "fail" and k in present)
            unknown = sorted(k for k in present if k not in self.outcomes)
            if lost:
                problems.append(f"acknowledged writes lost: keys {lost[:10]}")
            if phantom:
                problems.append(f"writes reported as failed are present: keys {phantom[:10]}")
            if unknown:
                problems.append(f"rows nobody wrote: keys {unknown[:10]}")
            problems.extend(self._check_reads(present))
        return problems

    def _check_reads(self, final_keys: set[int]) -> list[str]:
        problems = []
        for sent, answered, node, keys in self.reads:
            stale = sorted(k for k, at in self.acknowledged_at.items() if at < sent and k not in keys)
            early = sorted(k for k in keys if self.sent_at.get(k, float("inf")) > answered)
            failed = sorted(k for k in keys if self.outcomes.get(k) == "fail")
            vanished = sorted(k for k in keys if k not in final_keys)
            for kind, found in (("stale read: misses acknowledged", stale), ("read a write not yet sent", early),
                                ("read a write reported failed", failed), ("read a value that later vanished", vanished)):
                if found:
                    problems.append(f"read sent at {sent:.1f} ms to node {node}: {kind} keys {found[:10]}")
        if len(problems) > 3:
            problems[3:] = [f"... and {len(problems) - 3} more bad reads"]
        return problems

    def _page_digests(self) -> dict[int, str]:
        """Page-level digest of every up node that applied the newest index (a node that
        restarted late may still be catching up)."""
        applied = {}
        for node_id in self.sim.node_ids:
            node = self.sim.nodes[node_id]
            raft = getattr(node.actor, "raft", None)
            if node.state == NodeState.UP and raft is not None:
                applied[node_id] = node.actor.applied_index
        if not applied:
            return {}
        newest = max(applied.values())
        digests = {node: replica_page_digest(self.sim, node, self.database) for node, index in applied.items() if index == newest}
        return {node: digest for node, digest in digests.items() if digest is not None}

    def probe(self, leader: int):
        """A request for the liveness check, and how to tell it succeeded."""
        key = -(len(self.outcomes) + 1)
        self.outcomes[key] = "info"
        self.sent_at[key] = self.sim.now_ms
        client = self.sim.submit(leader, Execute(database=self.database, sql=WRITE_SQL, params=(key,)))
        self.pending[client] = (key, (WRITE_SQL,), 0, leader)
        return client, lambda answer: isinstance(answer, ExecuteResult)


