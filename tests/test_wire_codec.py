"""dqlite wire protocol v1 codec (raftlite.core.wire): round trips of every message,
byte layouts from WIRE.md, row batching, and a decoder that refuses bad input with
WireProtocolError only, before allocating for an announced length."""

import asyncio
import socket
import struct
import threading
import time
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

from raftlite.client.connection import AsyncConnection, Connection, ConnectionBroken, RequestFailed, parse_address
from raftlite.core import wire
from raftlite.core.wire import (
    HEADER_BYTES, ROWS_DONE, ROWS_PART, Frame, Iso8601, NodeInfo, RequestReader, RequestType,
    ResponseReader, ResponseType, RowsBatchBuilder, RowsResponse, UnixTime, WireEncodeError,
    WireProtocolError, decode_request, decode_response, encode_request, encode_response,
)

# -- strategies ------------------------------------------------------------------------

uint64 = st.integers(0, 2**64 - 1)
uint32 = st.integers(0, 2**32 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
values = st.one_of(
    int64, st.floats(allow_nan=False), text, st.binary(max_size=40), st.none(), st.booleans(),
    int64.map(UnixTime), text.map(Iso8601),
)
params = st.lists(values, max_size=12).map(tuple)
many_params = st.lists(values, min_size=256, max_size=300).map(tuple)  # schema 1 (4-byte count)


def _build(cls, **fields):
    return st.builds(cls, **fields)


requests = st.one_of(
    _build(wire.LeaderRequest),
    _build(wire.ClientRequest, client_id=uint64),
    _build(wire.HeartbeatRequest, timestamp=uint64),
    _build(wire.OpenRequest, name=text, flags=uint64, vfs=text),
    _build(wire.PrepareRequest, db_id=uint64, sql=text, with_tail_offset=st.booleans()),
    _build(wire.ExecRequest, db_id=uint32, stmt_id=uint32, params=params),
    _build(wire.QueryRequest, db_id=uint32, stmt_id=uint32, params=params | many_params),
    _build(wire.FinalizeRequest, db_id=uint32, stmt_id=uint32),
    _build(wire.ExecSqlRequest, db_id=uint64, sql=text, params=params),
    _build(wire.QuerySqlRequest, db_id=uint64, sql=text, params=params | many_params),
    _build(wire.InterruptRequest, db_id=uint64),
    _build(wire.ConnectRequest, node_id=uint64, address=text),
    _build(wire.AddRequest, node_id=uint64, address=text),
    _build(wire.AssignRequest, node_id=uint64, role=st.none() | st.integers(0, 2)),
    _build(wire.RemoveRequest, node_id=uint64),
    _build(wire.DumpRequest, name=text),
    _build(wire.ClusterRequest, format=st.integers(0, 1)),
    _build(wire.TransferRequest, node_id=uint64),
    _build(wire.DescribeRequest, format=uint64),
    _build(wire.WeightRequest, weight=uint64),
)


@st.composite
def rows_responses(draw):
    columns = tuple(draw(st.lists(text, max_size=20)))
    rows = ()
    if columns:
        rows = tuple(tuple(draw(st.lists(values, min_size=len(columns), max_size=len(columns))))
                     for _ in range(draw(st.integers(0, 5))))
    return RowsResponse(columns=columns, rows=rows, more=draw(st.booleans()))


nodes_without_roles = st.lists(st.builds(NodeInfo, node_id=uint64, address=text, role=st.none()), max_size=5)
nodes_with_roles = st.lists(st.builds(NodeInfo, node_id=uint64, address=text, role=st.integers(0, 2)), max_size=5)

responses = st.one_of(
    _build(wire.FailureResponse, code=uint64, message=text),
    _build(wire.ServerResponse, node_id=uint64, address=text),
    _build(wire.WelcomeResponse, heartbeat_timeout_ms=uint64),
    _build(wire.ServersResponse, nodes=nodes_with_roles.map(tuple)),
    _build(wire.DbResponse, db_id=uint32),
    _build(wire.StmtResponse, db_id=uint32, stmt_id=uint32, params_count=uint64, tail_offset=st.none() | uint64),
    _build(wire.ResultResponse, last_insert_id=int64, rows_affected=uint64),
    rows_responses(),
    _build(wire.EmptyResponse),
    _build(wire.FilesResponse, files=st.lists(st.builds(wire.DumpFile, name=text, data=st.binary(max_size=64)),
                                              max_size=3).map(tuple)),
    _build(wire.MetadataResponse, failure_domain=uint64, weight=uint64),
)


def _frame(message: bytes) -> Frame:
    words, kind, schema, _ = struct.unpack_from("<IBBH", message)
    assert len(message) == HEADER_BYTES + 8 * words
    return Frame(type=kind, schema=schema, body=message[HEADER_BYTES:])


# -- round trips -----------------------------------------------------------------------

@pytest.mark.parametrize("messages, encode, decode", [
    (requests, encode_request, decode_request),
    (responses, encode_response, decode_response),
], ids=["requests", "responses"])
def test_every_message_round_trips(messages, encode, decode):
    @given(messages)
    def round_trip(message):
        encoded = encode(message)
        assert len(encoded) % 8 == 0
        decoded = decode(_frame(encoded))
        assert decoded == message
        # Byte-exact re-encoding also proves every value kept its wire type (True is not 1).
        assert encode(decoded) == encoded

    round_trip()


@given(nodes_without_roles.map(tuple))
def test_servers_without_roles_round_trip_with_format_0(nodes):
    response = wire.ServersResponse(nodes=nodes)
    assert decode_response(_frame(encode_response(response)), cluster_format=0) == response


def test_servers_mixing_roles_and_none_is_refused():
    nodes = (NodeInfo(node_id=1, address="a", role=0), NodeInfo(node_id=2, address="b"))
    with pytest.raises(WireEncodeError):
        encode_response(wire.ServersResponse(nodes=nodes))


def test_not_a_number_round_trips_bit_for_bit():
    request = wire.ExecSqlRequest(db_id=0, sql="?", params=(float("nan"),))
    encoded = encode_request(request)
    assert encode_request(decode_request(_frame(encoded))) == encoded


@given(st.lists(st.one_of(requests), min_size=1, max_size=6), st.data())
def test_the_streaming_reader_gives_the_same_messages_whatever_the_chunking(messages, data):
    stream = b"".join(encode_request(message) for message in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = RequestReader()
    decoded = []
    start = 0
    for end in [*cuts, len(stream)]:
        reader.feed(stream[start:end])
        start = end
        while (message := reader.next_request()) is not None:
            decoded.append(message)
    assert decoded == messages
    assert reader.buffered_bytes == 0


# -- byte layouts (WIRE.md) ------------------------------------------------------------

def test_layouts_match_the_reference():
    assert wire.encode_handshake() == (1).to_bytes(8, "little")
    assert encode_request(wire.LeaderRequest()) == bytes([1, 0, 0, 0, 0, 0, 0, 0]) + bytes(8)
    # text: UTF-8, NUL, zero padding to 8
    assert encode_request(wire.DumpRequest(name="app.db")) == (
        bytes([1, 0, 0, 0, 15, 0, 0, 0]) + b"app.db\0\0")
    assert encode_request(wire.DumpRequest(name="1234567")) == bytes([1, 0, 0, 0, 15, 0, 0, 0]) + b"1234567\0"
    assert encode_request(wire.DumpRequest(name="12345678"))[:4] == (2).to_bytes(4, "little")
    # EXEC: packed u32 pair, then params: count byte, type bytes, padding, values
    exec_request = wire.ExecRequest(db_id=1, stmt_id=2, params=(7, None))
    assert encode_request(exec_request) == (
        bytes([4, 0, 0, 0, 5, 0, 0, 0]) + struct.pack("<II", 1, 2) + bytes([2, 1, 5, 0, 0, 0, 0, 0])
        + struct.pack("<q", 7) + bytes(8))
    # Schema 1: a 4-byte count, in the header's schema byte
    encoded = encode_request(wire.QuerySqlRequest(db_id=0, sql="x", params=(1,) * 300))
    assert encoded[5] == 1
    assert encoded[16 + 8:16 + 12] == (300).to_bytes(4, "little")
    # ROWS: column count, names, rows with a 4-bit type header, then the end marker
    rows = RowsResponse(columns=("a", "b", "c"), rows=((1, "x", None),), more=False)
    assert encode_response(rows) == (
        bytes([9, 0, 0, 0, 7, 0, 0, 0]) + struct.pack("<Q", 3) + b"a\0" + bytes(6) + b"b\0" + bytes(6)
        + b"c\0" + bytes(6) + bytes([0x31, 0x05, 0, 0, 0, 0, 0, 0]) + struct.pack("<q", 1) + b"x\0" + bytes(6)
        + bytes(8) + struct.pack("<Q", ROWS_DONE))
    assert encode_response(RowsResponse(columns=(), rows=(), more=True))[-8:] == struct.pack("<Q", ROWS_PART)
    # DB: u32 id + u32 pad; STMT schema 1 adds the tail offset
    assert encode_response(wire.DbResponse(db_id=3)) == bytes([1, 0, 0, 0, 4, 0, 0, 0]) + struct.pack("<II", 3, 0)
    stmt = encode_response(wire.StmtResponse(db_id=0, stmt_id=1, params_count=2, tail_offset=9))
    assert stmt[:8] == bytes([3, 0, 0, 0, 5, 1, 0, 0])
    # RESULT carries SQLite's signed rowid as a u64
    result = encode_response(wire.ResultResponse(last_insert_id=-2, rows_affected=1))
    assert result[8:16] == struct.pack("<Q", 2**64 - 2)


def test_assign_without_a_role_is_the_old_promote():
    encoded = encode_request(wire.AssignRequest(node_id=5))
    assert encoded[:4] == (1).to_bytes(4, "little")
    assert decode_request(_frame(encoded)) == wire.AssignRequest(node_id=5, role=None)


def test_a_params_tuple_with_an_explicit_zero_count_means_no_params():
    body = struct.pack("<Q", 0) + b"x\0" + bytes(6) + bytes(8)
    assert decode_request(Frame(type=RequestType.EXEC_SQL, schema=0, body=body)).params == ()


# -- values and conventions ------------------------------------------------------------

def test_value_types():
    assert wire.value_type(True) == wire.ValueType.BOOLEAN
    assert wire.value_type(1) == wire.ValueType.INTEGER
    assert wire.value_type(bytearray(b"x")) == wire.ValueType.BLOB
    assert wire.value_type(UnixTime(0)) == wire.ValueType.UNIXTIME
    with pytest.raises(WireEncodeError, match="complex"):
        wire.value_type(1j)


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, "nul\0inside", 1j, object(), "\ud800"])
def test_values_the_wire_cannot_carry_are_encode_errors(bad):
    with pytest.raises(WireEncodeError):
        encode_request(wire.ExecSqlRequest(db_id=0, sql="?", params=(bad,)))


def test_ids_out_of_range_are_encode_errors():
    with pytest.raises(WireEncodeError):
        encode_request(wire.ExecRequest(db_id=2**32, stmt_id=0))
    with pytest.raises(WireEncodeError):
        encode_request(wire.ClientRequest(client_id=-1))


def test_column_conventions():
    value = wire.column_value
    for declared in ("DATETIME", "date", "Timestamp"):
        assert value(1700000000, declared) == UnixTime(1700000000)
        assert value("2024-01-01", declared) == Iso8601("2024-01-01")
        assert value(None, declared) == Iso8601("")
        # dqlite asserts (crashes) on these; raftlite sends the storage type
        assert value(1.5, declared) == 1.5
        assert value(b"x", declared) == b"x"
    assert value(2, "BOOLEAN") is True and value(0, "boolean") is False
    assert value(None, "BOOLEAN") is None  # dqlite sends false here
    assert value("yes", "BOOLEAN") == "yes"
    assert value(5, "INTEGER") == 5 and value(5, None) == 5
    assert value(5, "DATETIME(3)") == 5  # dqlite matches the declared type exactly


# -- batching --------------------------------------------------------------------------

@settings(max_examples=30)
@given(st.lists(st.tuples(int64, st.binary(max_size=600)), max_size=60), st.integers(64, 4096))
def test_rows_batches_are_cut_on_size_and_read_back_whole(rows, batch_bytes):
    builder = RowsBatchBuilder(("n", "payload"), batch_bytes=batch_bytes)
    messages = []
    for row in rows:
        if builder.is_full:
            messages.append(builder.finish(done=False))
        builder.append(row)
    messages.append(builder.finish(done=True))
    reader = ResponseReader()
    reader.feed(b"".join(messages))
    batches = list(map(decode_response, reader.frames()))
    assert [batch.more for batch in batches] == [True] * (len(batches) - 1) + [False]
    assert all(batch.columns == ("n", "payload") for batch in batches)
    assert [row for batch in batches for row in batch.rows] == rows
    largest_row = max((8 + 8 + 8 + len(payload) + 8 for _, payload in rows), default=0)
    assert all(len(message) < batch_bytes + largest_row + 8 for message in messages)


def test_rows_builder_refuses_rows_of_the_wrong_width():
    builder = RowsBatchBuilder(("a",))
    with pytest.raises(WireEncodeError):
        builder.append((1, 2))


# -- the streaming decoder refuses bad input -------------------------------------------

def _header(words: int, kind: int, schema: int = 0) -> bytes:
    return struct.pack("<IBBH", words, kind, schema, 0)


def test_a_header_announcing_more_than_the_maximum_fails_before_the_body_is_read():
    reader = ResponseReader(message_bytes_max=1024)
    with pytest.raises(WireProtocolError, match="above the maximum"):
        reader.feed(_header(129, ResponseType.ROWS))
    with pytest.raises(WireProtocolError):  # the reader stays failed
        reader.feed(bytes(8))
    ok = ResponseReader(message_bytes_max=1024)
    ok.feed(_header(128, ResponseType.ROWS))  # exactly the maximum is fine
    assert ok.next_frame() is None


def test_a_huge_announced_length_allocates_nothing():
    reader = ResponseReader(message_bytes_max=2**40)
    tracemalloc.start()
    try:
        reader.feed(_header(2**32 - 1, ResponseType.FILES))  # announces 32 GiB
        reader.feed(bytes(1000))
        assert reader.next_frame() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert reader.buffered_bytes == 1008


def test_truncated_headers_wait_for_more_bytes():
    reader = RequestReader()
    message = encode_request(wire.ClientRequest(client_id=7))
    for byte in message[:-1]:
        reader.feed(bytes([byte]))
        assert reader.next_request() is None
    reader.feed(message[-1:])
    assert reader.next_request() == wire.ClientRequest(client_id=7)


def test_unknown_type_codes_fail_at_the_header():
    with pytest.raises(WireProtocolError, match="unknown request type 20"):
        RequestReader().feed(_header(1, 20))
    with pytest.raises(WireProtocolError, match="unknown response type 11"):
        ResponseReader().feed(_header(1, 11))


def test_the_handshake_comes_before_frames():
    reader = RequestReader(expect_handshake=True)
    reader.feed(struct.pack("<Q", wire.PROTOCOL_VERSION_LEGACY))  # would be a huge header
    assert reader.read_handshake() == wire.PROTOCOL_VERSION_LEGACY
    reader = RequestReader(expect_handshake=True)
    reader.feed(wire.encode_handshake() + encode_request(wire.LeaderRequest()))
    assert reader.read_handshake() == 1
    assert reader.next_request() == wire.LeaderRequest()


BAD_REQUEST_BODIES = {
    "wrong length (too short)": (RequestType.CLIENT, 0, b""),
    "trailing bytes": (RequestType.CLIENT, 0, bytes(16)),
    "text without NUL": (RequestType.DUMP, 0, b"abcdefgh"),
    "invalid UTF-8": (RequestType.DUMP, 0, b"\xff\xfe\0\0\0\0\0\0"),
    "padding missing after text": (RequestType.OPEN, 0, b"abc\0"),
    "bad value type code": (RequestType.EXEC, 0, bytes(8) + bytes([1, 7, 0, 0, 0, 0, 0, 0]) + bytes(8)),
    "count above the body (schema 0)": (RequestType.EXEC, 0, bytes(8) + bytes([255, 1, 0, 0, 0, 0, 0, 0])),
    "count above the body (schema 1)": (RequestType.QUERY, 1, bytes(8) + b"\xff\xff\xff\xff\0\0\0\0"),
    "blob longer than the body": (RequestType.EXEC, 0, bytes(8) + bytes([1, 4, 0, 0, 0, 0, 0, 0])
                                  + struct.pack("<Q", 2**63)),
    "unknown schema": (RequestType.LEADER, 3, bytes(8)),
    "unknown params schema": (RequestType.EXEC, 2, bytes(8) + bytes(8)),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUEST_BODIES))
def test_bad_request_bodies_are_protocol_errors(name):
    kind, schema, body = BAD_REQUEST_BODIES[name]
    reader = RequestReader()
    reader.feed(_header(len(body) // 8, kind, schema) + body + bytes(-len(body) % 8))
    with pytest.raises(WireProtocolError):
        reader.next_request()
    with pytest.raises(WireProtocolError):  # the reader stays failed
        reader.next_request()


HUGE = struct.pack("<Q", 2**63)
BAD_RESPONSE_BODIES = {
    "huge node count": (ResponseType.SERVERS, HUGE),
    "huge column count": (ResponseType.ROWS, HUGE),
    "huge file count": (ResponseType.FILES, HUGE),
    "huge file length": (ResponseType.FILES, struct.pack("<Q", 1) + b"f\0" + bytes(6) + HUGE),
    "rows without end marker": (ResponseType.ROWS, struct.pack("<Q", 0)),
    "row after zero columns": (ResponseType.ROWS, struct.pack("<Q", 0) + bytes([1]) + bytes(7)),
    "bad row type nibble": (ResponseType.ROWS, struct.pack("<Q", 1) + b"a\0" + bytes(6)
                            + bytes([0x0F]) + bytes(7) + bytes(8) + struct.pack("<Q", ROWS_DONE)),
    "bytes after the end marker": (ResponseType.ROWS, struct.pack("<Q", 0) + struct.pack("<Q", ROWS_DONE) + bytes(8)),
    "invalid UTF-8 column name": (ResponseType.ROWS, struct.pack("<Q", 1) + b"\xc3\0" + bytes(6)
                                  + struct.pack("<Q", ROWS_DONE)),
    "schema 1 on a response other than STMT": (ResponseType.EMPTY, bytes(8)),
}


@pytest.mark.parametrize("name", sorted(BAD_RESPONSE_BODIES))
def test_bad_response_bodies_are_protocol_errors(name):
    kind, body = BAD_RESPONSE_BODIES[name]
    schema = 1 if name == "schema 1 on a response other than STMT" else 0
    with pytest.raises(WireProtocolError):
        decode_response(Frame(type=kind, schema=schema, body=body))


def _feed_everything(reader, data: bytes, next_message) -> None:
    """Feeds data in chunks and drains; anything but WireProtocolError escapes."""
    try:
        for start in range(0, len(data), 7):
            reader.feed(data[start:start + 7])
            while next_message() is not None:
                pass
    except WireProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_wire_protocol_errors(data):
    requests_reader = RequestReader(message_bytes_max=4096)
    _feed_everything(requests_reader, data, requests_reader.next_request)
    responses_reader = ResponseReader(message_bytes_max=4096)
    _feed_everything(responses_reader, data, responses_reader.next_response)


@settings(max_examples=300)
@given(st.one_of(requests.map(encode_request), responses.map(encode_response)), st.data())
def test_mutated_messages_only_ever_raise_wire_protocol_errors(message, data):
    mutated = bytearray(message)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    for candidate in (bytes(mutated), bytes(mutated[:cut])):
        requests_reader = RequestReader()
        _feed_everything(requests_reader, candidate, requests_reader.next_request)
        responses_reader = ResponseReader()
        _feed_everything(responses_reader, candidate, responses_reader.next_response)
        for cluster_format in (0, 1):
            try:
                decode_response(_frame_or_none(candidate) or Frame(type=0, schema=0, body=b""),
                                cluster_format=cluster_format)
            except WireProtocolError:
                pass


def _frame_or_none(data: bytes) -> Frame | None:
    if len(data) < HEADER_BYTES:
        return None
    return Frame(type=data[4], schema=data[5], body=data[HEADER_BYTES:])


# -- the client connection over a scripted peer ----------------------------------------
# (The connection against the real dqlite is in test_wire_against_dqlite.py; these are
# the failure paths a real server will not produce on demand.)



class ScriptedPeer:
    """Accepts one connection, reads the handshake, then answers each request with the
    next scripted bytes (None: say nothing; b"": close the connection)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.listener.settimeout(10)
        peer, _ = self.listener.accept()
        peer.settimeout(10)
        reader = RequestReader(expect_handshake=True)
        try:
            while self.answers:
                chunk = peer.recv(65536)
                if not chunk:
                    return
                reader.feed(chunk)
                if reader._handshake_pending and reader.read_handshake() is None:
                    continue
                while self.answers and (request := reader.next_request()) is not None:
                    self.requests.append(request)
                    answer = self.answers.pop(0)
                    if answer == b"":
                        return
                    if answer is not None:
                        peer.sendall(answer)
            time.sleep(0.5)
        except OSError:
            pass
        finally:
            peer.close()
            self.listener.close()

    def join(self):
        self.thread.join(timeout=10)


LEADER_ANSWER = encode_response(wire.ServerResponse(node_id=1, address="127.0.0.1:1"))


@pytest.mark.timeout(30)
def test_a_failure_is_raised_with_its_code_and_the_connection_goes_on():
    peer = ScriptedPeer([encode_response(wire.FailureResponse(code=10250, message="not leader")), LEADER_ANSWER])
    with Connection.connect(peer.address, timeout_s=5) as connection:
        with pytest.raises(RequestFailed) as failure:
            connection.exec_sql(0, "INSERT INTO t VALUES (1)")
        assert (failure.value.code, failure.value.message) == (10250, "not leader")
        assert connection.leader() == NodeInfo(node_id=1, address="127.0.0.1:1")
    peer.join()
    assert peer.requests == [wire.ExecSqlRequest(db_id=0, sql="INSERT INTO t VALUES (1)"), wire.LeaderRequest()]


@pytest.mark.timeout(30)
def test_a_value_the_wire_cannot_carry_sends_nothing():
    peer = ScriptedPeer([LEADER_ANSWER])
    with Connection.connect(peer.address, timeout_s=5) as connection:
        with pytest.raises(WireEncodeError):
            connection.exec_sql(0, "SELECT ?", (2**64,))
        assert connection.leader().node_id == 1
    peer.join()
    assert peer.requests == [wire.LeaderRequest()]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("answer, error", [
    (b"", ConnectionBroken),                                              # closed before answering
    (LEADER_ANSWER[:12], ConnectionBroken),                               # closed mid-answer
    (_header(1, 42) + bytes(8), WireProtocolError),                       # unknown response type
    (encode_response(wire.EmptyResponse()), WireProtocolError),           # the wrong answer
    (_header(2**20, ResponseType.FILES), WireProtocolError),              # above message_bytes_max
    (None, ConnectionBroken),                                             # no answer before the deadline
])
def test_a_broken_exchange_closes_the_connection(answer, error):
    peer = ScriptedPeer([answer])
    connection = Connection.connect(peer.address, timeout_s=0.5, message_bytes_max=4096)
    started = time.monotonic()
    with pytest.raises(error):
        connection.leader()
    assert time.monotonic() - started < 3
    assert connection.closed
    with pytest.raises(ConnectionBroken):
        connection.leader()
    peer.join()


@pytest.mark.timeout(30)
def test_rows_batches_are_merged_and_a_changed_column_list_is_refused():
    builder = RowsBatchBuilder(("n",), batch_bytes=64)
    messages = b""
    for n in range(20):
        if builder.is_full:
            messages += builder.finish(done=False)
        builder.append((n,))
    messages += builder.finish(done=True)
    changed = (encode_response(RowsResponse(columns=("n",), rows=((1,),), more=True))
               + encode_response(RowsResponse(columns=("m",), rows=((2,),))))
    peer = ScriptedPeer([messages, changed])
    with Connection.connect(peer.address, timeout_s=5) as connection:
        assert connection.query_sql(0, "SELECT n").rows == tuple((n,) for n in range(20))
        with pytest.raises(WireProtocolError, match="changed the columns"):
            connection.query_sql(0, "SELECT n")
        assert connection.closed
    peer.join()


@pytest.mark.timeout(30)
def test_the_asyncio_connection_closes_on_a_deadline():
    peer = ScriptedPeer([LEADER_ANSWER, None])

    async def scenario():
        connection = await AsyncConnection.connect(peer.address, timeout_s=0.5)
        assert (await connection.leader()).node_id == 1
        with pytest.raises(ConnectionBroken):
            await connection.leader()
        assert connection.closed
        await connection.wait_closed()

    asyncio.run(scenario())
    peer.join()


def test_node_addresses():
    assert parse_address("127.0.0.1:9001") == ("127.0.0.1", 9001)
    assert parse_address("[::1]:9001") == ("::1", 9001)
    for bad in ("nohost", ":9001", "host:", "host:port", "host:70000", "host:0"):
        with pytest.raises(ValueError, match="not a node address"):
            parse_address(bad)
