"""The interface between the raft node and the application it replicates.

Theory of operation
-------------------
The raft node (actors/raft_node.py) is the actor: it owns the raft core, its storage and
the Ready loop. The application — a `StateMachine` — is a component the node drives, the
way etcd-io/raft's node drives its application: the node hands it committed entries to
apply, asks it for a snapshot when the log has grown, gives it a received snapshot to
restore, tells it when this node gains or loses leadership, and passes it the client
requests and timers the node does not know itself. The component never sees the node's
internals; what it may ask of the node (propose and be answered once applied, start a
ReadIndex read, ask for a snapshot or abandon one, step down) is the `StateMachineHost`
the node gives it at start.

Two components exist: `DigestStateMachine` below (a running digest of the commands, for
raft's own tests and the simulator's raft runs) implements only apply, read, snapshot and
restore; `DatabaseStateMachine` (actors/database.py) is replicated SQLite, and implements
every method: its apply, snapshot and restore work in bounded steps, it serves SQL clients
on the leader, and it refuses a snapshot while its WAL holds work not yet committed.

Every method the node calls is declared on `StateMachine`: the four every component
implements (apply, read, snapshot, restore) as abstract methods, the others with a
documented default, so a component overrides only what it needs; the node never probes
for optional methods.

Work in bounded steps. A node runs one handler at a time, so a big entry, snapshot or
restore done in one go would hold its heartbeats. A component that sets
`works_in_steps = True` implements `apply_steps`, `snapshot_steps` and `restore_steps`
as generators that do a part of the work per `next()` and yield how many bytes that part
cost; the generator's return value is the result (`StopIteration.value`). The node then
uses `apply_steps`/`restore_steps` for work bigger than its step budget and
`snapshot_steps` for every snapshot, and goes on with the next step from a zero-delay
timer. Otherwise it calls `apply`, `restore` and `snapshot` in one go.
"""

from abc import ABC, abstractmethod
from typing import Any, Generator, Hashable, Mapping, Protocol

from ..core.errors import RaftError
from ..core.raft import UnsafeSwitches
from ..core.raft_types import Entry, EntryKind
from .contract import Client, Context
from .raft_requests import client_error

__all__ = ["DigestStateMachine", "StateMachine", "StateMachineHost", "Steps"]

# A piece of work done in bounded steps: each `next()` does one step and yields the bytes
# it cost; the value it returns when it ends is the result.
Steps = Generator[int, None, Any]


class StateMachineHost(Protocol):
    """What a state machine may ask of the raft node that drives it (given at `start`)."""

    @property
    def applied_index(self) -> int:
        """The index of the last entry (or snapshot) applied to the state machine."""
        ...

    @property
    def term(self) -> int:
        """The node's current term."""
        ...

    @property
    def unsafe(self) -> UnsafeSwitches:
        """The deliberate bugs switched on for this run (all off in production)."""
        ...

    def is_leader(self) -> bool:
        """Whether this node leads now."""
        ...

    def leader_caught_up(self) -> bool:
        """This node leads, has committed an entry of its own term and applied everything
        committed: what it holds is the whole committed state (a new leader serves from then on)."""
        ...

    def transferring_leadership(self) -> bool:
        """A leadership transfer is under way (the core drops proposals meanwhile)."""
        ...

    def propose(self, data: bytes) -> int:
        """Append `data` to the log as a leader; its log index (raises RaftError if refused)."""
        ...

    def answer_when_applied(self, index: int, client: Client, response: Any) -> None:
        """Send `response` to `client` once the entry proposed at `index` in this term is
        committed and applied; if another leader's entry takes the index, or leadership
        is lost first, the client gets the state machine's `refusal` instead."""
        ...

    def start_read(self, client: Client, *, response: Any = None, min_index: int = 0) -> None:
        """Answer `client` once a ReadIndex round that starts now confirms leadership and
        the state machine has applied up to the read index (and `min_index`). `response`
        is the answer, or a callable computing it then, or None for a ReadResult of `read()`."""
        ...

    def answer_from_applied_state(self, client: Client, response: Any) -> None:
        """Answer `client` from what this node has applied, with no ReadIndex round (a
        follower's files are a committed state). `response` as for `start_read`."""
        ...

    def cancel_read(self, client: Client, answer_is: type) -> bool:
        """Drop `client`'s read waiting for its round if its prepared answer is an
        `answer_is`; whether one was dropped (the client is not answered)."""
        ...

    def storage_failed(self, errno_name: str, what: str) -> None:
        """The state machine's own storage failed (`errno_name`: "ENOSPC", "EIO", ...;
        `what`: where, for the operator). The node becomes storage-failing (no campaign,
        no vote), hands leadership over at once if it leads, and stays so until a test
        write to its disk succeeds."""
        ...

    @property
    def snapshot_in_progress(self) -> int | None:
        """The index of the snapshot being taken in steps, if one is."""
        ...

    def snapshot_due(self) -> bool:
        """Whether the log has grown enough since the last snapshot to take another."""
        ...

    def take_snapshot_if_due(self) -> None:
        """Take a snapshot now if one is due and the state machine can (`can_snapshot`)."""
        ...

    def abandon_snapshot(self) -> None:
        """Drop a snapshot being taken in steps (the files it reads are about to change)."""
        ...

    def process(self) -> None:
        """Let out at once what the raft core now has to send and persist (e.g. the
        messages of a ReadIndex round just started), instead of at the end of the handler."""
        ...


class StateMachine(ABC):
    """The application the raft node replicates. The defaults suit a small in-memory
    state machine: it implements `apply`, `read`, `snapshot` and `restore`, and inherits
    the rest."""

    # True: `apply_steps`, `snapshot_steps` and `restore_steps` do their work in bounded
    # steps, and the node uses them (see the module docstring).
    works_in_steps: bool = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, host: StateMachineHost, ctx: Context) -> None:
        """The node starts (before any restore or apply): what the component may ask of
        the node, and the actor context (its timers, replies, clock and scratch directory)."""

    def close(self) -> None:
        """The process is going away (crash, halt or shutdown): let go of open files."""

    # -- applying the log ----------------------------------------------------------------

    @abstractmethod
    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry (of any kind: CONFIG and empty entries come too);
        the result goes to the client that proposed it, in a ProposeResult."""

    def apply_steps(self, entry: Entry, step_bytes: int) -> Steps:
        """`apply` in steps of about `step_bytes` (used if `works_in_steps`). By default
        in one step."""
        return self.apply(entry)
        yield 0   # (never reached: makes this a generator)

    def applies_during_snapshot(self, entry: Entry) -> bool:
        """Whether `entry` may be applied while a snapshot is taken in steps (it leaves
        what the snapshot reads untouched). By default nothing is: the snapshot must show
        the state at exactly its index."""
        return False

    def flush(self) -> None:
        """The end of an apply step: write out what `apply` held back to batch it."""

    # -- snapshots -----------------------------------------------------------------------

    def can_snapshot(self) -> bool:
        """Whether a snapshot may be taken now (between entries, when one is due)."""
        return True

    @abstractmethod
    def snapshot(self) -> bytes:
        """The whole state as of the last applied entry."""

    def snapshot_steps(self, step_bytes: int) -> Steps:
        """`snapshot` in steps (used if `works_in_steps`): nothing is applied meanwhile
        but the entries `applies_during_snapshot` lets through. By default in one step."""
        return self.snapshot()
        yield 0   # (never reached: makes this a generator)

    @abstractmethod
    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot's."""

    def restore_steps(self, data: bytes, step_bytes: int) -> Steps:
        """`restore` in steps (used if `works_in_steps`). By default in one step."""
        self.restore(data)
        return None
        yield 0   # (never reached: makes this a generator)

    # -- leadership ----------------------------------------------------------------------

    def leadership_gained(self) -> None:
        """This node became leader."""

    def leadership_lost(self) -> None:
        """This node stopped leading; the node has already failed the proposals and reads
        it held (with `refusal`)."""

    # -- clients -------------------------------------------------------------------------

    @abstractmethod
    def read(self) -> Any:
        """The value of a linearizable `Read` (a ReadResult's value)."""

    def handle_request(self, client: Client, message: Any) -> bool:
        """A client request the raft node does not answer itself; False if this is no
        request of the state machine either (the client is told so)."""
        return False

    def on_timer(self, timer: Hashable) -> bool:
        """A timer the raft node did not set; False if it is none of the state machine's."""
        return False

    def refusal(self, error: RaftError) -> Any:
        """The answer a client gets when its request is refused with `error` (not leader,
        leadership lost, dropped). By default the raft node's ClientError."""
        return client_error(error)

    def progressed(self) -> None:
        """The node finished a round of its Ready loop: completed batches applied (as far
        as the step budget went) and waiting reads answered. A leader may run queued work."""

    def status(self) -> Mapping[str, Any]:
        """What the state machine adds to the node's status (by default nothing)."""
        return {}


class DigestStateMachine(StateMachine):
    """A minimal real state machine for raft tests: a running digest of applied commands.

    Two replicas that applied the same commands in the same order hold the same digest;
    its `read` returns (count, digest)."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = 0

    def apply(self, entry: Entry) -> Any:
        if entry.kind != EntryKind.NORMAL:
            return None
        self.count += 1
        # FNV-1a over the previous digest and the command: order-sensitive and cheap.
        value = self.digest ^ 0xCBF29CE484222325
        for byte in entry.data:
            value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        self.digest = value
        return self.count

    def read(self) -> Any:
        return (self.count, self.digest)

    def snapshot(self) -> bytes:
        return self.count.to_bytes(8, "little") + self.digest.to_bytes(8, "little")

    def restore(self, data: bytes) -> None:
        self.count = int.from_bytes(data[:8], "little")
        self.digest = int.from_bytes(data[8:16], "little")
