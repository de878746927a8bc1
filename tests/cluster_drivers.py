"""One scenario, two runtimes: a small driver interface over a 3-node replicated-SQLite
cluster, implemented by the simulator (raftlite.sim, simulated time) and by real
`raftlite node` processes (tests/cluster_helpers.py), and `run_scenario`, which plays a
text script on either:

    start                 start the cluster
    elect                 wait for a leader
    write 1..20           INSERT keys k0001 .. k0020 through the leader (each acknowledged)
    crash follower        crash (SIGKILL) a follower of the current leader; remembered as
                          "the follower" for later steps
    restart follower      restart it (same data directory / same simulated disk)
    converge              wait until every node applied everything committed
    check 1..40           every node's database holds exactly keys 1..40

Lines starting with # are comments. The script is the scenario's one description; a
driver only says how each step is done in its runtime.
"""

from pathlib import Path
from typing import Protocol

from raftlite.actors.database import Open, Opened
from raftlite.sim.client import SimDatabaseClient
from raftlite.sim.database_workload import read_replica
from raftlite.sim.run import ACTORS, leader_of
from raftlite.sim.simulation import NodeState, Simulation

from cluster_helpers import ProcessCluster

DATABASE = "app"
CREATE_TABLE = "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"
INSERT = "INSERT INTO kv (k, v) VALUES (?, ?)"
SELECT = "SELECT k, v FROM kv ORDER BY k"


class ClusterDriver(Protocol):
    node_ids: list[int]

    def start(self) -> None: ...
    def wait_leader(self) -> int: ...
    def execute(self, sql: str, params: tuple = ()) -> None: ...
    def crash(self, node_id: int) -> None: ...
    def restart(self, node_id: int) -> None: ...
    def converge(self) -> None: ...
    def rows(self, node_id: int, sql: str) -> list[tuple]: ...
    def close(self) -> None: ...


class SimDriver:
    """The simulator: seeded, simulated time; SQL through SimDatabaseClient."""

    def __init__(self, seed: int = 1, size: int = 3, settle_limit_ms: float = 60_000.0) -> None:
        self.node_ids = list(range(1, size + 1))
        self.sim = Simulation(seed=seed, node_ids=self.node_ids, actor_factory=ACTORS["database"](self.node_ids),
                              scratch_dir=True)
        self.client = SimDatabaseClient(self.sim, database=DATABASE)
        self.settle_limit_ms = settle_limit_ms

    def start(self) -> None:
        self.sim.start()

    def wait_leader(self) -> int:
        deadline = self.sim.now_ms + self.settle_limit_ms
        while leader_of(self.sim) is None:
            assert self.sim.now_ms < deadline, f"no leader within {self.settle_limit_ms} ms of simulated time"
            self.sim.run_for(10)
        return leader_of(self.sim)

    def execute(self, sql: str, params: tuple = ()) -> None:
        assert isinstance(self.client._call(Open(database=DATABASE)), Opened)
        self.client.execute(sql, params)

    def crash(self, node_id: int) -> None:
        self.sim.crash(node_id)

    def restart(self, node_id: int) -> None:
        self.sim.restart(node_id)

    def converge(self) -> None:
        deadline = self.sim.now_ms + self.settle_limit_ms
        while True:
            leader = leader_of(self.sim)
            up = [n for n in self.node_ids if self.sim.nodes[n].state == NodeState.UP]
            if leader is not None:
                commit = self.sim.actor(leader).raft.status()["commit"]
                if all(self.sim.actor(n).applied_index == commit for n in up):
                    return
            assert self.sim.now_ms < deadline, f"not converged within {self.settle_limit_ms} ms of simulated time"
            self.sim.run_for(50)

    def rows(self, node_id: int, sql: str) -> list[tuple]:
        return read_replica(self.sim, node_id, DATABASE, sql) or []

    def close(self) -> None:
        self.sim.close()


class ProcessDriver:
    """Real node processes on loopback; crash = SIGKILL, SQL through the wire client."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.cluster = ProcessCluster(directory, size)
        self.node_ids = list(self.cluster.nodes)

    def start(self) -> None:
        self.cluster.start()

    def wait_leader(self) -> int:
        return self.cluster.wait_leader()

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.cluster.execute(sql, params)

    def crash(self, node_id: int) -> None:
        self.cluster.nodes[node_id].kill()

    def restart(self, node_id: int) -> None:
        self.cluster.nodes[node_id].start()

    def converge(self) -> None:
        self.cluster.wait_converged(nodes=self.node_ids)

    def rows(self, node_id: int, sql: str) -> list[tuple]:
        return self.cluster.kv_rows(node_id, sql)

    def close(self) -> None:
        self.cluster.close()


def _key_range(text: str) -> range:
    first, _, last = text.partition("..")
    return range(int(first), int(last or first) + 1)


def run_scenario(driver: ClusterDriver, script: str) -> list[str]:
    """Plays `script` (see the module docstring) on `driver`; returns a log of the steps."""
    log: list[str] = []
    follower: int | None = None
    table_created = False
    for line in script.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        verb, _, argument = line.partition(" ")
        match verb, argument:
            case "start", "":
                driver.start()
            case "elect", "":
                log.append(f"leader {driver.wait_leader()}")
            case "write", keys:
                if not table_created:
                    driver.execute(CREATE_TABLE)
                    table_created = True
                for key in _key_range(keys):
                    driver.execute(INSERT, (f"k{key:04d}", key))
            case "crash", "follower":
                leader = driver.wait_leader()
                follower = next(n for n in driver.node_ids if n != leader)
                driver.crash(follower)
                log.append(f"crashed follower {follower} of leader {leader}")
            case "restart", "follower":
                assert follower is not None, "restart follower before crash follower"
                driver.restart(follower)
            case "converge", "":
                driver.converge()
            case "check", keys:
                expected = [(f"k{key:04d}", key) for key in _key_range(keys)]
                for node_id in driver.node_ids:
                    rows = driver.rows(node_id, SELECT)
                    assert rows == expected, (f"node {node_id}: {len(rows)} rows, expected {len(expected)}; "
                                              f"missing {sorted(set(expected) - set(rows))[:5]}")
                log.append(f"{len(expected)} rows on nodes {driver.node_ids}")
            case _:
                raise ValueError(f"unknown scenario step: {line!r}")
    return log
