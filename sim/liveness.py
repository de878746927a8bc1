"""Liveness after the chaos phase: the exact recovery time of a fresh write, and the
liveness mode of `raftlite sim check --liveness` (TigerBeetle's VOPR).

Recovery time, measured. After the chaos phase a probe write goes to each up node the
moment it leads (a check after every step notices it), and the recovery
time is the simulated time from the heal to the delivery of the first successful reply:
the very event that delivers it (`Simulation.reply_observers`), with the simulation
stopped right there, not the next tick of a polling loop. A refused probe (a leader
that lost leadership, a transfer in progress) is sent again a heartbeat interval later
if that node still leads the same term; a new leader (a new term, a restarted node) gets
its own probe at once.

Liveness mode. The default final heal undoes every fault, and then every node must
converge. Liveness mode asks the harder question a production cluster faces: with a
minority still broken for good, does the rest make progress? At the end of the chaos
phase it heals a random quorum *core* only — a majority of the voters of the committed
configuration (and of every configuration appended after it, so that whichever of them
takes effect, the core is a quorum of it): the links among core nodes heal (partitions,
clogs and message noise between them end), crashed core nodes restart, paused ones
resume, their disks work again and their clocks run at the normal rate; fault points
stop. Every fault on the nodes outside the core stays as it is, for good. The core must
then commit a fresh write within `LIVENESS_BUDGET_ELECTION_TIMEOUTS` of the longest
(randomized) election timeouts; the safety checkers run throughout. Convergence of every
node is not required there: the nodes outside the core stay broken, and a core node
that a permanent fault cuts off from a leader outside the core rightly stays behind
(pre-vote and check-quorum keep it from deposing a leader that a quorum still hears).

Why not the default of `sim check`: the full heal also judges what liveness mode cannot
(every replica converges, a removed-then-re-added node catches up, the database actor's
replicas are byte-identical), and the safety mutations' catalogue relies on it; a VOPR
user gets liveness mode with one flag, and the standard test suite runs both.
"""

from dataclasses import replace
from typing import Any, Callable, Iterable

from ..core.raft import State
from ..core.raft_types import Configuration
from .nemesis import heal_node
from .rng import derive_rng
from .simulation import NodeState, Simulation

__all__ = [
    "LIVENESS_BUDGET_ELECTION_TIMEOUTS", "LivenessMode", "RecoveryProbe", "choose_core", "recovery_stats",
]

# The budget for the core's first commit after the heal (TigerBeetle's VOPR allows a
# fixed number of ticks; ten election timeouts leave room for several failed elections).
LIVENESS_BUDGET_ELECTION_TIMEOUTS = 10

# probe(sim, leader) -> (client, is_success(answer)): one write sent to `leader`.
Probe = Callable[[Simulation, int], tuple[Any, Callable[[Any], bool]]]


class RecoveryProbe:
    """Writes to whichever of `nodes` leads, and the exact time the first one commits."""

    def __init__(self, sim: Simulation, nodes: Iterable[int], probe: Probe) -> None:
        self.sim = sim
        self.nodes = tuple(nodes)
        self.probe = probe
        self.probed: set[tuple[int, int, int]] = set()     # (node, life, term) with a probe out
        self.pending: dict[Any, tuple[tuple[int, int, int], Callable[[Any], bool]]] = {}
        self.committed_at_ms: float | None = None
        self.probes_sent = 0

    def run(self, limit_ms: float) -> float | None:
        """Run the simulation until a probe's success reply is delivered (then stop at
        that very event) or `limit_ms` passed; the time it took, or None."""
        sim, env = self.sim, self.sim.env
        started = sim.now_ms
        self.stop = env.event()
        env.timeout(limit_ms).callbacks.append(self._give_up)
        sim.reply_observers.append(self._on_reply)
        sim.checkers.append(self._watch)
        try:
            self._watch(sim)
            env.run(until=self.stop)
        finally:
            sim.reply_observers.remove(self._on_reply)
            sim.checkers.remove(self._watch)
        return None if self.committed_at_ms is None else self.committed_at_ms - started

    def _give_up(self, _event) -> None:
        if not self.stop.triggered:
            self.stop.succeed()

    def _watch(self, sim: Simulation) -> None:
        if self.committed_at_ms is not None:
            return
        for node_id in self.nodes:
            node = sim.nodes[node_id]
            raft = getattr(node.actor, "raft", None)
            if node.state != NodeState.UP or raft is None or raft.state != State.LEADER:
                continue
            key = (node_id, node.incarnation, raft.term)
            if key in self.probed:
                continue
            self.probed.add(key)
            self.probes_sent += 1
            client, succeeded = self.probe(sim, node_id)
            self.pending[client] = (key, succeeded)

    def _on_reply(self, node: int, client: Any, response: Any) -> None:
        waiting = self.pending.pop(client, None)
        if waiting is None or self.committed_at_ms is not None:
            return
        key, succeeded = waiting
        if succeeded(response):
            self.committed_at_ms = self.sim.now_ms
            if not self.stop.triggered:
                self.stop.succeed()
            return
        # Refused: ask the same leader again a heartbeat later, if it still leads then.
        self.sim.call_later(self.sim.config.heartbeat_interval_ms, self.probed.discard, key)


# -- the quorum core ----------------------------------------------------------------------


def _configurations_in_play(sim: Simulation) -> list[Configuration]:
    """The committed configuration (as known to the node that knows the most) and every
    configuration appended after it on any node: one of them is or will be in effect."""
    rafts = [raft for raft in (getattr(sim.nodes[n].actor, "raft", None) for n in sim.node_ids) if raft is not None]
    if not rafts:
        return []
    committed_index, committed = -1, None
    for raft in rafts:
        for index, configuration in raft.configurations:
            if index <= raft.commit and index > committed_index:
                committed_index, committed = index, configuration
    later: dict[int, Configuration] = {}
    for raft in rafts:
        for index, configuration in raft.configurations:
            if index > raft.commit and index > committed_index:
                later.setdefault(index, configuration)
    found = [committed] if committed is not None else []
    return found + [later[index] for index in sorted(later)]


def choose_core(sim: Simulation, size: int | None = None) -> tuple[int, ...]:
    """A random quorum core (from the run's own stream ``liveness/core``): a majority of
    the voters of every configuration in play, nodes halted on corrupt storage last
    (they cannot be restarted). `size` < a majority gives a deliberately too-small core
    (tests show that liveness mode then reports a failure)."""
    rng = derive_rng(sim.seed, "liveness/core")
    configurations = _configurations_in_play(sim) or [None]
    core: list[int] = []
    for configuration in configurations:
        voters = list(configuration.voters) if configuration is not None else list(sim.node_ids)
        rng.shuffle(voters)
        voters.sort(key=lambda node: sim.nodes[node].state == NodeState.HALTED)   # stable: halted last
        wanted = len(voters) // 2 + 1 if size is None else min(size, len(voters))
        have = sum(1 for node in voters if node in core)
        for node in voters:
            if have >= wanted:
                break
            if node not in core:
                core.append(node)
                have += 1
    return tuple(sorted(core))


class LivenessMode:
    """Installed as the nemesis's final heal: heals only the core, at the end of chaos."""

    def __init__(self, sim: Simulation, nemesis: Any, core_size: int | None = None) -> None:
        self.sim = sim
        self.nemesis = nemesis
        self.core_size = core_size
        self.core: tuple[int, ...] = ()
        self.healed_at_ms: float | None = None

    def heal_core(self) -> None:
        """Heal the core (once: the nemesis calls this at the end of chaos, and the
        liveness phase calls it first in case that event, due at the very same instant,
        has not run yet)."""
        if self.healed_at_ms is not None:
            return
        sim = self.sim
        self.core = core = choose_core(sim, self.core_size)
        self.healed_at_ms = sim.now_ms
        inside = set(core)
        sim.trace.record(sim.now_ms, None, "nemesis", {"fault": f"liveness mode: heal the core {list(core)} only"})
        fault_points = getattr(self.nemesis, "fault_points", None)
        if fault_points is not None:
            fault_points.heal()
        network = sim.network
        network.blocked = frozenset(link for link in network.blocked if not (link[0] in inside and link[1] in inside))
        for node_id in core:
            network.clogged_until_ms.pop(node_id, None)
        base = self.nemesis.base_profile
        quiet = replace(network.default_profile, loss_probability=base.loss_probability,
                        duplicate_probability=base.duplicate_probability, reorder_probability=base.reorder_probability)
        network.set_profile(quiet, [(src, dst) for src in core for dst in core if src != dst])
        sim.trace.record(sim.now_ms, None, "heal", {"core": list(core)})
        for node_id in core:
            sim.nodes[node_id].disk.eio_next_ops = 0
            heal_node(sim, node_id)


def recovery_stats(times_ms: list[float]) -> str:
    """'p50 X ms, max Y ms over N runs' (nearest-rank percentile)."""
    if not times_ms:
        return "no run recovered"
    ordered = sorted(times_ms)
    p50 = ordered[(len(ordered) + 1) // 2 - 1]
    return f"p50 {p50:.3f} ms, max {ordered[-1]:.3f} ms over {len(ordered)} runs"
