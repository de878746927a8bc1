"""A transaction above Config.transaction_bytes_max (issue 14, item 5), against the
simulator: SQLite's commit hook rolls it back before it is published, so it is never
proposed (peers would refuse its append, and nothing could commit after it); the client
gets SQLITE_TOOBIG naming the size and the limit, the leader keeps leading, and the
session and the cluster go on."""

import pytest

from raftlite.actors.config import Config
from raftlite.actors.database import Execute, ExecuteResult
from raftlite.core.raft import State
from raftlite.sim.database_workload import read_replica
from raftlite.sim.raft_checkers import RaftChecker
from raftlite.sim.run import ACTORS, leader_of
from raftlite.sim.simulation import Simulation
from raftlite.sim.trace import Trace

pytestmark = pytest.mark.timeout(120)


def test_one_statement_above_the_limit_gets_toobig_at_its_commit_and_is_not_applied_anywhere():
    founders = [1, 2, 3]
    sim = Simulation(seed=3, node_ids=founders, actor_factory=ACTORS["database"](founders), scratch_dir=True,
                     trace=Trace(keep=True), config=Config(transaction_bytes_max=512 << 10))
    checker = RaftChecker(sim).attach()
    sim.actor_hooks.append(checker.instrument)
    sim.start()
    sim.run_for(3000)

    def execute(node, sql, params=(), client=None):
        client = sim.submit(node, Execute(database="app", sql=sql, params=params), client=client)
        before = len(sim.replies[client])
        sim.run_for(50.0)
        return client, sim.replies[client][before:]

    leader = leader_of(sim)
    term = sim.actor(leader).raft.term
    execute(leader, "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    _, small = execute(leader, "INSERT INTO t VALUES (1, ?)", (b"s" * 300_000,))   # under the limit
    assert small == [ExecuteResult(last_insert_id=1, rows_affected=1)]
    # 6 MB in one autocommit statement: more than SQLite's page cache, so it spills.
    _, (refusal,) = execute(leader, "INSERT INTO t VALUES (2, ?)", (b"b" * 6_000_000,))
    assert refusal.code == 18 and "above the limit of 524288 bytes (transaction_bytes_max)" in refusal.message
    assert sim.actor(leader).raft.state == State.LEADER and sim.actor(leader).raft.term == term
    _, after = execute(leader, "INSERT INTO t VALUES (3, 'after')")
    assert after == [ExecuteResult(last_insert_id=3, rows_affected=1)]
    sim.run_for(500)
    for node in founders:
        assert read_replica(sim, node, "app", "SELECT k FROM t ORDER BY k") == [(1,), (3,)]


def test_a_big_transaction_that_spilled_past_the_limit_is_rolled_back_at_commit_and_the_leader_stays():
    founders = [1, 2, 3]
    sim = Simulation(seed=4, node_ids=founders, actor_factory=ACTORS["database"](founders), scratch_dir=True,
                     trace=Trace(keep=True), config=Config(transaction_bytes_max=512 << 10))
    sim.start()
    sim.run_for(3000)
    leader = leader_of(sim)
    term = sim.actor(leader).raft.term

    def execute(sql, params=(), client=None):
        client = sim.submit(leader, Execute(database="app", sql=sql, params=params), client=client)
        before = len(sim.replies[client])
        sim.run_for(50.0)
        return client, sim.replies[client][before:]

    execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    client, _ = execute("BEGIN")
    for k in range(6):   # 6 MB: more than SQLite's 2 MiB page cache, so most of it spills to the WAL
        _, answers = execute("INSERT INTO t VALUES (?, ?)", (k, bytes([k]) * 1_000_000), client=client)
        assert answers == [ExecuteResult(last_insert_id=k, rows_affected=1)]
    _, (refusal,) = execute("COMMIT", client=client)
    assert refusal.code == 18 and "(transaction_bytes_max); it was rolled back" in refusal.message
    actor = sim.actor(leader)
    assert actor.raft.state == State.LEADER and actor.raft.term == term   # no election
    assert actor.state_machine.sql.captures["app"].uncommitted_frame_count() == 0   # its frames let go
    _, after = execute("INSERT INTO t VALUES (9, 'after')", client=client)   # the session goes on
    assert after == [ExecuteResult(last_insert_id=9, rows_affected=1)]
    sim.run_for(500)
    for node in founders:
        assert read_replica(sim, node, "app", "SELECT k FROM t ORDER BY k") == [(9,)]
