"""pytest fixtures for fault-injection suites: `sim_cluster` and `jepsen_run`.

Use from a test module (or a conftest) with::

    pytest_plugins = ["raftlite.jepsen_like.pytest_plugin"]

    def test_register_survives_partitions(jepsen_run):
        result = jepsen_run(workload="register", nemesis="partition,kill", seed=3, time_limit_s=5)
        assert result.valid is True, result.summary()

    def test_sql_on_a_cluster(sim_cluster):
        cluster = sim_cluster(seed=1)
        cluster.client.execute("CREATE TABLE t (a)")

`jepsen_run(**options)` runs `raftlite.jepsen_like.runner.run_jepsen` (options as in
`JepsenOptions`; ``nemesis`` may be a comma list) and writes history.edn, verdict.json
and report.html under the test's temporary directory (``result.outputs``), so a red run
leaves its evidence behind; the directory is in the failure message of `assert_valid`.

`sim_cluster(seed=..., nodes=...)` starts a simulated cluster of database nodes with a
leader and returns a `SimCluster`: the simulation and a synchronous SQL client
(`raftlite.sim.client.SimDatabaseClient`). Clusters are closed after the test.

`jepsen_run(runtime="real", **options)` runs the same against `raftlite node` processes
on 127.0.0.1 (`raftlite.jepsen_like.real_runtime.run_jepsen_real`; nemesis kinds
partition, leader-partition, kill, pause, corrupt); the nodes' data and logs stay under
the run's directory (``cluster/``).

`real_cluster(nodes=3)` starts node processes on loopback, each dialling its peers
through a fault-injecting proxy, and returns a started `RealCluster` (`leader()`,
`partition(pairs)`, `heal()`, `nodes[i].kill() / start() / pause() / resume()`,
`dump_rows(i)`, `wait_converged()`); every process is killed by PID after the test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import pytest

from ..core.raft import SAFE
from .nemesis_schedule import parse_nemesis_schedule
from .real_runtime import RealCluster, parse_real_nemesis, run_jepsen_real
from .runner import JepsenOptions, RunResult, database_actor_factory, run_jepsen, write_outputs
from .workloads import DATABASE
from ..sim.client import SimDatabaseClient
from ..sim.run import swarm_config
from ..sim.simulation import Simulation

__all__ = ["SimCluster", "assert_valid", "jepsen_run", "real_cluster", "sim_cluster"]


@dataclass
class SimCluster:
    sim: Any
    client: Any

    def leader(self) -> int | None:
        found = self.sim.leaders()
        return found[0] if len(found) == 1 else None


def assert_valid(result: RunResult) -> None:
    """Fail with the run's summary and where its report is when it is not valid."""
    if result.valid is not True:
        where = result.outputs.get("report", "(not written)")
        pytest.fail(f"{result.summary()}\nreport: {where}", pytrace=False)


@pytest.fixture
def jepsen_run(tmp_path) -> Callable[..., RunResult]:
    runs = 0

    def run(*, runtime: str = "sim", **options: Any) -> RunResult:
        nonlocal runs
        runs += 1
        nemesis = options.pop("nemesis", ())
        if runtime == "real":
            if isinstance(nemesis, str):
                nemesis = parse_real_nemesis(nemesis)
            options = replace(JepsenOptions(), nemesis=tuple(nemesis), **options)
            name = f"run{runs}-real-{options.workload}-seed{options.seed}"
            result = run_jepsen_real(options, tmp_path / name / "cluster")
        else:
            if isinstance(nemesis, str):
                nemesis = parse_nemesis_schedule(nemesis)
            result = run_jepsen(replace(JepsenOptions(), nemesis=tuple(nemesis), **options))
            name = f"run{runs}-{result.options.workload}-seed{result.options.seed}"
        write_outputs(result, str(tmp_path / name))
        return result

    return run


@pytest.fixture
def sim_cluster() -> Callable[..., SimCluster]:
    clusters: list[SimCluster] = []

    def start(*, seed: int = 1, nodes: int = 3, config: Any = None, unsafe=SAFE,
              leader_timeout_ms: float = 30_000.0) -> SimCluster:
        config = config or swarm_config(seed, small_snapshots=False)
        founders = list(range(1, nodes + 1))
        sim = Simulation(seed=seed, node_ids=founders, actor_factory=database_actor_factory(founders, config, unsafe),
                         config=config, scratch_dir=True)
        cluster = SimCluster(sim=sim, client=SimDatabaseClient(sim, database=DATABASE))
        clusters.append(cluster)
        sim.start()
        deadline = sim.now_ms + leader_timeout_ms
        while len(sim.leaders()) != 1 and sim.now_ms < deadline:
            sim.run_for(10.0)
        if len(sim.leaders()) != 1:
            raise AssertionError(f"no leader within {leader_timeout_ms:.0f} simulated ms (seed {seed})")
        return cluster

    yield start
    for cluster in clusters:
        cluster.sim.close()


@pytest.fixture
def real_cluster(tmp_path) -> Callable[..., Any]:
    clusters: list[Any] = []

    def start(*, nodes: int = 3, election_timeout_ms: float = 1000.0) -> RealCluster:
        cluster = RealCluster(tmp_path / f"real-cluster{len(clusters) + 1}", nodes,
                              election_timeout_ms=election_timeout_ms)
        clusters.append(cluster)
        return cluster.start()

    yield start
    for cluster in clusters:
        cluster.close()
