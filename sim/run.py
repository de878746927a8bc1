"""One seeded simulation run from start to summary: what `raftlite sim run` and each seed
of `raftlite sim check` do, and what `raftlite sim shrink` replays from an explicit fault
event list.

The pieces (`build_simulation`, `attach_checkers`, `start_load`, `finish_run`) are shared
with scenario scripts (`raftlite.sim.scenario`), so that a script printed by the shrinker
builds, loads, faults and judges a run exactly as `run_simulation` does.
"""

import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence, TextIO

from ..actors.config import Config
from ..actors.database import DatabaseNode
from ..actors.heartbeat import HeartbeatDetector
from ..actors.raft_node import Propose, ProposeResult, RaftNode, settings_from_config
from ..core.raft import SAFE, UnsafeSwitches
from ..core.raft_types import Configuration, Role
from .cluster_faults import CLUSTER_FAULT_KINDS, extra_nodes_for, install_voter_minority_guard
from .coverage import attach_coverage
from .database_workload import KeyValueLoad
from .fault_points import FaultPoints, swarm_fault_points
from .liveness import LIVENESS_BUDGET_ELECTION_TIMEOUTS, LivenessMode
from .durability_checker import DurabilityChecker
from .liveness import RecoveryProbe
from .nemesis import FaultEvent, Nemesis
from .raft_checkers import RaftChecker
from .raft_load import RaftLoad
from .rng import derive_rng
from .simulation import Simulation, SimulationFailure
from .trace import Trace

__all__ = [
    "ACTORS", "ProposalLoad", "RunSummary", "UnsafeSwitchError", "attach_checkers", "build_simulation",
    "finish_run", "leader_of", "parse_unsafe", "run_config", "run_simulation", "start_load", "swarm_config",
    "violation_checker",
]


class UnsafeSwitchError(ValueError):
    pass


UNSAFE_SWITCH_NAMES = tuple(f.name for f in fields(UnsafeSwitches))


def parse_unsafe(names: Sequence[str]) -> UnsafeSwitches:
    """Switch names (core/raft.py `UnsafeSwitches`) -> the switches; a clear error names
    what is unknown."""
    names = [name.strip() for text in names for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in UNSAFE_SWITCH_NAMES]
    if unknown:
        raise UnsafeSwitchError(f"unknown unsafe switch {', '.join(unknown)}; choose from {', '.join(UNSAFE_SWITCH_NAMES)}")
    return UnsafeSwitches(**{name: True for name in names})


def _raft_settings(config: Config | None, unsafe: UnsafeSwitches):
    # With every switch off the node computes its settings itself, exactly as in production.
    if unsafe == SAFE:
        return None
    return replace(settings_from_config(config or Config()), unsafe=unsafe)


def _heartbeat(founders: Sequence[int], config: Config | None = None, unsafe: UnsafeSwitches = SAFE) -> Callable[[int], Any]:
    return lambda node_id: HeartbeatDetector()


def _raft(founders: Sequence[int], config: Config | None = None, unsafe: UnsafeSwitches = SAFE) -> Callable[[int], Any]:
    bootstrap = Configuration.of({node: Role.VOTER for node in founders})
    settings = _raft_settings(config, unsafe)
    return lambda node_id: RaftNode(bootstrap=bootstrap if node_id in founders else None, settings=settings)


def _database(founders: Sequence[int], config: Config | None = None, unsafe: UnsafeSwitches = SAFE) -> Callable[[int], Any]:
    bootstrap = Configuration.of({node: Role.VOTER for node in founders})
    settings = _raft_settings(config, unsafe)
    return lambda node_id: DatabaseNode(bootstrap=bootstrap if node_id in founders else None, settings=settings)


# Actors a run can drive, by name: each builder takes the founding members' ids (and
# optionally the run's config and unsafe switches) and returns the factory the simulator
# calls for every (re)start of a node.
ACTORS: dict[str, Callable[..., Callable[[int], Any]]] = {
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
    # Named interesting path -> times this run reached it (sim/coverage.py).
    coverage: dict[str, int] = field(default_factory=dict)
    # Liveness mode (sim/liveness.py): the quorum core healed at the end of chaos.
    liveness_core: tuple[int, ...] | None = None
    # Enabled fault point -> {"probability": p (None when replayed), "fired": n}.
    fault_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every fault injected (nemesis events and fault-point firings), in time order: the
    # list `run_simulation(replay=...)` takes back.
    fault_events: tuple[FaultEvent, ...] = ()
    unsafe: tuple[str, ...] = ()

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
            "fault points " + (", ".join(
                f"{name} fired {point['fired']}" + (f" (p={point['probability']:g})" if point["probability"] is not None else "")
                for name, point in self.fault_points.items()) or "none"),
        ]
        if self.unsafe:
            lines.append("UNSAFE switches on: " + ", ".join(self.unsafe))
        if self.acknowledged:
            recovery = f"{self.recovery_ms:.0f} ms" if self.recovery_ms is not None else "never"
            lines.append(f"acknowledged writes {self.acknowledged}; after the final heal a write committed in {recovery}")
        for node_id, status in self.status.items():
            details = " ".join(f"{key}={value}" for key, value in status.items())
            lines.append(f"  n{node_id}: {details}")
        if self.violation:
            lines.append(f"SAFETY VIOLATION ({violation_checker(self.violation)}): {self.violation}")
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
    """The lowest-numbered up node that believes it leads, or None."""
    leaders = sim.leaders()
    return leaders[0] if leaders else None


def _propose_probe(sim: Simulation, leader: int):
    return sim.submit(leader, Propose(data=b"liveness-probe")), lambda answer: isinstance(answer, ProposeResult)


def _await_recovery(sim: Simulation, limit_ms: float, probe=_propose_probe,
                    nodes: Sequence[int] | None = None) -> float | None:
    """After the final heal: the exact time until a leader (among `nodes`, default all)
    commits a fresh write, up to the delivery of its reply, or None after `limit_ms`.
    `probe(sim, leader)` sends one write and returns (client, is_success)."""
    return RecoveryProbe(sim, sim.node_ids if nodes is None else nodes, probe).run(limit_ms)


def violation_checker(violation: str) -> str:
    """Which checker a violation message comes from ("election safety", "log matching",
    ..., or "invariant" for a raft invariant broken inside a node)."""
    _, _, message = violation.partition(" ms: ")
    name = message.split(":", 1)[0].strip()
    return "invariant" if name.startswith("node ") else name


def run_config(seed: int, actor: str, config: Config | None = None) -> Config:
    """The config a run of `actor` gets: the seed's swarm settings for raft and database."""
    if config is None:
        if actor in ("raft", "database"):
            # Database snapshots are whole SQLite files: chunks of a few bytes would make
            # every InstallSnapshot thousands of round trips.
            config = swarm_config(seed, small_snapshots=actor == "raft")
        else:
            config = Config()
    return config.validate()


def build_simulation(*, seed: int, nodes: int, actor: str, config: Config, unsafe: UnsafeSwitches = SAFE,
                     trace: Trace | None = None, extra_nodes: int = 0) -> Simulation:
    """Nodes 1..nodes are the founding members; `extra_nodes` more start with no configuration
    (membership changes may then shrink or grow the voters: damage at rest is kept to a
    minority of the current voters, not of the founders)."""
    founders = list(range(1, nodes + 1))
    sim = Simulation(
        seed=seed, node_ids=range(1, nodes + extra_nodes + 1), actor_factory=ACTORS[actor](founders, config, unsafe),
        config=config, trace=trace, scratch_dir=actor == "database",
    )
    if extra_nodes and actor in ("raft", "database"):
        install_voter_minority_guard(sim)
    return sim


CHECKER_SETS = ("all", "end-to-end")


def attach_checkers(sim: Simulation, actor: str, checkers: str = "all") -> RaftChecker | None:
    """The safety checkers a run of `actor` has beside it (before the nodes start).
    `checkers="end-to-end"` leaves out the durability checker, which judges every send by
    construction: to see whether a bug also does visible harm (two leaders, diverging
    logs, a lost write), as shrinking a planted bug to its fault schedule wants."""
    if actor not in ("raft", "database"):
        return None
    checker = RaftChecker(sim).attach()
    sim.actor_hooks.append(checker.instrument)
    if checkers == "all":
        DurabilityChecker(sim).attach()
    return checker


def start_load(sim: Simulation, actor: str, interval_ms: float, stop_at_ms: float):
    """The client load of a run: proposals (raft) or key-value transactions (database)."""
    if actor == "raft":
        load = RaftLoad(sim, interval_ms, stop_at_ms=stop_at_ms)
    elif actor == "database":
        load = KeyValueLoad(sim, interval_ms, stop_at_ms=stop_at_ms)
    else:
        return None
    load.start()
    return load


def acknowledged_writes(load, actor: str) -> int:
    if load is None:
        return 0
    return load.acknowledged if actor == "database" else load.count_acknowledged()


def finish_run(sim: Simulation, checker: RaftChecker | None, load, actor: str,
               quiet_period_ms: float | None = None,
               liveness: LivenessMode | None = None) -> tuple[float | None, list[str]]:
    """After the final heal: wait for a write to commit (TigerBeetle's liveness mode: within
    10 x the maximum election timeout), let the cluster settle, check convergence.
    Returns (recovery time or None, problems). A safety violation raises SimulationFailure."""
    # Ten of the longest (randomized: twice the base) election timeouts.
    liveness_limit = LIVENESS_BUDGET_ELECTION_TIMEOUTS * 2 * sim.config.election_timeout_ms
    quiet = quiet_period_ms if quiet_period_ms is not None else liveness_limit
    if checker is None:
        sim.run_for(quiet)
        return None, []
    probe = (lambda sim_, leader: load.probe(leader)) if actor == "database" and load is not None else _propose_probe
    problems: list[str] = []
    if liveness is not None:
        liveness.heal_core()
    recovery_ms = _await_recovery(sim, liveness_limit, probe)
    if recovery_ms is None:
        who = f"the core {list(liveness.core)}" if liveness is not None else "the cluster"
        problems.append(f"liveness: {who} committed no write within {liveness_limit:.0f} ms of the final heal")
    sim.run_for(max(0.0, quiet - (recovery_ms or liveness_limit)) + 4 * sim.config.heartbeat_interval_ms)
    if liveness is None:
        # (In liveness mode the nodes outside the core stay broken, and a core node that a
        # permanent fault cuts off from a leader outside the core rightly stays behind:
        # what is required there is the commit above.)
        problems.extend(checker.check_convergence())
    if actor == "database" and load is not None:
        problems.extend(load.check())
    return recovery_ms, problems


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
    fault_points: tuple[str, ...] = (),
    unsafe: UnsafeSwitches = SAFE,
    replay: Sequence[FaultEvent] | None = None,
    stop_at_ms: float | None = None,
    checkers: str = "all",
    liveness: bool = False,
    liveness_core_size: int | None = None,
) -> tuple[RunSummary, Simulation]:
    """Run `duration_ms` with faults, heal everything, then a quiet period to settle.

    With the raft actor, a client load proposes throughout, the safety checkers run
    after every step, and after the heal a write must commit within 10 x the maximum
    election timeout (TigerBeetle's liveness mode).

    `fault_points` are the points the seed may enable (swarm: it draws its own subset);
    `replay` replaces the seed's drawn faults (nemesis and fault points) by exactly these
    events; `stop_at_ms` (before the heal) ends the run there, with no liveness phase
    (shrinking needs only to know whether a safety violation comes by then)."""
    config = run_config(seed, actor, config)
    trace = Trace(keep=keep_trace, sink=trace_sink)
    if actor == "database":
        # The key-value load's replica checks do not know membership yet (a removed or a
        # never-added node holds no rows): the cluster-aware kinds wait for that.
        nemesis = tuple(kind for kind in nemesis if kind not in CLUSTER_FAULT_KINDS)
    fault_kinds = set(nemesis) | {event.kind for event in replay or ()}
    sim = build_simulation(seed=seed, nodes=nodes, actor=actor, config=config, unsafe=unsafe, trace=trace,
                           extra_nodes=extra_nodes_for(fault_kinds, actor))
    checker = attach_checkers(sim, actor, checkers)
    coverage = attach_coverage(sim, actor, checker)
    liveness_mode = None
    load = points = chaos = None
    violation = None
    problems: list[str] = []
    recovery_ms = None
    started = time.perf_counter()
    try:
        # In this order, as a scenario script does it (`nodes`, `load`, `fault`...,
        # `heal-at`): the fault points watch from the first event after the start.
        sim.start()
        load = start_load(sim, actor, proposal_interval_ms, duration_ms)
        if coverage is not None and hasattr(load, "on_path"):
            load.on_path = coverage.hit
        if replay is not None:
            points = FaultPoints(sim, replay=replay)
        elif fault_points:
            points = FaultPoints(sim, swarm_fault_points(seed, fault_points))
        chaos = Nemesis(sim, nemesis, replay=replay, fault_points=points)
        if liveness:
            # The end of chaos heals only a quorum core (sim/liveness.py) instead of everything.
            liveness_mode = LivenessMode(sim, chaos, liveness_core_size)
            chaos.heal_all = liveness_mode.heal_core
        chaos.start(heal_at_ms=duration_ms)
        if stop_at_ms is not None and stop_at_ms < duration_ms:
            sim.run_until(stop_at_ms)
        else:
            sim.run_until(duration_ms)
            recovery_ms, problems = finish_run(sim, checker, load, actor, quiet_period_ms, liveness_mode)
    except SimulationFailure as failure:
        violation = str(failure)
    wall = time.perf_counter() - started
    summary = RunSummary(
        seed=seed, nodes=nodes, simulated_ms=sim.now_ms, wall_seconds=wall, events=sim.events,
        trace_events=trace.count, trace_hash=trace.hexdigest(), faults=dict(chaos.injected) if chaos else {},
        status=sim.status(), violation=violation, problems=tuple(problems),
        acknowledged=acknowledged_writes(load, actor), recovery_ms=recovery_ms,
        fault_points=points.summary() if points is not None else {}, fault_events=tuple(chaos.events) if chaos else (),
        unsafe=unsafe.enabled(), coverage=dict(coverage.counts) if coverage is not None else {},
        liveness_core=liveness_mode.core if liveness_mode is not None else None,
    )
    return summary, sim
