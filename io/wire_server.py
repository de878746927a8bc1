"""dqlite's client protocol on a raftlite node: the asyncio shell around the session.

Theory of operation
-------------------
The protocol itself (handshake, OPEN, PREPARE, EXEC, QUERY and its paging, INTERRUPT,
LEADER, CLUSTER, membership, errors) is `DqliteSession` (actors/dqlite_session.py), a
protocol object with no I/O that the simulator hosts too (sim/dqlite_host.py). This
module only moves bytes and messages around it, for one connection at a time:

- the transport hands every connection whose first word is dqlite's protocol version
  to `WireServer.serve`; the session is given that word first, then what the socket
  reads, `READ_CHUNK_BYTES` at a time, and only while it `wants_bytes` (it holds at most
  one decoded request beyond the one being answered: TCP backpressure does the rest);
- with TLS, the transport also hands over the roles of the connection's certificate
  (io/tls_roles.py); a connection whose roles do not allow membership requests gets a
  session that refuses them (ADD, ASSIGN, REMOVE, TRANSFER, WEIGHT: SQLITE_AUTH);
- a connection is one client of the node's actor (the runtime's `open_client`): the
  session's `SubmitRequest`s go to `runtime.submit`, and the runtime calls `_on_reply`
  synchronously from inside the actor's handler, which feeds the reply to the session
  and writes its answer there and then: a request costs one wake-up (its bytes
  arriving), no queue, no task;
- before each new request the shell awaits `drain()` if the transport holds unsent
  bytes; a result longer than one ROWS batch is sent by a task that waits for the
  transport between batches (`next_rows`); TRANSFER's timers are the event loop's;
- when the client goes away (or the session closes the connection), the actor hears
  `SessionClosed` through `runtime.close_client` (its open transaction is rolled back);
- a connection idle for `idle_timeout_s` (no request being answered, none waiting, no
  byte received) is closed the same way, so idle sockets cannot hold the node's client
  connection limit (io/transport.py). It is first sent one FAILURE (10250, the code
  dqlite clients answer by reconnecting, as after a leader change), which the client
  reads as the answer to its next request: that request certainly did not run. The
  timer is armed whenever the session becomes idle and cancelled by any byte.

A bug in the session found while answering a reply (inside the actor's handler) must
not stop the node: it is kept, the connection closed, and `serve` raises it.
"""

import asyncio
import logging
from typing import Any

from ..actors.dqlite_session import (
    CloseConnection, DqliteSession, EndSession, NodeMetadata, SendBytes, StartTimer, SubmitRequest,
)
from ..core.wire import ErrorCode, FailureResponse, encode_handshake, encode_response
from .tls_roles import CertificateRoles, Operation

__all__ = ["NodeMetadata", "WireServer"]

log = logging.getLogger("raftlite.io.wire_server")

# Bytes read at a time. While a request is being answered at most one more is decoded
# (a well-behaved client sends at most an INTERRUPT); the rest waits undecoded in this
# chunk or in the socket (TCP backpressure).
READ_CHUNK_BYTES = 64 << 10
# `raftlite node --client-idle-timeout`'s default: long enough for any pool's idle
# connection, short enough that abandoned sockets give their slots back.
CLIENT_IDLE_TIMEOUT_DEFAULT_S = 600.0


class _ConnectionClosed(Exception):
    pass


class WireServer:
    """Serves dqlite's protocol for one node; `serve` is the transport's handler."""

    def __init__(
        self,
        runtime: Any,
        *,
        message_bytes_max: int,
        heartbeat_timeout_ms: int,
        transfer_timeout_s: float = 10.0,
        metadata: NodeMetadata | None = None,
        idle_timeout_s: float = 0.0,
    ) -> None:
        if not idle_timeout_s >= 0:
            raise ValueError(f"the client idle timeout must be 0 (never) or a positive number of seconds, "
                             f"got {idle_timeout_s}")
        self.runtime = runtime
        self.message_bytes_max = message_bytes_max
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.transfer_timeout_s = transfer_timeout_s
        self.metadata = metadata or NodeMetadata()
        # 0: never. See the module docstring.
        self.idle_timeout_s = idle_timeout_s
        self.stats = {"idle_closed": 0}

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol_version: int,
        roles: CertificateRoles | None = None,
    ) -> None:
        """Serve one connection; `roles`: its certificate's (None without TLS: everything allowed)."""
        connection = _Connection(self, reader, writer, roles.refusal(Operation.MEMBERSHIP) if roles is not None else None)
        try:
            await connection.run(protocol_version)
        finally:
            connection.close()
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class _Connection:
    """One client connection: a `DqliteSession` driven by a socket and the runtime.

    `run` reads and hands the session bytes, and asks it to answer the next request
    (`step`) when it is `ready`; while the session is busy with a request and wants no
    bytes, `run` waits (`_wait`) until a reply, a timer or the end of a paged result
    wakes it.
    """

    def __init__(
        self, server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        membership_refused: str | None,
    ) -> None:
        self.server = server
        self.runtime = server.runtime
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.loop = asyncio.get_running_loop()
        self.client = self.runtime.open_client(self._on_reply)
        self.session = DqliteSession(
            addresses=self.runtime, message_bytes_max=server.message_bytes_max,
            heartbeat_timeout_ms=server.heartbeat_timeout_ms, transfer_timeout_ms=server.transfer_timeout_s * 1000.0,
            metadata=server.metadata, membership_refused=membership_refused,
        )
        self.closing = False                                 # the session closed the connection
        self.drain_before_closing = False                    # ... right after answering (a FAILURE)
        self.waiter: asyncio.Future | None = None            # `run` waiting for the session
        self.rows_task: asyncio.Task | None = None           # sending the batches after the first
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.idle_timer: asyncio.TimerHandle | None = None   # armed while the session is idle
        self.failure: BaseException | None = None            # raised in `run` (from a callback or the task)

    def close(self) -> None:
        self._apply(self.session.close())

    async def run(self, protocol_version: int) -> None:
        session = self.session
        try:
            self._apply(session.receive_bytes(encode_handshake(protocol_version)))
            while not self.closing:
                if self.failure is not None:
                    raise self.failure
                if session.ready:
                    await self._drain_if_backed_up()
                    self._apply(session.step())
                elif session.wants_bytes:
                    try:
                        data = await self.reader.read(READ_CHUNK_BYTES)
                    except (ConnectionError, OSError):
                        data = b""
                    if data:
                        self._cancel_idle_timer()   # activity: `_apply` arms it afresh if still idle
                    if data and not session.busy:
                        await self._drain_if_backed_up()   # the request these bytes hold is next
                    self._apply(session.receive_bytes(data))
                else:
                    await self._wait()
            if self.failure is not None:
                raise self.failure
            if self.drain_before_closing:
                await self.writer.drain()
        except (_ConnectionClosed, ConnectionError, OSError):
            return
        finally:
            if self.rows_task is not None:
                self.rows_task.cancel()
            for handle in self.timers.values():
                handle.cancel()
            self.timers.clear()
            self._cancel_idle_timer()

    async def _drain_if_backed_up(self) -> None:
        if self.transport.get_write_buffer_size() or self.transport.is_closing():
            await self.writer.drain()   # raises once the connection is lost

    # -- the session's effects ---------------------------------------------------------

    def _apply(self, effects: list) -> None:
        """Carries out the session's effects in order. A SubmitRequest may be answered
        inside `runtime.submit` (the reply callback then applies its own effects)."""
        wrote = False
        for effect in effects:
            match effect:
                case SendBytes(data=data):
                    self.writer.write(data)
                    wrote = True
                case SubmitRequest(message=message):
                    self.runtime.submit(self.client, message)
                case StartTimer(token=token, delay_ms=delay_ms):
                    self.timers[token] = self.loop.call_later(delay_ms / 1000.0, self._on_timer, token)
                case CloseConnection():
                    self.closing = True
                    self.drain_before_closing = wrote
                case EndSession():
                    self.runtime.close_client(self.client)
        if self.session.sending_rows and self.rows_task is None and not self.closing:
            self.rows_task = self.loop.create_task(self._send_rows())
        self._update_idle_timer()

    def _on_reply(self, reply: Any) -> None:
        """The runtime's reply callback, called inside the actor's handler: never raises."""
        token = self.session.awaiting_reply
        if token is None:
            log.debug("dropping a reply no request waits for: %r", type(reply).__name__)
            return
        self._feed(self.session.on_reply, token, reply)

    def _on_timer(self, token: int) -> None:
        self.timers.pop(token, None)
        self._feed(self.session.on_timer, token)

    def _feed(self, handler, *args) -> None:
        try:
            self._apply(handler(*args))
        except Exception as error:   # a bug here must not stop the node: `run` raises it
            self.failure = error
            self.writer.close()
        self._wake()

    async def _send_rows(self) -> None:
        """The batches after the first, each once the transport has room."""
        try:
            while True:
                await self.writer.drain()
                effects = self.session.next_rows()
                if not effects:
                    return
                self._apply(effects)
        except (ConnectionError, OSError) as error:
            self.failure = _ConnectionClosed(str(error))
        except Exception as error:
            self.failure = error
        finally:
            self.rows_task = None
            self._update_idle_timer()
            self._wake()

    # -- the idle timeout ----------------------------------------------------------------

    def _idle(self) -> bool:
        """Waiting for the client: no request being answered or decoded, none to answer."""
        session = self.session
        return not self.closing and not session.closed and not session.busy and not session.ready \
            and session.wants_bytes

    def _update_idle_timer(self) -> None:
        if not self.server.idle_timeout_s or self.failure is not None:
            return
        if not self._idle():
            self._cancel_idle_timer()
        elif self.idle_timer is None:
            self.idle_timer = self.loop.call_later(self.server.idle_timeout_s, self._on_idle_timeout)

    def _cancel_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _on_idle_timeout(self) -> None:
        """Close an idle connection: one FAILURE first, then the transport. `run` reads
        the end of the stream and ends; `serve` then tells the actor (`SessionClosed`:
        an open transaction is rolled back)."""
        self.idle_timer = None
        if not self._idle() or self.transport.is_closing():
            return
        timeout_s = self.server.idle_timeout_s
        self.server.stats["idle_closed"] += 1
        log.info("closing the client connection from %s: idle for %g s (client idle timeout)",
                 _peer_name(self.writer), timeout_s)
        self.writer.write(encode_response(FailureResponse(
            code=ErrorCode.NOT_LEADER,
            message=f"connection closed by the node after {timeout_s:g} s idle (client idle timeout); reconnect",
        )))
        self.writer.close()   # after the FAILURE is flushed

    # -- waiting -------------------------------------------------------------------------

    async def _wait(self) -> None:
        """Until a reply, a timer or the end of a paged result changes the session."""
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "an unknown address"
