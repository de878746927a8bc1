"""The raft actor's client load in `raftlite sim check`: writes and linearizable reads,
sent where a real client's requests would land during faults, and every answered read
checked against the acknowledged writes.

Routing. Every tick the load issues one operation (a write `Propose`, or a `Read`
with probability `read_share`) to *every node that believes it leads* (a paused or
partitioned leader of an old term included: that is how a stale leader comes to serve
requests) and, half the time, to one random up node as well (a client that does not know
the leader; a refusal is part of the workload). Every draw comes from the load's own
stream (``raft-load``), so the load's choices do not shift the nemesis's or the
network's.

The read check (what makes reads worth sending). The state machine is
`DigestStateMachine`: a read answers `ReadResult(index, (count, digest))`, the number of
commands applied through `index` and a running digest over them. For every answered
read:

- freshness: `index` is at least the index of every write acknowledged (its reply
  delivered) before the read was sent, and `count` at least the number of those writes:
  a linearizable read reflects every write that completed before it began;
- integrity: `(count, digest)` is exactly what the first-applied entries 1..`index` give
  (recorded from every node's apply, the same record the state-machine-safety checker
  compares): the read returns the state of one prefix of the log, nothing never written
  and nothing out of order.

Acknowledgement and answer times come from `Simulation.reply_observers`, at the very
event that delivers them, so the windows are exact (no polling step widens them). A
violation raises `SimulationFailure` naming "read linearizability".
"""

from dataclasses import dataclass, field
from typing import Any

from ..actors.contract import Client
from ..actors.raft_node import Propose, ProposeResult, Read, ReadResult
from ..core.raft_types import Entry, EntryKind
from .rng import derive_rng
from .simulation import NodeState, Simulation, SimulationFailure

__all__ = ["RaftLoad", "apply_observer", "believed_leaders", "fnv_fold"]


def fnv_fold(digest: int, data: bytes) -> int:
    """`DigestStateMachine`'s step: FNV-1a over the previous digest and one command."""
    value = digest ^ 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def believed_leaders(sim: Simulation) -> list[int]:
    """Nodes whose raft core is in the leader state, whether or not it still leads (a
    paused node's requests wait in its backlog, as a real socket's would)."""
    return sim.leaders((NodeState.UP, NodeState.PAUSED))


def apply_observer(sim: Simulation, callback) -> None:
    """Call `callback(node, entry)` for every entry any node applies, beside whatever
    apply observer the node already has (the safety checkers'): for the nodes running
    now and for every later (re)start."""

    def instrument(node_id: int, actor: Any) -> None:
        if not hasattr(actor, "on_apply"):
            return
        previous = actor.on_apply

        def on_apply(node: int, entry: Entry) -> None:
            if previous is not None:
                previous(node, entry)
            callback(node, entry)

        actor.on_apply = on_apply

    for node_id in sim.node_ids:
        actor = sim.nodes[node_id].actor
        if actor is not None:
            instrument(node_id, actor)
    sim.actor_hooks.append(instrument)


@dataclass(slots=True)
class _PendingRead:
    sent_at_ms: float
    node: int
    floor_index: int      # highest index of a write acknowledged before the read was sent
    floor_count: int      # how many writes were acknowledged before it was sent


@dataclass
class RaftLoad:
    sim: Simulation
    interval_ms: float
    stop_at_ms: float
    read_share: float = 0.3
    # Called with a path name when the load reaches one (sim/coverage.py's registry).
    on_path: Any = None
    sent: int = 0
    acknowledged: int = 0
    reads_sent: int = 0
    reads_checked: int = 0
    writes: dict[Client, int] = field(default_factory=dict)         # client -> write number
    reads: dict[Client, _PendingRead] = field(default_factory=dict)

    def start(self) -> None:
        self.rng = derive_rng(self.sim.seed, "raft-load")
        self.acknowledged_index = 0
        # The first-applied entry at each index (kind, command), and the (count, digest)
        # of the prefix through each index, extended as far as the record is contiguous.
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.prefix: list[tuple[int, int]] = [(0, 0)]
        apply_observer(self.sim, self._on_apply)
        self.sim.reply_observers.append(self._on_reply)
        self.sim.call_later(self.interval_ms, self._tick)

    # -- issuing -------------------------------------------------------------------------

    def _tick(self) -> None:
        sim = self.sim
        if sim.now_ms >= self.stop_at_ms:
            return
        rng = self.rng
        is_read = rng.random() < self.read_share
        targets = believed_leaders(sim)
        if rng.random() < 0.5:
            up = sim.up_nodes()
            if up:
                node = rng.choice(up)
                if node not in targets:
                    targets.append(node)
        for node in targets:
            if is_read:
                self._send_read(node)
            else:
                self._send_write(node)
        sim.call_later(self.interval_ms, self._tick)

    def _send_write(self, node: int) -> None:
        self.sent += 1
        client = self.sim.submit(node, Propose(data=b"w%d" % self.sent))
        self.writes[client] = self.sent

    def _send_read(self, node: int) -> None:
        self.reads_sent += 1
        client = self.sim.submit(node, Read())
        self.reads[client] = _PendingRead(self.sim.now_ms, node, self.acknowledged_index, self.acknowledged)

    # -- observing -----------------------------------------------------------------------

    def _on_apply(self, node: int, entry: Entry) -> None:
        if entry.index not in self.applied:
            self.applied[entry.index] = (entry.kind, entry.data)

    def _on_reply(self, node: int, client: Client, response: Any) -> None:
        if client in self.writes:
            if isinstance(response, ProposeResult):
                del self.writes[client]
                self.acknowledged += 1
                self.acknowledged_index = max(self.acknowledged_index, response.index)
            return
        read = self.reads.pop(client, None)
        if read is not None and isinstance(response, ReadResult):
            self._check_read(node, read, response)

    def _prefix_through(self, index: int) -> tuple[int, int] | None:
        prefix = self.prefix
        while len(prefix) <= index:
            record = self.applied.get(len(prefix))
            if record is None:
                return None
            count, digest = prefix[-1]
            kind, data = record
            prefix.append((count + 1, fnv_fold(digest, data)) if kind == EntryKind.NORMAL else (count, digest))
        return prefix[index]

    def _check_read(self, node: int, read: _PendingRead, result: ReadResult) -> None:
        count, digest = result.value
        if result.index < read.floor_index or count < read.floor_count:
            self._fail(
                f"stale read: node {node} answered a read sent at {read.sent_at_ms:.3f} ms at index {result.index} "
                f"({count} writes), but write index {read.floor_index} ({read.floor_count} writes) had been "
                f"acknowledged before it was sent"
            )
        expected = self._prefix_through(result.index)
        if expected is None:
            self._fail(f"node {node} answered a read at index {result.index}, which no node has applied")
        if expected != (count, digest):
            self._fail(
                f"node {node} answered a read at index {result.index} with {count} writes, digest {digest:#x}; "
                f"the applied log through that index gives {expected[0]} writes, digest {expected[1]:#x}"
            )
        self.reads_checked += 1
        if self.on_path is not None:
            self.on_path("read-checked")

    def _fail(self, message: str) -> None:
        raise SimulationFailure(self.sim.seed, self.sim.now_ms, f"read linearizability: {message}")

    # -- the run's end -------------------------------------------------------------------

    def count_acknowledged(self) -> int:
        return self.acknowledged

    def check(self) -> list[str]:
        """Problems found after the run (each read was judged as it was answered)."""
        return []
