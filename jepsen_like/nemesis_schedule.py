"""Nemesis schedules for jepsen_like runs in the simulator, with the intervals recorded.

Theory of operation
-------------------
`raftlite.sim.nemesis.Nemesis` already injects every fault the simulator supports on a
seeded schedule and heals everything at the end. `NemesisSchedule` extends it in two
ways that a Jepsen-style report needs:

- it records each fault as a `NemesisInterval` (kind, what exactly was done, when it
  started and when its undo is planned), which the report shades on its plots and the
  history carries as ``:nemesis`` info events, as Jepsen's does;
- it adds the Jepsen nemeses that need to know the cluster, not just the network:

      leader-partition  isolate the node that currently leads
      kill              crash one node, a minority, a majority or all of them at once,
                        restart them later
      membership        grow (add a spare node as standby, then promote it to voter)
                        and shrink (remove a voter that does not lead), 3 to 5 voters
      transfer          hand leadership to another voter (TimeoutNow)

Descriptions come from the trace: `FaultTrace` keeps the simulator's fault records
(partition, crash, clog, ...), and each fault's interval is described by the records it
produced. An interval's end is when its undo is scheduled (or the final heal, whichever
comes first); a later fault of another kind may end it earlier (one heal clears every
partition), so the intervals are what the nemesis did, not a proof of what held.
Instant faults (a clock jump, EIO on the next operations, a bit flip, a transfer) have
``end_ms == start_ms``.

Membership needs nodes outside the founding configuration: a run that enables it gives
the simulation `MEMBERSHIP_SPARE_NODES` extra nodes that start with no configuration
and wait to be added.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..actors.raft_node import ChangeMembership, TransferLeadership
from ..core.raft import REMOVED_FROM_CLUSTER, State
from ..core.raft_types import Role
from ..sim.disk import CRASH_MODES
from ..sim.nemesis import NEMESIS_KINDS, Nemesis, NemesisError, NemesisInterval, parse_kind_list
from ..sim.network import isolate
from ..sim.simulation import NodeState, Simulation
from ..sim.trace import Trace

__all__ = [
    "CLUSTER_NEMESIS_KINDS",
    "FaultTrace",
    "MEMBERSHIP_SPARE_NODES",
    "NEMESIS_CHOICES",
    "NemesisSchedule",
    "parse_nemesis_schedule",
]

CLUSTER_NEMESIS_KINDS = ("leader-partition", "kill", "membership", "transfer")
# The simulator's kinds now include membership, transfer and leader-partition too; this schedule keeps its
# own (cluster-aware, recorded) versions of those, in their place at the end.
NEMESIS_CHOICES = tuple(kind for kind in NEMESIS_KINDS if kind not in CLUSTER_NEMESIS_KINDS) + CLUSTER_NEMESIS_KINDS
MEMBERSHIP_SPARE_NODES = 2

# Simulator trace events that are faults or their undoing.
FAULT_EVENTS = frozenset({
    "partition", "heal", "clog", "network", "crash", "restart", "pause", "resume", "skew", "drift",
    "disk-fault", "disk-full", "corrupt",
})


def parse_nemesis_schedule(text: str) -> tuple[str, ...]:
    """'all', 'none', '' or a comma list of kinds (the simulator's and the cluster ones)."""
    return parse_kind_list(text, NEMESIS_CHOICES, "nemesis", NemesisError)


class FaultTrace(Trace):
    """A trace that also keeps the fault records (whatever else it keeps or writes)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.faults: list[tuple[float, int | None, str, dict]] = []

    def record(self, time_ms: float, node: int | None, kind: str, fields: dict[str, Any] | None = None) -> None:
        super().record(time_ms, node, kind, fields)
        if kind in FAULT_EVENTS:
            self.faults.append((time_ms, node, kind, dict(fields or {})))


# How long each kind's fault lasts: "planned" ends at the undo scheduled after the drawn
# duration; "instant" faults have no duration.
_INSTANT_KINDS = frozenset({"transfer"})


class NemesisSchedule(Nemesis):
    """The simulator's nemesis plus cluster-aware kinds, recording what it does.

    `founders` are the voters of the initial configuration; `spares` (membership only)
    are started nodes that belong to no configuration yet."""

    def __init__(self, sim: Simulation, kinds: Sequence[str], *, founders: Sequence[int],
                 spares: Sequence[int] = (), interval_ms: tuple[float, float] = (300.0, 2000.0),
                 duration_ms: tuple[float, float] = (200.0, 3000.0)) -> None:
        unknown = [kind for kind in kinds if kind not in NEMESIS_CHOICES]
        if unknown:
            raise NemesisError(f"unknown nemesis {', '.join(unknown)}")
        super().__init__(sim, tuple(kinds), interval_ms=interval_ms, duration_ms=duration_ms)
        self.founders = tuple(founders)
        self.spares = tuple(spares)
        self.intervals: list[NemesisInterval] = []
        self.heal_time_ms: float | None = None
        # Called with (kind, f, description) when a fault starts ("start-KIND"), when its
        # undo is due ("stop-KIND") and at the final heal ("final-heal").
        self.observers: list[Callable[[str, str, str], None]] = []
        self.voters_min = len(self.founders)
        self.voters_max = len(self.founders) + len(self.spares)

    # -- the schedule --------------------------------------------------------------------

    def _tick(self) -> None:
        if self.sim.now_ms >= self.heal_at_ms:
            return
        kind = self.rng.choice(list(self.kinds))
        self.injected[kind] = self.injected.get(kind, 0) + 1
        duration = self.rng.uniform(*self.duration_ms)
        faults = self._faults()
        before = len(faults) if faults is not None else 0
        started = self.sim.now_ms
        handler = {
            "leader-partition": self._leader_partition,
            "kill": self._kill,
            "membership": self._membership,
            "transfer": self._transfer,
        }.get(kind) or getattr(self, "_" + kind)
        note = handler(duration)
        produced = faults[before:] if faults is not None else []
        description = note or "; ".join(_describe_fault(record) for record in produced) or f"{kind} (no effect)"
        instant = kind in _INSTANT_KINDS or self._is_instant(kind, produced)
        end = started if instant else min(started + duration, self.heal_at_ms)
        self.intervals.append(NemesisInterval(kind=kind, start_ms=started, end_ms=end, description=description))
        self._announce(kind, f"start-{kind}", description)
        if end > started:
            self.sim.call_later(end - started, self._announce, kind, f"stop-{kind}", description)
        self.sim.call_later(self.rng.uniform(*self.interval_ms), self._tick)

    def _faults(self) -> list | None:
        return getattr(self.sim.trace, "faults", None)

    @staticmethod
    def _is_instant(kind: str, produced: list) -> bool:
        kinds = {record[2] for record in produced}
        if kind == "clock":
            return kinds == {"skew"}
        if kind == "disk":
            return "disk-full" not in kinds
        return False

    def _announce(self, kind: str, f: str, description: str) -> None:
        for observer in self.observers:
            observer(kind, f, description)

    def heal_all(self) -> None:
        self.heal_time_ms = self.sim.now_ms
        self._announce("heal", "final-heal", "every fault undone")
        super().heal_all()

    # -- cluster-aware kinds -------------------------------------------------------------

    def _leader(self) -> int | None:
        for node_id in self.sim.node_ids:
            node = self.sim.nodes[node_id]
            raft = getattr(node.actor, "raft", None)
            if node.state == NodeState.UP and raft is not None and raft.state == State.LEADER:
                return node_id
        return None

    def _leader_partition(self, duration_ms: float) -> str | None:
        leader = self._leader()
        if leader is None:
            return "leader-partition: no leader to isolate"
        self.sim.partition(isolate(leader, self.sim.node_ids), "isolate-leader")
        self._later(duration_ms, self.sim.heal)
        return f"isolate leader n{leader}"

    def _kill(self, duration_ms: float) -> str | None:
        candidates = [n for n in self.sim.node_ids if self.sim.nodes[n].state in (NodeState.UP, NodeState.PAUSED)]
        if not candidates:
            return "kill: every node is already down"
        size = len(self.sim.node_ids)
        how_many = {"one": 1, "minority": (size - 1) // 2, "majority": size // 2 + 1, "all": size}
        target = self.rng.choice(tuple(how_many))
        victims = sorted(self.rng.sample(candidates, min(len(candidates), max(1, how_many[target]))))
        modes = []
        for node in victims:
            mode = self.rng.choice(CRASH_MODES + (None,))
            modes.append(mode or "mixed")
            self.sim.crash(node, mode)
        self._later(duration_ms, self._restart_all, tuple(victims))
        return f"kill {target}: " + ", ".join(f"n{node} ({mode})" for node, mode in zip(victims, modes))

    def _restart_all(self, nodes: tuple[int, ...]) -> None:
        for node in nodes:
            self._restart_if_crashed(node)

    def _membership(self, duration_ms: float) -> str | None:
        leader = self._leader()
        if leader is None:
            return "membership: no leader"
        configuration = self.sim.nodes[leader].actor.raft.configuration
        voters = configuration.voters
        standbys = [n for n, role in configuration.members if role == Role.STANDBY]
        # A node the leader told it was removed has halted; adding it back restarts it,
        # as an operator starts it again to rejoin.
        outsiders = [n for n in self.sim.node_ids if configuration.role(n) is None
                     and (self.sim.nodes[n].state == NodeState.UP or _halted_as_removed(self.sim.nodes[n]))]
        if standbys:
            node, role, verb = self.rng.choice(standbys), Role.VOTER, "promote"
        else:
            can_grow = len(voters) < self.voters_max and outsiders
            can_shrink = len(voters) > self.voters_min
            if can_grow and (not can_shrink or self.rng.random() < 0.5):
                node, role, verb = self.rng.choice(outsiders), Role.STANDBY, "add"
            elif can_shrink:
                node, role, verb = self.rng.choice([v for v in voters if v != leader]), None, "remove"
            else:
                return "membership: nothing to change"
        self.sim.submit(leader, ChangeMembership(node=node, role=role))
        if verb == "add" and _halted_as_removed(self.sim.nodes[node]):
            self.sim.restart(node)
        what = "voter" if role == Role.VOTER else ("standby" if role == Role.STANDBY else "nothing")
        return f"{verb} n{node} (becomes {what}) via leader n{leader}"

    def _transfer(self, duration_ms: float) -> str | None:
        leader = self._leader()
        if leader is None:
            return "transfer: no leader"
        voters = [v for v in self.sim.nodes[leader].actor.raft.configuration.voters if v != leader]
        if not voters:
            return "transfer: no other voter"
        target = self.rng.choice(voters)
        self.sim.submit(leader, TransferLeadership(target=target))
        return f"transfer leadership n{leader} -> n{target}"


def _describe_fault(record: tuple[float, int | None, str, dict]) -> str:
    _, node, kind, fields = record
    where = f"n{node} " if node is not None else ""
    if kind == "partition":
        blocked = fields.get("blocked", [])
        return f"partition {fields.get('kind', '')} ({len(blocked)} directed links cut)"
    if kind == "crash":
        return f"crash {where}".rstrip()
    details = " ".join(f"{key}={value}" for key, value in fields.items() if key != "unsynced")
    return f"{kind} {where}{details}".strip()


def _halted_as_removed(node) -> bool:
    return node.state == NodeState.HALTED and (node.halt_reason or "").startswith(REMOVED_FROM_CLUSTER)
