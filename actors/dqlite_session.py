"""One dqlite client connection as a protocol object with no I/O (sans-I/O, in the manner
of h11): bytes in, actor requests and bytes out.

Why it exists, and why here
---------------------------
Both runtimes host dqlite clients through this one object: io/wire_server.py wraps it
in asyncio (a socket, the runtime's client gateway, timers on the event loop), and
sim/dqlite_host.py in the simulator (simulated time, `Simulation.submit`). So the
protocol (handshake, OPEN, PREPARE, EXEC, QUERY, paging, INTERRUPT, LEADER, CLUSTER,
membership, errors) is written once and runs under simulated faults too. It lives in
actors/ rather than core/ because it speaks the actor's vocabulary (the requests of
actors/database.py and actors/raft_node.py), and core imports only core; actors/ is the
lowest layer that sees both those requests and the codec (core/wire.py), and both
runtimes may import it.

Theory of operation
-------------------
The driver (the shell around the session) calls these methods and carries out the
effects each returns, in order:

    receive_bytes(data)      bytes the client sent (b"" once it closed its side)
    step()                   answer the next request, when `ready`
    on_reply(token, reply)   the actor's reply to the request `token`
    next_rows()              the next ROWS batch of a paged result, when the
                             connection has room (`sending_rows`)
    on_timer(token)          a timer the session started has fired
    close()                  the connection is gone

    SendBytes(data)            write these bytes to the client
    SubmitRequest(token, m)    hand message `m` to the actor as this client's request
    StartTimer(token, ms)      call on_timer(token) after `ms` milliseconds
    CloseConnection(reason)    close the connection (after the bytes before it)
    EndSession(message)        tell the actor the client is gone (`SessionClosed`)

Requests are answered one at a time, in order, as dqlite does. While one is *busy* (at
the actor, waiting for a timer, or its result still being paged out) the session
decodes at most one more request (`wants_bytes` turns False, so the driver stops
reading: TCP backpressure does the rest); an INTERRUPT found there stops a paged
result. `receive_bytes` answers one request at most, and the driver calls `step()`
while `ready`: the driver may wait for its output to drain between two requests, as
io/wire_server.py does.

How each request is answered:

    LEADER, CLUSTER          DescribeCluster  (any node answers at once)
    CLIENT                   here (WELCOME)
    OPEN                     here (any node, as dqlite; SQL then needs the leader)
    PREPARE                  Prepare          (the statement's SQL is kept here by id)
    EXEC, EXEC_SQL           Execute          -> RESULT
    QUERY, QUERY_SQL         Query            -> ROWS, cut into ~4 KiB batches here
    FINALIZE                 here (EMPTY)
    INTERRUPT                stops the batches of the result being sent (EMPTY)
    DUMP                     Dump             (any node: a committed image)
    ADD, ASSIGN, REMOVE      ChangeMembership (spare on ADD; ASSIGN without role = voter)
    TRANSFER                 TransferLeadership, then DescribeCluster every 20 ms until
                             the target leads or `transfer_timeout_ms` has passed
    DESCRIBE, WEIGHT         this node's failure domain and weight (`NodeMetadata`)

Membership requests (ADD, ASSIGN, REMOVE, TRANSFER, WEIGHT) are refused on a connection
whose TLS certificate lacks the role for them (`membership_refused` holds why, from
io/tls_roles.py; None without TLS, as in dqlite): FAILURE SQLITE_AUTH (23) with that
reason, and nothing reaches the actor.

Bad input never reaches the actor: bytes that break the protocol (an unknown type, a
body that does not decode) get one FAILURE with dqlite's protocol code, after the
answers to every request before them, and the connection is closed. A request whose
header announces more than `message_bytes_max` is refused in its turn with SQLITE_TOOBIG
(18), naming its size and the limit, as soon as its header is in: its body is dropped as
it arrives (never buffered) and the connection stays usable. (dqlite closes the
connection there without an answer, its limit being 4 GiB; a client still sending its
request then sees a reset, not the reason, which is why raftlite answers and reads on.) A handshake other than protocol version 1 (such as the
legacy version of pre-1.0 drivers) is closed without an answer. Values the protocol
carries but SQLite does not (UNIXTIME, ISO8601, BOOLEAN parameters) are converted to
SQLite's own types.

The session reads no clock and starts nothing: time-outs are `StartTimer` effects the
driver turns into real or simulated timers.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.raft_types import Role
from ..core.wire import (
    PROTOCOL_VERSION, WORD_BYTES, AddRequest, AssignRequest, ClientRequest, ClusterRequest, ConnectRequest, DbResponse,
    DescribeRequest, DumpFile, DumpRequest, EmptyResponse, ErrorCode, ExecRequest, ExecSqlRequest, FailureResponse,
    FilesResponse, FinalizeRequest, HeartbeatRequest, InterruptRequest, Iso8601, LeaderRequest, MetadataResponse,
    NodeInfo, OpenRequest, OversizedRequest, PrepareRequest, QueryRequest, QuerySqlRequest, RemoveRequest, RequestReader,
    ResultResponse, RowsBatchBuilder, ServerResponse, ServersResponse, StmtResponse, TransferRequest, UnixTime,
    WeightRequest, WelcomeResponse, WireEncodeError, WireProtocolError, column_value, decode_handshake, encode_response,
)
from .database import (
    SQLITE_AUTH, Dump, Dumped, Execute, ExecuteResult, Prepare, Prepared, Query, QueryResult, SessionClosed, SqlError,
)
from .raft_node import (
    ChangeMembership, ClientError, ClusterDescription, DescribeCluster, ProposeResult, TransferLeadership,
)

__all__ = [
    "CloseConnection", "DqliteSession", "EndSession", "NodeAddresses", "NodeMetadata", "SendBytes", "StartTimer",
    "SubmitRequest",
]

STATEMENTS_PER_CONNECTION_MAX = 4096
DATABASES_PER_CONNECTION_MAX = 64
TRANSFER_POLL_MS = 20.0      # how often TRANSFER asks whether the target leads yet

_MEMBERSHIP_REQUEST_NAMES = {
    AddRequest: "ADD", AssignRequest: "ASSIGN", RemoveRequest: "REMOVE", TransferRequest: "TRANSFER", WeightRequest: "WEIGHT",
}

_CLIENT_ERROR_CODES = {"not-leader": ErrorCode.NOT_LEADER, "leadership-lost": ErrorCode.LEADERSHIP_LOST}


# -- effects: what the driver must do --------------------------------------------------

@dataclass(frozen=True, slots=True)
class SendBytes:
    data: bytes


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """Hand `message` to the actor as this client's request; its reply goes to
    `on_reply(token, reply)`."""

    token: int
    message: Any


@dataclass(frozen=True, slots=True)
class StartTimer:
    token: int
    delay_ms: float


@dataclass(frozen=True, slots=True)
class CloseConnection:
    reason: str


@dataclass(frozen=True, slots=True)
class EndSession:
    """The client is gone: the actor must hear `message` (its open transaction is
    rolled back) and forget the client."""

    message: Any


Effect = SendBytes | SubmitRequest | StartTimer | CloseConnection | EndSession


# -- what the session needs to know about its node ---------------------------------------

@dataclass(slots=True)
class NodeMetadata:
    """What DESCRIBE reports and WEIGHT sets: node-local, not replicated (as in dqlite),
    shared by every session of one node."""

    failure_domain: int = 0
    weight: int = 0


class NodeAddresses(Protocol):
    """Where nodes are reached, for LEADER and CLUSTER when the configuration holds no
    address for a member: `address` is this node's, `peers` the others' (the real
    runtime is one; read afresh at each request, as peers may change)."""

    @property
    def address(self) -> str: ...

    @property
    def peers(self) -> Mapping[int, str]: ...


# -- the session -----------------------------------------------------------------------

@dataclass(slots=True)
class _RowsInProgress:
    """A result larger than one ROWS batch, sent batch by batch."""

    rows: tuple
    types: tuple
    batches: RowsBatchBuilder
    position: int
    finished: bool = False   # the last batch (or EMPTY, or FAILURE) is out


@dataclass(slots=True)
class _Transfer:
    target: int
    deadline_token: int | None = None
    poll_token: int | None = None
    expired: bool = False


class DqliteSession:
    """One client connection's protocol state; see the module docstring for the driver's
    side of the contract."""

    def __init__(
        self,
        *,
        addresses: NodeAddresses,
        message_bytes_max: int,
        heartbeat_timeout_ms: int,
        transfer_timeout_ms: float = 10_000.0,
        metadata: NodeMetadata | None = None,
        membership_refused: str | None = None,
    ) -> None:
        self.addresses = addresses
        # Why this connection may not change membership (its certificate's role), or None.
        self.membership_refused = membership_refused
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.transfer_timeout_ms = transfer_timeout_ms
        self.metadata = metadata if metadata is not None else NodeMetadata()
        self._reader = RequestReader(message_bytes_max=message_bytes_max, skip_oversized=True)
        self._handshake: bytearray | None = bytearray()   # the version word so far; None once read
        self.databases: list[str] = []
        self.statements: dict[int, tuple[int, str]] = {}   # stmt id -> (db id, SQL)
        self._next_statement = 0
        self._next: Any = None                     # the next request, decoded
        self._protocol_error: WireProtocolError | None = None
        self._input_ended = False
        self.closed = False
        self._ended = False                        # EndSession was given
        self._tokens = 0
        self._awaiting: int | None = None          # token of the request at the actor
        self._continue: Callable[[Any], list] | None = None   # takes the actor's reply
        self._rows: _RowsInProgress | None = None
        self._transfer: _Transfer | None = None

    # -- the driver's view ---------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A request is being answered: at the actor, waiting for a timer, or paging."""
        return self._awaiting is not None or self._rows is not None or self._transfer is not None

    @property
    def awaiting_reply(self) -> int | None:
        """The token of the request at the actor, if one is."""
        return self._awaiting

    @property
    def sending_rows(self) -> bool:
        """A paged result is being sent: call `next_rows()` whenever the connection has room."""
        return self._rows is not None

    @property
    def ready(self) -> bool:
        """`step()` has something to do now."""
        return not self.closed and not self.busy and (
            self._next is not None or self._protocol_error is not None or self._input_ended)

    @property
    def wants_bytes(self) -> bool:
        """The driver should read more: no decoded request is waiting its turn."""
        return (not self.closed and not self._input_ended and self._next is None
                and self._protocol_error is None)

    # -- inputs --------------------------------------------------------------------------

    def receive_bytes(self, data: bytes) -> list[Effect]:
        """Bytes from the client; b"" means it closed its side. Answers at most one
        request (call `step()` while `ready` for the rest)."""
        if self.closed:
            return []
        if not data:
            self._input_ended = True
        if self._handshake is not None:
            data, effects = self._read_handshake(data)
            if self._handshake is not None or effects:
                return effects
        if data:
            try:
                self._reader.feed(data)
            except WireProtocolError as error:
                self._protocol_error = error
        self._decode_next()
        return self.step() if self.ready else []

    def step(self) -> list[Effect]:
        """Answers the next request (or ends the connection after the last answer)."""
        if not self.ready:
            return []
        request, self._next = self._next, None
        if request is not None:
            effects = self._answer(request)
            self._decode_next()
            return effects
        self.closed = True
        if self._protocol_error is not None:
            error = self._protocol_error
            return [self._send(FailureResponse(code=error.code, message=str(error))), CloseConnection(str(error))]
        return [CloseConnection("the client closed the connection")]

    def on_reply(self, token: int, reply: Any) -> list[Effect]:
        """The actor's reply to request `token`: its answer, or the next actor request
        of a request that takes several round trips. A reply no request waits for (the
        session closed meanwhile) is dropped."""
        finish = self._continue
        if self.closed or token != self._awaiting or finish is None:
            return []
        self._continue = self._awaiting = None
        effects = finish(reply)
        self._decode_next()
        return effects

    def next_rows(self) -> list[Effect]:
        """The next batch of a paged result (or EMPTY if an INTERRUPT came first); []
        once the result is complete, which ends it: call again after the last batch
        left, so the next request waits until the connection has room."""
        rows = self._rows
        if rows is None:
            return []
        if rows.finished:
            self._rows = None
            self._decode_next()
            return []
        if isinstance(self._next, InterruptRequest):
            # Only an INTERRUPT may overtake the rest of a result; anything else waits.
            self._next = None
            rows.finished = True
            self._decode_next()
            return [self._send(EmptyResponse())]
        try:
            rows.position = _fill_batch(rows.batches, rows.rows, rows.types, rows.position)
        except WireEncodeError as error:
            rows.finished = True
            return [self._send(FailureResponse(code=ErrorCode.ERROR, message=str(error)))]
        rows.finished = rows.position == len(rows.rows)
        return [SendBytes(rows.batches.finish(done=rows.finished))]

    def on_timer(self, token: int) -> list[Effect]:
        transfer = self._transfer
        if self.closed or transfer is None:
            return []
        if token == transfer.deadline_token:
            transfer.expired = True   # acted on at the next poll, as a deadline checked before each
            return []
        if token != transfer.poll_token:
            return []
        transfer.poll_token = None
        if transfer.expired:
            return self._transfer_done(FailureResponse(
                code=ErrorCode.ERROR, message=f"leadership did not move to node {transfer.target} in time"))
        return self._poll(transfer)

    def close(self) -> list[Effect]:
        """The connection is gone (or being closed): what the actor must be told. Later
        replies and timers are ignored."""
        self.closed = True
        self._awaiting = self._continue = self._rows = self._transfer = None
        if self._ended:
            return []
        self._ended = True
        return [EndSession(SessionClosed())]

    # -- decoding ------------------------------------------------------------------------

    def _read_handshake(self, data: bytes) -> tuple[bytes, list[Effect]]:
        """Takes the version word from the front of `data`; returns the rest, and the
        effects if the connection ends here."""
        handshake = self._handshake
        if handshake is None:
            return data, []
        taken = WORD_BYTES - len(handshake)
        handshake += data[:taken]
        if len(handshake) < WORD_BYTES:
            if self._input_ended:
                self.closed = True
                return b"", [CloseConnection("the client closed the connection before the handshake")]
            return b"", []
        self._handshake = None
        version = decode_handshake(bytes(handshake))
        if version != PROTOCOL_VERSION:
            # The legacy protocol (pre-1.0 drivers; LEADER answered without an id) and
            # anything else: closed without an answer.
            self.closed = True
            return b"", [CloseConnection(f"unsupported protocol version {version:#x}")]
        return data[taken:], []

    def _decode_next(self) -> None:
        """Decodes one request into the waiting slot, if it is free and one is complete."""
        if self._next is not None or self._protocol_error is not None or self._handshake is not None or self.closed:
            return
        try:
            self._next = self._reader.next_request()
        except WireProtocolError as error:
            self._protocol_error = error

    # -- requests at the actor -----------------------------------------------------------

    def _submit(self, message: Any, finish: Callable[[Any], list]) -> list[Effect]:
        self._tokens += 1
        self._awaiting = self._tokens
        self._continue = finish
        return [SubmitRequest(self._tokens, message)]

    @staticmethod
    def _send(response: Any) -> SendBytes:
        return SendBytes(encode_response(response))

    def _answering(self, make_response: Callable[[Any], Any]) -> Callable[[Any], list]:
        """A finish that sends `make_response(reply)`."""
        return lambda reply: [self._send(make_response(reply))]

    # -- one request -----------------------------------------------------------------------

    def _answer(self, request: Any) -> list[Effect]:
        match request:
            case OversizedRequest(body_bytes=body_bytes, limit_bytes=limit_bytes):
                return [self._send(FailureResponse(code=ErrorCode.TOOBIG, message=(
                    f"request too big: {request.type_name} of {body_bytes} bytes is above the limit of "
                    f"{limit_bytes} bytes (message_bytes_max); nothing was run")))]
            case AddRequest() | AssignRequest() | RemoveRequest() | TransferRequest() | WeightRequest() \
                    if self.membership_refused is not None:
                return [self._send(FailureResponse(
                    code=SQLITE_AUTH, message=f"{_MEMBERSHIP_REQUEST_NAMES[type(request)]} refused: {self.membership_refused}"))]
            case ExecRequest(db_id=db_id, stmt_id=stmt_id, params=params) | QueryRequest(db_id=db_id, stmt_id=stmt_id, params=params):
                found = self.statements.get(stmt_id)
                if found is None or found[0] != db_id:
                    return [self._send(FailureResponse(code=ErrorCode.NOT_FOUND, message=f"no prepared statement with id {stmt_id}"))]
                return self._run_sql(request, self.databases[db_id], found[1], params)
            case ExecSqlRequest(db_id=db_id, sql=sql, params=params) | QuerySqlRequest(db_id=db_id, sql=sql, params=params):
                database = self._database(db_id)
                if isinstance(database, FailureResponse):
                    return [self._send(database)]
                return self._run_sql(request, database, sql, params)
            case PrepareRequest(db_id=db_id, sql=sql, with_tail_offset=with_tail):
                database = self._database(db_id)
                if isinstance(database, FailureResponse):
                    return [self._send(database)]
                if not sql.strip():
                    return [self._send(FailureResponse(code=0, message="empty statement"))]
                if len(self.statements) >= STATEMENTS_PER_CONNECTION_MAX:
                    return [self._send(FailureResponse(code=ErrorCode.ERROR, message="too many prepared statements on this connection"))]
                return self._submit(Prepare(database=database, sql=sql),
                                    self._answering(lambda reply: self._prepared(reply, db_id, sql, with_tail)))
            case LeaderRequest():
                return self._submit(DescribeCluster(), self._answering(self._leader))
            case ClusterRequest(format=format_):
                return self._submit(DescribeCluster(), self._answering(lambda reply: self._servers(reply, format_)))
            case DumpRequest(name=name):
                return self._submit(Dump(database=name), self._answering(self._dumped))
            case AddRequest(node_id=node, address=address):
                return self._membership(ChangeMembership(node=node, role=Role.SPARE, address=address, must_be_new=True))
            case AssignRequest(node_id=node, role=role):
                if role is not None and role not in (0, 1, 2):
                    return [self._send(FailureResponse(code=ErrorCode.ERROR, message=f"unknown role {role}"))]
                return self._membership(ChangeMembership(node=node, role=Role(role if role is not None else 0)))
            case RemoveRequest(node_id=node):
                return self._membership(ChangeMembership(node=node, role=None))
            case TransferRequest(node_id=target):
                return self._submit(DescribeCluster(), lambda reply: self._transfer_described(reply, target))
        return [self._send(self._local_response(request))]

    def _local_response(self, request: Any) -> Any:
        """The answer to a request the session answers without the actor."""
        match request:
            case ClientRequest():
                return WelcomeResponse(heartbeat_timeout_ms=self.heartbeat_timeout_ms)
            case HeartbeatRequest():
                return FailureResponse(code=ErrorCode.PROTOCOL, message="HEARTBEAT is not supported")
            case ConnectRequest():
                return FailureResponse(code=ErrorCode.PROTOCOL, message="CONNECT is dqlite's raft transport, not a client request")
            case OpenRequest(name=name):
                if not name or "/" in name or name.startswith("."):
                    return FailureResponse(code=ErrorCode.ERROR, message=f"invalid database name {name!r}")
                if len(self.databases) >= DATABASES_PER_CONNECTION_MAX:
                    return FailureResponse(code=ErrorCode.ERROR, message="too many databases open on this connection")
                # As in dqlite, OPEN only names the database for this connection: any
                # node accepts it; the database is created by its first write (on the
                # leader), and SQL sent to a follower fails with 10250.
                if name in self.databases:
                    return DbResponse(db_id=self.databases.index(name))
                self.databases.append(name)
                return DbResponse(db_id=len(self.databases) - 1)
            case FinalizeRequest(db_id=db_id, stmt_id=stmt_id):
                found = self.statements.pop(stmt_id, None)
                if found is None or found[0] != db_id:
                    return FailureResponse(code=ErrorCode.NOT_FOUND, message=f"no prepared statement with id {stmt_id}")
                return EmptyResponse()
            case InterruptRequest():
                return EmptyResponse()   # nothing is being sent: nothing to stop
            case DescribeRequest(format=format_):
                if format_ != 0:
                    return FailureResponse(code=15, message="bad format version")
                return MetadataResponse(failure_domain=self.metadata.failure_domain, weight=self.metadata.weight)
            case WeightRequest(weight=weight):
                self.metadata.weight = weight
                return EmptyResponse()
        return FailureResponse(code=ErrorCode.PROTOCOL, message=f"unsupported request {type(request).__name__}")

    # -- SQL ---------------------------------------------------------------------------------

    def _prepared(self, reply: Any, db_id: int, sql: str, with_tail: bool) -> Any:
        if not isinstance(reply, Prepared):
            return _failure(reply)
        statement = self._next_statement
        self._next_statement += 1
        self.statements[statement] = (db_id, sql)
        return StmtResponse(db_id=db_id, stmt_id=statement, params_count=reply.parameter_count,
                            tail_offset=len(sql.encode()) if with_tail else None)

    def _run_sql(self, request: Any, database: str, sql: str, params: tuple) -> list[Effect]:
        values = tuple(_sqlite_value(value) for value in params)
        if isinstance(request, (ExecRequest, ExecSqlRequest)):
            return self._submit(Execute(database=database, sql=sql, params=values), self._answering(self._executed))
        return self._submit(Query(database=database, sql=sql, params=values), self._queried)

    @staticmethod
    def _executed(reply: Any) -> Any:
        if isinstance(reply, ExecuteResult):
            return ResultResponse(last_insert_id=reply.last_insert_id, rows_affected=reply.rows_affected)
        return _failure(reply)

    def _queried(self, reply: Any) -> list[Effect]:
        """The first ROWS batch; `next_rows` gives the others."""
        if not isinstance(reply, QueryResult):
            return [self._send(_failure(reply))]
        rows = reply.rows
        types = reply.column_types or (None,) * len(reply.columns)
        batches = RowsBatchBuilder(reply.columns)
        try:
            position = _fill_batch(batches, rows, types, 0)
        except WireEncodeError as error:
            return [self._send(FailureResponse(code=ErrorCode.ERROR, message=str(error)))]
        if position == len(rows):
            return [SendBytes(batches.finish(done=True))]
        self._rows = _RowsInProgress(rows=rows, types=types, batches=batches, position=position)
        return [SendBytes(batches.finish(done=False))]

    def _database(self, db_id: int) -> str | FailureResponse:
        if not 0 <= db_id < len(self.databases):
            return FailureResponse(code=ErrorCode.NOT_FOUND, message=f"no database opened with id {db_id}")
        return self.databases[db_id]

    # -- cluster requests ----------------------------------------------------------------

    def _leader(self, description: ClusterDescription) -> Any:
        leader = description.leader
        if leader is None:
            return ServerResponse(node_id=0, address="")
        return ServerResponse(node_id=leader, address=self._address_of(description, leader) or "")

    def _servers(self, description: ClusterDescription, format_: int) -> Any:
        return ServersResponse(nodes=tuple(
            NodeInfo(node_id=node, address=self._address_of(description, node) or "",
                     role=int(role) if format_ == 1 else None)
            for node, role, _ in description.members
        ))

    @staticmethod
    def _dumped(reply: Any) -> Any:
        if not isinstance(reply, Dumped):
            return _failure(reply)
        return FilesResponse(files=tuple(DumpFile(name=file, data=data) for file, data in reply.files))

    def _membership(self, change: ChangeMembership) -> list[Effect]:
        return self._submit(change, self._answering(
            lambda reply: EmptyResponse() if isinstance(reply, ProposeResult) else _failure(reply)))

    def _address_of(self, description: ClusterDescription, node: int) -> str | None:
        for member, _, address in description.members:
            if member == node and address:
                return address
        if node == description.node_id:
            return self.addresses.address
        return self.addresses.peers.get(node)

    # -- TRANSFER: several round trips and a deadline ---------------------------------------

    def _transfer_described(self, description: ClusterDescription, target: int) -> list[Effect]:
        if description.leader != description.node_id:
            return [self._send(FailureResponse(code=ErrorCode.NOT_LEADER, message="not leader"))]
        if target == 0:
            voters = [node for node, role, _ in description.members if role == Role.VOTER and node != description.node_id]
            if not voters:
                return [self._send(FailureResponse(code=ErrorCode.ERROR, message="no other voter to transfer leadership to"))]
            target = voters[0]
        return self._submit(TransferLeadership(target=target), lambda reply: self._transfer_started(reply, target))

    def _transfer_started(self, reply: Any, target: int) -> list[Effect]:
        if not isinstance(reply, ProposeResult):
            return [self._send(_failure(reply))]
        self._tokens += 1
        transfer = self._transfer = _Transfer(target=target, deadline_token=self._tokens)
        return [StartTimer(self._tokens, self.transfer_timeout_ms), *self._poll(transfer)]

    def _poll(self, transfer: _Transfer) -> list[Effect]:
        return self._submit(DescribeCluster(), lambda description: self._transfer_polled(description, transfer))

    def _transfer_polled(self, description: ClusterDescription, transfer: _Transfer) -> list[Effect]:
        if description.leader == transfer.target:
            return self._transfer_done(EmptyResponse())
        self._tokens += 1
        transfer.poll_token = self._tokens
        return [StartTimer(self._tokens, TRANSFER_POLL_MS)]

    def _transfer_done(self, response: Any) -> list[Effect]:
        self._transfer = None
        return [self._send(response)]


def _failure(reply: Any) -> FailureResponse:
    match reply:
        case SqlError(code=code, message=message):
            return FailureResponse(code=code, message=message)
        case ClientError(kind=kind, message=message):
            return FailureResponse(code=_CLIENT_ERROR_CODES.get(kind, ErrorCode.ERROR), message=message)
    return FailureResponse(code=ErrorCode.ERROR, message=f"unexpected answer {type(reply).__name__}")


def _fill_batch(batches: RowsBatchBuilder, rows: tuple, types: tuple, position: int) -> int:
    """Appends rows from `position` until the batch is full (the last row always goes in
    the batch it fits); returns the position after the last row appended."""
    end = len(rows)
    while position < end:
        row = rows[position]
        batches.append(tuple(column_value(value, declared or None) for value, declared in zip(row, types)))
        position += 1
        if batches.is_full and position < end:
            break
    return position


def _sqlite_value(value: Any) -> Any:
    """A wire parameter as SQLite stores it."""
    match value:
        case bool():
            return int(value)
        case UnixTime(seconds=seconds):
            return seconds
        case Iso8601(text=text):
            return text
    return value
