"""Simulator speed: simulated events per wall second (and simulated seconds per wall second).

Bare simpy processes about 1.2 million events a second on this machine class; the
simulator adds the actor, the network model, the disk model and the trace hash per
event. The load is the heartbeat detector with a 10 ms interval on every node (so each
node sends to every peer 100 times a simulated second) and all faults enabled.
"""

import sys
import time
from dataclasses import dataclass

from ..actors.config import Config
from ..actors.heartbeat import HeartbeatDetector
from .nemesis import NEMESIS_KINDS, Nemesis
from .simulation import Simulation
from .run import ACTORS, ProposalLoad

__all__ = ["BenchmarkResult", "run_benchmark", "run_raft_benchmark"]


@dataclass(frozen=True, slots=True)
class BenchmarkResult:
    nodes: int
    simulated_seconds: float
    wall_seconds: float
    events: int
    label: str = "heartbeat detector"
    acknowledged: int = 0

    def render(self) -> str:
        writes = f", {self.acknowledged:,} writes committed" if self.acknowledged else ""
        return (
            f"simulator ({self.label}): {self.nodes} nodes, {self.events:,} events in {self.wall_seconds:.2f} s wall: "
            f"{self.events / self.wall_seconds:,.0f} events/s, "
            f"{self.simulated_seconds / self.wall_seconds:.1f} simulated s per wall s{writes}"
        )


def _run_with_progress(sim: Simulation, duration_s: float, progress) -> float:
    started = time.perf_counter()
    steps = 10
    for step in range(1, steps + 1):
        sim.run_until(duration_s * 1000.0 * step / steps)
        elapsed = time.perf_counter() - started
        if progress is not None:
            rate = sim.events / elapsed if elapsed else 0.0
            eta = elapsed / step * (steps - step)
            print(f"  [{step * 100 // steps:3d}%] {sim.events:,} events, {rate:,.0f}/s, eta {eta:.1f} s", file=progress)
    return time.perf_counter() - started


def run_benchmark(*, nodes: int = 5, duration_s: float = 20.0, seed: int = 1, progress=sys.stderr) -> BenchmarkResult:
    config = Config(heartbeat_interval_ms=10.0, election_timeout_ms=100.0)
    sim = Simulation(seed=seed, node_ids=range(1, nodes + 1), actor_factory=lambda n: HeartbeatDetector(), config=config)
    Nemesis(sim, NEMESIS_KINDS).start(heal_at_ms=duration_s * 1000.0 * 0.8)
    sim.start()
    wall = _run_with_progress(sim, duration_s, progress)
    return BenchmarkResult(nodes, duration_s, wall, sim.events)


def run_raft_benchmark(
    *, nodes: int = 5, duration_s: float = 60.0, rate_per_s: float = 100.0, faults: bool = False, seed: int = 1,
    progress=sys.stderr,
) -> BenchmarkResult:
    """Simulated seconds per wall second for a raft cluster under a steady proposal load
    (issue target: at least 20, aiming for 50, for 5 nodes at 100 writes/s)."""
    founders = list(range(1, nodes + 1))
    sim = Simulation(seed=seed, node_ids=founders, actor_factory=ACTORS["raft"](founders), config=Config())
    load = ProposalLoad(sim, 1000.0 / rate_per_s, stop_at_ms=duration_s * 1000.0, to_leader=True)
    load.start()
    if faults:
        Nemesis(sim, NEMESIS_KINDS).start(heal_at_ms=duration_s * 1000.0 * 0.8)
    sim.start()
    wall = _run_with_progress(sim, duration_s, progress)
    label = f"raft, {rate_per_s:g} writes/s" + (", all faults" if faults else "")
    return BenchmarkResult(nodes, duration_s, wall, sim.events, label=label, acknowledged=load.count_acknowledged())
