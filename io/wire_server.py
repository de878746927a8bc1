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
server looks for an INTERRUPT the client sent meanwhile (a reader task keeps reading
requests into a bounded queue), and on one it stops sending and answers EMPTY.

Bad input never reaches the actor: bytes that break the protocol (a header announcing
more than `message_bytes_max`, an unknown type, a body that does not decode) get one
FAILURE with dqlite's protocol code and the connection is closed; values the protocol
carries but SQLite does not (UNIXTIME, ISO8601, BOOLEAN parameters) are converted to
SQLite's own types. When the client goes away, the actor hears `SessionClosed` (its
open transaction is rolled back).
"""

import asyncio
import logging
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

READ_CHUNK_BYTES = 64 << 10
# Requests read ahead while one is being answered: a well-behaved client sends at most
# an INTERRUPT; anything beyond this waits in the socket (TCP backpressure).
REQUESTS_AHEAD_MAX = 8
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
    def __init__(self, server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.runtime = server.runtime
        self.reader = reader
        self.writer = writer
        self.replies: asyncio.Queue = asyncio.Queue()
        self.client = self.runtime.open_client(self.replies.put_nowait)
        self.requests: asyncio.Queue = asyncio.Queue(REQUESTS_AHEAD_MAX)
        self.databases: list[str] = []
        self.statements: dict[int, tuple[int, str]] = {}   # stmt id -> (db id, SQL)
        self.next_statement = 0

    def close(self) -> None:
        self.runtime.close_client(self.client)

    async def run(self) -> None:
        reading = asyncio.create_task(self._read_requests())
        try:
            while True:
                request = await self.requests.get()
                if isinstance(request, BaseException):
                    if isinstance(request, WireProtocolError):
                        await self._send(FailureResponse(code=request.code, message=str(request)))
                    return
                await self._answer(request)
        except (_ConnectionClosed, ConnectionError, OSError):
            return
        finally:
            reading.cancel()

    async def _read_requests(self) -> None:
        """Reads requests ahead into `self.requests`; ends it with the error or EOF."""
        decoder = RequestReader(message_bytes_max=self.server.message_bytes_max)
        try:
            while True:
                request = decoder.next_request()
                if request is not None:
                    await self.requests.put(request)
                    continue
                data = await self.reader.read(READ_CHUNK_BYTES)
                if not data:
                    await self.requests.put(_ConnectionClosed())
                    return
                decoder.feed(data)
        except WireProtocolError as error:
            await self.requests.put(error)
        except (ConnectionError, OSError) as error:
            await self.requests.put(_ConnectionClosed(str(error)))

    async def _send(self, response) -> None:
        self.writer.write(encode_response(response))
        await self.writer.drain()

    async def _call(self, message: Any) -> Any:
        self.runtime.submit(self.client, message)
        return await self.replies.get()

    # -- one request -------------------------------------------------------------------

    async def _answer(self, request) -> None:
        try:
            response = await self._response(request)
        except WireEncodeError as error:
            response = FailureResponse(code=ErrorCode.ERROR, message=str(error))
        if response is not None:
            await self._send(response)

    async def _response(self, request):
        match request:
            case LeaderRequest():
                description = await self._call(DescribeCluster())
                leader = description.leader
                if leader is None:
                    return ServerResponse(node_id=0, address="")
                return ServerResponse(node_id=leader, address=self._address_of(description, leader) or "")
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
            case PrepareRequest(db_id=db_id, sql=sql, with_tail_offset=with_tail):
                database = self._database(db_id)
                if isinstance(database, FailureResponse):
                    return database
                if not sql.strip():
                    return FailureResponse(code=0, message="empty statement")
                if len(self.statements) >= STATEMENTS_PER_CONNECTION_MAX:
                    return FailureResponse(code=ErrorCode.ERROR, message="too many prepared statements on this connection")
                reply = await self._call(Prepare(database=database, sql=sql))
                if not isinstance(reply, Prepared):
                    return self._failure(reply)
                statement = self.next_statement
                self.next_statement += 1
                self.statements[statement] = (db_id, sql)
                return StmtResponse(db_id=db_id, stmt_id=statement, params_count=reply.parameter_count,
                                    tail_offset=len(sql.encode()) if with_tail else None)
            case ExecRequest(db_id=db_id, stmt_id=stmt_id, params=params) | QueryRequest(db_id=db_id, stmt_id=stmt_id, params=params):
                found = self.statements.get(stmt_id)
                if found is None or found[0] != db_id:
                    return FailureResponse(code=ErrorCode.NOT_FOUND, message=f"no prepared statement with id {stmt_id}")
                return await self._run_sql(request, self.databases[db_id], found[1], params)
            case ExecSqlRequest(db_id=db_id, sql=sql, params=params) | QuerySqlRequest(db_id=db_id, sql=sql, params=params):
                database = self._database(db_id)
                if isinstance(database, FailureResponse):
                    return database
                return await self._run_sql(request, database, sql, params)
            case FinalizeRequest(db_id=db_id, stmt_id=stmt_id):
                found = self.statements.pop(stmt_id, None)
                if found is None or found[0] != db_id:
                    return FailureResponse(code=ErrorCode.NOT_FOUND, message=f"no prepared statement with id {stmt_id}")
                return EmptyResponse()
            case InterruptRequest():
                return EmptyResponse()   # nothing is being sent: nothing to stop
            case DumpRequest(name=name):
                reply = await self._call(Dump(database=name))
                if not isinstance(reply, Dumped):
                    return self._failure(reply)
                return FilesResponse(files=tuple(DumpFile(name=file, data=data) for file, data in reply.files))
            case ClusterRequest(format=format_):
                description = await self._call(DescribeCluster())
                return ServersResponse(nodes=tuple(
                    NodeInfo(node_id=node, address=self._address_of(description, node) or "",
                             role=int(role) if format_ == 1 else None)
                    for node, role, _ in description.members
                ))
            case AddRequest(node_id=node, address=address):
                return await self._membership(ChangeMembership(node=node, role=Role.SPARE, address=address, must_be_new=True))
            case AssignRequest(node_id=node, role=role):
                if role is not None and role not in (0, 1, 2):
                    return FailureResponse(code=ErrorCode.ERROR, message=f"unknown role {role}")
                return await self._membership(ChangeMembership(node=node, role=Role(role if role is not None else 0)))
            case RemoveRequest(node_id=node):
                return await self._membership(ChangeMembership(node=node, role=None))
            case TransferRequest(node_id=target):
                return await self._transfer(target)
            case DescribeRequest(format=format_):
                if format_ != 0:
                    return FailureResponse(code=15, message="bad format version")
                return MetadataResponse(failure_domain=self.server.metadata.failure_domain, weight=self.server.metadata.weight)
            case WeightRequest(weight=weight):
                self.server.metadata.weight = weight
                return EmptyResponse()
        return FailureResponse(code=ErrorCode.PROTOCOL, message=f"unsupported request {type(request).__name__}")

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

    async def _run_sql(self, request, database: str, sql: str, params) -> Any:
        values = tuple(_sqlite_value(value) for value in params)
        if isinstance(request, (ExecRequest, ExecSqlRequest)):
            reply = await self._call(Execute(database=database, sql=sql, params=values))
            if isinstance(reply, ExecuteResult):
                return ResultResponse(last_insert_id=reply.last_insert_id, rows_affected=reply.rows_affected)
            return self._failure(reply)
        reply = await self._call(Query(database=database, sql=sql, params=values))
        if not isinstance(reply, QueryResult):
            return self._failure(reply)
        await self._send_rows(reply)
        return None

    async def _send_rows(self, result: QueryResult) -> None:
        """The result as ROWS batches; an INTERRUPT between batches stops them."""
        types = result.column_types or (None,) * len(result.columns)
        batches = RowsBatchBuilder(result.columns)
        rows = result.rows
        for position, row in enumerate(rows):
            batches.append(tuple(column_value(value, declared or None) for value, declared in zip(row, types)))
            if batches.is_full and position < len(rows) - 1:
                self.writer.write(batches.finish(done=False))
                await self.writer.drain()
                if self._interrupted():
                    await self._send(EmptyResponse())
                    return
        self.writer.write(batches.finish(done=True))
        await self.writer.drain()

    def _interrupted(self) -> bool:
        if self.requests.empty():
            return False
        # Only an INTERRUPT may overtake the rest of a result; anything else waits.
        pending = self.requests._queue[0]   # asyncio.Queue keeps a deque; peek without taking
        if isinstance(pending, InterruptRequest):
            self.requests.get_nowait()
            return True
        return False

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
