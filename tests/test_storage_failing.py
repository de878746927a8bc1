"""Storage errors move leadership (issue 14, item 4), under the simulator.

One "storage failing" state per node: the raft log's writes failing (the simulated
disk full) or the state machine's files refusing a write (an OSError from applying,
injected here, since SQLite's files live outside the simulated disk). Such a node
neither campaigns nor votes, a leader hands leadership to its most caught-up voter,
`status` says so, and the node catches up once the disk takes data again. The golden
scenario tests/testdata/sim/raft_disk_full_leader.txt shows the log's side step by step.
"""

import errno

import pytest

from raftlite.actors import database_files
from raftlite.actors.database import Execute, ExecuteResult, Open
from raftlite.sim.database_workload import read_replica
from raftlite.sim.run import leader_of
from raftlite.sim.simulation import Simulation
from sim_helpers import start_database_cluster

pytestmark = pytest.mark.timeout(120)

SEEDS = range(1, 6)


def write(sim: Simulation, node: int, sql: str, wait_ms: float = 20.0):
    client = sim.submit(node, Execute(database="app", sql=sql))
    sim.run_for(wait_ms)
    return sim.replies[client]


def status(sim: Simulation, node: int) -> dict:
    return dict(sim.node(node).actor.status())


def events(sim: Simulation, node: int, name: str) -> list[dict]:
    return [event for event in sim.trace.events() if event["ev"] == "event" and event["n"] == node
            and event["name"] == name]


class RefusingDisk:
    """database_files' page writers, refusing with `error` for the files under the
    directories in `refusing` (one node's scratch directory): a full disk under SQLite's
    files, which the simulated disk does not hold."""

    def __init__(self, monkeypatch, error: int = errno.ENOSPC) -> None:
        self.refusing: set[str] = set()
        self.refused = 0
        for name in ("apply_transactions", "apply_transaction", "create_database"):
            original = getattr(database_files, name)
            monkeypatch.setattr(database_files, name, self._wrap(original, error))

    def _wrap(self, original, error):
        def writer(path, *arguments):
            if any(path.startswith(directory) for directory in self.refusing):
                self.refused += 1
                raise OSError(error, "No space left on device" if error == errno.ENOSPC else "I/O error", path)
            return original(path, *arguments)
        return writer


@pytest.mark.parametrize("seed", SEEDS)
def test_a_follower_whose_files_refuse_writes_stalls_reports_and_catches_up(seed, monkeypatch):
    disk = RefusingDisk(monkeypatch)
    sim, checker = start_database_cluster(seed)
    leader = leader_of(sim)
    follower = min(node for node in sim.node_ids if node != leader)
    sim.submit(leader, Open(database="app"))
    sim.run_for(50)
    assert isinstance(write(sim, leader, "CREATE TABLE t (k INTEGER PRIMARY KEY, v)"), list)
    sim.run_for(200)

    disk.refusing.add(sim.node(follower).actor.state_machine.replica.directory)
    # Room for the log's 40 entries but not for the 1 MiB probe write: the node stays
    # failing until space returns.
    sim.disk_capacity(follower, sim.nodes[follower].disk.used_bytes() + (512 << 10))
    for k in range(40):
        (reply,) = write(sim, leader, f"INSERT INTO t VALUES ({k}, randomblob(100))")
        assert isinstance(reply, ExecuteResult), reply   # the other two commit
    sim.run_for(500)
    assert disk.refused > 0
    failing = status(sim, follower)
    assert failing["storage_failing"] and failing["disk_full"], failing
    assert read_replica(sim, follower, "app", "SELECT count(*) FROM t") == [(0,)]   # its pages wait
    assert sim.node(follower).actor is not None   # not halted
    (disk_full,) = events(sim, follower, "disk-full")
    assert disk_full["level"] == "error" and disk_full["errno"] == "ENOSPC"

    disk.refusing.clear()
    sim.disk_capacity(follower, None)
    sim.run_for(1000)
    healed = status(sim, follower)
    assert not healed["storage_failing"] and not healed["disk_full"], healed
    assert len(events(sim, follower, "storage-recovered")) == 1
    rows = {node: read_replica(sim, node, "app", "SELECT k, v FROM t ORDER BY k") for node in sim.node_ids}
    assert len(rows[leader]) == 40 and rows[follower] == rows[leader]
    assert not checker.violations, checker.violations


@pytest.mark.parametrize("seed", SEEDS)
def test_a_leader_whose_files_refuse_writes_hands_leadership_over_and_does_not_take_it_back(seed, monkeypatch):
    """The leader's SQLite refuses a write: the SQL service reports it through
    StateMachineHost.storage_failed, as it does for an SQLITE_IOERR or SQLITE_FULL
    while writing the WAL (that error cannot be raised inside SQLite here, so the
    report is made directly). The leader steps aside at once, to the most caught-up
    voter; its files refuse the pages of its dropped WAL too; while failing it does not
    campaign, so it does not lead again; writes go on at the new leader; it catches up
    once the disk takes data."""
    disk = RefusingDisk(monkeypatch, errno.EIO)
    sim, checker = start_database_cluster(seed)
    leader = leader_of(sim)
    sim.submit(leader, Open(database="app"))
    sim.run_for(50)
    write(sim, leader, "CREATE TABLE t (k INTEGER PRIMARY KEY, v)")
    disk.refusing.add(sim.node(leader).actor.state_machine.replica.directory)
    sim.fill_disk(leader)
    old_term = status(sim, leader)["term"]
    sim.node(leader).actor.state_machine.sql.host.storage_failed("EIO", "writing SQLite's WAL")
    sim.run_for(1500)
    new_leader = leader_of(sim)
    assert new_leader is not None and new_leader != leader
    assert status(sim, new_leader)["term"] == old_term + 1
    (stepped,) = events(sim, leader, "leader-stepped-down")
    assert stepped["target"] == new_leader and stepped["level"] == "error"
    for k in range(20):
        (reply,) = write(sim, new_leader, f"INSERT INTO t VALUES ({k}, 'x')")
        assert isinstance(reply, ExecuteResult), reply
    sim.run_for(3000)   # several election timeouts: the failing node must not campaign
    assert leader_of(sim) == new_leader
    assert status(sim, leader)["storage_failing"]
    disk.refusing.clear()
    sim.disk_capacity(leader, None)
    sim.run_for(1000)
    assert not status(sim, leader)["storage_failing"]
    rows = {node: read_replica(sim, node, "app", "SELECT k, v FROM t ORDER BY k") for node in sim.node_ids}
    assert rows[leader] == rows[new_leader] and len(rows[new_leader]) == 20
    assert not checker.violations, checker.violations
