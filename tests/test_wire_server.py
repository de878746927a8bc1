"""dqlite's client protocol served by raftlite nodes (issue 6): a 3-node cluster of real
`Node`s in this process, talked to over TCP by the wire client."""

import socket
import struct

import apsw
import pytest

from raftlite.client.connection import Connection, RequestFailed
from raftlite.core.wire import (
    ErrorCode, Iso8601, QuerySqlRequest, ResponseReader, UnixTime, encode_handshake, encode_request, OpenRequest,
)
from raftlite_inprocess import InProcessCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = InProcessCluster(tmp_path_factory.mktemp("wire")).start()
    try:
        yield cluster
    finally:
        cluster.close()


def leader_connection(cluster) -> Connection:
    connection = Connection.connect(cluster.address(1), timeout_s=20)
    leader = connection.leader()
    if leader.address != cluster.address(1):
        connection.close()
        connection = Connection.connect(leader.address, timeout_s=20)
    return connection


def follower_address(cluster) -> str:
    leader = cluster.leader()
    return cluster.address(next(n for n in cluster.nodes if n != leader))


def test_sql_round_trip_with_every_value_type_and_column_convention(cluster):
    with leader_connection(cluster) as connection:
        db = connection.open("types")
        connection.exec_sql(db, "CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n, d DATETIME, flag BOOLEAN)")
        result = connection.exec_sql(db, "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     (-7, 2.5, "héllo", b"\x00\xff", None, UnixTime(1_700_000_000), True))
        assert (result.last_insert_id, result.rows_affected) == (1, 1)
        connection.exec_sql(db, "INSERT INTO t VALUES (1, 0.0, '', x'', NULL, '2026-01-02 03:04:05', 0)")
        rows = connection.query_sql(db, "SELECT * FROM t ORDER BY rowid")
        assert rows.columns == ("i", "f", "s", "b", "n", "d", "flag")
        assert rows.rows == (
            (-7, 2.5, "héllo", b"\x00\xff", None, UnixTime(1_700_000_000), True),
            (1, 0.0, "", b"", None, Iso8601("2026-01-02 03:04:05"), False),
        )


def test_prepared_statements_and_many_batches_and_interrupt(cluster):
    with leader_connection(cluster) as connection:
        db = connection.open("batches")
        connection.exec_sql(db, "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        insert = connection.prepare(db, "INSERT INTO t VALUES (?, ?)")
        assert insert.params_count == 2
        connection.exec_sql(db, "BEGIN")
        for key in range(3000):
            connection.exec(db, insert.stmt_id, (key, f"value {key:05d}"))
        connection.exec_sql(db, "COMMIT")
        connection.finalize(db, insert.stmt_id)
        with pytest.raises(RequestFailed) as missing:
            connection.exec(db, insert.stmt_id, (1, "x"))
        assert missing.value.code == ErrorCode.NOT_FOUND
        select = connection.prepare(db, "SELECT k, v FROM t WHERE k >= ? ORDER BY k")
        rows = connection.query(db, select.stmt_id, (0,))
        assert len(rows.rows) == 3000 and rows.rows[2999] == (2999, "value 02999")
        # Stop a result after its first batch: INTERRUPT, then the connection goes on.
        stream = connection.open_query(QuerySqlRequest(db_id=db, sql="SELECT k, v FROM t ORDER BY k"))
        first = stream.next_batch()
        assert 0 < len(first) < 3000 and not stream.done
        stream.close()
        assert connection.query_sql(db, "SELECT count(*) FROM t").rows == ((3000,),)


def test_sql_errors_carry_sqlite_codes_and_the_connection_goes_on(cluster):
    with leader_connection(cluster) as connection:
        db = connection.open("errors")
        connection.exec_sql(db, "CREATE TABLE t (k INTEGER PRIMARY KEY)")
        connection.exec_sql(db, "INSERT INTO t VALUES (1)")
        with pytest.raises(RequestFailed) as syntax:
            connection.exec_sql(db, "INSERT INTO t VALUS (2)")
        assert syntax.value.code == 1 and "syntax error" in syntax.value.message
        with pytest.raises(RequestFailed) as duplicate:
            connection.exec_sql(db, "INSERT INTO t VALUES (1)")
        assert duplicate.value.code == 1555
        with pytest.raises(RequestFailed) as refused:
            connection.exec_sql(db, "PRAGMA journal_mode=DELETE")
        assert refused.value.code == 23
        assert connection.query_sql(db, "SELECT k FROM t").rows == ((1,),)


def test_a_write_as_query_sql_inside_begin_commit_as_the_go_shell_sends_it(cluster):
    with leader_connection(cluster) as connection:
        db = connection.open("shell")
        for sql in ("BEGIN", "CREATE TABLE t (v)", "COMMIT", "BEGIN", "INSERT INTO t VALUES (random())", "COMMIT"):
            rows = connection.query_sql(db, sql)
            assert rows.columns == () and rows.rows == ()
        assert len(connection.query_sql(db, "SELECT v FROM t").rows) == 1


def test_followers_refuse_sql_with_not_leader_and_name_the_leader(cluster):
    with Connection.connect(follower_address(cluster), timeout_s=20) as connection:
        leader = connection.leader()
        assert leader.node_id == cluster.leader() and leader.address == cluster.address(leader.node_id)
        db = connection.open("app")        # OPEN is accepted anywhere, as by dqlite
        with pytest.raises(RequestFailed) as refused:
            connection.exec_sql(db, "CREATE TABLE t (k)")
        assert refused.value.code == ErrorCode.NOT_LEADER
        with pytest.raises(RequestFailed) as refused:
            connection.query_sql(db, "SELECT 1")
        assert refused.value.code == ErrorCode.NOT_LEADER


def test_dump_on_a_follower_is_a_committed_image(cluster, tmp_path):
    with leader_connection(cluster) as connection:
        db = connection.open("dumped")
        connection.exec_sql(db, "CREATE TABLE t (k, v)")
        connection.exec_sql(db, "INSERT INTO t VALUES (1, randomblob(100)), (2, datetime('now'))")
        expected = connection.query_sql(db, "SELECT k, v FROM t ORDER BY k").rows
    with Connection.connect(follower_address(cluster), timeout_s=20) as follower:
        for _ in range(100):   # the follower applies within a heartbeat or two
            files = follower.dump("dumped")
            (tmp_path / "dumped").write_bytes(files[0].data)
            (tmp_path / "dumped-wal").write_bytes(files[1].data)
            database = apsw.Connection(str(tmp_path / "dumped"))
            try:
                assert database.execute("PRAGMA integrity_check").get == "ok"
                rows = tuple(tuple(row) for row in database.execute("SELECT k, v FROM t ORDER BY k"))
            except apsw.SQLError:
                rows = ()
            finally:
                database.close()
            if rows:
                break
        assert [file.name for file in files] == ["dumped", "dumped-wal"]
        assert rows == tuple((k, v.text if isinstance(v, Iso8601) else v) for k, v in expected)


def test_cluster_describe_and_weight(cluster):
    with Connection.connect(cluster.address(2), timeout_s=20) as connection:
        nodes = connection.cluster()
        assert [(n.node_id, n.address, n.role) for n in nodes] == [
            (node_id, cluster.address(node_id), 0) for node_id in (1, 2, 3)]
        assert (connection.describe().failure_domain, connection.describe().weight) == (0, 0)
        connection.weight(7)
        assert connection.describe().weight == 7
        with pytest.raises(RequestFailed) as bad_format:
            connection.describe(format=1)
        assert bad_format.value.code == 15
        assert connection.cluster()   # still serving after the refusal


def _raw(cluster, payload: bytes) -> bytes:
    """Send raw bytes after the handshake; everything the node sends back until it closes."""
    with socket.create_connection(("127.0.0.1", int(cluster.address(1).rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(encode_handshake() + payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("payload, code", [
    (struct.pack("<IBBH", 1 << 30, 3, 0, 0), ErrorCode.TOOBIG),                 # announces 8 GiB: refused, body skipped
    (struct.pack("<IBBH", 1, 200, 0, 0) + bytes(8), ErrorCode.PROTOCOL),        # unknown type
    (struct.pack("<IBBH", 1, 3, 0, 0) + b"\xff\xfe\x00\x00\x00\x00\x00\x00", ErrorCode.PARSE),  # bad UTF-8
])
def test_malformed_requests_get_one_failure_and_a_closed_connection(cluster, payload, code):
    answer = ResponseReader()
    answer.feed(_raw(cluster, payload))
    response = answer.next_response()
    assert response.code == code and answer.next_response() is None
    with leader_connection(cluster) as connection:   # the node goes on serving others
        assert connection.open("still-up") == 0


def test_an_unknown_handshake_is_closed_without_an_answer(cluster):
    with socket.create_connection(("127.0.0.1", int(cluster.address(1).rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(struct.pack("<Q", 12345) + encode_request(OpenRequest(name="x")))
        assert sock.recv(100) == b""


def test_leadership_transfer_and_membership_through_the_protocol(cluster):
    with leader_connection(cluster) as connection:
        current = connection.leader().node_id
        target = next(n for n in (1, 2, 3) if n != current)
        connection.transfer(target)
    assert cluster.leader() == target
    with leader_connection(cluster) as connection:
        assert connection.leader().node_id == target
        connection.add(9, "127.0.0.1:1")     # a spare that never comes: a member without the log
        assert (9, "127.0.0.1:1", 2) in [(n.node_id, n.address, n.role) for n in connection.cluster()]
        connection.remove(9)
        assert 9 not in [n.node_id for n in connection.cluster()]


@pytest.mark.timeout(180)
def test_a_wiped_node_never_votes_under_its_old_id_and_rejoins_under_a_new_one(tmp_path):
    import shutil

    from raftlite.core.raft_types import Role
    from raftlite.io.node import Node
    from raftlite_inprocess import free_ports

    cluster = InProcessCluster(tmp_path).start()
    try:
        with leader_connection(cluster) as connection:
            db = connection.open("kept")
            connection.exec_sql(db, "CREATE TABLE t (k)")
            connection.exec_sql(db, "INSERT INTO t VALUES (1), (2), (3)")
        victim = next(n for n in (1, 2, 3) if n != cluster.leader())
        cluster.stop_node(victim, hand_over=False)
        shutil.rmtree(tmp_path / f"node{victim}")            # its data is lost
        wiped = cluster.start_node(victim)                   # same id, --join: refused, never votes
        cluster.run(asyncio_wait(wiped.join_failed), 30)
        assert "already a member" in str(wiped.join_error)
        assert wiped.actor.raft.voting_blocked
        cluster.stop_node(victim, hand_over=False)

        # The documented recovery: REMOVE the old id, wipe, rejoin under a new id as a
        # spare, promote to voter once caught up.
        with leader_connection(cluster) as connection:
            connection.remove(victim)
        shutil.rmtree(tmp_path / f"node{victim}")
        (address,) = [f"127.0.0.1:{port}" for port in free_ports(1)]
        fresh = Node(node_id=7, address=address, data_dir=str(tmp_path / "node7"), join=(cluster.address(1),),
                     config=cluster.config, role=Role.SPARE)
        cluster.run(fresh.start())
        cluster.nodes[7] = fresh
        cluster.run(asyncio_wait(fresh.joined), 60)
        with leader_connection(cluster) as connection:
            connection.assign(7, 0)
            roles = {n.node_id: n.role for n in connection.cluster()}
        assert roles == {**{n: 0 for n in (1, 2, 3) if n != victim}, 7: 0}
        assert not fresh.actor.raft.voting_blocked
        with Connection.connect(address, timeout_s=20) as connection:
            for _ in range(100):
                files = connection.dump("kept")
                (tmp_path / "kept").write_bytes(files[0].data)
                database = apsw.Connection(str(tmp_path / "kept"))
                try:
                    rows = [tuple(r) for r in database.execute("SELECT k FROM t ORDER BY k")]
                except apsw.SQLError:
                    rows = []
                finally:
                    database.close()
                if rows:
                    break
            assert rows == [(1,), (2,), (3,)]
    finally:
        cluster.close()


async def asyncio_wait(event):
    import asyncio

    await asyncio.wait_for(event.wait(), 60)
