"""One seeded simulation run from start to summary: what `raftlite sim run` and each seed
of `raftlite sim check` do."""

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TextIO

from raftlite.actors.config import Config
from raftlite.actors.heartbeat import HeartbeatDetector
from raftlite.actors.raft_node import Propose, ProposeResult, RaftNode
from raftlite.core.raft import State
from raftlite.core.raft_types import Configuration, Role
from raftlite.sim.nemesis import Nemesis
from raftlite.sim.durability_checker import DurabilityChecker
from raftlite.sim.raft_checkers import RaftChecker
from raftlite.sim.rng import derive_rng
from raftlite.sim.simulation import NodeState, Simulation, SimulationFailure
from raftlite.sim.trace import Trace

__all__ = ["ACTORS", "ProposalLoad", "RunSummary", "leader_of", "run_simulation", "swarm_config"]


def _heartbeat(founders: Sequence[int]) -> Callable[[int], Any]:
    return lambda node_id: HeartbeatDetector()


def _raft(founders: Sequence[int]) -> Callable[[int], Any]:
    bootstrap = Configuration.of({node: Role.VOTER for node in founders})
    return lambda node_id: RaftNode(bootstrap=bootstrap if node_id in founders else None)


def _database(founders: Sequence[int]) -> Callable[[int], Any]:
    from raftlite.actors.database import DatabaseNode

    bootstrap = Configuration.of({node: Role.VOTER for node in founders})
    return lambda node_id: DatabaseNode(bootstrap=bootstrap if node_id in founders else None)


# Actors a run can drive, by name: each builder takes the founding members' ids and
# returns the factory the simulator calls for every (re)start of a node.
ACTORS: dict[str, Callable[[Sequence[int]], Callable[[int], Any]]] = {
    "heartbeat": _heartbeat,
    "raft": _raft,
    "database": _database,
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
    violation: str | None = None
    problems: tuple[str, ...] = ()
    acknowledged: int = 0
    recovery_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.violation is None and not self.problems

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
        if self.acknowledged:
            recovery = f"{self.recovery_ms:.0f} ms" if self.recovery_ms is not None else "never"
            lines.append(f"acknowledged writes {self.acknowledged}; after the final heal a write committed in {recovery}")
        for node_id, status in self.status.items():
            details = " ".join(f"{key}={value}" for key, value in status.items())
            lines.append(f"  n{node_id}: {details}")
        if self.violation:
            lines.append(f"SAFETY VIOLATION: {self.violation}")
        for problem in self.problems:
            lines.append(f"PROBLEM: {problem}")
        lines.append(f"trace hash {self.trace_hash}")
        return "\n".join(lines)


@dataclass
class ProposalLoad:
    """Proposes a steady stream of commands, each to a random up node (clients do not
    know the leader; a refusal is part of the workload)."""

    sim: Simulation
    interval_ms: float
    stop_at_ms: float
    to_leader: bool = False   # a client that already found the leader (benchmarks)
    sent: int = 0
    acknowledged: int = 0
    clients: list = field(default_factory=list)

    def start(self) -> None:
        self.rng = self.sim.rng
        self.sim.call_later(self.interval_ms, self._tick)

    def _tick(self) -> None:
        if self.sim.now_ms >= self.stop_at_ms:
            return
        up = self.sim.up_nodes()
        target = leader_of(self.sim) if self.to_leader else (self.rng.choice(up) if up else None)
        if target is not None:
            self.sent += 1
            self.clients.append(self.sim.submit(target, Propose(data=b"w%d" % self.sent)))
        self.sim.call_later(self.interval_ms, self._tick)

    def count_acknowledged(self) -> int:
        return sum(1 for c in self.clients for r in self.sim.replies.get(c, ()) if isinstance(r, ProposeResult))


def swarm_config(seed: int, *, small_snapshots: bool = True) -> Config:
    """Per-seed settings (swarm testing): small limits and fast timeouts make elections,
    probing, flow control, segment roll-over, compaction and InstallSnapshot frequent."""
    rng = derive_rng(seed, "swarm-config")
    election_timeout_ms = rng.choice((300.0, 500.0, 1000.0))
    threshold = rng.choice((16, 64, 256, 1024))
    return Config(
        election_timeout_ms=election_timeout_ms,
        heartbeat_interval_ms=election_timeout_ms / rng.choice((5, 10)),
        append_entries_max=rng.choice((1, 4, 64, 512)),
        inflight_appends_max=rng.choice((1, 4, 64)),
        snapshot_threshold_entries=threshold,
        snapshot_trailing_entries=rng.choice((1, threshold // 4)),
        snapshot_chunk_bytes=rng.choice((8, 64, 256 << 10) if small_snapshots else (1 << 10, 16 << 10, 256 << 10)),
        segment_bytes_max=rng.choice((1024, 16 << 10, 8 << 20)),
    ).validate()


def leader_of(sim: Simulation) -> int | None:
    for node_id in sim.node_ids:
        raft = getattr(sim.nodes[node_id].actor, "raft", None)
        if raft is not None and raft.state == State.LEADER and sim.nodes[node_id].state == NodeState.UP:
            return node_id
    return None


def _propose_probe(sim: Simulation, leader: int):
    return sim.submit(leader, Propose(data=b"liveness-probe")), lambda answer: isinstance(answer, ProposeResult)


def _await_recovery(sim: Simulation, limit_ms: float, probe=_propose_probe) -> float | None:
    """After the final heal: time until a leader commits a fresh write, or None.
    `probe(sim, leader)` sends one write and returns (client, is_success)."""
    started = sim.now_ms
    pending, succeeded, sent_at = None, None, 0.0
    while sim.now_ms - started < limit_ms:
        leader = leader_of(sim)
        answers = sim.replies.get(pending, ()) if pending is not None else ()
        if any(succeeded(answer) for answer in answers):
            return sim.now_ms - started
        # A new probe when there is none, the last was refused, or it went unanswered
        # for an election timeout (its node may have crashed).
        stale = sim.now_ms - sent_at > sim.config.election_timeout_ms
        if leader is not None and (pending is None or answers or stale):
            pending, succeeded = probe(sim, leader)
            sent_at = sim.now_ms
        sim.run_for(10.0)
    return None


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
    proposal_interval_ms: float = 20.0,
) -> tuple[RunSummary, Simulation]:
    """Run `duration_ms` with faults, heal everything, then a quiet period to settle.

    With the raft actor, a client load proposes throughout, the safety checkers run
    after every step, and after the heal a write must commit within 10 x the maximum
    election timeout (TigerBeetle's liveness mode)."""
    if config is None:
        if actor in ("raft", "database"):
            # Database snapshots are whole SQLite files: chunks of a few bytes would make
            # every InstallSnapshot thousands of round trips.
            config = swarm_config(seed, small_snapshots=actor == "raft")
        else:
            config = Config()
    config = config.validate()
    trace = Trace(keep=keep_trace, sink=trace_sink)
    founders = list(range(1, nodes + 1))
    sim = Simulation(
        seed=seed, node_ids=founders, actor_factory=ACTORS[actor](founders), config=config, trace=trace,
        scratch_dir=actor == "database",
    )
    liveness_limit = 10 * 2 * config.election_timeout_ms
    quiet = quiet_period_ms if quiet_period_ms is not None else liveness_limit
    chaos = Nemesis(sim, nemesis)
    checker = None
    load = None
    probe = _propose_probe
    if actor in ("raft", "database"):
        checker = RaftChecker(sim).attach()
        sim.actor_hooks.append(checker.instrument)
        DurabilityChecker(sim).attach()
    if actor == "raft":
        load = ProposalLoad(sim, proposal_interval_ms, stop_at_ms=duration_ms)
        load.start()
    elif actor == "database":
        from raftlite.sim.database_workload import KeyValueLoad

        load = KeyValueLoad(sim, proposal_interval_ms, stop_at_ms=duration_ms)
        load.start()
        probe = lambda sim_, leader: load.probe(leader)  # noqa: E731
    violation = None
    problems: list[str] = []
    recovery_ms = None
    started = time.perf_counter()
    try:
        sim.start()
        chaos.start(heal_at_ms=duration_ms)
        sim.run_until(duration_ms)
        if checker is not None:
            recovery_ms = _await_recovery(sim, liveness_limit, probe)
            if recovery_ms is None:
                problems.append(f"liveness: no write committed within {liveness_limit:.0f} ms of the final heal")
            sim.run_for(max(0.0, quiet - (recovery_ms or liveness_limit)) + 4 * config.heartbeat_interval_ms)
            problems.extend(checker.check_convergence())
            if actor == "database":
                problems.extend(load.check())
        else:
            sim.run_until(duration_ms + quiet)
    except SimulationFailure as failure:
        violation = str(failure)
    wall = time.perf_counter() - started
    summary = RunSummary(
        seed=seed, nodes=nodes, simulated_ms=sim.now_ms, wall_seconds=wall, events=sim.events,
        trace_events=trace.count, trace_hash=trace.hexdigest(), faults=dict(chaos.injected),
        status=sim.status(), violation=violation, problems=tuple(problems),
        acknowledged=(load.acknowledged if actor == "database" else load.count_acknowledged()) if load else 0,
        recovery_ms=recovery_ms,
    )
    return summary, sim
