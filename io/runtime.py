"""The real runtime: one actor driven by an asyncio loop, real files and TCP peers.

Theory of operation
-------------------
`NodeRuntime` is the asyncio counterpart of `raftlite.sim.simulation.SimNode`: it owns
the clock, the network and the disk of one node and carries out the commands its actor
emits, through one dispatcher (`_dispatch`) that knows nothing protocol-specific
(docs/architecture.md §2).

Start: lock the data directory (one node per directory), read every data file back
(`Context.files`, as SimDisk.durable_files), bind the listening address, dial the peers,
build the Context (node id, peer ids, config, an RNG seeded from os.urandom, `now_ms` =
the loop's monotonic clock, `wall_clock_ms` = time.time(), the scratch directory
`<data dir>/sqlite` for derived state), then `on_start`.

Inputs — a peer's message (raftlite.io.transport), a client request (the admin
protocol, or any `client_protocol_handler` through `open_client` / `submit`), a timer
(loop.call_later), a disk completion (raftlite.io.disk) — all go through `_input`, which
runs exactly one handler at a time, drains the context's output buffer and dispatches
it before the next input. An input that arrives while a handler runs (a reply callback
that submits a new request) waits in a queue, so handlers are never re-entered.

Commands: Send -> the transport's bounded per-peer queue; Reply -> the callback of the
client connection it names (dropped if that connection is gone); SetTimer / CancelTimer
-> loop.call_later with a generation per timer as in SimNode (re-arming replaces, a
stale firing is ignored); Write / Read / Sync / Truncate / Rename / Delete -> the disk
executor, whose completions come back in submission order through on_io_done; Halt ->
the node stops, the reason logged.

Failure: an exception from a handler (an InvariantViolation, a bug) is logged with its
traceback, kept in `failure`, and stops the node at once — no further input reaches the
actor. `await stop()` (idempotent) closes the listener, the peer links, the client
connections, the disk executor and its descriptors, releases the actor's resources
(`release_resources()`, e.g. SQLite connections) and unlocks the data directory.
"""

import asyncio
import fcntl
import logging
import os
import random
import time
from typing import Any, Callable, Hashable, Mapping

from ..actors.config import Config
from ..actors.contract import (
    CancelTimer, Client, Context, Delete, Event, Halt, IoResult, Read, Rename, Reply, Send, SetTimer, StatusResponse, Sync,
    Truncate, Write,
)
from ..core.peer_codec import RAFT_CODEC, Codec
from ..core.raft import REMOVED_FROM_CLUSTER
from ..core.raft_log_format import segment_first_index
from .admin import parse_address, serve_admin_connection
from .disk import RESERVED_PREFIX, DiskExecutor, ZeroFilledFiles
from .peer_auth import ClusterKeys
from .transport import ClientProtocolHandler, TlsSettings, Transport, TransportSettings

__all__ = ["DataDirectoryInUse", "NodeRuntime", "RuntimeState", "SCRATCH_DIRECTORY_NAME"]

log = logging.getLogger("raftlite.io.runtime")

SCRATCH_DIRECTORY_NAME = "sqlite"
LOCK_FILE_NAME = RESERVED_PREFIX + "lock"


class DataDirectoryInUse(Exception):
    """Another node (process or runtime) holds this data directory."""


class RuntimeState:
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class NodeRuntime:
    """Runs one actor on the current asyncio loop; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: int,
        address: str,
        data_dir: str,
        actor: Any,
        peers: Mapping[int, str] | None = None,
        config: Config | None = None,
        tls: TlsSettings | None = None,
        client_protocol_handler: ClientProtocolHandler | None = None,
        client_closed_message: Any = None,
        disk_backend: str | None = None,
        transport_settings: TransportSettings = TransportSettings(),
        peer_codec: Codec = RAFT_CODEC,
        cluster_keys: ClusterKeys | None = None,
    ) -> None:
        parse_address(address)   # a bad address fails here, with a one-line ValueError
        for peer_address in (peers or {}).values():
            parse_address(peer_address)
        self.node_id = node_id
        self.requested_address = address
        self.data_dir = os.path.abspath(data_dir)
        self.actor = actor
        self.peers = dict(peers or {})
        self.config = (config or Config()).validate()
        self.tls = tls
        self.client_protocol_handler = client_protocol_handler
        self.client_closed_message = client_closed_message
        self.disk_backend = disk_backend
        self.transport_settings = transport_settings
        self.peer_codec = peer_codec
        self.cluster_keys = cluster_keys
        self.state = RuntimeState.NEW
        self.context: Context | None = None
        self.disk: DiskExecutor | None = None
        self.transport: Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timers: dict[Hashable, tuple[int, asyncio.TimerHandle]] = {}
        self.timer_generation = 0
        self.inputs: list[tuple[str, tuple]] = []
        self.input_position = 0
        self.handling = False
        self.clients: dict[Client, Callable[[Any], None]] = {}
        self.next_client = 0
        self.lock_fd: int | None = None
        self.halt_reason: str | None = None
        self.failure: BaseException | None = None
        self.stop_task: asyncio.Task | None = None
        self.stopped = asyncio.Event()
        self.handlers_run = 0
        # Counters kept outside the actor (sockets refused at a limit, failed peer
        # handshakes, idle clients closed...): added to every status answer under
        # "connections", so `raftlite status` shows them. The transport's are added at start.
        self.connection_stats: list[Callable[[], Mapping[str, int]]] = []

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.transport.address if self.transport is not None else self.requested_address

    @property
    def scratch_dir(self) -> str:
        return os.path.join(self.data_dir, SCRATCH_DIRECTORY_NAME)

    async def start(self) -> None:
        """Open the data directory, listen, dial the peers and run on_start."""
        if self.state != RuntimeState.NEW:
            raise RuntimeError(f"node {self.node_id} runtime was already started")
        self.loop = asyncio.get_running_loop()
        try:
            os.makedirs(self.scratch_dir, exist_ok=True)
            self._lock_data_dir()
            self.disk = DiskExecutor(
                self.data_dir, self._disk_done, backend=self.disk_backend,
                # Raft log segments start as zero-filled spares (io/disk.py, _DiskHelper);
                # recovery reads trailing zeros as the end of a segment.
                zero_filled=ZeroFilledFiles(lambda name: segment_first_index(name) is not None,
                                            self.config.segment_bytes_max),
            )
            self.disk.attach(self.loop)
            files = self.disk.durable_files()
            self.transport = Transport(
                node_id=self.node_id, address=self.requested_address, config=self.config,
                on_peer_message=self._peer_message, on_admin_connection=self._admin_connection,
                client_protocol_handler=self.client_protocol_handler, tls=self.tls,
                settings=self.transport_settings, codec=self.peer_codec, cluster_keys=self.cluster_keys,
            )
            await self.transport.listen()
            self.transport.set_peers(self.peers)
        except BaseException:
            await self._close_resources()
            self.state = RuntimeState.STOPPED
            self.stopped.set()
            raise
        loop = self.loop
        self.context = Context(
            node_id=self.node_id,
            peers=tuple(sorted(peer for peer in self.peers if peer != self.node_id)),
            config=self.config,
            rng=random.Random(os.urandom(32)),
            now_ms=lambda: loop.time() * 1000.0,
            wall_clock_ms=lambda: time.time() * 1000.0,
            files=files,
            scratch_dir=self.scratch_dir,
        )
        self.state = RuntimeState.RUNNING
        log.info("node %s: listening on %s, data in %s, disk backend %s, event loop %s", self.node_id, self.address,
                 self.data_dir, self.disk.backend_name, type(loop).__module__.split(".")[0])
        self.inputs.insert(self.input_position, ("on_start", (self.context,)))
        self._drain_inputs()

    def set_peers(self, peers: Mapping[int, str]) -> None:
        """Change the addresses this node dials (membership changes, tests)."""
        self.peers = dict(peers)
        if self.transport is not None and self.state == RuntimeState.RUNNING:
            self.transport.set_peers(self.peers)

    async def stop(self) -> None:
        """Stop the node and release everything it holds (idempotent)."""
        if self.state == RuntimeState.NEW:
            self.state = RuntimeState.STOPPED
            self.stopped.set()
            return
        self._begin_stop()
        await asyncio.shield(self.stop_task)

    async def wait_stopped(self) -> None:
        await self.stopped.wait()

    def _begin_stop(self) -> None:
        if self.stop_task is None:
            self.state = RuntimeState.STOPPING
            self.stop_task = asyncio.get_running_loop().create_task(self._stop(), name=f"stop-node-{self.node_id}")

    async def _stop(self) -> None:
        for _, handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        self.inputs.clear()
        self.input_position = 0
        release = getattr(self.actor, "release_resources", None)
        if release is not None:
            try:
                release()
            except Exception:
                log.exception("node %s: release_resources failed", self.node_id)
        await self._close_resources()
        self.clients.clear()
        self.state = RuntimeState.STOPPED
        self.stopped.set()
        log.info("node %s: stopped", self.node_id)

    async def _close_resources(self) -> None:
        if self.transport is not None:
            await self.transport.close()
        if self.disk is not None:
            self.disk.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)   # releases the flock
            self.lock_fd = None

    def _lock_data_dir(self) -> None:
        fd = os.open(os.path.join(self.data_dir, LOCK_FILE_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirectoryInUse(f"data directory {self.data_dir} is in use by another node") from None
        self.lock_fd = fd

    # -- inputs: one handler at a time ---------------------------------------------------

    def _input(self, handler_name: str, args: tuple) -> None:
        if self.state in (RuntimeState.STOPPING, RuntimeState.STOPPED):
            return
        self.inputs.append((handler_name, args))
        if self.state == RuntimeState.RUNNING:
            self._drain_inputs()

    def _drain_inputs(self) -> None:
        if self.handling:
            return   # a handler is running: its caller's loop below picks this input up
        self.handling = True
        try:
            while self.input_position < len(self.inputs) and self.state == RuntimeState.RUNNING:
                handler_name, args = self.inputs[self.input_position]
                self.input_position += 1
                self._run(handler_name, args)
        finally:
            self.inputs.clear()
            self.input_position = 0
            self.handling = False

    def _run(self, handler_name: str, args: tuple) -> None:
        self.handlers_run += 1
        try:
            getattr(self.actor, handler_name)(*args)
            self._dispatch(self.context.take_commands())
        except Exception as error:
            self.failure = error
            log.critical("node %s: %s raised; stopping the node", self.node_id, handler_name, exc_info=True)
            self._begin_stop()

    def _peer_message(self, src: int, message: Any) -> None:
        self._input("on_message", (src, message))

    def _disk_done(self, token: Hashable, result: IoResult) -> None:
        self._input("on_io_done", (token, result))

    def _fire_timer(self, timer: Hashable, generation: int) -> None:
        armed = self.timers.get(timer)
        if armed is None or armed[0] != generation:
            return   # cancelled or re-armed since
        del self.timers[timer]
        self._input("on_timer", (timer,))

    # -- the one dispatcher over the command set -------------------------------------------

    def _dispatch(self, commands: list) -> None:
        for command in commands:
            if self.state != RuntimeState.RUNNING:
                return
            match command:
                case Send(dst=dst, message=message):
                    self.transport.send(dst, message)
                case Reply(client=client, response=response):
                    on_reply = self.clients.get(client)
                    if on_reply is not None:
                        if type(response) is StatusResponse:
                            response = StatusResponse(node_id=response.node_id,
                                                      status={**response.status, "connections": self._connections()})
                        on_reply(response)
                case SetTimer(timer=timer, delay_ms=delay_ms):
                    armed = self.timers.get(timer)
                    if armed is not None:
                        armed[1].cancel()
                    self.timer_generation += 1
                    generation = self.timer_generation
                    handle = self.loop.call_later(max(0.0, delay_ms) / 1000.0, self._fire_timer, timer, generation)
                    self.timers[timer] = (generation, handle)
                case CancelTimer(timer=timer):
                    armed = self.timers.pop(timer, None)
                    if armed is not None:
                        armed[1].cancel()
                case Write() | Read() | Sync() | Truncate() | Rename() | Delete():
                    self.disk.submit(command)
                case Event(name=name, level=level, text=text, fields=fields):
                    # Structured fields ride along in `extra` for a JSON log formatter.
                    log.log(logging.getLevelName(level.upper()), "node %s: %s", self.node_id, text,
                            extra={"event": name, "event_fields": dict(fields), "node_id": self.node_id})
                case Halt(reason=reason):
                    self.halt_reason = reason
                    # Removal is an orderly end (the cluster let this node go), not a fault.
                    level = logging.WARNING if reason.startswith(REMOVED_FROM_CLUSTER) else logging.ERROR
                    log.log(level, "node %s: halted: %s", self.node_id, reason)
                    self._begin_stop()
                    return
                case _:
                    raise TypeError(f"node {self.node_id} emitted a non-command: {command!r}")

    # -- clients (the ClientGateway of raftlite.io.admin) -----------------------------------

    def open_client(self, on_reply: Callable[[Any], None]) -> Client:
        """A new client session; the actor's replies to it go to `on_reply`."""
        self.next_client += 1
        client = Client(self.next_client)
        self.clients[client] = on_reply
        return client

    def submit(self, client: Client, message: Any) -> None:
        """A request from `client`, delivered as on_message(client, message)."""
        if client in self.clients:
            self._input("on_message", (client, message))

    def close_client(self, client: Client) -> None:
        """The client went away; the actor hears `client_closed_message`, if one is set."""
        if self.clients.pop(client, None) is not None and self.client_closed_message is not None:
            self._input("on_message", (client, self.client_closed_message))

    async def _admin_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_admin_connection(reader, writer, self, message_bytes_max=self.config.message_bytes_max)

    # -- introspection -------------------------------------------------------------------

    def _connections(self) -> dict[str, int]:
        counters: dict[str, int] = {}
        if self.transport is not None:
            counters.update(self.transport.stats)
        for source in self.connection_stats:
            counters.update(source())
        return counters

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"state": self.state, "address": self.address}
        if self.halt_reason is not None:
            status["halt"] = self.halt_reason
        if self.failure is not None:
            status["failure"] = repr(self.failure)
        actor_status = getattr(self.actor, "status", None)
        if actor_status is not None and self.state == RuntimeState.RUNNING:
            status.update(actor_status())
        status["connections"] = self._connections()
        return status
