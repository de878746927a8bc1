"""Issue 13, bugs 2 and 3, on real clusters (the simulator halves are in
tests/test_database_sessions.py).

- Bug 2 (a storage error while committing): nodes of the real runtime (asyncio, TCP,
  real files) in this process, so that the test can reach the leader's capture VFS and
  make one WAL write fail through it (`WalWriteFault`; a node process offers no such
  hook, and a full disk would hit raft storage, not the SQLite files). The wire
  client sees 10250; raftlite's client retries it on the next leader, once.
- Bug 3 (per-client connection state): `raftlite node` processes. One client's PRAGMA
  does not reach another; foreign keys are on by default; `on_connect` re-applies a
  client's pragma on the new leader after the old one is SIGKILLed.
"""

import asyncio

import apsw
import pytest

import raftlite.client as client
from raftlite.actors.sqlite_capture import WalWriteFault
from raftlite.client.connection import Connection, RequestFailed
from raftlite.core.wire import ErrorCode
from raftlite_cluster import RaftliteCluster
from raftlite_inprocess import InProcessCluster

pytestmark = pytest.mark.timeout(120)


def _arm_fault(cluster: InProcessCluster, node_id: int, fault: WalWriteFault) -> None:
    """Set the fault on the node's VFS from the node's own loop thread."""
    async def arm() -> None:
        cluster.nodes[node_id].actor.state_machine.sql.vfs.wal_write_fault = fault

    cluster.run(arm())


def _wait_for_leader(cluster: InProcessCluster, other_than: int | None = None, timeout_s: float = 20.0) -> int:
    async def wait() -> int:
        while True:
            leader = cluster.leader()
            if leader is not None and leader != other_than:
                return leader
            await asyncio.sleep(0.05)

    return cluster.run(asyncio.wait_for(wait(), timeout_s), timeout_s + 5)


def test_a_storage_error_at_commit_on_a_real_leader_is_not_leader_and_the_client_retries_it_once(tmp_path):
    cluster = InProcessCluster(tmp_path).start()
    try:
        leader = _wait_for_leader(cluster)
        with Connection.connect(cluster.address(leader), timeout_s=10) as wire:
            wire.client(1)
            db = wire.open("app")
            wire.exec_sql(db, "CREATE TABLE t (k INTEGER PRIMARY KEY, v)")
            _arm_fault(cluster, leader, WalWriteFault(code=apsw.SQLITE_IOERR_WRITE, landed=True))
            with pytest.raises(RequestFailed) as refused:
                wire.exec_sql(db, "INSERT INTO t VALUES (1, 'doomed')")
        assert refused.value.code == ErrorCode.NOT_LEADER and "storage error" in refused.value.message
        new_leader = _wait_for_leader(cluster)
        # Through raftlite's client: 10250 means "certainly not applied", so the write is
        # retried on the next leader and applied exactly once, with no error for the caller.
        _arm_fault(cluster, new_leader, WalWriteFault(code=apsw.SQLITE_FULL, landed=False))
        connection = client.connect([cluster.address(n) for n in cluster.nodes], database="app", timeout=30,
                                    autocommit=True)
        try:
            connection.execute("INSERT INTO t VALUES (2, 'retried')")
            assert cluster.nodes[new_leader].actor.state_machine.sql.vfs.wal_write_fault is None      # it did fire
            assert connection.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [(2, "retried")]
        finally:
            connection.close()
    finally:
        cluster.close()


@pytest.fixture
def process_cluster(tmp_path):
    started = RaftliteCluster.start(tmp_path / "raftlite")
    yield started
    started.stop()


def test_each_clients_pragmas_are_its_own_and_on_connect_reapplies_them_after_failover(process_cluster):
    addresses = process_cluster.addresses
    alice = client.connect(addresses, database="app", timeout=30, autocommit=True)
    bob = client.connect(addresses, database="app", timeout=30, autocommit=True)
    hook_calls = []

    def no_foreign_keys(setup) -> None:
        hook_calls.append(setup.execute("PRAGMA foreign_keys"))
        setup.execute("PRAGMA foreign_keys = OFF")

    carol = client.connect(addresses, database="app", timeout=30, autocommit=True, on_connect=no_foreign_keys)
    try:
        alice.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        alice.execute("CREATE TABLE child (parent INTEGER REFERENCES parent (id))")
        assert bob.execute("PRAGMA foreign_keys").fetchall() == [(1,)]       # on by default, as dqlite 1.18
        alice.execute("PRAGMA foreign_keys = OFF")
        alice.execute("INSERT INTO child VALUES (1)")                         # Alice's choice, for Alice
        with pytest.raises(client.IntegrityError, match="FOREIGN KEY constraint failed"):
            bob.execute("INSERT INTO child VALUES (2)")                       # never leaks to Bob
        carol.execute("INSERT INTO child VALUES (3)")
        assert hook_calls == [[(1,)]]
        process_cluster.kill(process_cluster.leader_address())
        # Carol's next statement finds the new leader; the hook runs there first.
        carol.execute("INSERT INTO child VALUES (4)")
        assert hook_calls == [[(1,)], [(1,)]]
        assert carol.execute("PRAGMA foreign_keys").fetchall() == [(0,)]
        assert sorted(carol.execute("SELECT parent FROM child").fetchall()) == [(1,), (3,), (4,)]
    finally:
        for connection in (alice, bob, carol):
            connection.close()


def test_on_connect_in_both_apis_and_its_failures_reach_the_caller_clearly(tmp_path):
    from raftlite.client import aio

    cluster = InProcessCluster(tmp_path).start()
    try:
        addresses = [cluster.address(n) for n in cluster.nodes]
        with pytest.raises(client.InterfaceError, match="on_connect must be callable"):
            client.connect(addresses, database="app", on_connect="PRAGMA foreign_keys=OFF")
        # An SQL error in the hook is the caller's error, named as the hook's.
        with pytest.raises(client.OperationalError, match="on_connect: no such table: nowhere"):
            client.connect(addresses, database="app", timeout=10, on_connect=lambda s: s.execute("SELECT * FROM nowhere"))

        class HookBug(Exception):
            pass

        def broken(setup):
            raise HookBug("bug in the application's hook")

        with pytest.raises(HookBug):
            client.connect(addresses, database="app", timeout=10, on_connect=broken)

        async def use_aio() -> list:
            async def setup(s) -> None:
                await s.execute("PRAGMA case_sensitive_like = ON")

            connection = await aio.connect(addresses, database="app", timeout=10, autocommit=True, on_connect=setup)
            try:
                cursor = await connection.execute("SELECT 'a' LIKE 'A'")
                return await cursor.fetchall()
            finally:
                await connection.close()

        assert asyncio.run(use_aio()) == [(0,)]            # the hook's pragma holds on this connection
        plain = client.connect(addresses, database="app", timeout=10, autocommit=True)
        try:
            assert plain.execute("SELECT 'a' LIKE 'A'").fetchall() == [(1,)]   # and on no other
        finally:
            plain.close()
    finally:
        cluster.close()
