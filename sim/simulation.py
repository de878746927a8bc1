"""The simulation: simpy drives actors through the actor contract, with every fault.

Theory of operation
-------------------
One `Simulation` owns a simpy environment (time in milliseconds), one seed, the network,
one disk and one clock per node, and the trace. Each node is a `SimNode`: an actor
instance plus its incarnation number, its armed timers and, while paused, a backlog.

Every input to an actor (a delivered message, a fired timer, a completed disk op, a
client request) is a simpy event whose callback calls exactly one handler and then
carries out the commands the handler emitted, in order, through one dispatcher
(`SimNode._dispatch`), which knows nothing protocol-specific. Callbacks capture the
node's incarnation when they are scheduled: after a crash they fall on the floor, which
is how a crash throws away in-flight timers, disk completions and backlogs.

Determinism: simpy orders simultaneous events by (time, priority, insertion order), all
randomness comes from streams derived from the seed (`raftlite.sim.rng`), and nothing
iterates over hash-ordered containers of strings. The same (seed, code) therefore gives
a byte-identical trace, whatever PYTHONHASHSEED is.
"""

import os
import shutil
import tempfile
from typing import Any, Callable, Hashable, Iterable, Sequence

import simpy

from ..actors.config import Config
from ..actors.contract import (
    CancelTimer, Client, Context, DISK_COMMAND_TYPES, Event, Halt, Reply, Send, SetTimer, Write,
)
from ..core.invariant import InvariantViolation
from ..core.raft import State
from .clock import NodeClock
from .disk import DiskProfile, SimDisk
from .network import LinkProfile, Network
from .rng import derive_rng
from .sqlite_determinism import seed_sqlite
from .trace import Trace

__all__ = ["NodeState", "SimNode", "Simulation", "SimulationFailure", "message_size"]


# Wall-clock time at simulated time zero (2026-01-01T00:00:00Z), for SQL's 'now'.
SIMULATED_EPOCH_MS = 1_767_225_600_000


class SimulationFailure(Exception):
    """A run broke an invariant; carries the seed so the run can be replayed."""

    def __init__(self, seed: int, time_ms: float, message: str) -> None:
        super().__init__(f"seed {seed} at {time_ms:.3f} ms: {message}")
        self.seed = seed
        self.time_ms = time_ms


class NodeState:
    UP = "up"
    PAUSED = "paused"
    CRASHED = "crashed"
    HALTED = "halted"


def message_size(message: Any) -> int:
    """Bytes a message occupies on the wire, for bandwidth and queue limits."""
    size = getattr(message, "wire_bytes", None)
    if size is not None:
        return size() if callable(size) else int(size)
    return 64


def _describe_disk_command(command: Any) -> str:
    """A disk command in the trace: what, where and how much, never the bytes (their
    repr() would cost more than the rest of the step)."""
    if type(command) is Write:
        return f"Write({command.token!r}, {command.file!r}, @{command.offset}, {len(command.data)} bytes{', durable' if command.durable else ''})"
    return _describe(command, 120)


def _describe(value: Any, limit: int = 240) -> str:
    size = message_size(value) if hasattr(value, "wire_bytes") else 0
    if size > 64 * limit:
        # repr() of a multi-megabyte message would cost more than the whole step.
        return f"{type(value).__name__}(~{size} bytes)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SimNode:
    def __init__(self, sim: "Simulation", node_id: int, actor_factory: Callable[[int], Any]) -> None:
        self.sim = sim
        self.node_id = node_id
        self.actor_factory = actor_factory
        self.actor: Any = None
        self.ctx: Context | None = None
        self.state = NodeState.CRASHED
        self.incarnation = 0
        self.clock = NodeClock()
        self.disk = SimDisk(derive_rng(sim.seed, f"disk/{node_id}"), sim.disk_profile)
        self.timers: dict[Hashable, int] = {}   # armed timer -> generation
        self.timer_generation = 0
        self.backlog: list[tuple[Callable, tuple]] = []  # inputs held while paused
        self.halt_reason: str | None = None
        self.scratch_dir: str | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        sim = self.sim
        self.incarnation += 1
        self.state = NodeState.UP
        self.halt_reason = None
        self.timers.clear()
        self.backlog.clear()
        if sim.scratch_root is not None:
            self.scratch_dir = os.path.join(sim.scratch_root, f"node{self.node_id}")
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            os.makedirs(self.scratch_dir)
        self.actor = self.actor_factory(self.node_id)
        for hook in sim.actor_hooks:
            hook(self.node_id, self.actor)
        clock, env = self.clock, sim.env
        self.ctx = Context(
            node_id=self.node_id,
            peers=tuple(n for n in sim.node_ids if n != self.node_id),
            config=sim.config,
            rng=derive_rng(sim.seed, f"actor/{self.node_id}/{self.incarnation}"),
            now_ms=lambda: clock.local_ms(env.now),
            wall_clock_ms=lambda: SIMULATED_EPOCH_MS + clock.local_ms(env.now),
            files=self.disk.durable_files(),
            scratch_dir=self.scratch_dir,
        )
        sim.trace.record(env.now, self.node_id, "start", {"life": self.incarnation})
        self._run(self.actor.on_start, (self.ctx,))

    def crash(self, mode: str | None = None) -> None:
        if self.state == NodeState.CRASHED:
            return
        self.state = NodeState.CRASHED
        # A dying process lets go of what the kernel holds for it (open files, here the
        # SQLite connections of a database actor); its volatile state is simply dropped.
        release = getattr(self.actor, "release_resources", None)
        if release is not None:
            release()
        self.actor = None
        self.ctx = None
        self.timers.clear()
        self.backlog.clear()
        self.incarnation += 1  # every scheduled callback of the old life is now void
        effects = self.disk.crash(mode)
        self.sim.trace.record(self.sim.env.now, self.node_id, "crash", {"unsynced": effects})

    # -- inputs --------------------------------------------------------------------------

    def input(self, handler_name: str, args: tuple) -> None:
        """Deliver one input to the actor now, or hold it while the process is paused."""
        if self.state == NodeState.UP:
            self._run(getattr(self.actor, handler_name), args)
        elif self.state == NodeState.PAUSED:
            self.backlog.append((handler_name, args))

    def input_now(self, action: Callable[[], None]) -> None:
        """Run `action` as one step of this node (scenario scripts poke actors this way)."""
        if self.state == NodeState.UP:
            self._run(action, ())

    def resume(self) -> None:
        if self.state != NodeState.PAUSED:
            return
        self.state = NodeState.UP
        backlog, self.backlog = self.backlog, []
        for handler_name, args in backlog:
            if self.state != NodeState.UP:
                break
            self._run(getattr(self.actor, handler_name), args)

    def _run(self, handler: Callable, args: tuple) -> None:
        sim = self.sim
        sim.steps += 1
        try:
            handler(*args)
            self._dispatch(self.ctx.take_commands())
        except InvariantViolation as error:
            sim.trace.record(sim.env.now, self.node_id, "invariant", {"message": str(error)})
            raise SimulationFailure(sim.seed, sim.env.now, f"node {self.node_id}: {error}") from error
        for checker in sim.checkers:
            checker(sim)

    # -- the one dispatcher over the command set -----------------------------------------

    def _dispatch(self, commands: list) -> None:
        sim, env, trace = self.sim, self.sim.env, self.sim.trace
        for command in commands:
            if self.state == NodeState.HALTED:
                return
            command_type = type(command)
            if command_type is Send:
                sim.transmit(self.node_id, command.dst, command.message)
            elif command_type is SetTimer:
                self.timer_generation += 1
                generation = self.timer_generation
                self.timers[command.timer] = generation
                sim.call_later(
                    self.clock.sim_delay_ms(command.delay_ms),
                    self._fire_timer, command.timer, generation, self.incarnation,
                )
            elif command_type is CancelTimer:
                self.timers.pop(command.timer, None)
            elif command_type in DISK_COMMAND_TYPES:
                done_at = self.disk.completion_time(command, env.now)
                self.disk.submitted(command)
                trace.record(env.now, self.node_id, "disk-submit", {"op": _describe_disk_command(command)})
                sim.call_later(done_at - env.now, self._complete_disk, command, self.incarnation)
            elif command_type is Reply:
                sim.deliver_reply(self.node_id, command.client, command.response)
            elif command_type is Event:
                trace.record(env.now, self.node_id, "event",
                             {"name": command.name, "level": command.level, "text": command.text, **command.fields})
            elif command_type is Halt:
                self.state = NodeState.HALTED
                self.halt_reason = command.reason
                release = getattr(self.actor, "release_resources", None)
                if release is not None:
                    release()
                self.actor = None
                self.timers.clear()
                self.incarnation += 1
                self.disk.forget_in_flight()
                trace.record(env.now, self.node_id, "halt", {"reason": command.reason})
            else:
                raise TypeError(f"node {self.node_id} emitted a non-command: {command!r}")

    def _fire_timer(self, timer: Hashable, generation: int, incarnation: int) -> None:
        if incarnation != self.incarnation or self.timers.get(timer) != generation:
            return  # cancelled, re-armed, or from a previous life
        del self.timers[timer]
        self.sim.trace.record(self.sim.env.now, self.node_id, "timer", {"timer": _describe(timer)})
        self.input("on_timer", (timer,))

    def _complete_disk(self, command, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return  # the node crashed first: the operation never happened
        result = self.disk.perform(command)
        self.sim.trace.record(
            self.sim.env.now, self.node_id, "disk-done",
            {"token": _describe(command.token), "error": result.error},
        )
        self.input("on_io_done", (command.token, result))


class Simulation:
    def __init__(
        self,
        *,
        seed: int,
        node_ids: Sequence[int],
        actor_factory: Callable[[int], Any],
        config: Config | None = None,
        link_profile: LinkProfile = LinkProfile(),
        disk_profile: DiskProfile = DiskProfile(),
        trace: Trace | None = None,
        scratch_dir: bool = False,
        client_latency_ms: float = 0.2,
    ) -> None:
        self.seed = seed
        self.config = (config or Config()).validate()
        self.env = simpy.Environment()
        self.trace = trace or Trace()
        self.disk_profile = disk_profile
        self.network = Network(derive_rng(seed, "network"), link_profile)
        self.rng = derive_rng(seed, "simulation")
        seed_sqlite(seed)
        self.node_ids = tuple(node_ids)
        self.scratch_root = tempfile.mkdtemp(prefix=f"raftlite-sim-{seed}-") if scratch_dir else None
        self.nodes = {n: SimNode(self, n, actor_factory) for n in self.node_ids}
        self.checkers: list[Callable[["Simulation"], None]] = []
        # Called with (node_id, actor) whenever a node (re)starts, before on_start.
        self.actor_hooks: list[Callable[[int, Any], None]] = []
        # Called with (src, dst, message) at every Send, before the network sees it:
        # checkers that judge a message by the sender's durable state, fault points
        # that act right after a send.
        self.send_observers: list[Callable[[int, int, Any], None]] = []
        # Called with (node_id, client, response) when a reply reaches its client: what a
        # load or a liveness probe needs to time an answer exactly, without polling.
        self.reply_observers: list[Callable[[int, Client, Any], None]] = []
        # Decides whether a bit flip at (node, file, offset) is allowed (docs/architecture.md §3
        # bounds at-rest corruption); actors with entry-level knowledge install their own.
        self.corruption_guard: Callable[[int, str, int], bool] = self._default_corruption_guard
        self.corrupted: dict[tuple[str, int], set[int]] = {}
        self.client_latency_ms = client_latency_ms
        self.replies: dict[Client, list[Any]] = {}
        self._next_client = 0
        self.in_flight = 0
        self.messages_sent = 0
        self.steps = 0
        self.events = 0

    # -- scheduling ----------------------------------------------------------------------

    def call_later(self, delay_ms: float, callback: Callable, *args) -> None:
        # The callback rides in the event's value: no closure per event (the hot path).
        self.env.timeout(delay_ms, (callback, args)).callbacks.append(self._fire)

    def _fire(self, event) -> None:
        self.events += 1
        callback, args = event.value
        callback(*args)

    @property
    def now_ms(self) -> float:
        return self.env.now

    def run_for(self, duration_ms: float) -> None:
        self.run_until(self.env.now + duration_ms)

    def run_until(self, time_ms: float) -> None:
        if time_ms > self.env.now:
            self.env.run(until=time_ms)

    def run_until_quiet(self, limit_ms: float) -> bool:
        """Advance until no message is in flight (or `limit_ms` more has passed)."""
        deadline = self.env.now + limit_ms
        while self.in_flight > 0 and self.env.peek() <= deadline:
            self.env.step()
        return self.in_flight == 0

    # -- nodes ---------------------------------------------------------------------------

    def start(self, nodes: Iterable[int] | None = None) -> None:
        for node_id in nodes if nodes is not None else self.node_ids:
            self.nodes[node_id].start()

    def node(self, node_id: int) -> SimNode:
        return self.nodes[node_id]

    def actor(self, node_id: int) -> Any:
        return self.nodes[node_id].actor

    def up_nodes(self) -> list[int]:
        return [n for n in self.node_ids if self.nodes[n].state == NodeState.UP]

    def leader(self) -> int | None:
        """The first node (in node order) that is up and believes it leads, or None."""
        found = self.leaders()
        return found[0] if found else None

    def leaders(self, states: Sequence[str] = (NodeState.UP,)) -> list[int]:
        """Nodes in one of `states` whose raft core believes it leads (it may have been
        deposed without knowing), in node order. Actors without a raft core lead nothing."""
        found = []
        for node_id in self.node_ids:
            node = self.nodes[node_id]
            raft = getattr(node.actor, "raft", None)
            if node.state in states and raft is not None and raft.state == State.LEADER:
                found.append(node_id)
        return found

    # -- the network ---------------------------------------------------------------------

    def transmit(self, src: int, dst: int, message: Any) -> None:
        now = self.env.now
        for observe in self.send_observers:
            observe(src, dst, message)
        if dst not in self.nodes:
            self.trace.record(now, src, "drop", {"dst": dst, "why": "unknown", "msg": _describe(message)})
            return
        arrivals, dropped_because = self.network.plan(src, dst, message_size(message), now)
        self.messages_sent += 1
        message_id = self.messages_sent  # later events name the message by this id
        fields = {"id": message_id, "dst": dst, "msg": _describe(message), "copies": len(arrivals)}
        if dropped_because:
            fields["dropped"] = dropped_because
        self.trace.record(now, src, "send", fields)
        target = self.nodes[dst]
        for arrival in arrivals:
            self.in_flight += 1
            self.call_later(arrival - now, self._arrive, src, target, target.incarnation, message, message_id)

    def _arrive(self, src: int, target: SimNode, incarnation: int, message: Any, message_id: int) -> None:
        self.in_flight -= 1
        if not self.network.can_deliver(src, target.node_id):
            why = "partition"
        elif incarnation != target.incarnation or target.state in (NodeState.CRASHED, NodeState.HALTED):
            why = "down"  # the connection it travelled on died with the process
        else:
            self.trace.record(self.env.now, target.node_id, "deliver", {"id": message_id, "src": src})
            target.input("on_message", (src, message))
            return
        self.trace.record(self.env.now, target.node_id, "drop", {"id": message_id, "src": src, "why": why})

    # -- clients -------------------------------------------------------------------------

    def submit(self, node_id: int, request: Any, client: Client | None = None) -> Client:
        """Send a client request to a node; its replies collect in `replies[client]`.
        Pass the `client` of an earlier request to continue that session."""
        if client is None:
            self._next_client += 1
            client = Client(self._next_client)
        self.replies.setdefault(client, [])
        node = self.nodes[node_id]
        self.trace.record(self.env.now, node_id, "request", {"client": client.connection, "req": _describe(request)})
        self.call_later(self.client_latency_ms, self._client_arrive, node, node.incarnation, client, request)
        return client

    def _client_arrive(self, node: SimNode, incarnation: int, client: Client, request: Any) -> None:
        if incarnation == node.incarnation:
            node.input("on_message", (client, request))

    def deliver_reply(self, node_id: int, client: Client, response: Any) -> None:
        self.trace.record(self.env.now, node_id, "reply", {"client": client.connection, "resp": _describe(response)})
        if client in self.replies:
            self.replies[client].append(response)
        for observe in self.reply_observers:
            observe(node_id, client, response)

    # -- faults --------------------------------------------------------------------------

    def partition(self, blocked: frozenset, label: str) -> None:
        self.network.partition(blocked)
        self.trace.record(self.env.now, None, "partition", {"kind": label, "blocked": sorted(blocked)})

    def heal(self) -> None:
        self.network.heal()
        self.network.clogged_until_ms.clear()
        self.trace.record(self.env.now, None, "heal")

    def clog(self, node_id: int, duration_ms: float) -> None:
        self.network.clog(node_id, self.env.now + duration_ms)
        self.trace.record(self.env.now, node_id, "clog", {"ms": duration_ms})

    def adjust_network(self, **changes) -> None:
        self.network.adjust(**changes)
        self.trace.record(self.env.now, None, "network", dict(sorted(changes.items())))

    def crash(self, node_id: int, mode: str | None = None) -> None:
        self.nodes[node_id].crash(mode)

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.state in (NodeState.UP, NodeState.PAUSED):
            node.crash()
        self.trace.record(self.env.now, node_id, "restart")
        node.start()

    def pause(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.state == NodeState.UP:
            node.state = NodeState.PAUSED
            self.trace.record(self.env.now, node_id, "pause")

    def resume(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.state == NodeState.PAUSED:
            self.trace.record(self.env.now, node_id, "resume", {"backlog": len(node.backlog)})
            node.resume()

    def skew_clock(self, node_id: int, delta_ms: float) -> None:
        self.nodes[node_id].clock.skew(self.env.now, delta_ms)
        self.trace.record(self.env.now, node_id, "skew", {"ms": delta_ms})

    def drift_clock(self, node_id: int, rate: float) -> None:
        self.nodes[node_id].clock.set_rate(self.env.now, rate)
        self.trace.record(self.env.now, node_id, "drift", {"rate": rate})

    def disk_errors(self, node_id: int, operations: int) -> None:
        """The next `operations` disk operations of the node fail with EIO."""
        self.nodes[node_id].disk.eio_next_ops += operations
        self.trace.record(self.env.now, node_id, "disk-fault", {"eio_ops": operations})

    def disk_capacity(self, node_id: int, capacity_bytes: int | None) -> None:
        """Set the disk's capacity (None: unlimited); writes past it fail with ENOSPC."""
        self.nodes[node_id].disk.set_capacity(capacity_bytes)
        self.trace.record(self.env.now, node_id, "disk-full", {"capacity": capacity_bytes})

    def fill_disk(self, node_id: int) -> None:
        """Leave no free space: the capacity becomes what the files use now."""
        self.disk_capacity(node_id, self.nodes[node_id].disk.used_bytes())

    def corrupt(self, node_id: int) -> tuple[str, int, int] | None:
        """Flip one bit of the node's durable data at rest, within docs/architecture.md §3's bounds."""
        disk = self.nodes[node_id].disk
        flipped = disk.flip_bit(lambda file, offset: self.corruption_guard(node_id, file, offset))
        if flipped is not None:
            file, offset, bit = flipped
            self.corrupted.setdefault((file, offset), set()).add(node_id)
        self.trace.record(self.env.now, node_id, "corrupt", {"flipped": list(flipped) if flipped else None})
        return flipped

    def _default_corruption_guard(self, node_id: int, file: str, offset: int) -> bool:
        # Corruption stays on a minority of nodes: a node may refuse to start on it
        # (docs/architecture.md §3), and a majority must remain to keep the data and the service.
        # That also keeps any one place (and so any one entry) off a majority.
        minority = (len(self.node_ids) - 1) // 2
        corrupted_nodes = set().union(*self.corrupted.values()) if self.corrupted else set()
        return node_id in corrupted_nodes or len(corrupted_nodes) < minority

    def note(self, text: str) -> None:
        self.trace.record(self.env.now, None, "note", {"text": text})

    # -- summaries -----------------------------------------------------------------------

    def status(self) -> dict[int, dict[str, Any]]:
        result = {}
        for node_id in self.node_ids:
            node = self.nodes[node_id]
            entry: dict[str, Any] = {"state": node.state, "lives": node.incarnation}
            if node.state == NodeState.HALTED:
                entry["halt"] = node.halt_reason
            elif node.actor is not None and hasattr(node.actor, "status"):
                entry.update(node.actor.status())
            result[node_id] = entry
        return result

    def close(self) -> None:
        # Live nodes let go of their open files as crashed ones do (a database leader
        # holds a SQLite connection per client: left to the garbage collector, a sweep
        # of many seeds runs out of file descriptors).
        for node in self.nodes.values():
            release = getattr(node.actor, "release_resources", None)
            if release is not None:
                release()
        if self.scratch_root is not None:
            shutil.rmtree(self.scratch_root, ignore_errors=True)
            self.scratch_root = None
