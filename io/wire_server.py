"""dqlite's client protocol on a raftlite node: wire requests in, actor messages out.

Theory of operation
-------------------
The transport hands every connection whose first word is dqlite's protocol version to
`WireServer.serve`. A connection is one client session of the node's actor (the runtime's
`open_client`): each wire request becomes one actor request (raftlite.actors.database
and raftlite.actors.raft_node messages), the actor's reply becomes the wire answer, and
one request is answered completely before the next is read, as dqlite does.

    LEADER, CLUSTER          DescribeCluster  (any node answers at once)
    CLIENT                   answered here (WELCOME)
    OPEN                     answered here    (any node, as dqlite; SQL then needs the leader)
    PREPARE                  Prepare          (the statement's SQL is kept here by id)
    EXEC, EXEC_SQL           Execute          -> RESULT
    QUERY, QUERY_SQL         Query            -> ROWS, cut into ~4 KiB batches here
    FINALIZE                 answered here (EMPTY)
    INTERRUPT                stops the batches of the result being sent (EMPTY)
    DUMP                     Dump             (any node: a committed image)
    ADD, ASSIGN, REMOVE      ChangeMembership (spare on ADD; ASSIGN without role = voter)
    TRANSFER                 TransferLeadership, then wait until the target leads
    DESCRIBE, WEIGHT         this node's failure domain and weight (`NodeMetadata`)

Results are held whole by the actor and cut into batches here; between batches the
server looks for an INTERRUPT the client sent meanwhile, and on one it stops sending and
answers EMPTY.

One coroutine per connection (`_Session.run`) reads and decodes requests, answers those
it can answer itself (OPEN, FINALIZE, ...) and hands the others to the actor. The runtime
calls the session's reply callback synchronously from inside the actor's handler, and for
PREPARE, EXEC, QUERY, EXEC_SQL and QUERY_SQL that callback encodes the answer and writes
it to the transport there and then: a request costs one wake-up (its bytes arriving), no
queue, no task, and the coroutine need not wake for the reply. While
a request waits for its reply the coroutine goes on reading, but holds at most one
decoded request (`ahead`, where an INTERRUPT is found) and reads no further until the
request in flight is answered; it awaits `drain()` before the next request whenever the
transport holds unsent bytes (TCP backpressure). Requests that take several actor round
trips (LEADER, CLUSTER, DUMP, ADD, ASSIGN, REMOVE, TRANSFER) are answered by the
coroutine itself, awaiting each reply; a result longer than one ROWS batch is sent by a
task that waits for the transport between batches.

Bad input never reaches the actor: bytes that break the protocol (a header announcing
more than `message_bytes_max`, an unknown type, a body that does not decode) get one
FAILURE with dqlite's protocol code and the connection is closed; values the protocol
carries but SQLite does not (UNIXTIME, ISO8601, BOOLEAN parameters) are converted to
SQLite's own types. When the client goes away, the actor hears `SessionClosed` (its
open transaction is rolled back).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from raftlite.actors.database import (
    Dump, Dumped, Execute, ExecuteResult, Prepare, Prepared, Query, QueryResult, SqlError,
)
from raftlite.actors.raft_node import (
    ChangeMembership, ClientError, ClusterDescription, DescribeCluster, ProposeResult, TransferLeadership,
)
from raftlite.core.raft_types import Role
from raftlite.core.wire import (
    AddRequest, AssignRequest, ClientRequest, ClusterRequest, ConnectRequest, DbResponse, DescribeRequest,
    DumpFile, DumpRequest, EmptyResponse, ErrorCode, ExecRequest, ExecSqlRequest, FailureResponse, FilesResponse,
    FinalizeRequest, HeartbeatRequest, InterruptRequest, Iso8601, LeaderRequest, MetadataResponse, NodeInfo,
    OpenRequest, PrepareRequest, QueryRequest, QuerySqlRequest, RemoveRequest, RequestReader, ResultResponse,
    RowsBatchBuilder, ServerResponse, ServersResponse, StmtResponse, TransferRequest, UnixTime, WeightRequest,
    WelcomeResponse, WireEncodeError, WireProtocolError, column_value, encode_response,
)

__all__ = ["NodeMetadata", "WireServer"]

log = logging.getLogger("raftlite.io.wire_server")

# Bytes read at a time. While a request is being answered at most one more is decoded
# (a well-behaved client sends at most an INTERRUPT); the rest waits undecoded in this
# chunk or in the socket (TCP backpressure).
READ_CHUNK_BYTES = 64 << 10
STATEMENTS_PER_CONNECTION_MAX = 4096
DATABASES_PER_CONNECTION_MAX = 64

_ROLE_NAMES = {Role.VOTER: "voter", Role.STANDBY: "standby", Role.SPARE: "spare"}
_CLIENT_ERROR_CODES = {"not-leader": ErrorCode.NOT_LEADER, "leadership-lost": ErrorCode.LEADERSHIP_LOST}


@dataclass(slots=True)
class NodeMetadata:
    """What DESCRIBE reports and WEIGHT sets: node-local, not replicated (as in dqlite)."""

    failure_domain: int = 0
    weight: int = 0


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
    ) -> None:
        self.runtime = runtime
        self.message_bytes_max = message_bytes_max
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.transfer_timeout_s = transfer_timeout_s
        self.metadata = metadata or NodeMetadata()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol_version: int) -> None:
        session = _Session(self, reader, writer)
        try:
            if protocol_version != 1:
                # The legacy protocol (pre-1.0 drivers) answers LEADER without an id.
                return
            await session.run()
        finally:
            session.close()
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class _Session:
    """One client connection: its requests answered one at a time, in order.

    A request is *in flight* (`busy`) from the moment it reaches the actor until its
    answer is written; `finish` is what to do with the actor's reply to it. `run` waits
    for an in-flight request (`_settle`) only when it has the next one in hand, when the
    connection ends, or when it needs the reply itself (`_call`).
    """

    def __init__(self, server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.runtime = server.runtime
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.client = self.runtime.open_client(self._on_reply)
        self.databases: list[str] = []
        self.statements: dict[int, tuple[int, str]] = {}   # stmt id -> (db id, SQL)
        self.next_statement = 0
        self.busy = False                       # a request is in flight
        self.finish: Callable[[Any], None] | None = None   # takes the actor's reply to it
        self.waiter: asyncio.Future | None = None          # `run` waiting for it to be answered
        self.ahead: Any = None                  # the next request, decoded while one is in flight
        self.reply: Any = None                  # the reply `_call` waits for
        self.rows_task: asyncio.Task | None = None          # sending the batches after the first
        self.failure: BaseException | None = None           # raised in `run` (from a callback or the task)

    def close(self) -> None:
        self.runtime.close_client(self.client)

    async def run(self) -> None:
        decoder = RequestReader(message_bytes_max=self.server.message_bytes_max)
        try:
            while True:
                request, self.ahead = self.ahead, None
                if request is None:
                    try:
                        request = decoder.next_request()
                        if request is None:
                            try:
                                data = await self.reader.read(READ_CHUNK_BYTES)
                            except (ConnectionError, OSError):
                                data = b""
                            if not data:
                                await self._settle()
                                return
                            decoder.feed(data)
                            continue
                    except WireProtocolError as error:
                        # Requests before the bad bytes are answered first, as they came.
                        await self._settle()
                        self._write(FailureResponse(code=error.code, message=str(error)))
                        await self.writer.drain()
                        return
                if self.busy:
                    # One request at a time: hold this one (an INTERRUPT here stops the
                    # batches being sent) and read no further until the other is answered.
                    self.ahead = request
                    await self._settle()
                    continue
                if self.failure is not None:
                    raise self.failure
                if self.transport.get_write_buffer_size() or self.transport.is_closing():
                    await self.writer.drain()   # raises once the connection is lost, as it did
                answering = self._answer(request)
                if answering is not None:
                    try:
                        response = await answering
                    except WireEncodeError as error:
                        response = FailureResponse(code=ErrorCode.ERROR, message=str(error))
                    self._write(response)
        except (_ConnectionClosed, ConnectionError, OSError):
            return
        finally:
            self.finish = None
            if self.rows_task is not None:
                self.rows_task.cancel()

    # -- requests in flight -------------------------------------------------------------

    def _submit(self, message: Any, finish: Callable[[Any], None]) -> None:
        """Hands `message` to the actor; `finish` takes its reply (maybe before this returns)."""
        self.busy = True
        self.finish = finish
        self.runtime.submit(self.client, message)

    def _on_reply(self, reply: Any) -> None:
        """The runtime's reply callback, called inside the actor's handler: never raises."""
        finish, self.finish = self.finish, None
        if finish is None:
            log.debug("dropping a reply no request waits for: %r", type(reply).__name__)
            return
        try:
            finish(reply)
        except Exception as error:   # a bug here must not stop the node: `run` raises it
            self.failure = error
            self.writer.close()
        if self.rows_task is None:
            self._answered()

    def _answered(self) -> None:
        self.busy = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _settle(self) -> None:
        """Waits until no request is in flight; raises what went wrong answering it."""
        if self.busy:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.failure is not None:
            raise self.failure

    async def _call(self, message: Any) -> Any:
        """The actor's reply to `message`, for requests that take several round trips."""
        self._submit(message, self._keep_reply)
        await self._settle()
        reply, self.reply = self.reply, None
        return reply

    def _keep_reply(self, reply: Any) -> None:
        self.reply = reply

    def _write(self, response: Any) -> None:
        self.writer.write(encode_response(response))

    # -- one request -------------------------------------------------------------------

    def _answer(self, request) -> Awaitable[Any] | None:
        """Answers `request`, or submits it with a callback that will, or returns the
        coroutine that computes its answer (requests taking several round trips)."""
        match request:
            case ExecRequest(db_id=db_id, stmt_id=stmt_id, params=params) | QueryRequest(db_id=db_id, stmt_id=stmt_id, params=params):
                found = self.statements.get(stmt_id)
                if found is None or found[0] != db_id:
                    self._write(FailureResponse(code=ErrorCode.NOT_FOUND, message=f"no prepared statement with id {stmt_id}"))
                else:
                    self._run_sql(request, self.databases[db_id], found[1], params)
            case ExecSqlRequest(db_id=db_id, sql=sql, params=params) | QuerySqlRequest(db_id=db_id, sql=sql, params=params):
                database = self._database(db_id)
                if isinstance(database, FailureResponse):
                    self._write(database)
                else:
                    self._run_sql(request, database, sql, params)
            case PrepareRequest(db_id=db_id, sql=sql, with_tail_offset=with_tail):
                database = self._database(db_id)
                if isinstance(database, FailureResponse):
                    self._write(database)
                elif not sql.strip():
                    self._write(FailureResponse(code=0, message="empty statement"))
                elif len(self.statements) >= STATEMENTS_PER_CONNECTION_MAX:
                    self._write(FailureResponse(code=ErrorCode.ERROR, message="too many prepared statements on this connection"))
                else:
                    self._submit(Prepare(database=database, sql=sql),
                                 lambda reply: self._write(self._prepared(reply, db_id, sql, with_tail)))
            case LeaderRequest():
                return self._leader()
            case DumpRequest(name=name):
                return self._dump(name)
            case ClusterRequest(format=format_):
                return self._cluster(format_)
            case AddRequest(node_id=node, address=address):
                return self._membership(ChangeMembership(node=node, role=Role.SPARE, address=address, must_be_new=True))
            case AssignRequest(node_id=node, role=role):
                if role is not None and role not in (0, 1, 2):
                    self._write(FailureResponse(code=ErrorCode.ERROR, message=f"unknown role {role}"))
                else:
                    return self._membership(ChangeMembership(node=node, role=Role(role if role is not None else 0)))
            case RemoveRequest(node_id=node):
                return self._membership(ChangeMembership(node=node, role=None))
            case TransferRequest(node_id=target):
                return self._transfer(target)
            case _:
                self._write(self._local_response(request))
        return None

    def _local_response(self, request):
        """The answer to a request this server answers without the actor."""
        match request:
            case ClientRequest():
                return WelcomeResponse(heartbeat_timeout_ms=self.server.heartbeat_timeout_ms)
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
                return MetadataResponse(failure_domain=self.server.metadata.failure_domain, weight=self.server.metadata.weight)
            case WeightRequest(weight=weight):
                self.server.metadata.weight = weight
                return EmptyResponse()
        return FailureResponse(code=ErrorCode.PROTOCOL, message=f"unsupported request {type(request).__name__}")

    def _prepared(self, reply: Any, db_id: int, sql: str, with_tail: bool):
        if not isinstance(reply, Prepared):
            return self._failure(reply)
        statement = self.next_statement
        self.next_statement += 1
        self.statements[statement] = (db_id, sql)
        return StmtResponse(db_id=db_id, stmt_id=statement, params_count=reply.parameter_count,
                            tail_offset=len(sql.encode()) if with_tail else None)

    def _run_sql(self, request, database: str, sql: str, params) -> None:
        values = tuple(_sqlite_value(value) for value in params)
        if isinstance(request, (ExecRequest, ExecSqlRequest)):
            self._submit(Execute(database=database, sql=sql, params=values), self._executed)
        else:
            self._submit(Query(database=database, sql=sql, params=values), self._queried)

    def _executed(self, reply: Any) -> None:
        if isinstance(reply, ExecuteResult):
            self._write(ResultResponse(last_insert_id=reply.last_insert_id, rows_affected=reply.rows_affected))
        else:
            self._write(self._failure(reply))

    def _queried(self, reply: Any) -> None:
        """The first ROWS batch; a task sends the rest (`_send_more_rows`)."""
        if not isinstance(reply, QueryResult):
            self._write(self._failure(reply))
            return
        rows = reply.rows
        types = reply.column_types or (None,) * len(reply.columns)
        batches = RowsBatchBuilder(reply.columns)
        try:
            position = _fill_batch(batches, rows, types, 0)
        except WireEncodeError as error:
            self._write(FailureResponse(code=ErrorCode.ERROR, message=str(error)))
            return
        if position == len(rows):
            self.writer.write(batches.finish(done=True))
            return
        self.writer.write(batches.finish(done=False))
        self.rows_task = asyncio.get_running_loop().create_task(self._send_more_rows(rows, types, batches, position))

    async def _send_more_rows(self, rows, types, batches: RowsBatchBuilder, position: int) -> None:
        """The batches after the first; an INTERRUPT between batches stops them."""
        try:
            while True:
                await self.writer.drain()
                if isinstance(self.ahead, InterruptRequest):
                    # Only an INTERRUPT may overtake the rest of a result; anything else waits.
                    self.ahead = None
                    self._write(EmptyResponse())
                    await self.writer.drain()
                    return
                try:
                    position = _fill_batch(batches, rows, types, position)
                except WireEncodeError as error:
                    self._write(FailureResponse(code=ErrorCode.ERROR, message=str(error)))
                    await self.writer.drain()
                    return
                done = position == len(rows)
                self.writer.write(batches.finish(done=done))
                if done:
                    await self.writer.drain()
                    return
        except (ConnectionError, OSError) as error:
            self.failure = _ConnectionClosed(str(error))
        except Exception as error:
            self.failure = error
        finally:
            self.rows_task = None
            self._answered()

    # -- requests taking several round trips ---------------------------------------------

    async def _leader(self):
        description = await self._call(DescribeCluster())
        leader = description.leader
        if leader is None:
            return ServerResponse(node_id=0, address="")
        return ServerResponse(node_id=leader, address=self._address_of(description, leader) or "")

    async def _dump(self, name: str):
        reply = await self._call(Dump(database=name))
        if not isinstance(reply, Dumped):
            return self._failure(reply)
        return FilesResponse(files=tuple(DumpFile(name=file, data=data) for file, data in reply.files))

    async def _cluster(self, format_: int):
        description = await self._call(DescribeCluster())
        return ServersResponse(nodes=tuple(
            NodeInfo(node_id=node, address=self._address_of(description, node) or "",
                     role=int(role) if format_ == 1 else None)
            for node, role, _ in description.members
        ))

    async def _membership(self, change: ChangeMembership):
        reply = await self._call(change)
        if isinstance(reply, ProposeResult):
            return EmptyResponse()
        return self._failure(reply)

    async def _transfer(self, target: int):
        description = await self._call(DescribeCluster())
        if description.leader != description.node_id:
            return FailureResponse(code=ErrorCode.NOT_LEADER, message="not leader")
        if target == 0:
            voters = [node for node, role, _ in description.members if role == Role.VOTER and node != description.node_id]
            if not voters:
                return FailureResponse(code=ErrorCode.ERROR, message="no other voter to transfer leadership to")
            target = voters[0]
        reply = await self._call(TransferLeadership(target=target))
        if not isinstance(reply, ProposeResult):
            return self._failure(reply)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server.transfer_timeout_s
        while loop.time() < deadline:
            description = await self._call(DescribeCluster())
            if description.leader == target:
                return EmptyResponse()
            await asyncio.sleep(0.02)
        return FailureResponse(code=ErrorCode.ERROR, message=f"leadership did not move to node {target} in time")

    # -- helpers -----------------------------------------------------------------------

    def _database(self, db_id: int) -> str | FailureResponse:
        if not 0 <= db_id < len(self.databases):
            return FailureResponse(code=ErrorCode.NOT_FOUND, message=f"no database opened with id {db_id}")
        return self.databases[db_id]

    def _address_of(self, description: ClusterDescription, node: int) -> str | None:
        for member, _, address in description.members:
            if member == node and address:
                return address
        if node == description.node_id:
            return self.runtime.address
        return self.runtime.peers.get(node)

    @staticmethod
    def _failure(reply: Any) -> FailureResponse:
        match reply:
            case SqlError(code=code, message=message):
                return FailureResponse(code=code, message=message)
            case ClientError(kind=kind, message=message):
                return FailureResponse(code=_CLIENT_ERROR_CODES.get(kind, ErrorCode.ERROR), message=message)
        return FailureResponse(code=ErrorCode.ERROR, message=f"unexpected answer {type(reply).__name__}")


def _fill_batch(batches: RowsBatchBuilder, rows, types, position: int) -> int:
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
