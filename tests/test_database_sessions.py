"""Issue 13, bugs 2 and 3, against the simulator: a storage error while committing
makes the leader step down and never yields a plain failure for a write that may
commit; each client has its own SQLite connection (pragmas, temp tables) on the leader.
The real-cluster halves are in tests/test_database_sessions_real.py."""

import apsw
import pytest

from raftlite.actors.config import Config
from raftlite.actors.database import (
    LEADERSHIP_LOST, NOT_LEADER, SQLITE_CANTOPEN, SQLITE_FULL, Execute, ExecuteResult, Query, QueryResult,
    SessionClosed, SqlError,
)
from raftlite.actors.raft_node import TransferLeadership
from raftlite.actors.sqlite_capture import WalWriteFault
from raftlite.core.raft import State
from raftlite.sim.database_workload import read_replica
from raftlite.sim.network import isolate
from raftlite.sim.raft_checkers import RaftChecker
from raftlite.sim.run import ACTORS, leader_of
from raftlite.sim.simulation import Simulation
from raftlite.sim.trace import Trace

pytestmark = pytest.mark.timeout(120)

SQLITE_CONSTRAINT_FOREIGNKEY = 787


def database_cluster(seed=1, config=None) -> Simulation:
    founders = [1, 2, 3]
    sim = Simulation(seed=seed, node_ids=founders, actor_factory=ACTORS["database"](founders), scratch_dir=True,
                     trace=Trace(keep=True), **({"config": config} if config is not None else {}))
    checker = RaftChecker(sim).attach()
    sim.actor_hooks.append(checker.instrument)
    sim.start()
    sim.run_for(3000)
    return sim


def ask(sim, node, sql, *, client=None, query=False, wait=50.0):
    """Send one request on `client`'s session (a new one if None); its answers."""
    message = (Query if query else Execute)(database="app", sql=sql)
    client = sim.submit(node, message, client=client)
    before = len(sim.replies[client])
    sim.run_for(wait)
    return client, sim.replies[client][before:]


def rows(sim, node, sql):
    return read_replica(sim, node, "app", sql)


def settle_on_new_leader(sim, old_leader):
    """Run until a leader has served (committed an entry of its term); that leader."""
    sim.run_for(5000)
    leader = leader_of(sim)
    assert leader is not None
    return leader


# -- bug 2: storage errors while committing ----------------------------------------------


@pytest.mark.parametrize("code, landed", [
    (apsw.SQLITE_IOERR_WRITE, False),   # the commit frame never reaches the file
    (apsw.SQLITE_IOERR_WRITE, True),    # it does, the capture holds it, SQLite reports failure
    (apsw.SQLITE_FULL, True),
    (apsw.SQLITE_NOMEM, False),
])
def test_a_storage_error_at_commit_steps_down_and_the_write_certainly_did_not_apply(code, landed):
    sim = database_cluster()
    leader = leader_of(sim)
    ask(sim, leader, "CREATE TABLE t (k INTEGER PRIMARY KEY, v)")
    actor = sim.actor(leader)
    term = actor.raft.term
    actor.state_machine.sql.vfs.wal_write_fault = WalWriteFault(code=code, landed=landed)
    client, answers = ask(sim, leader, "INSERT INTO t VALUES (1, 'doomed')", wait=1.0)
    # Answered at once, and with "not leader" (certainly not applied), never a plain
    # SQL failure, and never an acknowledgement.
    assert [answer.code for answer in answers] == [NOT_LEADER], answers
    assert "storage error" in answers[0].message
    assert actor.raft.state != State.LEADER and actor.raft.term == term   # stepped down, same term
    assert actor.state_machine.sql.client_connections == 0 and not actor.state_machine.sql.node_connections    # every connection closed
    new_leader = settle_on_new_leader(sim, leader)
    # The client may retry what certainly did not apply: it is applied exactly once.
    _, retried = ask(sim, new_leader, "INSERT INTO t VALUES (1, 'retried')")
    assert retried == [ExecuteResult(last_insert_id=1, rows_affected=1)]
    sim.run_for(500)
    for node in sim.node_ids:
        assert rows(sim, node, "SELECT k, v FROM t") == [(1, "retried")]


def test_a_storage_error_answers_10506_for_other_clients_writes_already_proposed():
    """Writes of other clients that were proposed before the failure end with 10506
    (outcome unknown) or their commit; the failing one with 10250."""
    sim = database_cluster()
    leader = leader_of(sim)
    ask(sim, leader, "CREATE TABLE t (k INTEGER PRIMARY KEY)")
    actor = sim.actor(leader)
    proposed_before = actor.raft.last_index
    earlier = [sim.submit(leader, Execute(database="app", sql=f"INSERT INTO t VALUES ({k})")) for k in (1, 2, 3)]
    while actor.raft.last_index < proposed_before + 3:
        sim.run_for(0.01)
    # Executed and proposed, not committed yet (a round trip and an fsync away).
    assert all(sim.replies[client] == [] for client in earlier)
    actor.state_machine.sql.vfs.wal_write_fault = WalWriteFault(code=apsw.SQLITE_IOERR_WRITE, landed=True)
    _, failing = ask(sim, leader, "INSERT INTO t VALUES (4)", wait=1.0)
    assert [answer.code for answer in failing] == [NOT_LEADER]
    new_leader = settle_on_new_leader(sim, leader)
    sim.run_for(500)
    committed = {k for (k,) in rows(sim, new_leader, "SELECT k FROM t")}
    assert 4 not in committed
    for key, client in zip((1, 2, 3), earlier):
        (answer,) = sim.replies[client]
        if isinstance(answer, ExecuteResult):
            assert key in committed
        else:
            assert answer.code == LEADERSHIP_LOST     # never a plain failure: it may have committed


def test_a_storage_error_that_never_reached_the_wal_is_an_ordinary_error():
    """SQLITE_FULL from the client's own PRAGMA max_page_count comes before any WAL write:
    nothing was at risk, so the leader keeps leading and the client gets SQLite's error."""
    sim = database_cluster()
    leader = leader_of(sim)
    alice, _ = ask(sim, leader, "CREATE TABLE t (v)")
    (pages,) = ask(sim, leader, "PRAGMA page_count", client=alice, query=True)[1]
    ask(sim, leader, f"PRAGMA max_page_count = {pages.rows[0][0]}", client=alice, query=True)
    _, answers = ask(sim, leader, "INSERT INTO t VALUES (randomblob(100000))", client=alice)
    assert [answer.code for answer in answers] == [SQLITE_FULL]
    assert sim.actor(leader).raft.state == State.LEADER
    _, answers = ask(sim, leader, "INSERT INTO t VALUES (randomblob(100000))")   # another client: no limit
    assert answers == [ExecuteResult(last_insert_id=1, rows_affected=1)]


def test_an_sql_error_keeps_the_statements_before_it_and_is_answered_after_their_commit():
    sim = database_cluster()
    leader = leader_of(sim)
    ask(sim, leader, "CREATE TABLE t (k INTEGER PRIMARY KEY)")
    _, answers = ask(sim, leader, "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (1)")
    assert [answer.code for answer in answers] == [1555]       # SQLITE_CONSTRAINT_PRIMARYKEY
    sim.run_for(500)
    for node in sim.node_ids:
        assert rows(sim, node, "SELECT k FROM t ORDER BY k") == [(1,), (2,)]
    # The error waits for the commit of what ran before it: on a leader cut off from
    # its followers that never comes, and the answer is "outcome unknown".
    sim.partition(isolate(leader, sim.node_ids), "isolate leader")
    client, answers = ask(sim, leader, "INSERT INTO t VALUES (3); INSERT INTO t VALUES (1)", wait=5000)
    assert [answer.code for answer in answers] == [LEADERSHIP_LOST]


# -- bug 3: each client's connection state is its own ------------------------------------


def test_foreign_keys_are_on_by_default_and_each_clients_pragma_is_its_own():
    sim = database_cluster()
    leader = leader_of(sim)
    alice, _ = ask(sim, leader, "CREATE TABLE parent (id INTEGER PRIMARY KEY); "
                                "CREATE TABLE child (parent INTEGER REFERENCES parent (id))")
    bob, answers = ask(sim, leader, "PRAGMA foreign_keys", query=True)
    assert answers[0].rows == ((1,),)                            # on by default, as in dqlite 1.18
    ask(sim, leader, "PRAGMA foreign_keys = OFF", client=bob)
    _, answers = ask(sim, leader, "INSERT INTO child VALUES (42)", client=bob)
    assert answers == [ExecuteResult(last_insert_id=1, rows_affected=1)]      # Bob's choice, for Bob
    _, answers = ask(sim, leader, "INSERT INTO child VALUES (43)", client=alice)
    assert [answer.code for answer in answers] == [SQLITE_CONSTRAINT_FOREIGNKEY]   # Alice still checks
    _, answers = ask(sim, leader, "PRAGMA foreign_keys", query=True, client=alice)
    assert answers[0].rows == ((1,),)
    sim.run_for(300)
    for node in sim.node_ids:
        assert rows(sim, node, "SELECT parent FROM child") == [(42,)]


def test_like_and_temp_tables_follow_the_clients_own_connection_even_in_long_reads():
    sim = database_cluster()
    leader = leader_of(sim)
    alice, _ = ask(sim, leader, "CREATE TABLE t (name)")
    ask(sim, leader, "INSERT INTO t VALUES ('Ann'), ('ann')", client=alice)
    ask(sim, leader, "PRAGMA case_sensitive_like = ON", client=alice)
    last_index = sim.actor(leader).raft.last_index
    ask(sim, leader, "CREATE TEMP TABLE mine (x); INSERT INTO mine VALUES (7)", client=alice)
    assert sim.actor(leader).raft.last_index == last_index         # temp tables are not replicated
    like = "SELECT count(*) FROM t WHERE name LIKE 'a%'"              # a lone SELECT: the stepped read path
    assert ask(sim, leader, like, client=alice, query=True)[1][0].rows == ((1,),)
    bob, answers = ask(sim, leader, like, query=True)
    assert answers[0].rows == ((2,),)
    assert ask(sim, leader, "SELECT x FROM mine", client=alice, query=True)[1][0].rows == ((7,),)
    _, answers = ask(sim, leader, "SELECT x FROM mine", client=bob, query=True)
    assert answers == [SqlError(code=1, message="no such table: mine")]


def test_last_insert_rowid_is_per_client():
    sim = database_cluster()
    leader = leader_of(sim)
    alice, _ = ask(sim, leader, "CREATE TABLE t (v); INSERT INTO t VALUES ('a')")
    bob, _ = ask(sim, leader, "INSERT INTO t VALUES ('b'); INSERT INTO t VALUES ('c')")
    assert ask(sim, leader, "SELECT last_insert_rowid()", client=alice, query=True)[1][0].rows == ((1,),)
    assert ask(sim, leader, "SELECT last_insert_rowid()", client=bob, query=True)[1][0].rows == ((3,),)


def test_a_session_closes_its_connections_and_leadership_loss_expires_every_session():
    sim = database_cluster()
    leader = leader_of(sim)
    actor = sim.actor(leader)
    alice, _ = ask(sim, leader, "CREATE TABLE t (v)")
    bob, _ = ask(sim, leader, "PRAGMA foreign_keys = OFF")
    assert actor.state_machine.sql.client_connections == 2
    sim.submit(leader, SessionClosed(), client=bob)
    sim.run_for(10)
    assert actor.state_machine.sql.client_connections == 1
    # Leadership goes away and comes back: Alice's connection (and any state she set on
    # it) is gone, so her next request is refused with 10250 rather than run on a fresh
    # connection that silently lacks her state; a new session works.
    other = next(node for node in sim.node_ids if node != leader)
    sim.submit(leader, TransferLeadership(target=other))
    sim.run_for(2000)
    assert leader_of(sim) == other and actor.state_machine.sql.client_connections == 0 and not actor.state_machine.sql.node_connections
    sim.submit(other, TransferLeadership(target=leader))
    sim.run_for(2000)
    assert leader_of(sim) == leader
    _, answers = ask(sim, leader, "INSERT INTO t VALUES (1)", client=alice)
    assert [answer.code for answer in answers] == [NOT_LEADER] and "reconnect" in answers[0].message
    _, answers = ask(sim, leader, "INSERT INTO t VALUES (1)")
    assert answers == [ExecuteResult(last_insert_id=1, rows_affected=1)]


def test_the_client_connection_limit_gives_up_idle_sessions_then_refuses_clearly():
    sim = database_cluster(config=Config(client_connections_max=2))
    leader = leader_of(sim)
    actor = sim.actor(leader)
    alice, _ = ask(sim, leader, "CREATE TABLE t (v)")
    bob, _ = ask(sim, leader, "BEGIN; INSERT INTO t VALUES ('bob')")
    # At the limit, Carol takes the connection of the longest-idle session (Alice's)...
    carol, answers = ask(sim, leader, "INSERT INTO t VALUES ('carol-1')")
    assert answers == [] and actor.state_machine.sql.client_connections == 2      # (queued behind Bob's write lock)
    _, answers = ask(sim, leader, "INSERT INTO t VALUES ('alice')", client=alice)
    assert [answer.code for answer in answers] == [NOT_LEADER]   # ...and Alice must reconnect
    # Bob is in a transaction and Carol waits for the lock: nobody is idle, so a new
    # client is refused with a clear error, not a crash or a silent eviction.
    _, answers = ask(sim, leader, "INSERT INTO t VALUES ('dave')")
    assert [answer.code for answer in answers] == [SQLITE_CANTOPEN]
    assert "client_connections_max" in answers[0].message
    ask(sim, leader, "COMMIT", client=bob, wait=100)
    assert sim.replies[carol] == [ExecuteResult(last_insert_id=2, rows_affected=1)]
    sim.run_for(300)
    for node in sim.node_ids:
        assert rows(sim, node, "SELECT v FROM t ORDER BY rowid") == [("bob",), ("carol-1",)]


def test_many_clients_with_their_own_connections_still_checkpoint_and_queue_for_the_lock(monkeypatch):
    """16 writers each with a connection of their own (one with an open read
    transaction for a while): no BUSY, the WAL is checkpointed once nobody reads it,
    and every replica ends identical."""
    import os

    from raftlite.actors.sql_service import SqlService

    monkeypatch.setattr(SqlService, "CHECKPOINT_ENTRIES", 20)
    sim = database_cluster()
    leader = leader_of(sim)
    ask(sim, leader, "CREATE TABLE t (k, v)")
    wal = sim.actor(leader).database_machine.path("app") + "-wal"
    reader, answers = ask(sim, leader, "BEGIN; SELECT count(*) FROM t", query=True)
    assert answers[0].rows == ((0,),)
    insert = "INSERT INTO t VALUES (?, randomblob(1024))"
    sent = {sim.submit(leader, Execute(database="app", sql=insert, params=(i,))): 1 for i in range(16)}

    def keep_writing(duration_ms):
        """Closed loop: each writer sends its next insert as soon as the last is answered."""
        deadline = sim.now_ms + duration_ms
        while sim.now_ms < deadline:
            sim.run_for(5)
            for writer, count in sent.items():
                if len(sim.replies[writer]) == count:
                    sent[writer] = count + 1
                    sim.submit(leader, Execute(database="app", sql=insert, params=(1000 * count + writer.connection,)),
                               client=writer)

    keep_writing(500)
    size_while_reading = os.path.getsize(wal)
    assert size_while_reading > 40 * 4096          # the open read transaction holds the WAL
    _, answers = ask(sim, leader, "SELECT count(*) FROM t", client=reader, query=True)
    assert answers[0].rows == ((0,),)               # its snapshot, still
    ask(sim, leader, "COMMIT", client=reader)
    keep_writing(500)
    writers = list(sent)
    sim.run_for(500)
    answers = [answer for writer in writers for answer in sim.replies[writer]]
    assert answers and all(isinstance(answer, ExecuteResult) for answer in answers)
    assert os.path.getsize(wal) < size_while_reading    # checkpointed once the reader let go
    counts = {node: rows(sim, node, "SELECT count(*), sum(k) FROM t") for node in sim.node_ids}
    assert counts[1] == counts[2] == counts[3] and counts[1][0][0] == len(answers)
