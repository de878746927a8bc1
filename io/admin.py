"""The admin protocol: msgpack requests and responses for tools and tests.

Theory of operation
-------------------
A client opens a TCP connection to a node's one address and sends `ADMIN_MAGIC` (8
bytes) as its first word; the node's transport hands the connection to
`serve_admin_connection`. From then on both directions carry frames: a 4-byte big-endian
length, then a message encoded by `ADMIN_CODEC` (raftlite.core.peer_codec, extended
here with the client messages of the actors). A length above `message_bytes_max` is
refused before the body is read.

One connection is one client session: the node sees every request on it as
`on_message(Client(connection_id), request)` and routes the actor's `Reply` for that
client back to this connection. Requests are answered in order because a client sends
one request and waits for its answer (`AdminClient.request` holds a lock); an actor may
still answer a session's requests in any order it likes, so pipelining is not offered.
When the connection ends, the runtime tells the actor (its `client_closed_message`, e.g.
the database's `SessionClosed`).

A request that cannot be decoded, or a response that cannot be encoded, is answered
with `AdminFailure` so a client never waits forever; the connection stays usable.

The codec lives here and not in core/ because it names the actors' classes, and core/
must not import actors/.
"""

import asyncio
import logging
import ssl
import struct
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..actors.contract import Client, StatusRequest, StatusResponse
from ..actors.database import (
    Dump, Dumped, Execute, ExecuteResult, Interrupt, Interrupted, Open, Opened, Prepare, Prepared, Query, QueryResult,
    SessionClosed, SqlError,
)
from ..actors.raft_node import (
    AllowVoting, ChangeMembership, ClientError, ClusterDescription, DescribeCluster, Propose, ProposeResult, Read,
    ReadResult, TransferLeadership,
)
from ..core.peer_codec import RAFT_CODEC, CodecError

__all__ = [
    "ADMIN_CODEC", "ADMIN_MAGIC", "AdminClient", "AdminError", "AdminFailure", "AdminNoAnswer", "AdminUnreachable",
    "ClientGateway", "DescribeIdentity", "IdentityDescription", "admin_request", "node_status", "parse_address",
    "serve_admin_connection",
]

log = logging.getLogger("raftlite.io.admin")

ADMIN_MAGIC = b"rlADMIN1"
_LENGTH = struct.Struct(">I")
MESSAGE_BYTES_MAX_DEFAULT = 64 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminFailure:
    """The admin protocol itself failed for one request (undecodable, unencodable)."""

    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeIdentity:
    """Which node answers, of which cluster (raftlite.io.identity): a joining node asks
    it before its ADD, a starting node asks it of the address its id is known by."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityDescription:
    node_id: int
    cluster_id: str | None   # None: not known yet (joining) or never recorded (adopted)
    instance: str            # random per process: a node that reached itself sees its own


# Tags from 128 on (raftlite.core.peer_codec keeps 1..127 for raft). One line per class.
ADMIN_CODEC = RAFT_CODEC.extended([
    (128, StatusRequest),
    (129, StatusResponse),
    (130, AdminFailure),
    (131, DescribeIdentity),
    (132, IdentityDescription),
    (140, Propose),
    (141, Read),
    (142, ChangeMembership),
    (143, TransferLeadership),
    (144, ProposeResult),
    (145, ReadResult),
    (146, ClientError),
    (147, DescribeCluster),
    (148, ClusterDescription),
    (149, AllowVoting),
    (160, Open),
    (161, Execute),
    (162, Query),
    (163, SessionClosed),
    (164, Opened),
    (165, ExecuteResult),
    (166, QueryResult),
    (167, SqlError),
    (168, Prepare),
    (169, Prepared),
    (170, Dump),
    (171, Dumped),
    (172, Interrupt),
    (173, Interrupted),
])


class AdminError(Exception):
    """The admin connection failed (refused, closed, timed out, a bad frame)."""


class AdminUnreachable(AdminError):
    """No connection could be made (refused, no route, a name that does not resolve)."""


class AdminNoAnswer(AdminError):
    """Connected and asked, but no answer came within the timeout."""


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') -> (host, port); ValueError with a clear message."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


# -- server side ------------------------------------------------------------------------------


class ClientGateway(Protocol):
    """What the runtime offers a client-facing protocol (admin here, dqlite later)."""

    def open_client(self, on_reply: Callable[[Any], None]) -> Client: ...

    def submit(self, client: Client, message: Any) -> None: ...

    def close_client(self, client: Client) -> None: ...


async def read_frame(reader: asyncio.StreamReader, message_bytes_max: int) -> bytes:
    """One length-prefixed frame; AdminError when the length is above the limit."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > message_bytes_max:
        raise AdminError(f"frame of {length} bytes is above the limit of {message_bytes_max}")
    return await reader.readexactly(length)


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


async def serve_admin_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    gateway: ClientGateway,
    *,
    message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT,
    write_buffer_bytes_max: int = 64 << 20,
) -> None:
    """Serve one admin connection (after its magic) until it closes."""

    def on_reply(response: Any) -> None:
        if writer.is_closing():
            return
        try:
            payload = ADMIN_CODEC.encode(response)
        except CodecError as error:
            log.error("cannot encode a response for an admin client: %s", error)
            payload = ADMIN_CODEC.encode(AdminFailure(message=f"response not encodable: {error}"))
        writer.write(frame(payload))
        if writer.transport.get_write_buffer_size() > write_buffer_bytes_max:
            log.warning("admin client is not reading its answers; closing the connection")
            writer.close()

    client = gateway.open_client(on_reply)
    try:
        while True:
            try:
                payload = await read_frame(reader, message_bytes_max)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except AdminError as error:
                log.warning("admin connection closed: %s", error)
                return
            try:
                request = ADMIN_CODEC.decode(payload)
            except CodecError as error:
                on_reply(AdminFailure(message=f"undecodable request: {error}"))
                continue
            gateway.submit(client, request)
            await writer.drain()   # back-pressure: a client that does not read is not fed more
    finally:
        gateway.close_client(client)
        writer.close()


# -- client side ------------------------------------------------------------------------------


class AdminClient:
    """A small asyncio client: `await AdminClient("127.0.0.1:9001").request(StatusRequest())`.

    Connects on first use; one request at a time per client (one session). Any failure
    closes the connection and raises AdminError; the next request reconnects (a new
    session)."""

    def __init__(
        self,
        address: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout_seconds: float = 10.0,
        message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT,
    ) -> None:
        self.host, self.port = parse_address(address)
        self.address = address
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.timeout_seconds = timeout_seconds
        self.message_bytes_max = message_bytes_max
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()

    async def connect(self) -> None:
        if self.writer is not None:
            return
        try:
            async with asyncio.timeout(self.timeout_seconds):
                self.reader, self.writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl_context,
                    server_hostname=(self.server_hostname or self.host) if self.ssl_context else None,
                )
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as error:
            raise AdminUnreachable(f"cannot connect to {self.address}: {error or type(error).__name__}") from None
        self.writer.write(ADMIN_MAGIC)

    async def request(self, message: Any, *, timeout_seconds: float | None = None) -> Any:
        """Send `message`, return the node's response (AdminError on any failure)."""
        async with self.lock:
            await self.connect()
            limit_seconds = timeout_seconds if timeout_seconds is not None else self.timeout_seconds
            try:
                self.writer.write(frame(ADMIN_CODEC.encode(message)))
                async with asyncio.timeout(limit_seconds):
                    payload = await read_frame(self.reader, self.message_bytes_max)
                return ADMIN_CODEC.decode(payload)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, CodecError, AdminError, ssl.SSLError) as error:
                await self._drop()
                if isinstance(error, asyncio.TimeoutError):
                    raise AdminNoAnswer(f"no answer from {self.address} within {limit_seconds:g} s") from None
                raise AdminError(f"request to {self.address} failed: {type(error).__name__}: {error}") from None
            except BaseException:
                # Cancelled mid-request: the session's state is unknown; close, not await.
                writer, self.reader, self.writer = self.writer, None, None
                if writer is not None:
                    writer.close()
                raise

    async def _drop(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass

    async def close(self) -> None:
        await self._drop()

    async def __aenter__(self) -> "AdminClient":
        return self

    async def __aexit__(self, *exception) -> None:
        await self.close()


async def admin_request(address: str, message: Any, **options) -> Any:
    """One request on a fresh connection."""
    async with AdminClient(address, **options) as client:
        return await client.request(message)


def node_status(address: str, *, timeout_seconds: float = 5.0) -> dict[str, Any]:
    """A node's status (what `raftlite status` prints), from a thread with no running
    event loop; AdminError when the node does not answer in time."""
    try:
        response = asyncio.run(admin_request(address, StatusRequest(), timeout_seconds=timeout_seconds))
    except (OSError, asyncio.TimeoutError, EOFError) as error:
        raise AdminError(f"no answer from {address}: {error}") from None
    return {"node_id": response.node_id, **response.status}
