"""Replicated SQLite under the simulator (issue: replicated SQLite, first steps)."""

from collections import deque

import pytest

from raftlite.actors.database import LEADERSHIP_LOST, NOT_LEADER, Execute, ExecuteResult, Open, Query, QueryResult, SqlError
from raftlite.sim.database_workload import read_replica
from raftlite.sim.network import isolate
from raftlite.sim.raft_checkers import RaftChecker
from raftlite.sim.run import ACTORS, leader_of
from raftlite.sim.simulation import Simulation
from raftlite.sim.trace import Trace
from sim_helpers import start_database_cluster

pytestmark = pytest.mark.timeout(120)


def database_cluster(seed=1, nodes=3) -> Simulation:
    return start_database_cluster(seed, nodes)[0]


def request(sim, node, message, wait=50.0):
    client = sim.submit(node, message)
    sim.run_for(wait)
    return sim.replies[client]


def rows_of(sim, node, sql, database="app"):
    """A replica's rows, read from a copy of its files (integrity-checked)."""
    return read_replica(sim, node, database, sql)


def test_non_deterministic_sql_gives_identical_rows_on_every_replica():
    sim = database_cluster()
    leader = leader_of(sim)
    assert request(sim, leader, Open(database="app")) == [_opened("app")]
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (a, b, c)"))
    for _ in range(20):
        (reply,) = request(sim, leader, Execute(database="app",
                           sql="INSERT INTO t VALUES (random(), randomblob(16), datetime('now'))"), wait=5)
        assert isinstance(reply, ExecuteResult) and reply.rows_affected == 1
    sim.run_for(500)
    replicas = {n: rows_of(sim, n, "SELECT a, b, c FROM t ORDER BY rowid") for n in sim.node_ids}
    assert len(replicas[1]) == 20
    assert replicas[1] == replicas[2] == replicas[3]
    assert len({row[1] for row in replicas[1]}) == 20          # really random blobs


def _opened(name):
    from raftlite.actors.database import Opened
    return Opened(database=name)


def test_sql_errors_carry_sqlite_codes_and_leave_no_partial_state():
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Open(database="app"))
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k INTEGER PRIMARY KEY, v NOT NULL)"))
    request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (1, 'one')"))
    (missing,) = request(sim, leader, Execute(database="app", sql="INSERT INTO nowhere VALUES (1)"))
    assert missing == SqlError(code=1, message="no such table: nowhere")
    (syntax,) = request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUS (2, 'two')"))
    assert syntax.code == 1 and "syntax error" in syntax.message
    (duplicate,) = request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (1, 'again')"))
    assert duplicate.code == 1555 and "UNIQUE constraint failed" in duplicate.message   # SQLITE_CONSTRAINT_PRIMARYKEY
    (null,) = request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (3, NULL)"))
    assert null.code == 1299                                                         # SQLITE_CONSTRAINT_NOTNULL
    (refused,) = request(sim, leader, Execute(database="app", sql="PRAGMA journal_mode=DELETE"))
    assert refused.code == 23
    (attach,) = request(sim, leader, Execute(database="app", sql="ATTACH 'other.db' AS other"))
    assert attach.code == 23
    sim.run_for(200)
    for node in sim.node_ids:
        assert rows_of(sim, node, "SELECT k, v FROM t") == [(1, "one")]


def test_schema_changes_replicate():
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Open(database="app"))
    for sql in ("CREATE TABLE t (a)", "INSERT INTO t VALUES (1)", "CREATE INDEX t_a ON t (a)",
                "ALTER TABLE t ADD COLUMN b DEFAULT 'x'"):
        (reply,) = request(sim, leader, Execute(database="app", sql=sql))
        assert isinstance(reply, ExecuteResult), reply
    sim.run_for(200)
    for node in sim.node_ids:
        assert rows_of(sim, node, "SELECT name FROM sqlite_master ORDER BY name") == [("t",), ("t_a",)]
        assert rows_of(sim, node, "SELECT a, b FROM t") == [(1, "x")]


def test_requests_to_a_follower_fail_with_not_leader():
    sim = database_cluster()
    follower = next(n for n in sim.node_ids if n != leader_of(sim))
    (reply,) = request(sim, follower, Execute(database="app", sql="CREATE TABLE t (a)"))
    assert reply.code == NOT_LEADER


def test_a_partitioned_leader_never_serves_its_uncommitted_write():
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Open(database="app"))
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (a)"))
    sim.partition(isolate(leader, sim.node_ids), "isolate leader")
    write = sim.submit(leader, Execute(database="app", sql="INSERT INTO t VALUES ('lost')"))
    sim.run_for(1)                   # executed locally, in its WAL, not committed
    read = sim.submit(leader, Query(database="app", sql="SELECT a FROM t"))
    sim.run_for(5000)                # check-quorum steps the leader down
    assert [r.code for r in sim.replies[write]] == [LEADERSHIP_LOST]
    assert [r.code for r in sim.replies[read]] == [NOT_LEADER]     # never the unsafe row
    sim.heal()
    sim.run_for(3000)
    new_leader = leader_of(sim)
    assert new_leader != leader
    (rows,) = request(sim, new_leader, Query(database="app", sql="SELECT a FROM t"))
    assert rows == QueryResult(columns=("a",), rows=(), column_types=("",))
    # The ex-leader's files are back to exactly the committed prefix.
    assert rows_of(sim, leader, "SELECT a FROM t") == []


def database_sweep(nodes: int, seeds: range) -> None:
    """Every fault kind; after the final heal all replicas hold the same rows, pass
    integrity_check, keep every acknowledged write and no write reported as failed."""
    import io

    from raftlite.sim.nemesis import NEMESIS_KINDS
    from raftlite.sim.sweep import sweep

    out = io.StringIO()
    result = sweep(seeds=seeds, nodes=nodes, nemesis=NEMESIS_KINDS, nemesis_text="all", duration_s=10.0,
                   progress=None, out=out, actor="database")
    assert result.failures == [], out.getvalue()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("nodes, seeds", [(3, range(1, 13)), (3, range(13, 25)), (5, range(1, 13))],
                         ids=["n3-1..12", "n3-13..24", "n5-1..12"])
def test_database_sweep_keeps_replicas_identical_and_acknowledged_writes(nodes, seeds):
    database_sweep(nodes, seeds)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("nodes, seeds", [(3, range(25, 201)), (5, range(13, 101))], ids=["n3-25..200", "n5-13..100"])
def test_long_database_sweep(nodes, seeds):
    database_sweep(nodes, seeds)


def test_interactive_transactions_queue_writers_without_blocking_readers():
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (a)"))

    def send(client, sql, query=False, wait=20.0):
        message = (Query if query else Execute)(database="app", sql=sql)
        client = sim.submit(leader, message, client=client)
        before = len(sim.replies[client])
        sim.run_for(wait)
        return client, sim.replies[client][before:]

    alice, answers = send(None, "BEGIN")
    assert answers == [ExecuteResult(last_insert_id=0, rows_affected=0)]
    alice, answers = send(alice, "INSERT INTO t VALUES ('alice')")
    assert answers == [ExecuteResult(last_insert_id=1, rows_affected=1)]
    # A reader sees the committed state, not Alice's open transaction, and is not blocked.
    bob, answers = send(None, "SELECT count(*) FROM t", query=True)
    assert answers == [QueryResult(columns=("count(*)",), rows=((0,),), column_types=("",))]
    # A writer waits for the write lock instead of failing with SQLITE_BUSY.
    carol, answers = send(None, "INSERT INTO t VALUES ('carol')")
    assert answers == []
    alice, answers = send(alice, "COMMIT", wait=50.0)
    # (SQLite's changes() still counts the transaction's last INSERT after COMMIT.)
    assert answers == [ExecuteResult(last_insert_id=1, rows_affected=1)]
    sim.run_for(50)
    assert sim.replies[carol] == [ExecuteResult(last_insert_id=2, rows_affected=1)]
    sim.run_for(200)
    for node in sim.node_ids:
        assert rows_of(sim, node, "SELECT a FROM t ORDER BY rowid") == [("alice",), ("carol",)]


def test_a_rolled_back_transaction_leaves_nothing_and_a_vanished_client_is_rolled_back():
    from raftlite.actors.database import SessionClosed

    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (a)"))
    dave = sim.submit(leader, Execute(database="app", sql="BEGIN; INSERT INTO t VALUES ('dave')"))
    sim.run_for(20)
    sim.submit(leader, Execute(database="app", sql="ROLLBACK"), client=dave)
    erin = sim.submit(leader, Execute(database="app", sql="BEGIN IMMEDIATE; INSERT INTO t VALUES ('erin')"))
    sim.run_for(20)
    sim.submit(leader, SessionClosed(), client=erin)     # the client went away mid-transaction
    frank = sim.submit(leader, Execute(database="app", sql="INSERT INTO t VALUES ('frank')"))
    sim.run_for(300)
    assert sim.replies[frank] == [ExecuteResult(last_insert_id=1, rows_affected=1)]
    for node in sim.node_ids:
        assert rows_of(sim, node, "SELECT a FROM t") == [("frank",)]


def test_sixteen_concurrent_writers_get_no_busy_errors():
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k, v)"))
    clients = [sim.submit(leader, Execute(database="app", sql="INSERT INTO t VALUES (?, randomblob(1024))", params=(i,)))
               for i in range(16)]
    sim.run_for(500)
    answers = [answer for client in clients for answer in sim.replies[client]]
    assert len(answers) == 16 and all(isinstance(answer, ExecuteResult) for answer in answers)
    assert rows_of(sim, 2, "SELECT count(*) FROM t") == [(16,)]


def closed_loop_writes(sim, leader, *, writers=16, duration_ms=1000.0, step_ms=0.1, observe=None) -> int:
    """`writers` clients each insert a 1 KiB row, and the next as soon as the answer
    arrives, for `duration_ms`; every answer must be a success. Returns how many
    transactions were answered. `observe()` runs after every step."""
    insert = "INSERT INTO t VALUES (?, randomblob(1024))"
    expected = {sim.submit(leader, Execute(database="app", sql=insert, params=(i,))): 1 for i in range(writers)}
    transactions = 0
    deadline = sim.now_ms + duration_ms
    while sim.now_ms < deadline:
        sim.run_for(step_ms)
        if observe is not None:
            observe()
        for client, count in expected.items():
            if len(sim.replies[client]) == count:
                assert isinstance(sim.replies[client][-1], ExecuteResult), sim.replies[client][-1]
                transactions += 1
                expected[client] = count + 1
                sim.submit(leader, Execute(database="app", sql=insert, params=(writers + transactions,)), client=client)
    return transactions


def test_concurrent_writers_share_appends_and_fsyncs():
    """16 closed-loop writers: on average at least 4 transactions per raft append and at
    most 0.5 fsyncs per transaction per node (group commit), and no BUSY."""
    from raftlite.core.raft_messages import AppendRequest

    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k, v)"))
    entries_per_append = []
    transmit = sim.transmit

    def counting_transmit(src, dst, message):
        if isinstance(message, AppendRequest) and message.entries:
            entries_per_append.append(len(message.entries))
        transmit(src, dst, message)

    sim.transmit = counting_transmit
    first_event = sim.trace.count
    transactions = closed_loop_writes(sim, leader, duration_ms=1000.0)
    assert transactions > 1000
    assert sum(entries_per_append) / len(entries_per_append) >= 4
    events = list(sim.trace.events())[first_event:]
    for node in sim.node_ids:
        fsyncs = sum(1 for e in events if e["ev"] == "disk-submit" and e["n"] == node
                     and (e["op"].startswith("Sync(") or "durable=True" in e["op"]))
        assert fsyncs / transactions <= 0.5, (node, fsyncs, transactions)


def test_the_leaders_wal_stays_bounded_under_continuous_load(monkeypatch):
    import os

    from raftlite.actors.sql_service import SqlService

    monkeypatch.setattr(SqlService, "CHECKPOINT_ENTRIES", 20)
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k, v)"))
    wal = sim.actor(leader).database_machine.path("app") + "-wal"
    sizes = []
    transactions = closed_loop_writes(
        sim, leader, duration_ms=2000.0, step_ms=0.5,
        observe=lambda: sizes.append(os.path.getsize(wal) if os.path.exists(wal) else 0),
    )
    assert transactions > 500
    # At most about 2 x 20 transactions of ~3 pages each, plus what runs while waiting.
    assert max(sizes) < 1 << 20, max(sizes)
    assert sum(1 for before, after in zip(sizes, sizes[1:]) if after < before) >= 10   # it kept checkpointing
    sim.run_for(500)
    assert rows_of(sim, leader, "SELECT count(*) FROM t") == rows_of(sim, 2 if leader != 2 else 3, "SELECT count(*) FROM t")


def test_a_20_mb_transaction_replicates_without_disturbing_leadership():
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k, v)"))
    first_event = sim.trace.count
    terms_before = {sim.actor(n).raft.term for n in sim.node_ids}
    client = sim.submit(leader, Execute(database="app", sql=(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
        "INSERT INTO t SELECT i, randomblob(1000) FROM n")))
    sim.run_for(3000)
    assert sim.replies[client] == [ExecuteResult(last_insert_id=20000, rows_affected=20000)]
    assert {sim.actor(n).raft.term for n in sim.node_ids} == terms_before       # no election
    events = list(sim.trace.events())[first_event:]
    heartbeats = {e["id"] for e in events if e["ev"] == "send" and e["n"] == leader and e["msg"].startswith("HeartbeatRequest")}
    half_election_timeout = sim.config.election_timeout_ms / 2
    for node in sim.node_ids:
        if node == leader:
            continue
        arrivals = [e["t"] for e in events if e["ev"] == "deliver" and e["n"] == node and e["id"] in heartbeats]
        assert max(b - a for a, b in zip(arrivals, arrivals[1:])) < half_election_timeout
        assert rows_of(sim, node, "SELECT count(*), sum(length(v)) FROM t") == [(20000, 20_000_000)]
        # The follower applied it in bounded steps, other inputs running in between.
        steps = [e for e in events if e["ev"] == "timer" and e["n"] == node and e["timer"] == "'apply'"]
        assert len(steps) >= 10


def test_a_node_added_after_compaction_catches_up_by_snapshot():
    from raftlite.actors.config import Config
    from raftlite.actors.raft_node import ChangeMembership, ProposeResult
    from raftlite.core.raft_types import Role

    config = Config(snapshot_threshold_entries=16, snapshot_trailing_entries=2, snapshot_chunk_bytes=4096)
    sim = Simulation(seed=4, node_ids=[1, 2, 3, 4], actor_factory=ACTORS["database"]([1, 2, 3]), scratch_dir=True,
                     trace=Trace(keep=True), config=config)
    checker = RaftChecker(sim).attach()
    sim.actor_hooks.append(checker.instrument)
    sim.start()
    sim.run_for(3000)
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k, v)"))
    for key in range(60):
        request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (?, randomblob(100))", params=(key,)), wait=5)
    sim.run_for(500)
    raft = sim.actor(leader).raft
    assert raft.snapshot is not None and raft.log_base_index > 1          # the log was compacted
    (joined,) = request(sim, leader, ChangeMembership(node=4, role=Role.STANDBY), wait=2000)
    assert isinstance(joined, ProposeResult)
    sim.run_for(2000)
    chunks = [e for e in sim.trace.events() if e["ev"] == "send" and e["dst"] == 4 and e["msg"].startswith("SnapshotChunk")]
    assert chunks                                                         # it came by InstallSnapshot
    expected = rows_of(sim, leader, "SELECT k, v FROM t ORDER BY k")
    assert len(expected) == 60
    assert rows_of(sim, 4, "SELECT k, v FROM t ORDER BY k") == expected


def test_an_idle_transaction_is_rolled_back_and_frees_the_write_lock():
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (a)"))
    idle = sim.submit(leader, Execute(database="app", sql="BEGIN; INSERT INTO t VALUES ('idle')"))
    sim.run_for(20)
    waiting = sim.submit(leader, Execute(database="app", sql="INSERT INTO t VALUES ('waiting')"))
    sim.run_for(sim.config.transaction_idle_timeout_ms / 2)
    assert sim.replies[waiting] == []                        # queued behind the idle one
    sim.run_for(sim.config.transaction_idle_timeout_ms)
    assert sim.replies[waiting] == [ExecuteResult(last_insert_id=1, rows_affected=1)]
    sim.submit(leader, Execute(database="app", sql="COMMIT"), client=idle)
    sim.run_for(100)
    assert sim.replies[idle][-1].code == 1                   # "cannot commit - no transaction is active"
    for node in sim.node_ids:
        assert rows_of(sim, node, "SELECT a FROM t") == [("waiting",)]


def test_the_in_process_client_finds_the_leader_and_runs_transactions():
    from raftlite.sim.client import SimDatabaseClient, SqlFailure

    sim = database_cluster()
    client = SimDatabaseClient(sim)
    client.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b)")
    with client.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1, 'one')")
        assert tx.query("SELECT count(*) FROM t").rows == ((1,),)
    with pytest.raises(SqlFailure, match="UNIQUE constraint failed"):
        with client.transaction() as tx:
            tx.execute("INSERT INTO t VALUES (2, 'two')")
            tx.execute("INSERT INTO t VALUES (1, 'again')")
    assert client.query("SELECT a, b FROM t").rows == ((1, "one"),)       # the failed one rolled back
    old_leader = leader_of(sim)
    sim.crash(old_leader)
    client.execute("INSERT INTO t VALUES (3, 'three')")                   # finds the new leader
    assert leader_of(sim) != old_leader
    assert client.query("SELECT count(*) FROM t").rows == ((2,),)


def test_a_long_select_runs_in_bounded_steps():
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql=(
        "CREATE TABLE t (k); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000) "
        "INSERT INTO t SELECT i FROM n")), wait=500)
    first_event = sim.trace.count
    terms_before = {sim.actor(n).raft.term for n in sim.node_ids}
    (answer,) = request(sim, leader, Query(database="app", sql="SELECT k FROM t ORDER BY k"), wait=2000)
    assert answer.columns == ("k",) and answer.rows == tuple((k,) for k in range(1, 50001))
    steps = [e for e in list(sim.trace.events())[first_event:] if e["ev"] == "timer" and e["timer"] == "'read-step'"]
    assert len(steps) >= 20
    assert {sim.actor(n).raft.term for n in sim.node_ids} == terms_before


def test_a_restarted_node_rebuilds_its_database_before_hearing_from_a_leader():
    """The persisted commit-index hint: a node that comes back alone (no quorum, so no
    leader can tell it the commit index) still applies what it knew to be committed."""
    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Open(database="app"))
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    for key in range(10):
        (reply,) = request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (?)", params=(key,)), wait=5)
        assert isinstance(reply, ExecuteResult)
    sim.run_for(500)   # heartbeats carry the final commit index to the followers
    follower = next(n for n in sim.node_ids if n != leader)
    hinted = sim.nodes[follower].actor.applied_index
    for node in sim.node_ids:
        sim.crash(node, mode="keep")   # killed processes: the kernel keeps unsynced writes
    sim.restart(follower)
    sim.run_for(100)   # far less than an election timeout; alone, it cannot elect anyone
    actor = sim.nodes[follower].actor
    assert actor.raft.leader is None
    assert actor.applied_index >= hinted
    assert rows_of(sim, follower, "SELECT k FROM t ORDER BY k") == [(k,) for k in range(10)]


def test_snapshots_of_a_big_database_are_taken_and_restored_in_bounded_steps(monkeypatch):
    """A 20 MB database: every node snapshots it in steps of about 1 MB, a node added
    later restores it in steps, and meanwhile nobody misses heartbeats enough to campaign."""
    from raftlite.actors import database_files
    from raftlite.actors.config import Config
    from raftlite.actors.raft_node import ChangeMembership, ProposeResult
    from raftlite.core.raft_types import Role

    steps = {"snapshot": 0, "restore": 0}

    def counted(kind, original):
        def counting(*args):
            inner = original(*args)
            while True:
                try:
                    value = next(inner)
                except StopIteration as finished:
                    return finished.value
                steps[kind] += 1
                yield value
        return counting

    monkeypatch.setattr(database_files, "snapshot_database_steps", counted("snapshot", database_files.snapshot_database_steps))
    monkeypatch.setattr(database_files, "restore_database_steps", counted("restore", database_files.restore_database_steps))
    config = Config(snapshot_threshold_entries=16, snapshot_trailing_entries=2)
    sim = Simulation(seed=5, node_ids=[1, 2, 3, 4], actor_factory=ACTORS["database"]([1, 2, 3]), scratch_dir=True,
                     trace=Trace(keep=True), config=config)
    sim.actor_hooks.append(RaftChecker(sim).attach().instrument)
    sim.start()
    sim.run_for(3000)
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k, v)"))
    request(sim, leader, Execute(database="app", sql=(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
        "INSERT INTO t SELECT i, randomblob(1000) FROM n")), wait=3000)
    terms_before = {sim.actor(n).raft.term for n in (1, 2, 3)}
    for key in range(20):
        request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (?, 'small')", params=(-key,)), wait=5)
    sim.run_for(2000)
    assert all(sim.actor(n).raft.snapshot is not None for n in (1, 2, 3))   # each compacted its log
    assert steps["snapshot"] >= 3 * 10                                        # 3 nodes × ≥ 20 MB / 1 MB
    (joined,) = request(sim, leader, ChangeMembership(node=4, role=Role.STANDBY), wait=5000)
    assert isinstance(joined, ProposeResult)
    sim.run_for(3000)
    assert steps["restore"] >= 10
    assert {sim.actor(n).raft.term for n in (1, 2, 3)} == terms_before      # no election
    expected = rows_of(sim, leader, "SELECT count(*), sum(length(v)) FROM t")
    assert expected == [(20020, 20_000_000 + 20 * 5)]
    assert rows_of(sim, 4, "SELECT count(*), sum(length(v)) FROM t") == expected


def test_interrupt_stops_a_long_select_and_a_queued_write():
    from raftlite.actors.database import SQLITE_INTERRUPT, Interrupt, Interrupted

    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql=(
        "CREATE TABLE t (k); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000) "
        "INSERT INTO t SELECT i FROM n")), wait=500)
    first_event = sim.trace.count
    reader = sim.submit(leader, Query(database="app", sql="SELECT k FROM t ORDER BY k"))
    # Arrives right after the first step (simulated time does not pass while the node
    # steps through rows, but other inputs take their turn between steps).
    sim.submit(leader, Interrupt(database="app"), client=reader)
    sim.run_for(500)
    assert sim.replies[reader] == [SqlError(code=SQLITE_INTERRUPT, message="interrupted"), Interrupted()]
    assert sim.actor(leader).state_machine.sql.long_reads == deque()          # its connection is closed
    steps = [e for e in list(sim.trace.events())[first_event:] if e["ev"] == "timer" and e["timer"] == "'read-step'"]
    assert len(steps) <= 2                                   # stopped, not run to the end

    # A write waiting for the lock held by an open transaction is taken out of the queue.
    holder = sim.submit(leader, Execute(database="app", sql="BEGIN; INSERT INTO t VALUES (-1)"))
    sim.run_for(50)
    waiting = sim.submit(leader, Execute(database="app", sql="INSERT INTO t VALUES (-2)"))
    sim.run_for(50)
    assert sim.replies.get(waiting, []) == []
    sim.submit(leader, Interrupt(database="app"), client=waiting)
    sim.submit(leader, Execute(database="app", sql="COMMIT"), client=holder)
    sim.run_for(500)
    assert sim.replies[waiting] == [SqlError(code=SQLITE_INTERRUPT, message="interrupted"), Interrupted()]
    for node in sim.node_ids:
        assert rows_of(sim, node, "SELECT count(*), min(k) FROM t") == [(50001, -1)]


def _rows_in_image(tmp_path, files, sql):
    import apsw

    for name, data in files:
        (tmp_path / name).write_bytes(data)
    connection = apsw.Connection(str(tmp_path / files[0][0]))
    try:
        assert connection.execute("PRAGMA integrity_check").get == "ok"
        return [tuple(row) for row in connection.execute(sql)]
    finally:
        connection.close()


def test_dump_returns_a_committed_image_on_the_leader_and_on_followers(tmp_path):
    from raftlite.actors.database import Dump, Dumped

    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k INTEGER PRIMARY KEY, v)"))
    for key in range(5):
        request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (?, randomblob(64))", params=(key,)), wait=5)
    sim.run_for(200)
    expected = rows_of(sim, leader, "SELECT k, v FROM t ORDER BY k")
    assert len(expected) == 5
    for node in sim.node_ids:          # the leader's committed rows are still in its WAL
        (dumped,) = request(sim, node, Dump(database="app"))
        assert isinstance(dumped, Dumped) and [name for name, _ in dumped.files] == ["app", "app-wal"]
        (tmp_path / f"n{node}").mkdir()
        assert _rows_in_image(tmp_path / f"n{node}", dumped.files, "SELECT k, v FROM t ORDER BY k") == expected

    # A write the cut-off leader executed but never committed is in no dump.
    follower = next(n for n in sim.node_ids if n != leader)
    sim.partition(isolate(leader, sim.node_ids), "isolate leader")
    request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (99, 'lost')"), wait=5)
    on_leader = sim.submit(leader, Dump(database="app"))
    (on_follower,) = request(sim, follower, Dump(database="app"))
    (tmp_path / "cut").mkdir()
    assert _rows_in_image(tmp_path / "cut", on_follower.files, "SELECT max(k) FROM t") == [(4,)]
    sim.run_for(3000)
    assert sim.replies[on_leader] == [SqlError(code=NOT_LEADER, message="not leader")]   # never a maybe-lost state


def test_prepare_counts_parameters_and_names_columns():
    from raftlite.actors.database import Prepare, Prepared

    sim = database_cluster()
    leader = leader_of(sim)
    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (a, b DATETIME)"))
    (insert,) = request(sim, leader, Prepare(database="app", sql="INSERT INTO t VALUES (?, ?)"))
    assert insert == Prepared(parameter_count=2, columns=())
    (select,) = request(sim, leader, Prepare(database="app", sql="SELECT a, b FROM t WHERE a = ?3"))
    assert select == Prepared(parameter_count=3, columns=("a", "b"))
    (none,) = request(sim, leader, Prepare(database="app", sql="SELECT 1 AS one"))
    assert none == Prepared(parameter_count=0, columns=("one",))
    (missing,) = request(sim, leader, Prepare(database="app", sql="SELECT * FROM nowhere"))
    assert missing == SqlError(code=1, message="no such table: nowhere")
    (refused,) = request(sim, leader, Prepare(database="app", sql="ATTACH 'x' AS y"))
    assert refused.code == 23
    (query,) = request(sim, leader, Query(database="app", sql="SELECT a, b FROM t"))
    assert query.column_types == ("", "DATETIME")
    sim.run_for(100)
    assert rows_of(sim, leader, "SELECT count(*) FROM t") == [(0,)]        # nothing ran


def test_a_failing_select_on_a_brand_new_database_does_not_take_the_node_down():
    """Closing the read-only connection of a lone SELECT on a database with no table
    yet makes SQLite's lock call fail (IOError); it wrote nothing, so the node goes on."""
    sim = database_cluster()
    leader = leader_of(sim)
    (syntax,) = request(sim, leader, Query(database="fresh", sql="SELEC 1"))
    assert syntax.code == 1
    (missing,) = request(sim, leader, Query(database="fresh", sql="SELECT * FROM missing"))
    assert missing == SqlError(code=1, message="no such table: missing")
    (one,) = request(sim, leader, Query(database="fresh", sql="SELECT 1"))
    assert one.rows == ((1,),)
    request(sim, leader, Execute(database="fresh", sql="CREATE TABLE e (x)"))
    request(sim, leader, Execute(database="fresh", sql="INSERT INTO e VALUES (1)"))
    sim.run_for(200)
    for node in sim.node_ids:
        assert rows_of(sim, node, "SELECT x FROM e", database="fresh") == [(1,)]


def test_snapshots_wait_until_the_log_since_the_last_one_is_ratio_times_as_big():
    """Taking a snapshot reads and writes the whole database: with a 2 MB database and
    snapshot_log_ratio 2, 40 small writes do not trigger another one (their log is far
    smaller), nor does another 2 MB; 4 MB more does."""
    from raftlite.actors.config import Config

    config = Config(snapshot_threshold_entries=16, snapshot_trailing_entries=2, snapshot_log_ratio=2)
    sim = Simulation(seed=6, node_ids=[1, 2, 3], actor_factory=ACTORS["database"]([1, 2, 3]), scratch_dir=True,
                     trace=Trace(keep=False), config=config)
    sim.start()
    sim.run_for(3000)
    leader = leader_of(sim)
    bulk = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
            "INSERT INTO t SELECT NULL, randomblob(1000) FROM n")

    def small_writes(count):
        for _ in range(count):
            request(sim, leader, Execute(database="app", sql="INSERT INTO t VALUES (NULL, 'small')"), wait=5)
        sim.run_for(500)
        return sim.actor(leader).raft.snapshot

    request(sim, leader, Execute(database="app", sql="CREATE TABLE t (k INTEGER PRIMARY KEY, v)"))
    request(sim, leader, Execute(database="app", sql=bulk), wait=2000)
    first = small_writes(20)
    assert first is not None and len(first.data) > 2_000_000        # the first snapshot: 2 MB
    assert small_writes(40).meta.index == first.meta.index            # 40 small entries: not yet
    request(sim, leader, Execute(database="app", sql=bulk), wait=2000)
    assert small_writes(20).meta.index == first.meta.index            # 2 MB more: not yet
    request(sim, leader, Execute(database="app", sql=bulk), wait=2000)
    assert small_writes(20).meta.index > first.meta.index             # 4 MB more: now
