"""The wire server's session over a stand-in runtime: requests sent back to back are
answered one at a time and in order, whether the actor replies at once (inside
`submit`) or later; an INTERRUPT stops a result held up by a slow reader; bad bytes after
good requests get their answers first, then one FAILURE; a client that leaves with a
request in flight still ends its session."""

import asyncio
import socket
import struct

import pytest

from raftlite.actors.database import Execute, ExecuteResult, Prepare, Prepared, Query, QueryResult, SqlError
from raftlite.core.wire import (
    DbResponse, EmptyResponse, ErrorCode, ExecRequest, ExecSqlRequest, FailureResponse, FinalizeRequest,
    InterruptRequest, OpenRequest, PrepareRequest, QuerySqlRequest, ResponseReader, ResultResponse, RowsResponse,
    StmtResponse, encode_handshake, encode_request,
)
from raftlite.io.wire_server import WireServer

pytestmark = pytest.mark.timeout(60)

BIG_RESULT_ROWS = 4000     # of 4 KiB each: far more than the socket buffers hold


class StandInRuntime:
    """Prepare is answered inside `submit`; Execute a few milliseconds later (a commit);
    Query at once with `result`. Records how many requests were ever in flight at once."""

    address = "127.0.0.1:0"
    peers: dict = {}

    def __init__(self, result: QueryResult | None = None) -> None:
        self.result = result
        self.clients: dict = {}
        self.next_client = 0
        self.in_flight = 0
        self.in_flight_max = 0
        self.closed: list = []
        self.executed: list[tuple] = []

    def open_client(self, on_reply):
        self.next_client += 1
        self.clients[self.next_client] = on_reply
        return self.next_client

    def close_client(self, client) -> None:
        if self.clients.pop(client, None) is not None:
            self.closed.append(client)

    def submit(self, client, message) -> None:
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        match message:
            case Prepare():
                self._reply(client, Prepared(parameter_count=message.sql.count("?"), columns=()))
            case Execute(params=params) if params and params[0] == "slow":
                self.executed.append(params)
                reply = ExecuteResult(last_insert_id=len(self.executed), rows_affected=1)
                asyncio.get_running_loop().call_later(0.1, self._reply, client, reply)
            case Execute(params=params) if params and params[0] == "fail":
                asyncio.get_running_loop().call_later(0.002, self._reply, client, SqlError(code=19, message="nope"))
            case Execute(params=params):
                self.executed.append(params)
                delay = 0.001 * (len(self.executed) % 3)
                reply = ExecuteResult(last_insert_id=len(self.executed), rows_affected=1)
                asyncio.get_running_loop().call_later(delay, self._reply, client, reply)
            case Query():
                self._reply(client, self.result)

    def _reply(self, client, reply) -> None:
        self.in_flight -= 1
        on_reply = self.clients.get(client)
        if on_reply is not None:
            on_reply(reply)


async def serving(runtime):
    wire = WireServer(runtime, message_bytes_max=1 << 20, heartbeat_timeout_ms=1000)

    async def handle(reader, writer):
        await reader.readexactly(8)
        await wire.serve(reader, writer, 1)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def responses(reader: asyncio.StreamReader, count: int) -> list:
    decoder = ResponseReader(message_bytes_max=1 << 24)
    answers: list = []
    while len(answers) < count:
        while (response := decoder.next_response()) is not None:
            answers.append(response)
        if len(answers) < count:
            data = await reader.read(1 << 16)
            if not data:
                break
            decoder.feed(data)
    return answers


def test_requests_sent_back_to_back_are_answered_one_at_a_time_in_order():
    async def scenario():
        runtime = StandInRuntime()
        server, port = await serving(runtime)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        requests = [OpenRequest(name="app"), PrepareRequest(db_id=0, sql="INSERT INTO t VALUES (?)")]
        requests += [ExecRequest(db_id=0, stmt_id=0, params=(key,)) for key in range(20)]
        requests += [ExecSqlRequest(db_id=0, sql="INSERT INTO t VALUES (?)", params=("fail",)),
                     ExecRequest(db_id=0, stmt_id=7, params=(1,)), FinalizeRequest(db_id=0, stmt_id=0)]
        writer.write(encode_handshake() + b"".join(encode_request(request) for request in requests))
        answers = await responses(reader, len(requests))
        writer.close()
        server.close()
        return runtime, answers

    runtime, answers = asyncio.run(scenario())
    assert answers[0] == DbResponse(db_id=0)
    assert isinstance(answers[1], StmtResponse) and answers[1].params_count == 1
    assert answers[2:22] == [ResultResponse(last_insert_id=key + 1, rows_affected=1) for key in range(20)]
    assert answers[22] == FailureResponse(code=19, message="nope")
    assert answers[23].code == ErrorCode.NOT_FOUND
    assert answers[24] == EmptyResponse()
    assert runtime.executed == [(key,) for key in range(20)]
    assert runtime.in_flight_max == 1


def test_an_interrupt_stops_a_result_the_client_reads_slowly():
    rows = tuple((key, bytes(4096)) for key in range(BIG_RESULT_ROWS))
    runtime = StandInRuntime(QueryResult(columns=("k", "v"), rows=rows))

    async def scenario():
        server, port = await serving(runtime)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(encode_handshake() + encode_request(OpenRequest(name="app"))
                     + encode_request(QuerySqlRequest(db_id=0, sql="SELECT k, v FROM t")))
        await asyncio.sleep(0.3)   # the server fills the socket and waits for it to drain
        writer.write(encode_request(InterruptRequest(db_id=0)) + encode_request(OpenRequest(name="other")))
        decoder = ResponseReader(message_bytes_max=1 << 24)
        answers: list = []
        while not answers or answers[-1] != DbResponse(db_id=1):
            while (response := decoder.next_response()) is not None:
                answers.append(response)
            if not answers or answers[-1] != DbResponse(db_id=1):
                data = await reader.read(1 << 16)
                assert data, f"closed after {len(answers)} answers"
                decoder.feed(data)
        writer.close()
        server.close()
        return answers

    answers = asyncio.run(scenario())
    assert answers[0] == DbResponse(db_id=0)
    batches = answers[1:-2]
    assert batches and all(isinstance(batch, RowsResponse) and batch.more for batch in batches)
    assert 0 < sum(len(batch.rows) for batch in batches) < BIG_RESULT_ROWS
    assert answers[-2:] == [EmptyResponse(), DbResponse(db_id=1)]


def test_bad_bytes_after_good_requests_get_their_answers_then_one_failure():
    async def scenario():
        runtime = StandInRuntime()
        server, port = await serving(runtime)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        good = [OpenRequest(name="app"), ExecRequest(db_id=0, stmt_id=0, params=(1,)),
                PrepareRequest(db_id=0, sql="INSERT INTO t VALUES (?)"), ExecRequest(db_id=0, stmt_id=0, params=(2,))]
        writer.write(encode_handshake() + b"".join(encode_request(request) for request in good)
                     + struct.pack("<IBBH", 1, 200, 0, 0) + bytes(8))
        answers = await responses(reader, 10)
        writer.close()
        server.close()
        return runtime, answers

    runtime, answers = asyncio.run(scenario())
    assert len(answers) == 5
    assert answers[0] == DbResponse(db_id=0) and answers[1].code == ErrorCode.NOT_FOUND
    assert isinstance(answers[2], StmtResponse) and answers[3] == ResultResponse(last_insert_id=1, rows_affected=1)
    assert isinstance(answers[4], FailureResponse) and answers[4].code == ErrorCode.PROTOCOL
    assert runtime.closed == [1]


def test_a_client_leaving_with_a_request_in_flight_ends_its_session():
    async def scenario():
        runtime = StandInRuntime()
        server, port = await serving(runtime)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_handshake() + encode_request(OpenRequest(name="app"))
                     + encode_request(PrepareRequest(db_id=0, sql="INSERT INTO t VALUES (?)"))
                     + encode_request(ExecRequest(db_id=0, stmt_id=0, params=("slow",))))
        assert len(await responses(reader, 2)) == 2
        await asyncio.sleep(0.01)   # the EXEC is in flight
        writer.close()
        for _ in range(200):
            if runtime.closed:
                break
            await asyncio.sleep(0.01)
        server.close()
        return runtime

    runtime = asyncio.run(scenario())
    assert runtime.executed == [("slow",)] and runtime.closed == [1] and runtime.in_flight == 0
