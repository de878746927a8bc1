"""The low-level client connection to one dqlite or raftlite node: the wire protocol over
a socket, one request at a time, in a blocking (`Connection`) and an asyncio
(`AsyncConnection`) variant.

Theory of operation
-------------------
`connect` opens TCP, sends the handshake word (protocol version 1) and is ready: no
reply comes to the handshake. Each helper (`leader`, `open`, `exec_sql`, `query_sql`,
`cluster`, `dump`, ...) encodes one request with raftlite.core.wire, sends it and reads
its answer through a `ResponseReader`:
- a FAILURE answer raises `RequestFailed` carrying dqlite's code and message; the
  connection stays usable;
- a query's answer may span several ROWS messages (each ends with "part" while the
  server sends more on its own); `query` / `query_sql` read them all and return one
  `RowsResponse`; `open_query` hands them out batch by batch, and closing it early
  sends INTERRUPT and drains what the server still sends;
- an I/O error, end of stream or deadline raises `ConnectionBroken`, bytes that break
  the protocol raise `raftlite.core.wire.WireProtocolError`: after either, the stream is
  out of step, so the connection closes itself.

The wire allows one request in flight: a lock (threading or asyncio) serializes callers,
and while an `open_query` stream is still unread, any other request raises
`ConnectionBusy`. Leader discovery, retries and DB-API types are the layers above.

The helpers are written once in `_Helpers`: each builds its request and says how to
read the answer, and `_call` (blocking, or a coroutine in the asyncio variant) does the
exchange, so on `AsyncConnection` every helper returns an awaitable of the same value.
"""

import asyncio
from dataclasses import dataclass
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..core.wire import (
    CLUSTER_FORMAT_WITH_ROLES, MESSAGE_BYTES_MAX_DEFAULT, AddRequest, AssignRequest, ClientRequest,
    ClusterRequest, DbResponse, DescribeRequest, DumpFile, DumpRequest, EmptyResponse, ExecRequest,
    ExecSqlRequest, FailureResponse, FilesResponse, FinalizeRequest, InterruptRequest, LeaderRequest,
    MetadataResponse, NodeInfo, OpenRequest, PrepareRequest, QueryRequest, QuerySqlRequest, RemoveRequest,
    Request, Response, ResponseReader, ResultResponse, RowsResponse, ServerResponse, ServersResponse,
    StmtResponse, TransferRequest, Value, WeightRequest, WelcomeResponse, WireProtocolError,
    encode_handshake, encode_request,
)

__all__ = [
    "AsyncConnection", "AsyncRowsStream", "Connection", "ConnectionBroken", "ConnectionBusy",
    "REQUEST_TIMEOUT_S_DEFAULT", "RequestFailed", "RowsStream", "parse_address",
]

REQUEST_TIMEOUT_S_DEFAULT = 30.0
_RECEIVE_BYTES = 256 * 1024


class RequestFailed(Exception):
    """The server answered FAILURE. `code` is dqlite's (SQLite's extended code, 10250 not
    leader, 10506 leadership lost, 1001/1005 protocol); the connection stays usable."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class ConnectionBroken(Exception):
    """The connection failed (I/O error, closed by the peer, deadline passed) and is
    closed. Whether the last request was applied is unknown."""


class ConnectionBusy(Exception):
    """A request was made while an `open_query` stream on this connection is unread."""


def parse_address(address: str) -> tuple[str, int]:
    """"host:port" or "[ipv6]:port" -> (host, port); ValueError with a one-line reason."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"not a node address (host:port): {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def _leader(response: ServerResponse) -> NodeInfo | None:
    if response.node_id == 0 and not response.address:
        return None
    return NodeInfo(node_id=response.node_id, address=response.address)


def _none(_response: Response) -> None:
    return None


def _same(response: Any) -> Any:
    return response


@dataclass(frozen=True, slots=True, kw_only=True)
class _Exchange:
    """How to read the answer to one request."""

    request: Request
    expected: type | tuple[type, ...]
    convert: Callable[[Any], Any] = _same
    cluster_format: int = CLUSTER_FORMAT_WITH_ROLES


class _Helpers:
    """One method per request; `_call` is the variant's exchange (blocking or async)."""

    def _call(self, exchange: _Exchange) -> Any:
        raise NotImplementedError

    def leader(self) -> NodeInfo | None:
        """The leader this node knows of (role None), or None when it knows none."""
        return self._call(_Exchange(request=LeaderRequest(), expected=ServerResponse, convert=_leader))

    def client(self, client_id: int) -> int:
        """Registers the client; returns the server's heartbeat timeout in ms."""
        return self._call(_Exchange(request=ClientRequest(client_id=client_id), expected=WelcomeResponse,
                                    convert=lambda response: response.heartbeat_timeout_ms))

    def open(self, name: str, *, flags: int = 0, vfs: str = "") -> int:
        """Opens (creating if missing) a database for this connection; returns its db id."""
        return self._call(_Exchange(request=OpenRequest(name=name, flags=flags, vfs=vfs), expected=DbResponse,
                                    convert=lambda response: response.db_id))

    def prepare(self, db_id: int, sql: str) -> StmtResponse:
        """Prepares one statement; the answer carries its id and parameter count."""
        return self._call(_Exchange(request=PrepareRequest(db_id=db_id, sql=sql), expected=StmtResponse))

    def exec(self, db_id: int, stmt_id: int, params: Sequence[Value] = ()) -> ResultResponse:
        return self._call(_Exchange(request=ExecRequest(db_id=db_id, stmt_id=stmt_id, params=tuple(params)),
                                    expected=ResultResponse))

    def query(self, db_id: int, stmt_id: int, params: Sequence[Value] = ()) -> RowsResponse:
        """Runs a prepared statement; every batch read, returned as one RowsResponse."""
        return self._call(_Exchange(request=QueryRequest(db_id=db_id, stmt_id=stmt_id, params=tuple(params)),
                                    expected=RowsResponse))

    def finalize(self, db_id: int, stmt_id: int) -> None:
        return self._call(_Exchange(request=FinalizeRequest(db_id=db_id, stmt_id=stmt_id),
                                    expected=EmptyResponse, convert=_none))

    def exec_sql(self, db_id: int, sql: str, params: Sequence[Value] = ()) -> ResultResponse:
        return self._call(_Exchange(request=ExecSqlRequest(db_id=db_id, sql=sql, params=tuple(params)),
                                    expected=ResultResponse))

    def query_sql(self, db_id: int, sql: str, params: Sequence[Value] = ()) -> RowsResponse:
        """Runs SQL text; every batch read, returned as one RowsResponse."""
        return self._call(_Exchange(request=QuerySqlRequest(db_id=db_id, sql=sql, params=tuple(params)),
                                    expected=RowsResponse))

    def interrupt(self, db_id: int) -> None:
        """INTERRUPT; any ROWS still on their way are read and dropped until EMPTY."""
        return self._call(_Exchange(request=InterruptRequest(db_id=db_id), expected=EmptyResponse, convert=_none))

    def cluster(self, *, format: int = CLUSTER_FORMAT_WITH_ROLES) -> tuple[NodeInfo, ...]:
        return self._call(_Exchange(request=ClusterRequest(format=format), expected=ServersResponse,
                                    convert=lambda response: response.nodes, cluster_format=format))

    def add(self, node_id: int, address: str) -> None:
        return self._call(_Exchange(request=AddRequest(node_id=node_id, address=address), expected=EmptyResponse,
                                    convert=_none))

    def assign(self, node_id: int, role: int | None = None) -> None:
        return self._call(_Exchange(request=AssignRequest(node_id=node_id, role=role), expected=EmptyResponse,
                                    convert=_none))

    def remove(self, node_id: int) -> None:
        return self._call(_Exchange(request=RemoveRequest(node_id=node_id), expected=EmptyResponse, convert=_none))

    def dump(self, name: str) -> tuple[DumpFile, ...]:
        """The database's files: its main file and its WAL."""
        return self._call(_Exchange(request=DumpRequest(name=name), expected=FilesResponse,
                                    convert=lambda response: response.files))

    def transfer(self, node_id: int = 0) -> None:
        return self._call(_Exchange(request=TransferRequest(node_id=node_id), expected=EmptyResponse,
                                    convert=_none))

    def describe(self, *, format: int = 0) -> MetadataResponse:
        return self._call(_Exchange(request=DescribeRequest(format=format), expected=MetadataResponse))

    def weight(self, weight: int) -> None:
        return self._call(_Exchange(request=WeightRequest(weight=weight), expected=EmptyResponse, convert=_none))


def _checked(exchange: _Exchange, response: Response) -> Response:
    """The response if it is the expected kind; FAILURE raises RequestFailed."""
    if isinstance(response, FailureResponse):
        raise RequestFailed(response.code, response.message)
    if not isinstance(response, exchange.expected):
        raise WireProtocolError(f"{type(response).__name__} in answer to {type(exchange.request).__name__}")
    return response


def _merged(first: RowsResponse, batch: RowsResponse) -> None:
    if batch.columns != first.columns:
        raise WireProtocolError(f"a ROWS batch changed the columns from {first.columns} to {batch.columns}")


def _rows_request(request: Request) -> QueryRequest | QuerySqlRequest:
    if not isinstance(request, (QueryRequest, QuerySqlRequest)):
        raise TypeError(f"open_query takes a QueryRequest or QuerySqlRequest, not {type(request).__name__}")
    return request


class Connection(_Helpers):
    """A blocking connection to one node. Use `Connection.connect(address)`."""

    def __init__(self, sock: socket.socket, *, address: str, timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
                 message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._socket: socket.socket | None = sock
        self._reader = ResponseReader(message_bytes_max=message_bytes_max)
        self._lock = threading.Lock()
        self._stream: RowsStream | None = None

    @classmethod
    def connect(cls, address: str, *, timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
                message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT,
                ssl_context: ssl.SSLContext | None = None) -> "Connection":
        """Connects and sends the handshake; ConnectionBroken when the node cannot be
        reached. With `ssl_context`, the connection is TLS (the handshake word and every
        message inside it), as raftlite nodes started with TLS require."""
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
            if ssl_context is not None:
                try:
                    sock = ssl_context.wrap_socket(sock, server_hostname=host)
                except BaseException:
                    sock.close()
                    raise
        except (OSError, ssl.SSLError) as error:
            raise ConnectionBroken(f"cannot connect to {address}: {error}") from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = cls(sock, address=address, timeout_s=timeout_s, message_bytes_max=message_bytes_max)
        with connection._lock:
            connection._send(encode_handshake(), time.monotonic() + timeout_s)
        return connection

    @property
    def closed(self) -> bool:
        return self._socket is None

    def peer_closed(self) -> bool:
        """Whether the node already closed this idle connection (end of stream, a reset,
        or bytes nobody asked for are waiting), checked without blocking: a reused
        connection that cannot carry the next request is replaced before it is sent."""
        sock = self._socket
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        if isinstance(sock, ssl.SSLSocket):
            # TLS records that carry no data (a session ticket) also make it readable.
            sock.setblocking(False)
            try:
                sock.recv(1)
            except ssl.SSLWantReadError:
                return False
            except OSError:
                return True
            finally:
                sock.settimeout(self.timeout_s)
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()

    def _abort(self) -> None:
        self._stream = None
        self.close()

    def _send(self, data: bytes, deadline: float) -> None:
        if self._socket is None:
            raise ConnectionBroken(f"the connection to {self.address} is closed")
        try:
            self._socket.settimeout(max(deadline - time.monotonic(), 0.001))
            self._socket.sendall(data)
        except OSError as error:
            self._abort()
            raise ConnectionBroken(f"sending to {self.address} failed: {error!r}") from error

    def _receive(self, exchange: _Exchange, deadline: float) -> Response:
        try:
            while (response := self._reader.next_response(cluster_format=exchange.cluster_format)) is None:
                if self._socket is None:
                    raise ConnectionBroken(f"the connection to {self.address} is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("deadline passed")
                self._socket.settimeout(remaining)
                chunk = self._socket.recv(_RECEIVE_BYTES)
                if not chunk:
                    raise ConnectionBroken(f"{self.address} closed the connection")
                self._reader.feed(chunk)
            return _checked(exchange, response)
        except RequestFailed:
            raise
        except ConnectionBroken:
            self._abort()
            raise
        except WireProtocolError:
            self._abort()
            raise
        except OSError as error:
            self._abort()
            raise ConnectionBroken(f"receiving from {self.address} failed: {error!r}") from error

    def _begin(self) -> float:
        if self._stream is not None:
            raise ConnectionBusy("the rows of an open query are still unread: read them all or close the stream")
        if self._socket is None:
            raise ConnectionBroken(f"the connection to {self.address} is closed")
        return time.monotonic() + self.timeout_s

    def _call(self, exchange: _Exchange) -> Any:
        data = encode_request(exchange.request)  # a value the wire cannot carry fails here, harmlessly
        with self._lock:
            deadline = self._begin()
            self._send(data, deadline)
            if isinstance(exchange.request, InterruptRequest):
                while not isinstance(self._receive(_Exchange(request=exchange.request, expected=(RowsResponse, EmptyResponse)),
                                                   deadline), EmptyResponse):
                    pass
                return None
            response = self._receive(exchange, deadline)
            if isinstance(response, RowsResponse):
                rows = list(response.rows)
                batch = response
                while batch.more:
                    batch = self._receive(exchange, deadline)
                    try:
                        _merged(response, batch)
                    except WireProtocolError:
                        self._abort()
                        raise
                    rows.extend(batch.rows)
                response = RowsResponse(columns=response.columns, rows=tuple(rows), more=False)
        return exchange.convert(response)

    def open_query(self, request: QueryRequest | QuerySqlRequest) -> "RowsStream":
        """Sends a query and returns its rows as a stream of batches (first one read)."""
        exchange = _Exchange(request=_rows_request(request), expected=RowsResponse)
        data = encode_request(request)
        with self._lock:
            deadline = self._begin()
            self._send(data, deadline)
            first = self._receive(exchange, deadline)
            stream = RowsStream(self, exchange, first)
            if first.more:
                self._stream = stream
        return stream


class _RowsStreamState:
    """What the blocking and the asyncio rows stream share: the first batch, held until
    asked for, and whether more batches are due."""

    def __init__(self, connection: Any, exchange: _Exchange, first: RowsResponse) -> None:
        self.columns = first.columns
        self._connection = connection
        self._exchange = exchange
        self._pending: RowsResponse | None = first
        self._more = first.more

    @property
    def done(self) -> bool:
        return self._pending is None and not self._more

    def _take_pending(self) -> RowsResponse | None:
        batch, self._pending = self._pending, None
        return batch

    def _stop(self) -> bool:
        """Forget the rest of the result; True when the server still has batches to send
        (the caller sends INTERRUPT)."""
        self._pending = None
        if not self._more:
            return False
        self._more = False
        self._connection._stream = None
        return True


class RowsStream(_RowsStreamState):
    """The batches of one query on a blocking connection. Iterate for rows, or take
    `next_batch()`; `close()` before the end sends INTERRUPT and drains."""

    def next_batch(self) -> tuple[tuple[Value, ...], ...] | None:
        """The next batch's rows, or None after the last one."""
        if (pending := self._take_pending()) is not None:
            return pending.rows
        if not self._more:
            return None
        connection = self._connection
        with connection._lock:
            try:
                batch = connection._receive(self._exchange, time.monotonic() + connection.timeout_s)
                _merged(RowsResponse(columns=self.columns, rows=()), batch)
            except BaseException as error:
                self._more = False
                connection._stream = None
                if isinstance(error, WireProtocolError):
                    connection._abort()
                raise
            self._more = batch.more
            if not batch.more:
                connection._stream = None
        return batch.rows

    def __iter__(self):
        while (rows := self.next_batch()) is not None:
            yield from rows

    def close(self) -> None:
        if self._stop():
            self._connection.interrupt(self._exchange.request.db_id)

    def __enter__(self) -> "RowsStream":
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()


class AsyncConnection(_Helpers):
    """An asyncio connection to one node. Use `await AsyncConnection.connect(address)`;
    every helper returns an awaitable of the value the blocking variant returns."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, address: str,
                 timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
                 message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._stream_reader = reader
        self._writer: asyncio.StreamWriter | None = writer
        self._closed_writer: asyncio.StreamWriter | None = None
        self._reader = ResponseReader(message_bytes_max=message_bytes_max)
        self._lock = asyncio.Lock()
        self._stream: AsyncRowsStream | None = None

    @classmethod
    async def connect(cls, address: str, *, timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
                      message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT,
                      ssl_context: ssl.SSLContext | None = None) -> "AsyncConnection":
        host, port = parse_address(address)
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ssl_context, server_hostname=host if ssl_context is not None else None)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                writer.write(encode_handshake())
                await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError) as error:
            raise ConnectionBroken(f"cannot connect to {address}: {error!r}") from error
        return cls(reader, writer, address=address, timeout_s=timeout_s, message_bytes_max=message_bytes_max)

    @property
    def closed(self) -> bool:
        return self._writer is None

    def peer_closed(self) -> bool:
        """Whether the node already closed this idle connection (the stream reader saw
        end of stream or an error)."""
        if self.closed:
            return True
        reader = self._stream_reader
        return reader.at_eof() or reader.exception() is not None

    def close(self) -> None:
        """Closes the transport; `await wait_closed()` to let it finish."""
        if self._writer is not None:
            self._closed_writer = self._writer
            self._writer.close()
            self._writer = None

    async def wait_closed(self) -> None:
        self.close()
        writer = self._closed_writer
        if writer is not None:
            try:
                await writer.wait_closed()
            except OSError:
                pass  # a reset while closing changes nothing for the caller

    async def __aenter__(self) -> "AsyncConnection":
        return self

    async def __aexit__(self, *_exception: object) -> None:
        await self.wait_closed()

    def _abort(self) -> None:
        self._stream = None
        self.close()

    def _begin(self) -> None:
        if self._stream is not None:
            raise ConnectionBusy("the rows of an open query are still unread: read them all or close the stream")
        if self._writer is None:
            raise ConnectionBroken(f"the connection to {self.address} is closed")

    async def _send(self, data: bytes) -> None:
        if self._writer is None:
            raise ConnectionBroken(f"the connection to {self.address} is closed")
        self._writer.write(data)
        await self._writer.drain()

    async def _receive(self, exchange: _Exchange) -> Response:
        while (response := self._reader.next_response(cluster_format=exchange.cluster_format)) is None:
            chunk = await self._stream_reader.read(_RECEIVE_BYTES)
            if not chunk:
                raise ConnectionBroken(f"{self.address} closed the connection")
            self._reader.feed(chunk)
        return _checked(exchange, response)

    async def _guarded(self, operation: Any) -> Any:
        """Runs an exchange under the deadline; a broken one closes the connection."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await operation
        except RequestFailed:
            raise
        except (ConnectionBroken, WireProtocolError):
            self._abort()
            raise
        except (OSError, TimeoutError) as error:
            self._abort()
            raise ConnectionBroken(f"request to {self.address} failed: {error!r}") from error
        except asyncio.CancelledError:
            # The answer may be half read: the stream is out of step.
            self._abort()
            raise

    async def _exchange(self, exchange: _Exchange, data: bytes) -> Any:
        await self._send(data)
        if isinstance(exchange.request, InterruptRequest):
            drain = _Exchange(request=exchange.request, expected=(RowsResponse, EmptyResponse))
            while not isinstance(await self._receive(drain), EmptyResponse):
                pass
            return None
        response = await self._receive(exchange)
        if isinstance(response, RowsResponse):
            rows = list(response.rows)
            batch = response
            while batch.more:
                batch = await self._receive(exchange)
                _merged(response, batch)
                rows.extend(batch.rows)
            response = RowsResponse(columns=response.columns, rows=tuple(rows), more=False)
        return response

    async def _call(self, exchange: _Exchange) -> Any:  # type: ignore[override]
        data = encode_request(exchange.request)
        async with self._lock:
            self._begin()
            response = await self._guarded(self._exchange(exchange, data))
        return exchange.convert(response)

    async def open_query(self, request: QueryRequest | QuerySqlRequest) -> "AsyncRowsStream":
        """Sends a query and returns its rows as a stream of batches (first one read)."""
        exchange = _Exchange(request=_rows_request(request), expected=RowsResponse)
        data = encode_request(request)
        async with self._lock:
            self._begin()

            async def first_batch() -> Response:
                await self._send(data)
                return await self._receive(exchange)

            first = await self._guarded(first_batch())
            stream = AsyncRowsStream(self, exchange, first)
            if first.more:
                self._stream = stream
        return stream


class AsyncRowsStream(_RowsStreamState):
    """The batches of one query on an asyncio connection (`async for` gives rows)."""

    async def next_batch(self) -> tuple[tuple[Value, ...], ...] | None:
        if (pending := self._take_pending()) is not None:
            return pending.rows
        if not self._more:
            return None
        connection = self._connection
        async with connection._lock:
            try:

                async def checked_batch() -> RowsResponse:
                    received = await connection._receive(self._exchange)
                    _merged(RowsResponse(columns=self.columns, rows=()), received)
                    return received

                batch = await connection._guarded(checked_batch())
            except BaseException:
                self._more = False
                connection._stream = None
                raise
            self._more = batch.more
            if not batch.more:
                connection._stream = None
        return batch.rows

    async def __aiter__(self):
        while (rows := await self.next_batch()) is not None:
            for row in rows:
                yield row

    async def close(self) -> None:
        if self._stop():
            await self._connection.interrupt(self._exchange.request.db_id)

    async def __aenter__(self) -> "AsyncRowsStream":
        return self

    async def __aexit__(self, *_exception: object) -> None:
        await self.close()
