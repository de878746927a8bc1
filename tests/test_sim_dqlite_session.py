"""A client speaking dqlite's wire protocol (bytes, encoded with core/wire.py) against a
simulated database cluster, through the same session the real server runs
(sim/dqlite_host.py over actors/dqlite_session.py): a write sent to a follower is refused
"not leader", LEADER names the leader's address, and on the leader a short transaction
(CREATE, prepared INSERTs, BEGIN ... COMMIT, a SELECT paged over several ROWS batches)
runs; the same seed gives the same answers and the same trace."""

import pytest

from raftlite.core.wire import (
    DbResponse, ErrorCode, ExecRequest, ExecSqlRequest, FailureResponse, LeaderRequest, OpenRequest, PrepareRequest,
    QuerySqlRequest, ResponseReader, ResultResponse, RowsResponse, ServerResponse, StmtResponse, encode_request,
)
from raftlite.sim.dqlite_host import DqliteHost, SimConnectionClosed, node_address
from raftlite.sim.run import ACTORS
from raftlite.sim.simulation import Simulation
from raftlite.sim.trace import Trace

pytestmark = pytest.mark.timeout(120)

FOUNDERS = [1, 2, 3]


def database_cluster(seed: int) -> Simulation:
    sim = Simulation(seed=seed, node_ids=FOUNDERS, actor_factory=ACTORS["database"](FOUNDERS), scratch_dir=True,
                     trace=Trace())
    sim.start()
    sim.run_for(3000)
    return sim


def transcript_of_a_short_session(seed: int) -> tuple[list, str]:
    """Every answer the wire client got, and the run's trace hash."""
    sim = database_cluster(seed)
    try:
        host = DqliteHost(sim)
        (leader,) = sim.leaders()
        follower = min(node for node in FOUNDERS if node != leader)
        answers = []

        on_follower = host.connect(follower)
        answers.append(on_follower.call(OpenRequest(name="app")))
        answers.append(on_follower.call(ExecSqlRequest(db_id=0, sql="CREATE TABLE t (k INTEGER PRIMARY KEY, v)", params=())))
        where = on_follower.call(LeaderRequest())
        answers.append(where)
        on_follower.close()

        on_leader = host.connect(host.node_of(where.address))
        calls = [
            OpenRequest(name="app"),
            ExecSqlRequest(db_id=0, sql="CREATE TABLE t (k INTEGER PRIMARY KEY, v)", params=()),
            PrepareRequest(db_id=0, sql="INSERT INTO t (v) VALUES (?)"),
            ExecRequest(db_id=0, stmt_id=0, params=("one",)),
            ExecRequest(db_id=0, stmt_id=0, params=("two",)),
            ExecSqlRequest(db_id=0, sql="BEGIN", params=()),
            ExecSqlRequest(db_id=0, sql="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
                                        "INSERT INTO t (v) SELECT 'row ' || i FROM n", params=()),
            ExecSqlRequest(db_id=0, sql="COMMIT", params=()),
            QuerySqlRequest(db_id=0, sql="SELECT k, v FROM t ORDER BY k", params=()),
        ]
        answers += [on_leader.call(request) for request in calls]
        # The same SELECT read raw: its answer is several ROWS messages.
        on_leader.send(encode_request(calls[-1]))
        sim.run_for(50)
        raw = ResponseReader()
        raw.feed(on_leader.take())
        answers.append(list(iter(raw.next_response, None)))
        on_leader.close()
        sim.run_for(100)
        return answers, sim.trace.hexdigest()
    finally:
        sim.close()


def test_a_wire_client_finds_the_leader_and_runs_a_short_transaction():
    answers, _ = transcript_of_a_short_session(seed=5)
    opened, refused, where, *on_leader = answers
    assert opened == DbResponse(db_id=0)
    assert isinstance(refused, FailureResponse) and refused.code == ErrorCode.NOT_LEADER
    assert isinstance(where, ServerResponse) and where.address == node_address(where.node_id)
    opened, created, prepared, one, two, begun, inserted, committed, selected, batches = on_leader
    assert opened == DbResponse(db_id=0)
    assert isinstance(created, ResultResponse)
    assert prepared == StmtResponse(db_id=0, stmt_id=0, params_count=1)
    assert (one, two) == (ResultResponse(last_insert_id=1, rows_affected=1), ResultResponse(last_insert_id=2, rows_affected=1))
    assert isinstance(begun, ResultResponse) and isinstance(committed, ResultResponse)
    assert inserted == ResultResponse(last_insert_id=302, rows_affected=300)
    assert isinstance(selected, RowsResponse) and selected.columns == ("k", "v")
    assert selected.rows == ((1, "one"), (2, "two"), *((k + 2, f"row {k}") for k in range(1, 301)))
    assert len(batches) >= 2 and [batch.more for batch in batches] == [True] * (len(batches) - 1) + [False]
    assert tuple(row for batch in batches for row in batch.rows) == selected.rows


def test_the_same_seed_gives_the_same_answers_and_the_same_trace():
    first = transcript_of_a_short_session(seed=11)
    second = transcript_of_a_short_session(seed=11)
    assert first == second
    assert len(first[0]) == 13


def test_a_crash_of_the_node_kills_its_connections():
    sim = database_cluster(seed=3)
    try:
        host = DqliteHost(sim)
        (leader,) = sim.leaders()
        connection = host.connect(leader)
        assert connection.call(OpenRequest(name="app")) == DbResponse(db_id=0)
        sim.crash(leader)
        with pytest.raises(SimConnectionClosed):
            connection.call(OpenRequest(name="app"))
    finally:
        sim.close()
