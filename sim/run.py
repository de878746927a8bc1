"""One seeded simulation run from start to summary: what `raftlite sim run` does."""

import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from raftlite.actors.config import Config
from raftlite.actors.heartbeat import HeartbeatDetector
from raftlite.sim.nemesis import Nemesis
from raftlite.sim.simulation import Simulation
from raftlite.sim.trace import Trace

__all__ = ["ACTORS", "RunSummary", "run_simulation"]

# Actors a run can drive, by name. Later work adds the raft node and the database.
ACTORS: dict[str, Callable[[int], Any]] = {
    "heartbeat": lambda node_id: HeartbeatDetector(),
}


@dataclass(frozen=True, slots=True)
class RunSummary:
    seed: int
    nodes: int
    simulated_ms: float
    wall_seconds: float
    events: int
    trace_events: int
    trace_hash: str
    faults: dict[str, int]
    status: dict[int, dict[str, Any]]

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def render(self) -> str:
        lines = [
            f"seed {self.seed}: {self.nodes} nodes, {self.simulated_ms / 1000:.1f} simulated s "
            f"in {self.wall_seconds:.2f} wall s ({self.simulated_ms / 1000 / max(self.wall_seconds, 1e-9):.1f}x)",
            f"events {self.events} ({self.events_per_second:,.0f}/s), trace lines {self.trace_events}",
            "faults " + (", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"),
        ]
        for node_id, status in self.status.items():
            details = " ".join(f"{key}={value}" for key, value in status.items())
            lines.append(f"  n{node_id}: {details}")
        lines.append(f"trace hash {self.trace_hash}")
        return "\n".join(lines)


def run_simulation(
    *,
    seed: int,
    nodes: int,
    duration_ms: float,
    nemesis: tuple[str, ...] = (),
    actor: str = "heartbeat",
    config: Config | None = None,
    trace_sink: TextIO | None = None,
    keep_trace: bool = False,
    quiet_period_ms: float | None = None,
) -> tuple[RunSummary, Simulation]:
    """Run `duration_ms` with faults, heal everything, then a quiet period to settle."""
    config = (config or Config()).validate()
    trace = Trace(keep=keep_trace, sink=trace_sink)
    sim = Simulation(
        seed=seed, node_ids=range(1, nodes + 1), actor_factory=ACTORS[actor], config=config, trace=trace,
    )
    quiet = quiet_period_ms if quiet_period_ms is not None else 10 * 2 * config.election_timeout_ms
    chaos = Nemesis(sim, nemesis)
    started = time.perf_counter()
    sim.start()
    chaos.start(heal_at_ms=duration_ms)
    sim.run_until(duration_ms + quiet)
    wall = time.perf_counter() - started
    summary = RunSummary(
        seed=seed, nodes=nodes, simulated_ms=sim.now_ms, wall_seconds=wall, events=sim.events,
        trace_events=trace.count, trace_hash=trace.hexdigest(), faults=dict(chaos.injected),
        status=sim.status(),
    )
    return summary, sim
