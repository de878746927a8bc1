"""The nemesis: faults injected on a seeded schedule, then one final heal.

Every `interval_ms` (drawn from a range) it picks one enabled fault kind, applies it, and
schedules its undo after a drawn duration. At `heal_at_ms` it undoes everything still in
force: the network heals, noise stops, paused nodes resume, crashed nodes restart (a node
that halted on corrupt storage stays down: it needs an operator), disks get their space
back, clocks stop drifting. A run then has a quiet period in which liveness is judged.

Kinds (``--nemesis`` takes a comma list of these, or ``all``):

    partition   isolate a node / random halves / majorities ring / bridge / one-way cut
    clog        hold all of one node's traffic for a while
    noise       message loss, duplication and reordering on every link
    crash       kill a node (unsynced writes lost, torn or garbled) and restart it later
    pause       SIGSTOP-like pause and resume
    clock       clock jumps (skew) and drift
    disk        EIO on the next operations, a full disk, a bit flipped at rest
"""

from dataclasses import dataclass, field
from typing import Sequence

from raftlite.sim.disk import CRASH_MODES
from raftlite.sim.network import bridge, halves, isolate, majorities_ring, one_way
from raftlite.sim.rng import derive_rng
from raftlite.sim.simulation import NodeState, Simulation

__all__ = ["NEMESIS_KINDS", "Nemesis", "NemesisError", "parse_nemesis_list"]

NEMESIS_KINDS = ("partition", "clog", "noise", "crash", "pause", "clock", "disk")
PARTITION_SHAPES = ("isolate", "halves", "majorities-ring", "bridge", "one-way")


class NemesisError(ValueError):
    pass


def parse_nemesis_list(text: str) -> tuple[str, ...]:
    """'all', 'none', '' or a comma list of kinds; a clear error names what is unknown."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    if text == "all":
        return NEMESIS_KINDS
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in NEMESIS_KINDS]
    if unknown:
        raise NemesisError(
            f"unknown nemesis {', '.join(unknown)}; choose from {', '.join(NEMESIS_KINDS)} or 'all'"
        )
    return tuple(dict.fromkeys(kinds))


@dataclass
class Nemesis:
    sim: Simulation
    kinds: Sequence[str]
    interval_ms: tuple[float, float] = (300.0, 2000.0)
    duration_ms: tuple[float, float] = (200.0, 3000.0)
    injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = derive_rng(self.sim.seed, "nemesis")
        self.base_profile = self.sim.network.default_profile
        self.heal_at_ms = 0.0

    def start(self, heal_at_ms: float) -> None:
        self.heal_at_ms = heal_at_ms
        if self.kinds:
            self.sim.call_later(self.rng.uniform(*self.interval_ms), self._tick)
        self.sim.call_later(max(0.0, heal_at_ms - self.sim.now_ms), self.heal_all)

    # -- schedule ------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.sim.now_ms >= self.heal_at_ms:
            return
        kind = self.rng.choice(list(self.kinds))
        self.injected[kind] = self.injected.get(kind, 0) + 1
        getattr(self, "_" + kind)(self.rng.uniform(*self.duration_ms))
        self.sim.call_later(self.rng.uniform(*self.interval_ms), self._tick)

    def _later(self, delay_ms: float, callback, *args) -> None:
        """Undo a fault after `delay_ms`, unless the final heal comes first."""
        if self.sim.now_ms + delay_ms < self.heal_at_ms:
            self.sim.call_later(delay_ms, callback, *args)

    def _note(self, text: str) -> None:
        self.sim.trace.record(self.sim.now_ms, None, "nemesis", {"fault": text})

    def _random_node(self, states: Sequence[str] = (NodeState.UP,)) -> int | None:
        candidates = [n for n in self.sim.node_ids if self.sim.nodes[n].state in states]
        return self.rng.choice(candidates) if candidates else None

    # -- fault kinds ---------------------------------------------------------------------

    def _partition(self, duration_ms: float) -> None:
        sim, nodes, rng = self.sim, self.sim.node_ids, self.rng
        shape = rng.choice(PARTITION_SHAPES)
        if shape == "isolate":
            blocked = isolate(rng.choice(nodes), nodes)
        elif shape == "halves":
            blocked = halves(nodes, rng)
        elif shape == "majorities-ring":
            blocked = majorities_ring(nodes, rng)
        elif shape == "bridge":
            blocked = bridge(nodes, rng)
        else:
            node = rng.choice(nodes)
            others = [n for n in nodes if n != node]
            blocked = one_way([node], others) if rng.random() < 0.5 else one_way(others, [node])
        sim.partition(blocked, shape)
        self._later(duration_ms, sim.heal)

    def _clog(self, duration_ms: float) -> None:
        self.sim.clog(self.rng.choice(self.sim.node_ids), round(duration_ms, 3))

    def _noise(self, duration_ms: float) -> None:
        rng = self.rng
        self.sim.adjust_network(
            loss_probability=round(rng.uniform(0.0, 0.3), 3),
            duplicate_probability=round(rng.uniform(0.0, 0.2), 3),
            reorder_probability=round(rng.uniform(0.0, 0.3), 3),
        )
        self._later(duration_ms, self._quiet_network)

    def _quiet_network(self) -> None:
        base = self.base_profile
        self.sim.adjust_network(
            loss_probability=base.loss_probability,
            duplicate_probability=base.duplicate_probability,
            reorder_probability=base.reorder_probability,
        )

    def _crash(self, duration_ms: float) -> None:
        node = self._random_node((NodeState.UP, NodeState.PAUSED))
        if node is None:
            return
        self.sim.crash(node, self.rng.choice(CRASH_MODES + (None,)))
        self._later(duration_ms, self._restart_if_crashed, node)

    def _restart_if_crashed(self, node: int) -> None:
        if self.sim.nodes[node].state == NodeState.CRASHED:
            self.sim.restart(node)

    def _pause(self, duration_ms: float) -> None:
        node = self._random_node()
        if node is None:
            return
        self.sim.pause(node)
        self._later(duration_ms, self.sim.resume, node)

    def _clock(self, duration_ms: float) -> None:
        node = self.rng.choice(self.sim.node_ids)
        if self.rng.random() < 0.5:
            self.sim.skew_clock(node, round(self.rng.uniform(-2000.0, 2000.0), 3))
        else:
            self.sim.drift_clock(node, round(self.rng.uniform(0.5, 2.0), 3))
            self._later(duration_ms, self.sim.drift_clock, node, 1.0)

    def _disk(self, duration_ms: float) -> None:
        node = self.rng.choice(self.sim.node_ids)
        fault = self.rng.choice(("eio", "full", "corrupt"))
        if fault == "eio":
            self.sim.disk_errors(node, self.rng.randint(1, 5))
        elif fault == "full":
            self.sim.fill_disk(node)
            self._later(duration_ms, self.sim.disk_capacity, node, None)
        else:
            self.sim.corrupt(node)

    # -- the final heal ------------------------------------------------------------------

    def heal_all(self) -> None:
        sim = self.sim
        self._note("final heal")
        sim.heal()
        self._quiet_network()
        for node_id in sim.node_ids:
            node = sim.nodes[node_id]
            if node.disk.profile.capacity_bytes is not None:
                sim.disk_capacity(node_id, None)
            if node.clock.rate != 1.0:
                sim.drift_clock(node_id, 1.0)
            if node.state == NodeState.PAUSED:
                sim.resume(node_id)
            elif node.state == NodeState.CRASHED:
                sim.restart(node_id)
