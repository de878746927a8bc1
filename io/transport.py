"""TCP for one node: one listening address for peers, admin tools and dqlite clients.

Theory of operation
-------------------
Every node listens on one TCP address. The first 8-byte word a connection sends says
what it is (docs/architecture.md §5, as dqlite tells its protocol versions apart):

    PEER_AUTH_MAGIC "rlPEER02" a raft peer that proves the cluster key first, then its
                              stream of messages to this node (the only peer word a node
                              with a cluster key accepts)
    PEER_MAGIC   "rlPEER01"   an unauthenticated raft peer (only a node without a cluster
                              key accepts it, as before keys existed)
    ADMIN_MAGIC  "rlADMIN1"   raftlite's admin protocol (raftlite.io.admin)
    1 or 0x86104dd760433fe5   dqlite's client protocol, version 1 or legacy (little-endian
                              uint64): handed to `client_protocol_handler(reader, writer,
                              protocol_version, roles)` (roles: the certificate's, None
                              without TLS); without a handler the connection is closed
    anything else             closed

Peers. Each node *dials* one connection to every peer and only ever writes on it; what a
peer sends arrives on the connection that peer dialled. With a cluster key, after the
magic both ends run the mutual challenge-response of raftlite.io.peer_auth (the dialler
sends its node id and a nonce, the server answers with its own and a proof, the dialler
sends its proof), within `TransportSettings.peer_auth_timeout_ms`; only then are frames
read, and every message on the connection is attributed to the dialler's authenticated
node id (raft messages carry no sender of their own). A failed, truncated or slow
handshake closes the connection, counts in `stats["peer_auth_failures"]` and is logged
at WARNING at most once a minute per remote host, or per peer address on the dialling
side (the rest are counted in the next warning). Without a key, the dialler just sends its node id (8 bytes, little-endian)
after the magic. Then frames: a 5-byte header (payload length
as big-endian uint32, kind) and the payload. A message (raftlite.core.peer_codec bytes)
of at most `fragment_bytes` travels as one WHOLE frame; a larger one as FRAGMENT frames
and a final LAST frame. The writer sends every waiting small message before each
fragment, so a heartbeat waits behind at most one fragment of a 100 MB append, never the
whole append. A large message is encoded as parts (`Codec.encode_parts`: a small head,
then its big byte strings as they are), and its fragments are views of those parts: the
sender copies nothing per follower (an AppendRequest carrying a 63 MB entry took 170-370
ms to encode, per follower, on the leader's loop). A receiver reassembles at most one
large message per connection, and refuses (closes the connection) when a frame or the
reassembled message would exceed `Transport.peer_message_bytes_max`, checked from the
header before the body is read: the larger of `Config.message_bytes_max` and twice
`Config.transaction_bytes_max` (one transaction is one raft entry, an entry is never
split across appends, and the leader's check of a transaction's size may miss the pages
still in SQLite's cache).

No task wakes up per message. The receiver reads whatever the socket holds, up to
256 KiB, and parses every complete frame in it synchronously. A sender's small messages
are written by one callback per event-loop iteration (`loop.call_soon`) that puts every
small message queued meanwhile into one write; the link's task dials, fragments large
messages, and takes over the small ones while the connection's write buffer is above
its limit (asyncio's high-water mark) or the connection has ended.

Each peer's outbound queue is bounded (`Config.outbound_queue_messages_max` messages,
and `TransportSettings.outbound_queue_bytes_max` bytes for small messages and as many
for large ones; one large message is always accepted when no other waits). When full,
new messages are dropped: raft retransmits, and a stopped peer (SIGSTOP) costs at most
the bound in memory. The budgets are apart because one shared budget dropped every
heartbeat queued behind a 105 MB append for the 1.3 s it took to send, and the leader
lost its quorum (check-quorum) with its followers up and reading. While a peer is unreachable
its link reconnects with capped exponential backoff and full jitter; a large message
cut by a broken connection is dropped, not resumed (the receiver dropped its part).
A dead remote is noticed when its side of the connection reaches end-of-file.

TLS. With `TlsSettings`, every connection in both directions is TLS (the word is read
after the handshake): the server requires and verifies a client certificate signed by
the cluster CA (mutual TLS), and a dialling node verifies the server's certificate and,
by default, its host name against the address it dialled. `TlsSettings.from_files`
builds both contexts from PEM files; admin and dqlite clients use `client_context`.
A certificate grants only its role (raftlite.io.tls_roles: OU=raftlite-node, -admin or
-client in its subject): after the first word, a connection whose word needs a role the
certificate lacks (a client certificate on the peer or admin word) is closed, counted in
`stats["role_refused"]` and logged at WARNING at most once a minute per remote host.

Connection limits. Every connection holds a file descriptor, and a node that runs out of
them cannot open a raft segment or an SQLite file. So dqlite client connections are
bounded (`TransportSettings.client_sockets_max`, by default
`client_sockets_default(RLIMIT_NOFILE)`: (soft limit - FD_RESERVE) // FDS_PER_CLIENT, at
least 1; see the function), and so are admin connections (`admin_sockets_max`). A dqlite
client past the limit is sent one FAILURE response (SQLITE_CANTOPEN, "too many client
connections") and closed; an admin connection past its limit is closed. Refusals are
counted (`stats["clients_refused"]`, `stats["admin_refused"]`) and logged at WARNING at
most once per AUTH_WARNING_INTERVAL_S. Sockets that have not yet sent their first word
are bounded too (`pending_sockets_max`; past it a new one is closed at once, counted in
`stats["pending_refused"]`): a flood of silent sockets holds at most that many
descriptors, for at most `handshake_timeout_ms` each. A peer caught in such a flood is
closed too and redials with its backoff. Identified peer connections are never refused.
When accept() itself fails with EMFILE/ENFILE anyway (descriptors taken elsewhere),
the listener survives: under uvloop, libuv closes its spare descriptor, accepts and
closes the waiting connections, and takes the spare back (nothing is logged); asyncio's
own selector loop logs the error and pauses accepting for a second
(tests/test_connection_limits.py floods a node past its descriptor limit).

Malformed input from the network is never an exception to the node: a bad magic or
frame closes that connection, an undecodable message is counted and dropped
(docs/architecture.md §6).
"""

import asyncio
import ctypes
import ctypes.util
import logging
import os
import random
import resource
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from ..actors.config import Config
from ..actors.database_requests import SQLITE_CANTOPEN
from ..core.peer_codec import RAFT_CODEC, Codec, CodecError
from ..core.wire import FailureResponse, encode_response
from .admin import ADMIN_MAGIC, parse_address
from .peer_auth import (
    ANSWER_BYTES, HELLO_FIXED_BYTES, PROOF_BYTES, ClusterKeys, PeerAuthError, dialler_finish, dialler_hello, hello_bytes,
    server_answer, server_finish,
)
from .tls_roles import CertificateRoles, Operation, RoleGate

__all__ = [
    "DQLITE_PROTOCOL_VERSION", "DQLITE_PROTOCOL_VERSION_LEGACY", "PEER_AUTH_MAGIC", "PEER_MAGIC", "TlsSettings", "Transport",
    "TransportSettings", "client_sockets_default",
]

log = logging.getLogger("raftlite.io.transport")

PEER_MAGIC = b"rlPEER01"
PEER_AUTH_MAGIC = b"rlPEER02"
# An authentication failure is logged at most this often per remote host: a peer with
# the wrong key, or a process knocking on the port, must not flood the log.
AUTH_WARNING_INTERVAL_S = 60.0
_AUTH_WARNING_HOSTS_MAX = 1024
DQLITE_PROTOCOL_VERSION = 1
DQLITE_PROTOCOL_VERSION_LEGACY = 0x86104DD760433FE5
_DQLITE_WORDS = {
    DQLITE_PROTOCOL_VERSION.to_bytes(8, "little"): DQLITE_PROTOCOL_VERSION,
    DQLITE_PROTOCOL_VERSION_LEGACY.to_bytes(8, "little"): DQLITE_PROTOCOL_VERSION_LEGACY,
}
# Descriptors kept out of the client budget: the listener, peer links (two per peer),
# up to the admin and pending limits (32 each), raft segments and snapshot files being
# written, the node's own SQLite connection per database, the logging handlers, with
# room to spare.
FD_RESERVE = 128
# What one dqlite client can cost: its socket, and its SQLite connection to a database
# (the database file and its WAL).
FDS_PER_CLIENT = 3
# A refused client's request is read (and dropped) for at most this long before the
# connection is closed: closing with unread bytes makes the kernel reset the connection,
# and a reset can discard the FAILURE before the client reads it.
_REFUSAL_LINGER_S = 0.5
# ... by at most this many refused connections at a time (each holds a descriptor; a
# flood beyond it is closed at once, and may see a reset instead of the FAILURE).
_REFUSALS_LINGERING_MAX = 16
READ_DISCARD_BYTES = 64 << 10
# After a message this big was sent or received, glibc's malloc_trim(0) runs once the
# node has been free of them for MEMORY_TRIM_DELAY_S: a big transaction leaves many
# freed mid-sized blocks in glibc's heaps (SQLite pages, the page images decoded one by
# one), which free() keeps for reuse; malloc_trim gives their pages back to the system.
# (Blocks above glibc's mmap threshold, like an entry's data, go back at once anyway.)
MEMORY_TRIM_AFTER_BYTES = 16 << 20
MEMORY_TRIM_DELAY_S = 2.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another C library)."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


_MALLOC_TRIM = _load_malloc_trim()


def client_sockets_default(nofile_soft: int | None = None) -> int:
    """The default dqlite client connection limit: (soft RLIMIT_NOFILE - FD_RESERVE) //
    FDS_PER_CLIENT, at least 1 (an unlimited descriptor limit counts as 1 << 20)."""
    if nofile_soft is None:
        nofile_soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile_soft == resource.RLIM_INFINITY or nofile_soft < 0:
        nofile_soft = 1 << 20
    return max(1, (nofile_soft - FD_RESERVE) // FDS_PER_CLIENT)


_NODE_ID = struct.Struct("<Q")
_FRAME_HEADER = struct.Struct(">IB")
_WHOLE, _FRAGMENT, _LAST = 1, 2, 3
# How much a peer connection reads at once (asyncio's StreamReader holds up to about
# 128 KiB, so this takes everything it has).
_READ_CHUNK_BYTES = 256 << 10

# (reader, writer, protocol version, the certificate's roles: None without TLS)
ClientProtocolHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, int, CertificateRoles | None], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportSettings:
    """Transport limits and timings (the message limits themselves are in Config)."""

    fragment_bytes: int = 64 << 10
    outbound_queue_bytes_max: int = 32 << 20
    reconnect_delay_ms: float = 50.0
    reconnect_delay_max_ms: float = 2000.0
    connect_timeout_ms: float = 2000.0
    # For the first word (after TLS's own handshake, which has the same bound): a socket
    # that says nothing holds a descriptor outside every connection limit, so not for long.
    handshake_timeout_ms: float = 5000.0
    # The whole peer authentication (hello, answer, proof), dialler and server side.
    peer_auth_timeout_ms: float = 3000.0
    # A quiet link looks for its peer's end-of-file this often.
    idle_check_interval_ms: float = 500.0
    # Open dqlite client connections; None: client_sockets_default() of this process's
    # descriptor limit (see the module docstring).
    client_sockets_max: int | None = None
    # Open admin connections (raftlite status, members, join ...).
    admin_sockets_max: int = 32
    # Open sockets that have not sent their first word yet (of any kind).
    pending_sockets_max: int = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext
    # A certificate without a raftlite role (OU) grants nothing, instead of counting as
    # a node's (raftlite.io.tls_roles).
    require_roles: bool = False

    @classmethod
    def from_files(
        cls,
        *,
        certificate_chain_file: str,
        private_key_file: str,
        ca_file: str,
        require_client_certificate: bool = True,
        check_hostname: bool = True,
        require_roles: bool = False,
    ) -> "TlsSettings":
        """Contexts for a node whose certificate (for both serving and dialling) and CA are
        PEM files. ValueError with a one-line message when a file is missing or bad."""
        try:
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
            server.load_cert_chain(certificate_chain_file, private_key_file)
            server.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
            client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
            client.load_cert_chain(certificate_chain_file, private_key_file)
            client.check_hostname = check_hostname
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"TLS files unusable: {error}") from None
        for context in (server, client):
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        return cls(server_context=server, client_context=client, require_roles=require_roles)


class _LargeMessage:
    """A message above `fragment_bytes`, as the codec's parts, and how far it was sent."""

    __slots__ = ("offset", "part", "parts", "total_bytes")

    def __init__(self, parts: list[bytes], total_bytes: int) -> None:
        self.parts = parts
        self.total_bytes = total_bytes
        self.part = 0       # the part the next fragment starts in
        self.offset = 0     # ... at this offset

    def next_fragment(self, fragment_bytes: int) -> tuple[memoryview, bool]:
        """A view of the next at most `fragment_bytes` (within one part; no copy), and
        whether it is the last."""
        part = self.parts[self.part]
        end = min(self.offset + fragment_bytes, len(part))
        fragment = memoryview(part)[self.offset:end]
        if end == len(part):
            self.part, self.offset = self.part + 1, 0
        else:
            self.offset = end
        return fragment, self.part == len(self.parts)


class _PeerLink:
    """The outbound side toward one peer: a bounded queue and a task that (re)connects
    and writes frames."""

    def __init__(self, transport: "Transport", peer_id: int, address: str) -> None:
        self.transport = transport
        self.peer_id = peer_id
        self.address = address
        self.host, self.port = parse_address(address)
        self.small: deque[bytes] = deque()
        self.large: deque[_LargeMessage] = deque()
        self.current: _LargeMessage | None = None   # the large message being fragmented
        self.queued_messages = 0
        self.queued_bytes = 0
        self.large_queued_bytes = 0   # of queued_bytes, in large messages (the current one included)
        self.wake = asyncio.Event()
        self.connected = False
        self.closing = False
        # While connected (the magic sent): the connection, for `_flush`.
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.flush_scheduled = False
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self._run(), name=f"peer-link-{peer_id}")

    def enqueue(self, parts: list[bytes], total_bytes: int) -> bool:
        transport = self.transport
        bytes_max = transport.settings.outbound_queue_bytes_max
        large = total_bytes > transport.settings.fragment_bytes
        # Small and large messages have a byte budget each, so a 100 MB append (always
        # accepted when no other large message waits) never makes the heartbeats queued
        # behind it be dropped: they overtake it between two fragments.
        if large:
            refused = self.large_queued_bytes and self.large_queued_bytes + total_bytes > bytes_max
        else:
            small_bytes = self.queued_bytes - self.large_queued_bytes
            refused = small_bytes and small_bytes + total_bytes > bytes_max
        if refused or (self.queued_messages and self.queued_messages >= transport.config.outbound_queue_messages_max):
            return False
        self.queued_messages += 1
        self.queued_bytes += total_bytes
        if large:
            self.large_queued_bytes += total_bytes
            self.large.append(_LargeMessage(parts, total_bytes))
            self.wake.set()
        else:
            self.small.append(parts[0] if len(parts) == 1 else b"".join(parts))
            if self.writer is None:
                self.wake.set()   # the task sends the queue once it has connected
            elif not self.flush_scheduled:
                # Not written here: what the caller sends next in this loop iteration
                # joins the same write.
                self.flush_scheduled = True
                self.loop.call_soon(self._flush)
        return True

    def _dequeued(self, payload_bytes: int) -> None:
        """A large message left the queue (sent, or cut with its connection)."""
        self.queued_messages -= 1
        self.queued_bytes -= payload_bytes
        self.large_queued_bytes -= payload_bytes

    def _flush(self) -> None:
        """Write the waiting small messages (a call_soon callback). Frames are written
        whole and never across an await, so the stream is always between two frames
        here, also between two fragments of a large message."""
        self.flush_scheduled = False
        reader, writer = self.reader, self.writer
        if writer is None or not self.small:
            return   # disconnected meanwhile: the task sends the queue after reconnecting
        transport = writer.transport
        high_water_bytes = transport.get_write_buffer_limits()[1]
        while self.small:
            if reader.at_eof() or writer.is_closing() or transport.get_write_buffer_size() >= high_water_bytes:
                # The task notices the closed connection, or waits in drain() for the
                # peer to read, and writes the rest.
                self.wake.set()
                return
            self._write_small(writer)

    def _write_small(self, writer: asyncio.StreamWriter) -> None:
        """Everything waiting, up to about fragment_bytes, in one write (one send system
        call): a handler often emits several messages to a peer at once."""
        fragment_bytes = self.transport.settings.fragment_bytes
        small = self.small
        batch, parts = 0, []
        while small and batch < fragment_bytes:
            payload = small.popleft()
            parts.append(_FRAME_HEADER.pack(len(payload), _WHOLE))
            parts.append(payload)
            batch += len(payload)
        self.queued_messages -= len(parts) // 2
        self.queued_bytes -= batch
        self.transport.stats["messages_sent"] += len(parts) // 2
        writer.write(b"".join(parts))

    async def _run(self) -> None:
        settings = self.transport.settings
        failures = 0
        while not self.closing:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a
                # cancellation that races with the connection attempt's failure.
                async with asyncio.timeout(settings.connect_timeout_ms / 1000):
                    reader, writer = await self._connect()
            except (OSError, asyncio.TimeoutError, ssl.SSLError, ssl.CertificateError) as error:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.info("node %s: cannot reach peer %s at %s (%s)", self.transport.node_id, self.peer_id, self.address, error or type(error).__name__)
                await asyncio.sleep(self._backoff_seconds(failures))
                continue
            transport = self.transport
            if transport.cluster_keys is not None:
                try:
                    await self._authenticate(reader, writer)
                except PeerAuthError as error:
                    writer.close()
                    failures += 1
                    transport._auth_failed(self.address, f"cannot authenticate peer {self.peer_id} at {self.address}: {error}")
                    await asyncio.sleep(self._backoff_seconds(failures))
                    continue
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ssl.SSLError) as error:
                    # The network, or a peer going away, not a proof that failed (a cut
                    # link black-holes the handshake): logged as an unreachable peer is.
                    writer.close()
                    failures += 1
                    if failures == 1 or failures % 20 == 0:
                        log.info("node %s: no handshake with peer %s at %s (%s)", transport.node_id, self.peer_id,
                                 self.address, _auth_error_text(error))
                    await asyncio.sleep(self._backoff_seconds(failures))
                    continue
            failures = 0
            self.connected = True
            transport.stats["connections_dialled"] += 1
            try:
                if transport.cluster_keys is None:
                    writer.write(PEER_MAGIC + _NODE_ID.pack(transport.node_id))
                self.reader, self.writer = reader, writer
                await self._pump(reader, writer)
            except (OSError, ssl.SSLError, ConnectionError) as error:
                log.info("node %s: connection to peer %s lost (%s)", self.transport.node_id, self.peer_id, error or type(error).__name__)
            except Exception:
                log.exception("node %s: the link to peer %s failed; reconnecting", self.transport.node_id, self.peer_id)
            finally:
                self.connected = False
                self.reader = self.writer = None
                writer.close()
                if self.current is not None:
                    self._dequeued(self.current.total_bytes)
                    self.current = None   # the receiver dropped its part: raft resends
                    self.transport.stats["dropped_cut"] += 1
            await asyncio.sleep(self._backoff_seconds(1))

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Prove the cluster key to the peer and check its proof (raftlite.io.peer_auth)."""
        transport = self.transport
        hello, state = dialler_hello(transport.cluster_keys, transport.node_id)
        async with asyncio.timeout(transport.settings.peer_auth_timeout_ms / 1000):
            writer.write(PEER_AUTH_MAGIC + hello)
            answer = await reader.readexactly(ANSWER_BYTES)
            writer.write(dialler_finish(state, answer, self.peer_id))
            await writer.drain()

    def _backoff_seconds(self, failures: int) -> float:
        settings = self.transport.settings
        ceiling = min(settings.reconnect_delay_max_ms, settings.reconnect_delay_ms * 2 ** min(failures - 1, 30))
        return self.transport.rng.uniform(ceiling / 2, ceiling) / 1000

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        tls = self.transport.tls
        if tls is None:
            return await asyncio.open_connection(self.host, self.port)
        return await asyncio.open_connection(self.host, self.port, ssl=tls.client_context, server_hostname=self.host)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        settings = self.transport.settings
        fragment_bytes = settings.fragment_bytes
        stats = self.transport.stats
        while True:
            if reader.at_eof() or writer.is_closing():
                raise ConnectionResetError("the peer closed the connection")
            if self.small:
                # Usually `_flush` has written them; these waited for the write buffer
                # to drain, or for this connection.
                self._write_small(writer)
                await writer.drain()
            elif self.current is not None or self.large:
                if self.current is None:
                    self.current = self.large.popleft()
                fragment, last = self.current.next_fragment(fragment_bytes)
                writer.write(_FRAME_HEADER.pack(len(fragment), _LAST if last else _FRAGMENT))
                writer.write(fragment)
                stats["fragments_sent"] += 1
                if last:
                    if self.current.total_bytes >= MEMORY_TRIM_AFTER_BYTES:
                        self.transport.trim_memory_later()
                    self._dequeued(self.current.total_bytes)
                    self.current = None
                    stats["messages_sent"] += 1
                await writer.drain()
                # drain() returns without yielding while the socket keeps up (loopback):
                # yield anyway, so timers and handlers can queue a heartbeat between fragments.
                await asyncio.sleep(0)
            else:
                self.wake.clear()
                try:
                    async with asyncio.timeout(settings.idle_check_interval_ms / 1000):
                        await self.wake.wait()
                except TimeoutError:
                    pass

    async def close(self) -> None:
        self.closing = True
        while not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=0.1)
        if not self.task.cancelled() and self.task.exception() is not None:
            log.error("node %s: the link to peer %s ended with %r", self.transport.node_id, self.peer_id, self.task.exception())


class _InboundFrames:
    """One peer connection's byte stream, cut into frames and reassembled into messages
    that are delivered in order. Each byte is copied once after the read: a frame
    complete within a chunk is decoded from a view of the chunk, a body that goes on in
    later chunks is appended to its message buffer as it arrives."""

    def __init__(self, transport: "Transport", peer: int) -> None:
        self.transport = transport
        self.peer = peer
        self.limit = transport.peer_message_bytes_max
        self.partial: bytearray | None = None   # the fragments of a large message so far
        # A frame body that continues in the next chunk: where it goes (`partial`, or a
        # buffer of its own for a WHOLE frame), how many bytes are missing, its kind.
        self.body: bytearray | None = None
        self.body_missing_bytes = 0
        self.body_kind = 0
        self.header_start = b""   # the first bytes of a header cut by the chunk's end

    def feed(self, chunk: bytes) -> bool:
        """Deliver every message `chunk` completes; False when the peer broke the
        framing or a limit (the connection is then closed)."""
        position = 0
        if self.body is not None:
            body = self.body
            taken = min(self.body_missing_bytes, len(chunk))
            body += memoryview(chunk)[:taken]
            self.body_missing_bytes -= taken
            if self.body_missing_bytes:
                return True
            self.body = None
            if self.body_kind == _WHOLE:
                self.transport._deliver(self.peer, body)
            elif self.body_kind == _LAST:
                self.partial = None
                self.transport._deliver(self.peer, body)
            position = taken
        elif self.header_start:
            chunk, self.header_start = self.header_start + chunk, b""   # rare: at most once per read
        return self._parse(chunk, position)

    def _parse(self, chunk: bytes, position: int) -> bool:
        transport, peer, limit = self.transport, self.peer, self.limit
        deliver, unpack_from = transport._deliver, _FRAME_HEADER.unpack_from
        header_bytes = _FRAME_HEADER.size
        end = len(chunk)
        with memoryview(chunk) as view:   # bytes: views of it may outlive this call
            while end - position >= header_bytes:
                length, kind = unpack_from(chunk, position)
                body_start = position + header_bytes
                if kind == _WHOLE:
                    if length > limit:
                        log.warning("node %s: peer %s sent a %d-byte message (limit %d); closing", transport.node_id, peer, length, limit)
                        return False
                    if end - body_start < length:
                        self.body = bytearray(view[body_start:])
                        break
                    position = body_start + length
                    deliver(peer, view[body_start:position])
                elif kind == _FRAGMENT or kind == _LAST:
                    partial = self.partial
                    if partial is None:
                        partial = self.partial = bytearray()
                    if len(partial) + length > limit:
                        log.warning("node %s: peer %s sent a message above %d bytes; closing", transport.node_id, peer, limit)
                        return False
                    if end - body_start < length:
                        partial += view[body_start:]
                        self.body = partial
                        break
                    position = body_start + length
                    partial += view[body_start:position]
                    if kind == _LAST:
                        self.partial = None
                        deliver(peer, partial)
                else:
                    log.warning("node %s: peer %s sent a frame of unknown kind %d; closing", transport.node_id, peer, kind)
                    return False
            else:
                if position < end:
                    self.header_start = chunk[position:]
                return True
        self.body_missing_bytes = length - (end - body_start)
        self.body_kind = kind
        return True


class Transport:
    """A node's listener and its links to peers; see the module docstring."""

    def __init__(
        self,
        *,
        node_id: int,
        address: str,
        config: Config,
        on_peer_message: Callable[[int, Any], None],
        on_admin_connection: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] | None = None,
        client_protocol_handler: ClientProtocolHandler | None = None,
        tls: TlsSettings | None = None,
        settings: TransportSettings = TransportSettings(),
        codec: Codec = RAFT_CODEC,
        rng: random.Random | None = None,
        cluster_keys: ClusterKeys | None = None,
    ) -> None:
        self.node_id = node_id
        # None: peers are not authenticated (PEER_MAGIC, as before keys existed).
        self.cluster_keys = cluster_keys
        self.auth_warned_at: dict[str, float] = {}
        self.auth_failures_unlogged: dict[str, int] = {}
        self.host, self.port = parse_address(address)
        self.config = config
        # The biggest message a peer may send: a client request's limit, or one append
        # carrying an entry of a whole transaction (see the module docstring): twice
        # transaction_bytes_max, as the leader refuses a transaction from the pages it
        # spilled, not counting those still in SQLite's cache (actors/sql_service.py).
        self.peer_message_bytes_max = max(config.message_bytes_max, 2 * config.transaction_bytes_max)
        self.on_peer_message = on_peer_message
        self.on_admin_connection = on_admin_connection
        self.client_protocol_handler = client_protocol_handler
        self.tls = tls
        self.settings = settings
        self.codec = codec
        self.rng = rng or random.Random(os.urandom(16))
        self.server: asyncio.Server | None = None
        self.links: dict[int, _PeerLink] = {}
        self.retiring: set[asyncio.Task] = set()   # links being closed after set_peers
        self.connections: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.client_sockets_max = (
            settings.client_sockets_max if settings.client_sockets_max is not None else client_sockets_default()
        )
        if min(self.client_sockets_max, settings.admin_sockets_max, settings.pending_sockets_max) < 1:
            raise ValueError("client_sockets_max, admin_sockets_max and pending_sockets_max must be at least 1")
        self.client_sockets = 0
        self.admin_sockets = 0
        self.pending_sockets = 0
        self.refusals_lingering = 0
        self.limit_warned_at: dict[str, float] = {}
        self.limit_refusals_unlogged: dict[str, int] = {}
        self.closed = False
        self.memory_trim: asyncio.TimerHandle | None = None
        self.stats = {
            key: 0 for key in (
                "messages_sent", "fragments_sent", "messages_received", "dropped_queue_full", "dropped_too_large",
                "dropped_unencodable", "dropped_unknown_peer", "dropped_cut", "undecodable", "connections_dialled",
                "connections_accepted", "connections_refused", "peer_auth_failures", "clients_refused", "admin_refused",
                "pending_refused", "memory_trims",
            )
        }
        # With TLS: what each connection's certificate may do (raftlite.io.tls_roles).
        self.role_gate = RoleGate(node_id, require_roles=tls.require_roles, stats=self.stats) if tls else None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def listen(self) -> str:
        """Bind and start accepting; returns the bound "host:port" (port 0 picks one)."""
        self.server = await asyncio.start_server(
            self._on_connection, self.host, self.port,
            ssl=self.tls.server_context if self.tls else None,
            ssl_handshake_timeout=self.settings.handshake_timeout_ms / 1000 if self.tls else None,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self.address

    def set_peers(self, peers: Mapping[int, str]) -> None:
        """Dial these peers from now on ({node_id: "host:port"}; this node is skipped)."""
        wanted = {peer: address for peer, address in peers.items() if peer != self.node_id}
        for peer in list(self.links):
            if wanted.get(peer) != self.links[peer].address:
                task = asyncio.get_running_loop().create_task(self.links.pop(peer).close())
                self.retiring.add(task)
                task.add_done_callback(self.retiring.discard)
        for peer, address in sorted(wanted.items()):
            if peer not in self.links:
                parse_address(address)   # a bad address fails here, in the caller, with a clear message
                self.links[peer] = _PeerLink(self, peer, address)

    def send(self, dst: int, message: Any) -> bool:
        """Queue `message` for peer `dst`; False when it was dropped (and counted)."""
        if self.closed:
            return False
        link = self.links.get(dst)
        if link is None:
            self.stats["dropped_unknown_peer"] += 1
            return False
        try:
            encode_parts = getattr(self.codec, "encode_parts", None)
            parts = encode_parts(message) if encode_parts is not None else [self.codec.encode(message)]
        except CodecError as error:
            log.error("node %s: cannot encode a message for peer %s: %s", self.node_id, dst, error)
            self.stats["dropped_unencodable"] += 1
            return False
        total_bytes = sum(len(part) for part in parts)
        if total_bytes > self.peer_message_bytes_max:
            log.warning("node %s: dropping a %d-byte %s for peer %s: above the peer message limit of %d bytes",
                        self.node_id, total_bytes, type(message).__name__, dst, self.peer_message_bytes_max)
            self.stats["dropped_too_large"] += 1
            return False
        if not link.enqueue(parts, total_bytes):
            self.stats["dropped_queue_full"] += 1
            return False
        return True

    def peer_connected(self, peer: int) -> bool:
        link = self.links.get(peer)
        return link is not None and link.connected

    # -- inbound -------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self.closed:
            writer.close()
            return
        self.connections.add(task)
        self.writers.add(writer)
        self.stats["connections_accepted"] += 1
        try:
            if self.pending_sockets >= self.settings.pending_sockets_max:
                self._refused_at_limit("pending", "pending_refused", self.settings.pending_sockets_max)
                return
            self.pending_sockets += 1
            try:
                async with asyncio.timeout(self.settings.handshake_timeout_ms / 1000):
                    word = await reader.readexactly(8)
            finally:
                self.pending_sockets -= 1
            roles: CertificateRoles | None = None
            if self.role_gate is not None:   # TLS: the certificate must grant what the first word asks for
                roles = self.role_gate.roles_of(writer.get_extra_info("peercert"))
                needs = (Operation.PEER if word in (PEER_AUTH_MAGIC, PEER_MAGIC) else Operation.ADMIN if word == ADMIN_MAGIC
                         else Operation.CLIENT if word in _DQLITE_WORDS else None)
                if needs is not None and not self.role_gate.admit(roles, needs, _remote_host(writer)):
                    return
            if word == PEER_AUTH_MAGIC or word == PEER_MAGIC:
                await self._serve_peer(reader, writer, authenticated=word == PEER_AUTH_MAGIC)
            elif word == ADMIN_MAGIC and self.on_admin_connection is not None:
                if self.admin_sockets >= self.settings.admin_sockets_max:
                    self._refused_at_limit("admin", "admin_refused", self.settings.admin_sockets_max)
                    return
                self.admin_sockets += 1
                try:
                    await self.on_admin_connection(reader, writer)
                finally:
                    self.admin_sockets -= 1
            elif word in _DQLITE_WORDS and self.client_protocol_handler is not None:
                if self.client_sockets >= self.client_sockets_max:
                    self._refused_at_limit("client", "clients_refused", self.client_sockets_max)
                    await self._refuse_client(reader, writer)
                    return
                self.client_sockets += 1
                try:
                    await self.client_protocol_handler(reader, writer, _DQLITE_WORDS[word], roles)
                finally:
                    self.client_sockets -= 1
            else:
                self.stats["connections_refused"] += 1
                log.info("node %s: closing a connection that began with %r", self.node_id, word)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # The transport is closing. This task was made by asyncio.start_server, whose
            # done-callback (Python 3.11) calls task.exception(), which would raise on a
            # cancelled task: end normally instead.
            pass
        except Exception:
            log.exception("node %s: a connection handler failed", self.node_id)
        finally:
            writer.close()
            self.writers.discard(writer)
            self.connections.discard(task)

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, authenticated: bool) -> None:
        host = _remote_host(writer)
        if self.cluster_keys is None and authenticated:
            self._auth_failed(host, "refused a peer that offers a cluster key: this node has none (--cluster-key-file)")
            return
        if self.cluster_keys is not None and not authenticated:
            self._auth_failed(host, "refused an unauthenticated peer connection (this node requires the cluster key)")
            return
        if authenticated:
            try:
                async with asyncio.timeout(self.settings.peer_auth_timeout_ms / 1000):
                    peer = await self._authenticate(reader, writer)
            except (PeerAuthError, asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError) as error:
                self._auth_failed(host, f"refused a peer connection: {_auth_error_text(error)}")
                return
        else:
            async with asyncio.timeout(self.settings.handshake_timeout_ms / 1000):
                (peer,) = _NODE_ID.unpack(await reader.readexactly(_NODE_ID.size))
        if peer == self.node_id:
            log.warning("node %s: a peer connection claims this node's own id; closing it", self.node_id)
            return
        frames = _InboundFrames(self, peer)
        while True:
            chunk = await reader.read(_READ_CHUNK_BYTES)
            if not chunk or not frames.feed(chunk):
                return

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        """The server side of raftlite.io.peer_auth's handshake: the dialler's
        authenticated id. PeerAuthError when it fails (a dialler with no key in common
        is told so first)."""
        fixed = await reader.readexactly(HELLO_FIXED_BYTES)
        hello = fixed + await reader.readexactly(hello_bytes(fixed))
        answer, state = server_answer(self.cluster_keys, self.node_id, hello)
        writer.write(answer)
        await writer.drain()
        if state is None:
            raise PeerAuthError("the dialler holds none of this node's cluster keys (a wrong --cluster-key-file?)")
        return server_finish(state, await reader.readexactly(PROOF_BYTES))

    def _auth_failed(self, host: str, what: str) -> None:
        """Count a failed peer authentication; warn at most once per interval per `host`
        (the remote host of an inbound connection, whose port changes on every attempt,
        or the address of a peer this node dials)."""
        self.stats["peer_auth_failures"] += 1
        now = time.monotonic()
        last = self.auth_warned_at.get(host)
        if last is not None and now - last < AUTH_WARNING_INTERVAL_S:
            self.auth_failures_unlogged[host] = self.auth_failures_unlogged.get(host, 0) + 1
            return
        if len(self.auth_warned_at) >= _AUTH_WARNING_HOSTS_MAX:
            # Many hosts: forget those whose interval has passed, so the table stays bounded.
            for stale in [h for h, at in self.auth_warned_at.items() if now - at >= AUTH_WARNING_INTERVAL_S]:
                del self.auth_warned_at[stale]
                self.auth_failures_unlogged.pop(stale, None)
            if len(self.auth_warned_at) >= _AUTH_WARNING_HOSTS_MAX:
                return   # that many hosts failing within the interval: counted, not logged
        unlogged = self.auth_failures_unlogged.pop(host, 0)
        self.auth_warned_at[host] = now
        more = f" ({unlogged} more from {host} since the last warning)" if unlogged else ""
        log.warning("node %s: %s [from %s]%s", self.node_id, what, host, more)

    def _refused_at_limit(self, kind: str, stat: str, limit: int) -> None:
        """Count a connection refused at its limit; warn at most once per interval per kind."""
        self.stats[stat] += 1
        now = time.monotonic()
        last = self.limit_warned_at.get(kind)
        if last is not None and now - last < AUTH_WARNING_INTERVAL_S:
            self.limit_refusals_unlogged[kind] = self.limit_refusals_unlogged.get(kind, 0) + 1
            return
        self.limit_warned_at[kind] = now
        unlogged = self.limit_refusals_unlogged.pop(kind, 0)
        more = f" ({unlogged} more since the last warning)" if unlogged else ""
        log.warning("node %s: refused a %s connection: all %d (%s_sockets_max) are open%s",
                    self.node_id, kind, limit, kind, more)

    async def _refuse_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One FAILURE, sent before the client's first request is answered (dqlite
        clients read a response after each request, and take this one as its answer)."""
        writer.write(encode_response(FailureResponse(
            code=SQLITE_CANTOPEN,
            message=f"too many client connections on this node: all {self.client_sockets_max} are open; retry later",
        )))
        await writer.drain()
        if self.refusals_lingering >= _REFUSALS_LINGERING_MAX or not writer.can_write_eof():
            return
        writer.write_eof()
        self.refusals_lingering += 1
        try:
            async with asyncio.timeout(_REFUSAL_LINGER_S):
                while await reader.read(READ_DISCARD_BYTES):
                    pass
        except asyncio.TimeoutError:
            pass
        finally:
            self.refusals_lingering -= 1

    def _deliver(self, peer: int, payload: bytes | bytearray | memoryview) -> None:
        try:
            message = self.codec.decode(payload)
        except CodecError as error:
            self.stats["undecodable"] += 1
            log.warning("node %s: dropping an undecodable message from peer %s: %s", self.node_id, peer, error)
            return
        self.stats["messages_received"] += 1
        if len(payload) >= MEMORY_TRIM_AFTER_BYTES:
            self.trim_memory_later()
        self.on_peer_message(peer, message)

    def trim_memory_later(self) -> None:
        """malloc_trim(0) once MEMORY_TRIM_DELAY_S have passed without another call
        (see MEMORY_TRIM_AFTER_BYTES): after the big message has been applied and let go."""
        if _MALLOC_TRIM is None or self.closed:
            return
        if self.memory_trim is not None:
            self.memory_trim.cancel()
        self.memory_trim = asyncio.get_running_loop().call_later(MEMORY_TRIM_DELAY_S, self._trim_memory)

    def _trim_memory(self) -> None:
        self.memory_trim = None
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)
            self.stats["memory_trims"] += 1

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.memory_trim is not None:
            self.memory_trim.cancel()
        if self.server is not None:
            self.server.close()
        links, self.links = list(self.links.values()), {}
        for link in links:
            await link.close()
        if self.retiring:
            await asyncio.gather(*self.retiring, return_exceptions=True)
        for writer in list(self.writers):
            writer.close()
        tasks = list(self.connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


def _remote_host(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _auth_error_text(error: BaseException) -> str:
    if isinstance(error, asyncio.IncompleteReadError):
        return "the handshake was cut short"
    if isinstance(error, TimeoutError):
        return "the handshake did not complete in time"
    return str(error) or type(error).__name__
