"""Test helpers for simulated clusters (loaded by name: tests/conftest.py puts tests/ on
sys.path)."""

from raftlite.sim.raft_checkers import RaftChecker
from raftlite.sim.run import ACTORS
from raftlite.sim.simulation import Simulation
from raftlite.sim.trace import Trace

__all__ = ["start_database_cluster"]


def start_database_cluster(seed: int = 1, nodes: int = 3) -> tuple[Simulation, RaftChecker]:
    """A simulated cluster of replicated-SQLite nodes, its trace kept and the raft checker
    attached, run for 3 s (a leader elected); returns it with its checker."""
    founders = list(range(1, nodes + 1))
    sim = Simulation(seed=seed, node_ids=founders, actor_factory=ACTORS["database"](founders), scratch_dir=True,
                     trace=Trace(keep=True))
    checker = RaftChecker(sim).attach()
    sim.actor_hooks.append(checker.instrument)
    sim.start()
    sim.run_for(3000)
    return sim, checker
