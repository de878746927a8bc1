"""The actor contract: how deterministic actors talk to the runtime that drives them.

Theory of operation
-------------------
An actor is a plain object with four handlers. The runtime calls exactly one handler at
a time; the handler changes the actor's state and appends *commands* to the context's
output buffer. It never performs I/O, reads a clock or draws randomness by itself: time
arrives as timer events and `Context.now_ms()`, randomness from `Context.rng`, which the
runtime injects. After each handler the runtime drains the buffer and carries the
commands out, in order:

    Send(dst, message)                     message to another node (may be lost, delayed, ...)
    Reply(client, response)                answer to a client request
    SetTimer(timer, delay_ms)              (re)arm a named timer; fires once via on_timer
    CancelTimer(timer)                     disarm it (no-op if not armed)
    Write / Read / Sync / Truncate / Rename / Delete
                                           disk operations; each carries a token and
                                           completes later through on_io_done(token, result)
    Halt(reason)                           stop this node: its durable state is unusable
    Event(name, level, text, fields)       something an operator should hear of (storage
                                           failing, leadership handed over): the real
                                           runtime logs it, the simulator traces it

The same actor therefore runs unchanged under `raftlite.sim` (simpy, simulated time,
fault injection) and under `raftlite.io` (asyncio, sockets, real files).

Durability is a completion, never an assumption: bytes handed to `Write` are durable only
once a later `Sync` of that file has completed (or the write itself was `durable=True` and
has completed). `Truncate`, `Rename` and `Delete` are durable when they complete (the
runtime syncs the directory). After a crash, the next `on_start` sees only durable bytes,
in `Context.files`.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Protocol

from .config import Config

__all__ = [
    "Actor",
    "CancelTimer",
    "Client",
    "Command",
    "Context",
    "Delete",
    "DiskCommand",
    "Halt",
    "IoResult",
    "NodeId",
    "Read",
    "Rename",
    "Reply",
    "Send",
    "SetTimer",
    "StatusRequest",
    "StatusResponse",
    "Sync",
    "Truncate",
    "Write",
    "COMMAND_TYPES",
    "DISK_COMMAND_TYPES",
    "EVENT_LEVELS",
    "Event",
]

NodeId = int


@dataclass(frozen=True, slots=True)
class Client:
    """A client connection as an actor sees it: the `src` of a request, the target of Reply."""

    connection: int


# --- commands ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    dst: NodeId
    message: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    client: Client
    response: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer:
    timer: Hashable
    delay_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTimer:
    timer: Hashable


@dataclass(frozen=True, slots=True, kw_only=True)
class Write:
    token: Hashable
    file: str
    offset: int
    data: bytes | memoryview   # a view lets a big snapshot be written without a copy
    # True: the completion also means the bytes are durable (RWF_DSYNC on the real disk).
    durable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Read:
    token: Hashable
    file: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync:
    """Make every completed write to `file` durable (fdatasync)."""

    token: Hashable
    file: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Truncate:
    token: Hashable
    file: str
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Rename:
    token: Hashable
    source: str
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    token: Hashable
    file: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Halt:
    """The node cannot go on (e.g. corrupt durable state): stop it and report why."""

    reason: str


EVENT_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """An operational event: `name` is a stable identifier ("storage-failing"), `text`
    the sentence a person reads, `fields` its facts for structured logs. Actors cannot
    log (they do no I/O and must stay deterministic), so they emit this instead."""

    name: str
    level: str
    text: str
    fields: Mapping[str, Any] = field(default_factory=dict)


DiskCommand = Write | Read | Sync | Truncate | Rename | Delete
Command = Send | Reply | SetTimer | CancelTimer | DiskCommand | Halt | Event
DISK_COMMAND_TYPES = (Write, Read, Sync, Truncate, Rename, Delete)
COMMAND_TYPES = (Send, Reply, SetTimer, CancelTimer, Halt, Event) + DISK_COMMAND_TYPES


@dataclass(frozen=True, slots=True)
class IoResult:
    """Outcome of a disk command. `error` is an errno name such as "EIO" or "ENOSPC"."""

    error: str | None = None
    data: bytes | None = None  # for Read

    @property
    def ok(self) -> bool:
        return self.error is None


# --- client requests every actor answers -----------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusResponse:
    node_id: NodeId
    status: Mapping[str, Any]


# --- context ----------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Context:
    """What the runtime hands an actor at start: identity, inputs, and the output buffer.

    `files` holds the durable contents of the node's data files as read back at (re)start.
    `scratch_dir` is a directory for derived state that lives outside the disk interface
    (the SQLite files of the database actor); None when the actor needs none.
    """

    node_id: NodeId
    peers: tuple[NodeId, ...]
    config: Config
    rng: Any  # a random.Random-compatible object owned by the runtime
    now_ms: Callable[[], float]
    files: Mapping[str, bytes] = field(default_factory=dict)
    scratch_dir: str | None = None
    # Milliseconds since the Unix epoch, for SQL's date and time functions; `now_ms`
    # (monotonic, for timeouts) may have any origin.
    wall_clock_ms: Callable[[], float] | None = None
    out: list = field(default_factory=list)

    # Helpers so actors read as prose; each only appends a command.
    def send(self, dst: NodeId, message: Any) -> None:
        self.out.append(Send(dst=dst, message=message))

    def reply(self, client: Client, response: Any) -> None:
        self.out.append(Reply(client=client, response=response))

    def set_timer(self, timer: Hashable, delay_ms: float) -> None:
        self.out.append(SetTimer(timer=timer, delay_ms=delay_ms))

    def cancel_timer(self, timer: Hashable) -> None:
        self.out.append(CancelTimer(timer=timer))

    def write(self, token: Hashable, file: str, offset: int, data: bytes, *, durable: bool = False) -> None:
        self.out.append(Write(token=token, file=file, offset=offset, data=bytes(data), durable=durable))

    def read(self, token: Hashable, file: str, offset: int, length: int) -> None:
        self.out.append(Read(token=token, file=file, offset=offset, length=length))

    def sync(self, token: Hashable, file: str) -> None:
        self.out.append(Sync(token=token, file=file))

    def truncate(self, token: Hashable, file: str, size: int) -> None:
        self.out.append(Truncate(token=token, file=file, size=size))

    def rename(self, token: Hashable, source: str, target: str) -> None:
        self.out.append(Rename(token=token, source=source, target=target))

    def delete(self, token: Hashable, file: str) -> None:
        self.out.append(Delete(token=token, file=file))

    def halt(self, reason: str) -> None:
        self.out.append(Halt(reason=reason))

    def event(self, name: str, text: str, *, level: str = "info", **fields: Any) -> None:
        assert level in EVENT_LEVELS, level
        self.out.append(Event(name=name, level=level, text=text, fields=fields))

    def take_commands(self) -> list:
        """Drain the output buffer (runtime side)."""
        commands, self.out = self.out, []
        return commands


class Actor(Protocol):
    """The handler protocol every actor implements."""

    def on_start(self, ctx: Context) -> None: ...

    def on_message(self, src: NodeId | Client, message: Any) -> None: ...

    def on_timer(self, timer: Hashable) -> None: ...

    def on_io_done(self, token: Hashable, result: IoResult) -> None: ...

    def status(self) -> Mapping[str, Any]:
        """A small deterministic summary for traces, timelines and scenario output."""
        ...
