"""The nemesis: faults injected on a seeded schedule, then one final heal.

Every `interval_ms` (drawn from a range) it picks one enabled fault kind, applies it, and
schedules its undo after a drawn duration. At `heal_at_ms` it undoes everything still in
force: the network heals, noise stops, paused nodes resume, crashed nodes restart (a node
that halted on corrupt storage stays down: it needs an operator), disks get their space
back, clocks stop drifting, fault points stop. A run then has a quiet period in which
liveness is judged.

Kinds (``--nemesis`` takes a comma list of these, or ``all``):

    partition   isolate a node / random halves / majorities ring / bridge / one-way cut
    clog        hold all of one node's traffic for a while
    noise       message loss, duplication and reordering on every link
    crash       kill a node (unsynced writes lost, torn or garbled) and restart it later
    pause       SIGSTOP-like pause and resume
    clock       clock jumps (skew) and drift
    disk        EIO on the next operations, a full disk, a bit flipped at rest
    membership  remove a voter and re-add it, add a non-member, promote (sim/cluster_faults.py)
    transfer    hand leadership to another voter (sometimes losing the new leader's messages to the old)
    leader-partition  isolate the node that leads now

Streams and events (what shrinking needs). The schedule (when the next fault comes and of
which kind) draws from one derived stream, ``nemesis/schedule``; everything about the
n-th fault (its node, duration, crash mode, partition shape, ...) draws from its own
stream, ``nemesis/event/n``. So the parameters of one fault never shift those of another.
Each fault actually injected is recorded as a `FaultEvent` value (time, kind, explicit
parameters) in `Nemesis.events`, together with the firings of the fault points
(`raftlite.sim.fault_points`). A `Nemesis` given `replay=events` draws nothing: it injects
exactly those events at their times, which with the full list reproduces the run's trace
byte for byte, and with a subset is the run that shrinking tries. What a crash does to a
node's unsynced writes, and which bit a corruption flips, stay on the node's disk stream.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .cluster_faults import (
    CLUSTER_EVENT_PARAMETERS, CLUSTER_FAULT_KINDS, apply_cluster_fault, choose_cluster_fault,
)
from .disk import CRASH_MODES
from .network import bridge, halves, isolate, majorities_ring, one_way
from .rng import derive_rng
from .simulation import NodeState, Simulation

__all__ = [
    "EVENT_PARAMETERS", "FaultEvent", "NEMESIS_EVENT_KINDS", "NEMESIS_KINDS", "Nemesis", "NemesisError", "NemesisInterval",
    "call_at", "heal_node", "parse_kind_list", "parse_nemesis_list",
]

NEMESIS_KINDS = ("partition", "clog", "noise", "crash", "pause", "clock", "disk") + CLUSTER_FAULT_KINDS
PARTITION_SHAPES = ("isolate", "halves", "majorities-ring", "bridge", "one-way")

# The explicit parameters of every event kind, with their types, in the order a scenario
# script prints them: nemesis events first, then fault-point firings.
EVENT_PARAMETERS: dict[str, dict[str, str]] = {
    "partition": {"shape": "word", "blocked": "links", "duration-ms": "float"},
    "clog": {"node": "int", "duration-ms": "float"},
    "noise": {"loss": "float", "duplicate": "float", "reorder": "float", "duration-ms": "float"},
    "crash": {"node": "int", "mode": "mode", "restart-ms": "float"},
    "pause": {"node": "int", "duration-ms": "float"},
    "skew": {"node": "int", "ms": "float"},
    "drift": {"node": "int", "rate": "float", "duration-ms": "float"},
    "disk-eio": {"node": "int", "count": "int"},
    "disk-full": {"node": "int", "duration-ms": "float"},
    "corrupt": {"node": "int"},
    **CLUSTER_EVENT_PARAMETERS,   # membership, transfer (sim/cluster_faults.py)
    # fault points (sim/fault_points.py): `ordinal` tells apart several chances of the
    # same node at the same instant, so a replay fires at exactly the same one.
    "slow-persist": {"node": "int", "extra-ms": "float", "duration-ms": "float", "ordinal": "int"},
    "crash-after-send": {"node": "int", "mode": "mode", "restart-ms": "float", "ordinal": "int"},
    "crash-before-sync": {"node": "int", "mode": "mode", "restart-ms": "float", "ordinal": "int"},
    "metadata-eio": {"node": "int", "ordinal": "int"},
}
NEMESIS_EVENT_KINDS = ("partition", "clog", "noise", "crash", "pause", "skew", "drift", "disk-eio", "disk-full",
                       "corrupt") + CLUSTER_FAULT_KINDS
# The `--nemesis` kind an event belongs to, for the run summary's counts.
_NEMESIS_KIND_OF_EVENT = {
    "partition": "partition", "clog": "clog", "noise": "noise", "crash": "crash", "pause": "pause",
    "skew": "clock", "drift": "clock", "disk-eio": "disk", "disk-full": "disk", "corrupt": "disk",
    "membership": "membership", "transfer": "transfer", "leader-partition": "leader-partition",
}


class NemesisError(ValueError):
    pass


def parse_kind_list(text: str, kinds: Sequence[str], what: str, error: type[ValueError], *,
                    where: str = "") -> tuple[str, ...]:
    """'all', 'none', '' or a comma list of `kinds` (duplicates dropped, order kept); a
    clear `error` names what is unknown (and `where`, e.g. " for --runtime real"). Nemesis
    kinds, jepsen_like's nemesis lists and fault points all use it."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    if text == "all":
        return tuple(kinds)
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in kinds]
    if unknown:
        raise error(f"unknown {what} {', '.join(unknown)}{where}; choose from {', '.join(kinds)}, 'all' or 'none'")
    return tuple(dict.fromkeys(names))


def parse_nemesis_list(text: str) -> tuple[str, ...]:
    """'all', 'none', '' or a comma list of kinds; a clear error names what is unknown."""
    return parse_kind_list(text, NEMESIS_KINDS, "nemesis", NemesisError)


# -- events as values --------------------------------------------------------------------


def _format_value(kind: str, value: Any) -> str:
    if kind == "links":
        return ",".join(f"{src}>{dst}" for src, dst in value)
    if kind == "mode":
        return value or "random"
    if kind == "word":
        return value
    return repr(value)   # repr() of a float reads back to the very same float


def _parse_value(kind: str, text: str) -> Any:
    if kind == "int":
        return int(text)
    if kind == "float":
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {text!r}")
        return value
    if kind == "links":
        pairs = []
        for link in filter(None, text.split(",")):
            src, arrow, dst = link.partition(">")
            if not arrow:
                raise ValueError(f"a link looks like 1>2, got {link!r}")
            pairs.append((int(src), int(dst)))
        return tuple(sorted(pairs))
    if kind == "mode":
        if text == "random":
            return None
        if text not in CRASH_MODES:
            raise ValueError(f"crash mode must be one of {', '.join(CRASH_MODES)} or random, got {text!r}")
        return text
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class NemesisInterval:
    """A fault as a span of time, for reports and timelines (jepsen_like's history and
    report use it too)."""

    kind: str
    start_ms: float
    end_ms: float
    description: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "start_ms": round(self.start_ms, 3), "end_ms": round(self.end_ms, 3),
                "description": self.description}


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One injected fault: when, what, and every parameter it needs to be injected again
    without drawing anything (`params` in `EVENT_PARAMETERS[kind]` order)."""

    time_ms: float
    kind: str
    params: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, time_ms: float, kind: str, **params: Any) -> "FaultEvent":
        names = EVENT_PARAMETERS[kind]
        values = {name.replace("_", "-"): value for name, value in params.items()}
        return cls(time_ms, kind, tuple((name, values[name]) for name in names))

    def __getitem__(self, name: str) -> Any:
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(name)

    @property
    def node(self) -> int | None:
        return dict(self.params).get("node")

    def script_line(self) -> str:
        """The scenario-script command that schedules this event (`fault AT KIND ...`)."""
        types = EVENT_PARAMETERS[self.kind]
        words = [f"{name}={_format_value(types[name], value)}" for name, value in self.params]
        return f"fault {self.time_ms!r} {self.kind} " + " ".join(words)

    @classmethod
    def parse(cls, words: Sequence[str]) -> "FaultEvent":
        """The inverse of `script_line` (without its leading `fault`); ValueError names
        what is wrong."""
        if len(words) < 2:
            raise ValueError("usage: fault TIME-MS KIND key=value ...")
        time_ms = _parse_value("float", words[0])
        if time_ms < 0:
            raise ValueError(f"a fault time cannot be negative: {words[0]}")
        kind = words[1]
        if kind not in EVENT_PARAMETERS:
            raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(EVENT_PARAMETERS)}")
        types = EVENT_PARAMETERS[kind]
        given: dict[str, Any] = {}
        for word in words[2:]:
            name, equals, text = word.partition("=")
            if not equals or name not in types:
                raise ValueError(f"{kind} takes {', '.join(f'{n}=' for n in types)}; got {word!r}")
            try:
                given[name] = _parse_value(types[name], text)
            except ValueError as error:
                raise ValueError(f"{kind} {name}: {error}") from None
        missing = [name for name in types if name not in given]
        if missing:
            raise ValueError(f"{kind} needs {', '.join(f'{n}=' for n in missing)}")
        return cls(time_ms, kind, tuple((name, given[name]) for name in types))


def call_at(sim: Simulation, time_ms: float, callback, *args) -> None:
    """Schedule `callback` at exactly `time_ms`: simpy adds a delay to the current time,
    and now + (time_ms - now) can miss time_ms by one unit in the last place, which would
    change a replayed trace."""
    now = sim.now_ms
    delay = max(0.0, time_ms - now)
    # The delay's unit in the last place can be many times finer than the sum's (a short
    # delay after a long time), so stepping it may take a few thousand steps at most.
    for _ in range(1 << 12):
        landed = now + delay
        if landed == time_ms or delay == 0.0:
            break
        delay = math.nextafter(delay, math.inf if landed < time_ms else 0.0)
    sim.call_later(delay, callback, *args)


# -- the nemesis -------------------------------------------------------------------------


@dataclass
class Nemesis:
    sim: Simulation
    kinds: Sequence[str]
    interval_ms: tuple[float, float] = (300.0, 2000.0)
    duration_ms: tuple[float, float] = (200.0, 3000.0)
    injected: dict[str, int] = field(default_factory=dict)
    # An explicit event list to inject instead of drawing a schedule (replay, shrinking).
    replay: Sequence[FaultEvent] | None = None
    # The run's fault points (sim/fault_points.py): they record into `events` and stop
    # at the final heal.
    fault_points: Any = None

    def __post_init__(self) -> None:
        # `rng` serves subclasses that draw everything from one stream (jepsen_like's
        # schedule); this class draws its schedule and each event from their own streams.
        self.rng = derive_rng(self.sim.seed, "nemesis")
        self.schedule_rng = derive_rng(self.sim.seed, "nemesis/schedule")
        self.ticks = 0
        self.base_profile = self.sim.network.default_profile
        self.heal_at_ms = 0.0
        self.events: list[FaultEvent] = []   # every fault injected, in time order
        self.replay_events = [e for e in self.replay or () if e.kind in NEMESIS_EVENT_KINDS]
        if self.fault_points is not None:
            self.fault_points.events = self.events

    def start(self, heal_at_ms: float) -> None:
        self.heal_at_ms = heal_at_ms
        if self.replay is not None:
            # All scheduled now, from the run's start: start + t lands on t exactly, while
            # from the previous event's time no float delay may reach it (the sum's last
            # place can step over t), and a replay one unit off is another run.
            for index, event in enumerate(self.replay_events):
                call_at(self.sim, event.time_ms, self._replay_one, index)
        elif self.kinds:
            # A subclass with its own `_tick` (jepsen_like's schedule) draws its whole
            # schedule from `rng`, the first interval included, as it always did.
            schedule = self.schedule_rng if type(self)._tick is Nemesis._tick else self.rng
            self.sim.call_later(schedule.uniform(*self.interval_ms), self._tick)
        if self.fault_points is not None:
            self.fault_points.start(heal_at_ms)
        self.sim.call_later(max(0.0, heal_at_ms - self.sim.now_ms), self.heal_all)

    # -- schedule ------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.sim.now_ms >= self.heal_at_ms:
            return
        kind = self.schedule_rng.choice(list(self.kinds))
        rng = derive_rng(self.sim.seed, f"nemesis/event/{self.ticks}")
        self.ticks += 1
        event = self.choose(kind, rng.uniform(*self.duration_ms), rng)
        if event is not None:
            self.inject(event)
        self.sim.call_later(self.schedule_rng.uniform(*self.interval_ms), self._tick)

    def _replay_one(self, index: int) -> None:
        if self.sim.now_ms < self.heal_at_ms:
            self.inject(self.replay_events[index])

    def inject(self, event: FaultEvent) -> bool:
        """Apply an event and record it; False when it cannot apply now (crashing a node
        that is down, pausing one that is not up)."""
        if not self.apply(event):
            return False
        self.events.append(event)
        kind = _NEMESIS_KIND_OF_EVENT[event.kind]
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return True

    def _later(self, delay_ms: float, callback, *args) -> None:
        """Undo a fault after `delay_ms`, unless the final heal comes first."""
        if self.sim.now_ms + delay_ms < self.heal_at_ms:
            self.sim.call_later(delay_ms, callback, *args)

    def _note(self, text: str) -> None:
        self.sim.trace.record(self.sim.now_ms, None, "nemesis", {"fault": text})

    def _random_node(self, states: Sequence[str] = (NodeState.UP,), rng=None) -> int | None:
        candidates = [n for n in self.sim.node_ids if self.sim.nodes[n].state in states]
        return (rng or self.rng).choice(candidates) if candidates else None

    # -- choosing a fault: every draw from `rng` ----------------------------------------

    def choose(self, kind: str, duration_ms: float, rng) -> FaultEvent | None:
        """The event a fault of `kind` would be now, its parameters drawn from `rng`
        (None when it has nothing to act on)."""
        sim, nodes, now = self.sim, self.sim.node_ids, self.sim.now_ms
        if kind == "partition":
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
            return FaultEvent.of(now, "partition", shape=shape, blocked=tuple(sorted(blocked)), duration_ms=duration_ms)
        if kind == "clog":
            return FaultEvent.of(now, "clog", node=rng.choice(nodes), duration_ms=round(duration_ms, 3))
        if kind == "noise":
            return FaultEvent.of(
                now, "noise", loss=round(rng.uniform(0.0, 0.3), 3), duplicate=round(rng.uniform(0.0, 0.2), 3),
                reorder=round(rng.uniform(0.0, 0.3), 3), duration_ms=duration_ms,
            )
        if kind == "crash":
            node = self._random_node((NodeState.UP, NodeState.PAUSED), rng)
            if node is None:
                return None
            return FaultEvent.of(now, "crash", node=node, mode=rng.choice(CRASH_MODES + (None,)), restart_ms=duration_ms)
        if kind == "pause":
            node = self._random_node((NodeState.UP,), rng)
            return None if node is None else FaultEvent.of(now, "pause", node=node, duration_ms=duration_ms)
        if kind == "clock":
            node = rng.choice(nodes)
            if rng.random() < 0.5:
                return FaultEvent.of(now, "skew", node=node, ms=round(rng.uniform(-2000.0, 2000.0), 3))
            return FaultEvent.of(now, "drift", node=node, rate=round(rng.uniform(0.5, 2.0), 3), duration_ms=duration_ms)
        if kind == "disk":
            node = rng.choice(nodes)
            fault = rng.choice(("eio", "full", "corrupt"))
            if fault == "eio":
                return FaultEvent.of(now, "disk-eio", node=node, count=rng.randint(1, 5))
            if fault == "full":
                return FaultEvent.of(now, "disk-full", node=node, duration_ms=duration_ms)
            return FaultEvent.of(now, "corrupt", node=node)
        if kind in CLUSTER_FAULT_KINDS:
            params = choose_cluster_fault(sim, kind, duration_ms, rng)
            return None if params is None else FaultEvent.of(now, kind, **params)
        raise NemesisError(f"unknown nemesis {kind!r}")

    # -- applying a fault: no draws but the disk's own ----------------------------------

    def apply(self, event: FaultEvent) -> bool:
        sim, kind = self.sim, event.kind
        node = event.node
        if node is not None and node not in sim.nodes:
            return False
        if kind == "partition":
            sim.partition(frozenset(event["blocked"]), event["shape"])
            self._later(event["duration-ms"], sim.heal)
        elif kind == "clog":
            sim.clog(node, event["duration-ms"])
        elif kind == "noise":
            sim.adjust_network(loss_probability=event["loss"], duplicate_probability=event["duplicate"],
                               reorder_probability=event["reorder"])
            self._later(event["duration-ms"], self._quiet_network)
        elif kind == "crash":
            if sim.nodes[node].state not in (NodeState.UP, NodeState.PAUSED):
                return False
            sim.crash(node, event["mode"])
            self._later(event["restart-ms"], self._restart_if_crashed, node)
        elif kind == "pause":
            if sim.nodes[node].state != NodeState.UP:
                return False
            sim.pause(node)
            self._later(event["duration-ms"], sim.resume, node)
        elif kind == "skew":
            sim.skew_clock(node, event["ms"])
        elif kind == "drift":
            sim.drift_clock(node, event["rate"])
            self._later(event["duration-ms"], sim.drift_clock, node, 1.0)
        elif kind == "disk-eio":
            sim.disk_errors(node, event["count"])
        elif kind == "disk-full":
            sim.fill_disk(node)
            self._later(event["duration-ms"], sim.disk_capacity, node, None)
        elif kind == "corrupt":
            sim.corrupt(node)
        elif kind in CLUSTER_FAULT_KINDS:
            return apply_cluster_fault(sim, kind, dict(event.params), self._later, self.heal_at_ms)
        else:
            raise NemesisError(f"not a nemesis event: {kind!r}")
        return True

    # Subclasses (jepsen_like's schedule) inject a kind with one call that draws from
    # their single stream and applies at once; they count and describe faults themselves.
    def _apply_drawn(self, kind: str, duration_ms: float) -> None:
        event = self.choose(kind, duration_ms, self.rng)
        if event is not None:
            self.apply(event)

    def _partition(self, duration_ms: float) -> None:
        self._apply_drawn("partition", duration_ms)

    def _clog(self, duration_ms: float) -> None:
        self._apply_drawn("clog", duration_ms)

    def _noise(self, duration_ms: float) -> None:
        self._apply_drawn("noise", duration_ms)

    def _crash(self, duration_ms: float) -> None:
        self._apply_drawn("crash", duration_ms)

    def _pause(self, duration_ms: float) -> None:
        self._apply_drawn("pause", duration_ms)

    def _clock(self, duration_ms: float) -> None:
        self._apply_drawn("clock", duration_ms)

    def _disk(self, duration_ms: float) -> None:
        self._apply_drawn("disk", duration_ms)

    def _quiet_network(self) -> None:
        base = self.base_profile
        self.sim.adjust_network(
            loss_probability=base.loss_probability,
            duplicate_probability=base.duplicate_probability,
            reorder_probability=base.reorder_probability,
        )

    def _restart_if_crashed(self, node: int) -> None:
        if self.sim.nodes[node].state == NodeState.CRASHED:
            self.sim.restart(node)

    # -- the final heal ------------------------------------------------------------------

    def heal_all(self) -> None:
        sim = self.sim
        self._note("final heal")
        if self.fault_points is not None:
            self.fault_points.heal()
        sim.heal()
        self._quiet_network()
        for node_id in sim.node_ids:
            heal_node(sim, node_id)


def heal_node(sim: Simulation, node_id: int) -> None:
    """Undo what a nemesis left on one node: a full disk, a drifting clock, a pause, a
    crash (a node that halted on corrupt storage stays down: it needs an operator)."""
    node = sim.nodes[node_id]
    if node.disk.profile.capacity_bytes is not None:
        sim.disk_capacity(node_id, None)
    if node.clock.rate != 1.0:
        sim.drift_clock(node_id, 1.0)
    if node.state == NodeState.PAUSED:
        sim.resume(node_id)
    elif node.state == NodeState.CRASHED:
        sim.restart(node_id)

