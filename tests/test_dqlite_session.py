"""The sans-I/O dqlite session (actors/dqlite_session.py), bytes in and bytes out, with no
runtime at all: the handshake, a bad protocol version, malformed frames, oversized ones (TOOBIG),
pipelined requests answered one at a time and in order, a result paged out batch by
batch (and stopped by an INTERRUPT), TRANSFER's timers, and the end of a session."""

import struct
from dataclasses import dataclass, field

import pytest

from raftlite.actors.database import (
    Execute, ExecuteResult, Prepare, Prepared, Query, QueryResult, SessionClosed, SqlError,
)
from raftlite.actors.dqlite_session import (
    CloseConnection, DqliteSession, EndSession, SendBytes, StartTimer, SubmitRequest,
)
from raftlite.actors.raft_node import ClusterDescription, DescribeCluster, ProposeResult, TransferLeadership
from raftlite.core.raft_types import Role
from raftlite.core.wire import (
    PROTOCOL_VERSION_LEGACY, ClientRequest, DbResponse, EmptyResponse, ErrorCode, ExecRequest, ExecSqlRequest,
    FailureResponse, InterruptRequest, LeaderRequest, OpenRequest, PrepareRequest, QuerySqlRequest, ResponseReader,
    ResultResponse, RowsResponse, ServerResponse, StmtResponse, TransferRequest, WelcomeResponse, encode_handshake,
    encode_request,
)

pytestmark = pytest.mark.timeout(30)


@dataclass
class Addresses:
    address: str = "10.0.0.1:9001"
    peers: dict = field(default_factory=lambda: {2: "10.0.0.2:9001", 3: "10.0.0.3:9001"})


class Client:
    """Drives one session as a shell would, with no I/O: keeps what it was sent, the
    requests it submitted to the (absent) actor, the timers it started, and whether it
    was told to close."""

    def __init__(self, message_bytes_max: int = 1 << 20) -> None:
        self.session = DqliteSession(addresses=Addresses(), message_bytes_max=message_bytes_max,
                                     heartbeat_timeout_ms=15_000, transfer_timeout_ms=1000.0)
        self.decoder = ResponseReader(message_bytes_max=1 << 24)
        self.submitted: list[SubmitRequest] = []
        self.timers: list[StartTimer] = []
        self.closed_because: str | None = None
        self.ended: list = []
        self.sent_bytes = 0

    def apply(self, effects: list) -> None:
        for effect in effects:
            match effect:
                case SendBytes(data=data):
                    self.sent_bytes += len(data)
                    self.decoder.feed(data)
                case SubmitRequest():
                    self.submitted.append(effect)
                case StartTimer():
                    self.timers.append(effect)
                case CloseConnection(reason=reason):
                    self.closed_because = reason
                case EndSession(message=message):
                    self.ended.append(message)

    def send(self, data: bytes) -> None:
        """Bytes in, then every request that can be answered now."""
        self.apply(self.session.receive_bytes(data))
        self.answer_ready()

    def reply(self, reply) -> None:
        """The actor's reply to the request in flight, then the requests behind it."""
        self.apply(self.session.on_reply(self.submitted[-1].token, reply))
        self.answer_ready()

    def answer_ready(self) -> None:
        """`step()` while the session is ready, as a shell's loop does."""
        for _ in range(1000):
            if not self.session.ready:
                return
            self.apply(self.session.step())
        raise AssertionError("the session stayed ready")

    def responses(self) -> list:
        return list(iter(self.decoder.next_response, None))


def connected() -> Client:
    client = Client()
    client.send(encode_handshake())
    return client


def requests(*items) -> bytes:
    return b"".join(encode_request(item) for item in items)


def test_the_handshake_may_arrive_in_pieces_and_the_first_requests_are_answered_here():
    client = Client()
    handshake = encode_handshake()
    client.send(handshake[:3])
    client.send(handshake[3:] + requests(ClientRequest(client_id=7))[:5])
    assert client.responses() == [] and client.closed_because is None
    client.send(requests(ClientRequest(client_id=7))[5:] + requests(OpenRequest(name="app"), OpenRequest(name="app")))
    assert client.responses() == [WelcomeResponse(heartbeat_timeout_ms=15_000), DbResponse(db_id=0), DbResponse(db_id=0)]
    assert client.submitted == []   # nothing here needed the actor


@pytest.mark.parametrize("version", [PROTOCOL_VERSION_LEGACY, 2])
def test_another_protocol_version_is_closed_without_an_answer(version):
    client = Client()
    client.send(encode_handshake(version) + requests(OpenRequest(name="app")))
    assert client.sent_bytes == 0 and client.submitted == []
    assert client.closed_because == f"unsupported protocol version {version:#x}"
    assert client.session.receive_bytes(requests(OpenRequest(name="app"))) == []


def test_a_malformed_frame_gets_one_failure_and_the_connection_closes():
    client = connected()
    # An OPEN whose body is one word of zeros: its name is "" but then the flags are missing.
    client.send(requests(OpenRequest(name="app")) + struct.pack("<IBBH", 1, 3, 0, 0) + bytes(8))
    first, failure = client.responses()
    assert first == DbResponse(db_id=0)
    assert isinstance(failure, FailureResponse) and failure.code == ErrorCode.PARSE
    assert client.closed_because == failure.message


def test_an_unknown_request_type_is_refused_at_its_header():
    client = connected()
    client.send(struct.pack("<IBBH", 1, 200, 0, 0))   # the body never comes
    (failure,) = client.responses()
    assert failure.code == ErrorCode.PROTOCOL and failure.message == "unknown request type 200"
    assert client.closed_because is not None


def test_an_oversized_request_gets_toobig_at_its_header_and_the_connection_stays_usable():
    client = Client(message_bytes_max=1024)
    big = requests(ExecSqlRequest(db_id=0, sql="INSERT INTO t VALUES (?)", params=(b"x" * 4000,)))
    client.send(encode_handshake() + requests(OpenRequest(name="app")) + big[:8])   # only its header
    opened, failure = client.responses()
    assert opened == DbResponse(db_id=0)
    assert failure == FailureResponse(code=ErrorCode.TOOBIG, message=(
        f"request too big: EXEC_SQL of {len(big) - 8} bytes is above the limit of 1024 bytes "
        "(message_bytes_max); nothing was run"))
    for start in range(8, len(big), 1000):   # the body arrives and is dropped, never buffered
        client.send(big[start:start + 1000])
        assert client.session._reader.buffered_bytes == 0
    assert client.submitted == [] and client.closed_because is None
    client.send(requests(ExecSqlRequest(db_id=0, sql="SELECT 1")))   # the stream is still in step
    assert client.submitted[-1].message == Execute(database="app", sql="SELECT 1", params=())


def test_an_oversized_request_behind_a_busy_one_is_refused_in_its_turn():
    client = Client(message_bytes_max=1024)
    client.send(encode_handshake() + requests(OpenRequest(name="app"), ExecSqlRequest(db_id=0, sql="INSERT 1"))
                + struct.pack("<IBBH", (1 << 32) - 1, 8, 0, 0) + bytes(64))   # announces 32 GiB
    assert client.responses() == [DbResponse(db_id=0)]   # the INSERT is at the actor
    client.reply(ExecuteResult(last_insert_id=1, rows_affected=1))
    result, failure = client.responses()
    assert result == ResultResponse(last_insert_id=1, rows_affected=1)
    assert failure.code == ErrorCode.TOOBIG and "34359738360 bytes" in failure.message
    assert len(client.submitted) == 1 and client.closed_because is None
    client.send(b"")   # the client gives up before sending the rest: closed, nothing more said
    assert client.responses() == [] and client.closed_because == "the client closed the connection"


def test_pipelined_requests_are_answered_one_at_a_time_in_order():
    client = connected()
    client.send(requests(
        OpenRequest(name="app"), PrepareRequest(db_id=0, sql="INSERT INTO t VALUES (?)"),
        ExecRequest(db_id=0, stmt_id=0, params=(1,)), ExecSqlRequest(db_id=0, sql="INSERT INTO t VALUES (2)"),
        ExecRequest(db_id=0, stmt_id=9, params=()), OpenRequest(name="other"),
    ))
    assert client.responses() == [DbResponse(db_id=0)]
    assert [request.message for request in client.submitted] == [Prepare(database="app", sql="INSERT INTO t VALUES (?)")]
    # One request is at the actor, one more is decoded and waits: the driver reads no further.
    assert client.session.busy and not client.session.ready and not client.session.wants_bytes
    assert client.session.step() == []
    client.reply(Prepared(parameter_count=1, columns=()))
    assert client.responses() == [StmtResponse(db_id=0, stmt_id=0, params_count=1)]
    assert client.submitted[-1].message == Execute(database="app", sql="INSERT INTO t VALUES (?)", params=(1,))
    client.reply(ExecuteResult(last_insert_id=1, rows_affected=1))
    assert client.submitted[-1].message == Execute(database="app", sql="INSERT INTO t VALUES (2)", params=())
    client.reply(SqlError(code=19, message="nope"))
    assert client.responses() == [
        ResultResponse(last_insert_id=1, rows_affected=1), FailureResponse(code=19, message="nope"),
        FailureResponse(code=ErrorCode.NOT_FOUND, message="no prepared statement with id 9"), DbResponse(db_id=1),
    ]
    assert len(client.submitted) == 3 and client.session.wants_bytes and not client.session.busy
    # Tokens name the request a reply answers: a stale one is dropped.
    assert client.session.on_reply(client.submitted[0].token, ExecuteResult(last_insert_id=5, rows_affected=1)) == []


def big_result(rows: int) -> QueryResult:
    return QueryResult(columns=("k", "v"), rows=tuple((key, "x" * 100) for key in range(rows)))


def test_a_large_result_is_paged_out_batch_by_batch():
    client = connected()
    client.send(requests(OpenRequest(name="app"), QuerySqlRequest(db_id=0, sql="SELECT k, v FROM t")))
    assert client.submitted[-1].message == Query(database="app", sql="SELECT k, v FROM t", params=())
    client.send(requests(OpenRequest(name="next")))     # waits behind the whole result
    client.reply(big_result(500))
    batches = client.responses()[1:]
    assert len(batches) == 1 and batches[0].more and client.session.sending_rows
    for _ in range(100):
        effects = client.session.next_rows()
        if not effects:
            break
        client.apply(effects)
    assert not client.session.sending_rows
    client.answer_ready()
    answers = client.responses()
    batches += answers[:-1]
    assert answers[-1] == DbResponse(db_id=1)
    assert len(batches) > 3 and all(batch.more for batch in batches[:-1]) and not batches[-1].more
    assert [row[0] for batch in batches for row in batch.rows] == list(range(500))
    assert all(isinstance(batch, RowsResponse) and batch.columns == ("k", "v") for batch in batches)


def test_an_interrupt_stops_a_paged_result_and_the_next_request_follows():
    client = connected()
    client.send(requests(OpenRequest(name="app"), QuerySqlRequest(db_id=0, sql="SELECT k, v FROM t")))
    client.reply(big_result(500))
    client.apply(client.session.next_rows())
    client.send(requests(InterruptRequest(db_id=0), OpenRequest(name="next")))
    for _ in range(100):
        effects = client.session.next_rows()
        if not effects:
            break
        client.apply(effects)
    client.answer_ready()
    answers = client.responses()
    assert answers[0] == DbResponse(db_id=0)
    assert [type(answer) for answer in answers[1:3]] == [RowsResponse, RowsResponse]
    assert answers[3:] == [EmptyResponse(), DbResponse(db_id=1)]


def test_the_client_leaving_with_a_request_in_flight_gets_it_answered_then_closed():
    client = connected()
    client.send(requests(OpenRequest(name="app"), ExecSqlRequest(db_id=0, sql="INSERT INTO t VALUES (1)")) + b"\x01")
    client.send(b"")                       # end of input, a partial frame left over
    assert client.closed_because is None
    client.reply(ExecuteResult(last_insert_id=1, rows_affected=1))
    assert client.responses()[-1] == ResultResponse(last_insert_id=1, rows_affected=1)
    assert client.closed_because == "the client closed the connection"
    assert client.session.close() == [EndSession(SessionClosed())]
    assert client.session.close() == []


def test_leader_names_the_leader_by_the_nodes_addresses():
    client = connected()
    client.send(requests(LeaderRequest()))
    assert client.submitted[-1].message == DescribeCluster()
    client.reply(ClusterDescription(node_id=1, leader=3, term=2,
                                    members=((1, Role.VOTER, None), (2, Role.VOTER, None), (3, Role.VOTER, None))))
    client.send(requests(LeaderRequest()))
    client.reply(ClusterDescription(node_id=1, leader=None, term=2, members=()))
    assert client.responses() == [ServerResponse(node_id=3, address="10.0.0.3:9001"), ServerResponse(node_id=0, address="")]


def test_transfer_polls_on_the_drivers_timers_until_its_deadline():
    members = ((1, Role.VOTER, "a:1"), (2, Role.VOTER, "b:1"))
    leading = ClusterDescription(node_id=1, leader=1, term=3, members=members)
    client = connected()
    client.send(requests(TransferRequest(node_id=0)))
    client.reply(leading)
    assert client.submitted[-1].message == TransferLeadership(target=2)
    client.reply(ProposeResult(index=0, term=3))
    deadline, = client.timers
    assert deadline.delay_ms == 1000.0 and client.submitted[-1].message == DescribeCluster()
    client.reply(leading)                              # not yet moved: poll again later
    poll = client.timers[-1]
    assert poll.delay_ms == 20.0 and client.session.busy
    client.apply(client.session.on_timer(poll.token))
    client.reply(ClusterDescription(node_id=1, leader=2, term=4, members=members))
    assert client.responses() == [EmptyResponse()] and not client.session.busy
    # Another transfer whose deadline passes: answered at the next poll.
    client.send(requests(TransferRequest(node_id=2)))
    client.reply(leading)
    client.reply(ProposeResult(index=0, term=3))
    client.reply(leading)
    deadline, poll = client.timers[-2:]
    client.apply(client.session.on_timer(deadline.token))
    assert client.responses() == []
    client.apply(client.session.on_timer(poll.token))
    assert client.responses() == [FailureResponse(code=ErrorCode.ERROR, message="leadership did not move to node 2 in time")]
