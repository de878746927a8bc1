"""Fault points at persistence boundaries (FoundationDB's BUGGIFY, TigerBeetle's swarm).

The nemesis acts on a clock: it crashes a node at some moment, whatever the node is
doing. The bugs that matter most in a replicated log hide in windows of microseconds
around a persist (a message of a new term sent before the term is durable, an
acknowledgement sent before the entry is), and a clock-driven crash almost never lands
in one. A fault point acts *at* such a moment, chosen by what the node just did:

    slow-persist       a node's persists (durable writes, syncs) get extra latency for a
                       while: every window between "submitted" and "durable" widens
    crash-after-send   a node (any role: follower, candidate, leader) crashes right after
                       a handler that sent messages, when one of its persists is in flight
                       (an actor emits a batch's messages before the persist they may
                       depend on, so this is judged once the handler has finished); the
                       crash lands before the persist completes
    crash-before-sync  a node crashes while it holds a completed write that no sync has
                       made durable yet
    metadata-eio       the write of the hard state (metadata1/metadata2) fails with EIO

Swarm testing: each seed enables its own subset of the requested points, each with its own
firing probability, both drawn from a derived stream (``fault-points/swarm``). At every
chance (a send, a submission, a completion that matches the point) the point draws from
its own decision stream; a firing draws its parameters from its own stream
(``fault-point/NAME/n``). Every firing is recorded as a `FaultEvent` (with the ordinal of
the chance among the node's chances at that instant), so a run can be replayed from an
explicit list: then nothing is drawn, and the point fires at the node's first chance at
or after the recorded (time, ordinal). Each point has a budget of firings per run, nothing
fires after the final heal, and crashed nodes restart after a drawn delay (or at the heal).
"""

import math
from collections import deque
from typing import Any, Sequence

from ..actors.contract import Sync, Write
from ..core.raft_log_format import METADATA_FILES
from .nemesis import FaultEvent, parse_kind_list
from .rng import derive_rng
from .simulation import NodeState, Simulation

__all__ = ["FAULT_POINTS", "FaultPointError", "FaultPoints", "parse_fault_points", "swarm_fault_points"]

FAULT_POINTS = ("slow-persist", "crash-after-send", "crash-before-sync", "metadata-eio")

# Per point: the range its per-seed firing probability is drawn from (log-uniformly; a
# chance comes at every matching send, submission or completion, so the common ones get
# small probabilities) and the most firings one run may have (crashes are restarted, but
# too many of them would leave no time for progress between them).
_PROBABILITY_RANGE = {
    "slow-persist": (0.002, 0.02),
    "crash-after-send": (0.003, 0.03),
    "crash-before-sync": (0.005, 0.05),
    "metadata-eio": (0.05, 0.3),
}
_BUDGET = {"slow-persist": 4, "crash-after-send": 3, "crash-before-sync": 3, "metadata-eio": 4}
_CRASH_MODES = ("random", "lose", "tear")
# BUGGIFY's targeting: a chance that involves a hard-state write (a new term or vote, not
# yet durable) is rare and is exactly where "acted on a term before it was durable" bugs
# live, so slow-persist (on its submission) and crash-after-send (while it is in flight)
# fire there at least this often.
_HARD_STATE_PROBABILITY = 0.25   # "random": each unsynced write's fate from the disk's stream


def _is_persist(command) -> bool:
    return (type(command) is Write and command.durable) or type(command) is Sync


class FaultPointError(ValueError):
    pass


def parse_fault_points(text: str) -> tuple[str, ...]:
    """'all', 'none', '' or a comma list of fault points; a clear error names what is unknown."""
    return parse_kind_list(text, FAULT_POINTS, "fault point", FaultPointError)


def swarm_fault_points(seed: int, requested: Sequence[str]) -> dict[str, float]:
    """The seed's share of `requested`: enabled point -> firing probability. One point
    asked for is always on; of several, each is on with probability 1/2 (at least one)."""
    rng = derive_rng(seed, "fault-points/swarm")
    ordered = [name for name in FAULT_POINTS if name in requested]
    if len(ordered) <= 1:
        enabled = ordered
    else:
        enabled = [name for name in ordered if rng.random() < 0.5] or [rng.choice(ordered)]
    probabilities = {}
    for name in enabled:
        low, high = _PROBABILITY_RANGE[name]
        probabilities[name] = round(math.exp(rng.uniform(math.log(low), math.log(high))), 5)
    return probabilities


class FaultPoints:
    """The fault points of one run. Give `probabilities` (from `swarm_fault_points`) to
    draw firings, or `replay` (recorded events) to fire exactly those."""

    def __init__(self, sim: Simulation, probabilities: dict[str, float] | None = None,
                 replay: Sequence[FaultEvent] | None = None) -> None:
        self.sim = sim
        self.replaying = replay is not None
        self.armed: dict[tuple[str, int], deque[FaultEvent]] = {}
        if self.replaying:
            for event in sorted((e for e in replay if e.kind in FAULT_POINTS), key=lambda e: (e.time_ms, e["ordinal"])):
                self.armed.setdefault((event.kind, event["node"]), deque()).append(event)
            self.probabilities = {}
            self.enabled = tuple(name for name in FAULT_POINTS if any(key[0] == name for key in self.armed))
        else:
            self.probabilities = dict(probabilities or {})
            self.enabled = tuple(name for name in FAULT_POINTS if name in self.probabilities)
        self.decisions = {name: derive_rng(sim.seed, f"fault-point/{name}") for name in self.enabled}
        self.drawn = {name: 0 for name in self.enabled}
        self.fired = {name: 0 for name in self.enabled}
        self.events: list[FaultEvent] = []   # the nemesis shares its list (one time line)
        self.heal_at_ms = math.inf
        self._last_chance: dict[tuple[str, int], tuple[float, int]] = {}
        self._send_checks: set[int] = set()   # nodes whose sending handler is yet to be judged
        self._install()

    # -- wiring --------------------------------------------------------------------------

    def _install(self) -> None:
        if "crash-after-send" in self.enabled:
            self.sim.send_observers.append(self._after_send)
        watch_submissions = "slow-persist" in self.enabled or "metadata-eio" in self.enabled
        for node_id in self.sim.node_ids:
            disk = self.sim.nodes[node_id].disk
            if watch_submissions:
                disk.on_submit = lambda command, node_id=node_id: self._on_submit(node_id, command)
            if "crash-before-sync" in self.enabled:
                disk.on_perform = lambda command, result, node_id=node_id: self._on_perform(node_id, command, result)

    def start(self, heal_at_ms: float) -> None:
        self.heal_at_ms = heal_at_ms

    def heal(self) -> None:
        """The final heal: nothing fires any more, every disk is fast again (crashed nodes
        are restarted by the nemesis' heal)."""
        self.heal_at_ms = min(self.heal_at_ms, self.sim.now_ms)
        self.armed.clear()
        for node_id in self.sim.node_ids:
            self.sim.nodes[node_id].disk.persist_delay_ms = 0.0

    def summary(self) -> dict[str, dict[str, Any]]:
        """Enabled point -> its probability (None in a replay) and how often it fired."""
        return {name: {"probability": self.probabilities.get(name), "fired": self.fired[name]} for name in self.enabled}

    # -- chances -------------------------------------------------------------------------

    def _chance(self, point: str, node: int, probability_floor: float = 0.0) -> FaultEvent | None:
        """A moment where `point` may fire on `node`: the event to fire, or None."""
        now = self.sim.now_ms
        if now >= self.heal_at_ms:
            return None
        key = (point, node)
        last = self._last_chance.get(key)
        ordinal = last[1] + 1 if last is not None and last[0] == now else 0
        self._last_chance[key] = (now, ordinal)
        if self.replaying:
            queue = self.armed.get(key)
            if queue and (queue[0].time_ms, queue[0]["ordinal"]) <= (now, ordinal):
                return queue.popleft()
            return None
        probability = max(self.probabilities[point], probability_floor)
        if self.drawn[point] >= _BUDGET[point] or self.decisions[point].random() >= probability:
            return None
        rng = derive_rng(self.sim.seed, f"fault-point/{point}/{self.drawn[point]}")
        self.drawn[point] += 1
        if point == "slow-persist":
            return FaultEvent.of(now, point, node=node, extra_ms=round(rng.uniform(2.0, 80.0), 3),
                                 duration_ms=round(rng.uniform(100.0, 2000.0), 3), ordinal=ordinal)
        if point in ("crash-after-send", "crash-before-sync"):
            mode = rng.choice(_CRASH_MODES)
            return FaultEvent.of(now, point, node=node, mode=None if mode == "random" else mode,
                                 restart_ms=round(rng.uniform(50.0, 2000.0), 3), ordinal=ordinal)
        return FaultEvent.of(now, point, node=node, ordinal=ordinal)

    def _record(self, event: FaultEvent) -> None:
        self.events.append(event)
        self.fired[event.kind] += 1
        details = " ".join(f"{name}={'random' if value is None else value}" for name, value in event.params
                           if name not in ("node", "ordinal"))
        self.sim.trace.record(self.sim.now_ms, event["node"], "nemesis",
                              {"fault": f"fault point {event.kind} {details}".rstrip()})

    def _after_send(self, src: int, dst: int, message: Any) -> None:
        node = self.sim.nodes.get(src)
        if node is None or node.state != NodeState.UP or src in self._send_checks:
            return
        # Judge once the sending handler has finished: an actor emits a batch's messages
        # before the persist they may depend on, so only then is that persist in flight.
        self._send_checks.add(src)
        self.sim.call_later(0.0, self._after_sending_handler, src, node.incarnation)

    def _after_sending_handler(self, node_id: int, incarnation: int) -> None:
        self._send_checks.discard(node_id)
        node = self.sim.nodes[node_id]
        if node.incarnation != incarnation or node.state != NodeState.UP or not node.disk.persisting:
            return
        hard_state_in_flight = any(write.file in METADATA_FILES for write in node.disk.in_flight.values())
        event = self._chance("crash-after-send", node_id, _HARD_STATE_PROBABILITY if hard_state_in_flight else 0.0)
        if event is not None:
            # The persist in flight completes strictly later than now: the crash lands first.
            self._record(event)
            self._crash(event)

    def _on_submit(self, node_id: int, command) -> None:
        disk = self.sim.nodes[node_id].disk
        if type(command) is Write and command.file in METADATA_FILES and "metadata-eio" in self.enabled:
            event = self._chance("metadata-eio", node_id)
            if event is not None:
                disk.doomed.add(id(command))
                self._record(event)
        if "slow-persist" in self.enabled and not disk.persist_delay_ms and _is_persist(command):
            hard_state = type(command) is Write and command.file in METADATA_FILES
            event = self._chance("slow-persist", node_id, _HARD_STATE_PROBABILITY if hard_state else 0.0)
            if event is not None:
                # This persist's latency is drawn next: it is the first one slowed.
                disk.persist_delay_ms = event["extra-ms"]
                self._record(event)
                self._later(event["duration-ms"], self._end_slow_persist, node_id)

    def _on_perform(self, node_id: int, command, result) -> None:
        if type(command) is not Write or command.durable or not result.ok:
            return
        node = self.sim.nodes[node_id]
        event = self._chance("crash-before-sync", node_id)
        if event is not None:
            # After the completion is handed to the actor, which may now submit the sync.
            self.sim.call_later(0.0, self._land_crash, event, node.incarnation)

    # -- effects -------------------------------------------------------------------------

    def _land_crash(self, event: FaultEvent, incarnation: int) -> None:
        node = self.sim.nodes[event["node"]]
        if node.incarnation != incarnation or node.state != NodeState.UP or not node.disk.has_unsynced_writes():
            return
        self._record(event)
        self._crash(event)

    def _crash(self, event: FaultEvent) -> None:
        self.sim.crash(event["node"], event["mode"])
        self._later(event["restart-ms"], self._restart_if_crashed, event["node"])

    def _restart_if_crashed(self, node_id: int) -> None:
        if self.sim.nodes[node_id].state == NodeState.CRASHED:
            self.sim.restart(node_id)

    def _end_slow_persist(self, node_id: int) -> None:
        self.sim.nodes[node_id].disk.persist_delay_ms = 0.0

    def _later(self, delay_ms: float, callback, *args) -> None:
        """Undo after `delay_ms`, unless the final heal comes first."""
        if self.sim.now_ms + delay_ms < self.heal_at_ms:
            self.sim.call_later(delay_ms, callback, *args)
