"""dqlite's client wire protocol v1: every request and response as a frozen value, and
the pure codec between those values and bytes, in both directions.

Theory of operation
-------------------
A connection starts with one 8-byte word, the protocol version (`PROTOCOL_VERSION`,
1). After it, both sides exchange messages: an 8-byte header (`words` u32 = body length
in 8-byte words, `type` u8, `schema` u8, two unused bytes) followed by the body. Every
field of a body is aligned to 8 bytes (see /work/shared/WIRE.md).

- `encode_request` / `encode_response` turn a message value into the bytes of one
  complete message (header included). The client encodes requests, the server
  responses.
- `FrameReader` is the streaming half: it is fed bytes as they arrive and hands out
  complete `Frame`s. It reads the header first and refuses a frame whose announced
  body exceeds `message_bytes_max` before buffering any of it; it never allocates
  according to an announced length, only for bytes actually received.
  `RequestReader` (server side) and `ResponseReader` (client side) also reject unknown
  type codes at the header and decode the frame into a message value.
- `decode_request` / `decode_response` decode one frame's body. Every count read from
  the wire is checked against the bytes left in the body before anything is looped
  over or allocated; text must be NUL-terminated valid UTF-8; a body must be consumed
  exactly. Any violation is a `WireProtocolError`, never another exception.
- A result set larger than one batch travels as several ROWS messages: each repeats
  the column names and ends with `ROWS_PART` (more follows, sent by the server on its
  own) or `ROWS_DONE`. `RowsBatchBuilder` cuts batches the way dqlite does (once a
  message reaches `ROWS_BATCH_BYTES`).

Three kinds of error: `WireProtocolError` for bytes a peer sent that break the protocol
(the connection cannot be trusted after it); `WireEncodeError` (a ValueError) for a
value the caller asked to encode that the protocol cannot carry (an integer out of
int64 range, a text holding NUL, an unsupported Python type); everything else is a bug.

Values
------
Python values map to wire types: int -> INTEGER, float -> FLOAT, str -> TEXT,
bytes -> BLOB, None -> NULL, bool -> BOOLEAN, `UnixTime` -> UNIXTIME, `Iso8601` ->
ISO8601. Decoding gives the same Python types back (BLOB as bytes, BOOLEAN as bool).
Converting UNIXTIME / ISO8601 to `datetime` is left to the layer above. On the server,
`column_value` applies dqlite's column conventions (DATETIME / DATE / TIMESTAMP and
BOOLEAN declared types).

Where WIRE.md and the real dqlite differ, or where raftlite chooses
------------------------------------------------------------------
Read in dqlite 1.11.1's and current dqlite's sources and checked live against Debian's
dqlite 1.11.1 (libdqlite0 1.11.1-1, go-dqlite 1.11.5), see
tests/test_wire_against_dqlite.py:
- Every ROWS batch, not only the first, repeats the column count and names (dqlite's
  `query__batch` writes them each time); a batch may hold zero rows (dqlite cuts a
  batch on size before it knows whether another row exists).
- dqlite 1.11.1 refuses a QUERY_SQL whose statement has no result columns (a write):
  FAILURE code 1 "not an error" -- checked live; WIRE.md's "answers ROWS with no
  columns" holds for newer dqlite only. The codec carries ROWS with zero columns.
- dqlite decodes a NULL in a BOOLEAN column as BOOLEAN 0 (false), losing the NULL;
  `column_value` sends NULL there instead. A REAL or BLOB in a DATETIME / DATE /
  TIMESTAMP / BOOLEAN column makes dqlite assert (crash); `column_value` sends it with
  its own storage type.
- UNIXTIME (9) is not accepted as a parameter by dqlite (neither 1.11.1 nor current;
  1.11.1 answers FAILURE 1005 "not an error", live); this codec carries it both ways.
- A NULL in a DATETIME column comes back as ISO8601 "" (live), as WIRE.md says.
- Schema 1 of EXEC / QUERY / EXEC_SQL / QUERY_SQL (a 4-byte parameter count) exists in
  dqlite >= 1.16 only; 1.11.1 ignores the schema byte and would misread it. The encoder
  uses schema 0 up to 255 parameters, schema 1 above.
- Schema 1 of PREPARE (dqlite >= 1.17) allows a statement tail and adds the tail's
  offset to STMT; `PrepareRequest.with_tail_offset` / `StmtResponse.tail_offset`.
- FILES (DUMP): dqlite writes each file's bytes without padding; it relies on database
  and WAL sizes being multiples of 8 (go-dqlite reads no padding either). This encoder
  pads to 8 and the decoder skips padding, which is the same bytes for real files.
- The legacy protocol (version 0x86104dd760433fe5, whose SERVER reply has no id) is not
  supported by this codec. HEARTBEAT is decoded, but dqlite 1.11.1 never answers it and
  that connection then answers nothing more (live); an unknown request type gets no
  reply and the connection hangs open (live). raftlite should answer FAILURE or close.
- dqlite 1.11.1's DESCRIBE with a format other than 0 sends FAILURE 15 "bad format
  version" and then tries to send METADATA too, which aborts the whole process (assert
  in transport__write, live). raftlite should send FAILURE only.
- dqlite 1.11.1 answers a PREPARE of "" with FAILURE code 0 "empty statement", and a
  PREPARE of several statements with the first one (the tail is ignored).
- RESULT's last_insert_id is SQLite's signed rowid sent as u64; it is decoded signed.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
import struct

__all__ = [
    "AddRequest", "AssignRequest", "CLUSTER_FORMAT_ID_ADDRESS", "CLUSTER_FORMAT_WITH_ROLES",
    "ClientRequest", "ClusterRequest", "ConnectRequest", "DbResponse", "DescribeRequest",
    "DumpFile", "DumpRequest", "EmptyResponse", "ErrorCode", "ExecRequest", "ExecSqlRequest",
    "FailureResponse", "FilesResponse", "FinalizeRequest", "Frame", "FrameReader",
    "HEADER_BYTES", "HeartbeatRequest", "InterruptRequest", "Iso8601", "LeaderRequest",
    "MESSAGE_BYTES_MAX_DEFAULT", "MetadataResponse", "NodeInfo", "OpenRequest",
    "PROTOCOL_VERSION", "PROTOCOL_VERSION_LEGACY", "PrepareRequest", "QueryRequest",
    "QuerySqlRequest", "ROWS_BATCH_BYTES", "ROWS_DONE", "ROWS_PART", "RemoveRequest",
    "Request", "RequestReader", "RequestType", "Response", "ResponseReader", "ResponseType",
    "ResultResponse", "Role", "RowsBatchBuilder", "RowsResponse", "ServerResponse",
    "ServersResponse", "StmtResponse", "TransferRequest", "UnixTime", "Value", "ValueType",
    "WORD_BYTES", "WeightRequest", "WelcomeResponse", "WireEncodeError", "WireProtocolError",
    "column_value", "decode_handshake", "decode_request", "decode_response",
    "encode_handshake", "encode_request", "encode_response", "value_type",
]

WORD_BYTES = 8
HEADER_BYTES = 8
PROTOCOL_VERSION = 1
PROTOCOL_VERSION_LEGACY = 0x86104DD760433FE5
ROWS_DONE = 0xFFFFFFFFFFFFFFFF   # the result set is complete
ROWS_PART = 0xEEEEEEEEEEEEEEEE   # this batch is over; the server sends the next on its own
ROWS_BATCH_BYTES = 4096          # dqlite cuts a ROWS message once it reaches a memory page
# A message larger than this is refused at its header. DUMP answers carry whole database
# files, so a client that dumps big databases raises it.
MESSAGE_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
CLUSTER_FORMAT_ID_ADDRESS = 0
CLUSTER_FORMAT_WITH_ROLES = 1

_WORDS_MAX = 0xFFFFFFFF
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_UINT32_MAX = (1 << 32) - 1
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32_PAIR = struct.Struct("<II")
_HEADER = struct.Struct("<IBBH")


class RequestType(IntEnum):
    LEADER = 0
    CLIENT = 1
    HEARTBEAT = 2
    OPEN = 3
    PREPARE = 4
    EXEC = 5
    QUERY = 6
    FINALIZE = 7
    EXEC_SQL = 8
    QUERY_SQL = 9
    INTERRUPT = 10
    CONNECT = 11
    ADD = 12
    ASSIGN = 13
    REMOVE = 14
    DUMP = 15
    CLUSTER = 16
    TRANSFER = 17
    DESCRIBE = 18
    WEIGHT = 19


class ResponseType(IntEnum):
    FAILURE = 0
    SERVER = 1
    WELCOME = 2
    SERVERS = 3
    DB = 4
    STMT = 5
    RESULT = 6
    ROWS = 7
    EMPTY = 8
    FILES = 9
    METADATA = 10


class ValueType(IntEnum):
    INTEGER = 1
    FLOAT = 2
    TEXT = 3
    BLOB = 4
    NULL = 5
    UNIXTIME = 9
    ISO8601 = 10
    BOOLEAN = 11


class Role(IntEnum):
    VOTER = 0
    STANDBY = 1
    SPARE = 2


class ErrorCode(IntEnum):
    """Codes of FAILURE responses that drivers act on (SQLite's own codes pass through)."""

    ERROR = 1              # SQLITE_ERROR
    BUSY = 5               # SQLITE_BUSY
    NOT_FOUND = 12         # SQLITE_NOTFOUND: no database opened, no such statement
    PROTOCOL = 1001        # DQLITE_PROTO
    PARSE = 1005           # DQLITE_PARSE: a request body that does not decode
    NOT_LEADER = 10250     # SQLITE_IOERR | (40 << 8)
    LEADERSHIP_LOST = 10506  # SQLITE_IOERR | (41 << 8): the outcome is unknown


class WireProtocolError(Exception):
    """Bytes from the peer that break the protocol. The stream cannot be resynchronized:
    the connection is to be closed (or answered with FAILURE `code`, then closed)."""

    def __init__(self, message: str, *, code: int = ErrorCode.PARSE) -> None:
        super().__init__(message)
        self.code = int(code)


class WireEncodeError(ValueError):
    """A value the protocol cannot carry (out of range, NUL in text, unsupported type)."""


# -- values ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UnixTime:
    """A UNIXTIME value: seconds since the epoch (an INTEGER in a DATETIME-like column)."""

    seconds: int


@dataclass(frozen=True, slots=True)
class Iso8601:
    """An ISO8601 value: a date-time text (a TEXT or NULL in a DATETIME-like column;
    NULL travels as the empty text)."""

    text: str


Value = int | float | str | bytes | None | bool | UnixTime | Iso8601

_VALUE_TYPES = frozenset(int(code) for code in ValueType)
_TIME_DECLARED_TYPES = frozenset({"DATETIME", "DATE", "TIMESTAMP"})


def value_type(value: object) -> ValueType:
    """The wire type a Python value travels as; WireEncodeError for any other type."""
    match value:
        case bool():
            return ValueType.BOOLEAN
        case int():
            return ValueType.INTEGER
        case float():
            return ValueType.FLOAT
        case str():
            return ValueType.TEXT
        case bytes() | bytearray() | memoryview():
            return ValueType.BLOB
        case None:
            return ValueType.NULL
        case UnixTime():
            return ValueType.UNIXTIME
        case Iso8601():
            return ValueType.ISO8601
    raise WireEncodeError(f"a value of type {type(value).__name__} cannot be sent (use int, float, "
                          "str, bytes, None, bool, UnixTime or Iso8601)")


def column_value(value: int | float | str | bytes | None, declared_type: str | None) -> Value:
    """The value a server sends for a column value read from SQLite, under dqlite's
    conventions: in a column declared DATETIME / DATE / TIMESTAMP an integer is
    UNIXTIME, a text ISO8601 and NULL the empty ISO8601; in a column declared BOOLEAN an
    integer is BOOLEAN. Unlike dqlite (which asserts, or turns NULL into false), any other
    storage type in such a column keeps its own type."""
    if declared_type is None:
        return value
    declared = declared_type.upper()
    if declared in _TIME_DECLARED_TYPES:
        match value:
            case bool():
                return value
            case int():
                return UnixTime(value)
            case str():
                return Iso8601(value)
            case None:
                return Iso8601("")
    elif declared == "BOOLEAN" and isinstance(value, int) and not isinstance(value, bool):
        return value != 0
    return value


# -- messages --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderRequest:
    """Who is the leader? -> ServerResponse."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequest:
    """Register a client -> WelcomeResponse."""

    client_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatRequest:
    """Legacy keep-alive; dqlite 1.11 ignores it and sends nothing back."""

    timestamp: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenRequest:
    """Open (create if missing) a database on this connection -> DbResponse."""

    name: str
    flags: int = 0   # ignored by dqlite
    vfs: str = ""    # ignored by dqlite


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareRequest:
    """Prepare one statement -> StmtResponse. `with_tail_offset` (schema 1, dqlite >=
    1.17) accepts SQL after the first statement and asks for its offset."""

    db_id: int
    sql: str
    with_tail_offset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecRequest:
    """Run a prepared statement -> ResultResponse."""

    db_id: int
    stmt_id: int
    params: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryRequest:
    """Run a prepared statement that returns rows -> RowsResponse (one or more)."""

    db_id: int
    stmt_id: int
    params: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalizeRequest:
    """Forget a prepared statement -> EmptyResponse."""

    db_id: int
    stmt_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecSqlRequest:
    """Run SQL text (all its statements) -> ResultResponse."""

    db_id: int
    sql: str
    params: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class QuerySqlRequest:
    """Run SQL text that returns rows -> RowsResponse (one or more)."""

    db_id: int
    sql: str
    params: tuple[Value, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class InterruptRequest:
    """Stop the query whose batches are being sent -> (rest of its ROWS, then) EmptyResponse."""

    db_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequest:
    """dqlite's node-to-node raft connection; not a client request."""

    node_id: int
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddRequest:
    """Add a node to the cluster, as a spare -> EmptyResponse."""

    node_id: int
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignRequest:
    """Give a node a role; no role is the old PROMOTE (to voter) -> EmptyResponse."""

    node_id: int
    role: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveRequest:
    """Remove a node from the cluster -> EmptyResponse."""

    node_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DumpRequest:
    """The files of a database (main file and WAL) -> FilesResponse."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterRequest:
    """The cluster's nodes -> ServersResponse (format 1 includes roles)."""

    format: int = CLUSTER_FORMAT_WITH_ROLES


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferRequest:
    """Transfer leadership to a node (0: let the leader pick a voter) -> EmptyResponse."""

    node_id: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeRequest:
    """This node's failure domain and weight -> MetadataResponse."""

    format: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightRequest:
    """Set this node's weight -> EmptyResponse."""

    weight: int


Request = (
    LeaderRequest | ClientRequest | HeartbeatRequest | OpenRequest | PrepareRequest | ExecRequest
    | QueryRequest | FinalizeRequest | ExecSqlRequest | QuerySqlRequest | InterruptRequest
    | ConnectRequest | AddRequest | AssignRequest | RemoveRequest | DumpRequest | ClusterRequest
    | TransferRequest | DescribeRequest | WeightRequest
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureResponse:
    code: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerResponse:
    """The leader as this node knows it; node_id 0 and address "" when it knows none."""

    node_id: int
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WelcomeResponse:
    heartbeat_timeout_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    node_id: int
    address: str
    role: int | None = None   # None in a format-0 SERVERS answer


@dataclass(frozen=True, slots=True, kw_only=True)
class ServersResponse:
    """All nodes carry a role (format 1) or none does (format 0)."""

    nodes: tuple[NodeInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DbResponse:
    db_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StmtResponse:
    db_id: int
    stmt_id: int
    params_count: int
    tail_offset: int | None = None  # only in answer to PREPARE schema 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultResponse:
    last_insert_id: int
    rows_affected: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RowsResponse:
    """One batch of a result set; `more` is True when another batch follows."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...]
    more: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EmptyResponse:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class DumpFile:
    name: str
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class FilesResponse:
    files: tuple[DumpFile, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataResponse:
    failure_domain: int
    weight: int


Response = (
    FailureResponse | ServerResponse | WelcomeResponse | ServersResponse | DbResponse | StmtResponse
    | ResultResponse | RowsResponse | EmptyResponse | FilesResponse | MetadataResponse
)


# -- encoding --------------------------------------------------------------------------

def _padding(length: int) -> int:
    return -length % WORD_BYTES


class _BodyWriter:
    """Appends 8-byte-aligned fields to a message body."""

    __slots__ = ("parts", "length")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.length = 0

    def raw(self, data: bytes) -> None:
        self.parts.append(data)
        self.length += len(data)

    def uint64(self, value: int, field: str) -> None:
        if not 0 <= value <= _UINT64_MAX:
            raise WireEncodeError(f"{field} {value} is outside 0..2**64-1")
        self.raw(_U64.pack(value))

    def int64(self, value: int, field: str) -> None:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise WireEncodeError(f"{field} {value} is outside the int64 range")
        self.raw(_I64.pack(value))

    def uint32_pair(self, first: int, second: int, field: str) -> None:
        if not (0 <= first <= _UINT32_MAX and 0 <= second <= _UINT32_MAX):
            raise WireEncodeError(f"{field} ({first}, {second}) is outside 0..2**32-1")
        self.raw(_U32_PAIR.pack(first, second))

    def double(self, value: float) -> None:
        self.raw(_F64.pack(value))

    def text(self, value: str, field: str) -> None:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise WireEncodeError(f"{field} is not encodable as UTF-8: {error.reason}") from None
        if b"\0" in data:
            raise WireEncodeError(f"{field} contains a NUL character, which the protocol cannot carry")
        self.raw(data + b"\0" * (1 + _padding(len(data) + 1)))

    def blob(self, value: bytes) -> None:
        data = bytes(value)
        self.uint64(len(data), "blob length")
        self.raw(data + b"\0" * _padding(len(data)))

    def value(self, value: Value, code: ValueType) -> None:
        match code:
            case ValueType.INTEGER:
                self.int64(value, "integer")  # type: ignore[arg-type]
            case ValueType.FLOAT:
                self.double(value)  # type: ignore[arg-type]
            case ValueType.TEXT:
                self.text(value, "text value")  # type: ignore[arg-type]
            case ValueType.BLOB:
                self.blob(value)  # type: ignore[arg-type]
            case ValueType.NULL:
                self.raw(bytes(WORD_BYTES))
            case ValueType.UNIXTIME:
                self.int64(value.seconds, "unixtime")  # type: ignore[union-attr]
            case ValueType.ISO8601:
                self.text(value.text, "iso8601 value")  # type: ignore[union-attr]
            case ValueType.BOOLEAN:
                self.raw(_U64.pack(1 if value else 0))

    def params(self, params: Sequence[Value]) -> int:
        """Writes a parameter tuple; returns the schema it needs (0: u8 count, 1: u32)."""
        if not params:
            return 0
        codes = [value_type(value) for value in params]
        if len(codes) <= 0xFF:
            schema, count = 0, bytes([len(codes)])
        elif len(codes) <= _UINT32_MAX:
            schema, count = 1, len(codes).to_bytes(4, "little")
        else:  # pragma: no cover - needs 4 billion parameters
            raise WireEncodeError("too many parameters")
        header = count + bytes(codes)
        self.raw(header + b"\0" * _padding(len(header)))
        for value, code in zip(params, codes):
            self.value(value, code)
        return schema

    def row(self, row: Sequence[Value]) -> None:
        codes = [value_type(value) for value in row]
        header = bytearray((len(codes) + 1) // 2)
        for index, code in enumerate(codes):
            header[index // 2] |= code << (4 * (index % 2))
        self.raw(bytes(header) + b"\0" * _padding(len(header)))
        for value, code in zip(row, codes):
            self.value(value, code)

    def message(self, message_type: int, schema: int = 0) -> bytes:
        words = self.length // WORD_BYTES
        if words > _WORDS_MAX:
            raise WireEncodeError(f"a message of {self.length} bytes is too large for the protocol")
        return _HEADER.pack(words, message_type, schema, 0) + b"".join(self.parts)


def encode_handshake(version: int = PROTOCOL_VERSION) -> bytes:
    """The first word a client sends."""
    return _U64.pack(version)


def decode_handshake(data: bytes) -> int:
    """The protocol version in a connection's first 8 bytes."""
    if len(data) != WORD_BYTES:
        raise WireProtocolError(f"a handshake is {WORD_BYTES} bytes, got {len(data)}", code=ErrorCode.PROTOCOL)
    return _U64.unpack(data)[0]


def encode_request(request: Request) -> bytes:
    """The bytes of one complete request message (header included)."""
    body = _BodyWriter()
    schema = 0
    match request:
        case LeaderRequest():
            body.uint64(0, "unused")
            kind = RequestType.LEADER
        case ClientRequest(client_id=client_id):
            body.uint64(client_id, "client id")
            kind = RequestType.CLIENT
        case HeartbeatRequest(timestamp=timestamp):
            body.uint64(timestamp, "timestamp")
            kind = RequestType.HEARTBEAT
        case OpenRequest(name=name, flags=flags, vfs=vfs):
            body.text(name, "database name")
            body.uint64(flags, "flags")
            body.text(vfs, "vfs")
            kind = RequestType.OPEN
        case PrepareRequest(db_id=db_id, sql=sql, with_tail_offset=with_tail_offset):
            body.uint64(db_id, "db id")
            body.text(sql, "sql")
            schema = 1 if with_tail_offset else 0
            kind = RequestType.PREPARE
        case ExecRequest(db_id=db_id, stmt_id=stmt_id, params=params):
            body.uint32_pair(db_id, stmt_id, "db id, statement id")
            schema = body.params(params)
            kind = RequestType.EXEC
        case QueryRequest(db_id=db_id, stmt_id=stmt_id, params=params):
            body.uint32_pair(db_id, stmt_id, "db id, statement id")
            schema = body.params(params)
            kind = RequestType.QUERY
        case FinalizeRequest(db_id=db_id, stmt_id=stmt_id):
            body.uint32_pair(db_id, stmt_id, "db id, statement id")
            kind = RequestType.FINALIZE
        case ExecSqlRequest(db_id=db_id, sql=sql, params=params):
            body.uint64(db_id, "db id")
            body.text(sql, "sql")
            schema = body.params(params)
            kind = RequestType.EXEC_SQL
        case QuerySqlRequest(db_id=db_id, sql=sql, params=params):
            body.uint64(db_id, "db id")
            body.text(sql, "sql")
            schema = body.params(params)
            kind = RequestType.QUERY_SQL
        case InterruptRequest(db_id=db_id):
            body.uint64(db_id, "db id")
            kind = RequestType.INTERRUPT
        case ConnectRequest(node_id=node_id, address=address):
            body.uint64(node_id, "node id")
            body.text(address, "address")
            kind = RequestType.CONNECT
        case AddRequest(node_id=node_id, address=address):
            body.uint64(node_id, "node id")
            body.text(address, "address")
            kind = RequestType.ADD
        case AssignRequest(node_id=node_id, role=role):
            body.uint64(node_id, "node id")
            if role is not None:
                body.uint64(role, "role")
            kind = RequestType.ASSIGN
        case RemoveRequest(node_id=node_id):
            body.uint64(node_id, "node id")
            kind = RequestType.REMOVE
        case DumpRequest(name=name):
            body.text(name, "database name")
            kind = RequestType.DUMP
        case ClusterRequest(format=cluster_format):
            body.uint64(cluster_format, "format")
            kind = RequestType.CLUSTER
        case TransferRequest(node_id=node_id):
            body.uint64(node_id, "node id")
            kind = RequestType.TRANSFER
        case DescribeRequest(format=describe_format):
            body.uint64(describe_format, "format")
            kind = RequestType.DESCRIBE
        case WeightRequest(weight=weight):
            body.uint64(weight, "weight")
            kind = RequestType.WEIGHT
        case _:
            raise WireEncodeError(f"not a request: {request!r}")
    return body.message(kind, schema)


def _rows_body(body: _BodyWriter, columns: Sequence[str]) -> None:
    body.uint64(len(columns), "column count")
    for column in columns:
        body.text(column, "column name")


def encode_response(response: Response) -> bytes:
    """The bytes of one complete response message (header included)."""
    body = _BodyWriter()
    schema = 0
    match response:
        case FailureResponse(code=code, message=message):
            body.uint64(code, "failure code")
            body.text(message, "failure message")
            kind = ResponseType.FAILURE
        case ServerResponse(node_id=node_id, address=address):
            body.uint64(node_id, "node id")
            body.text(address, "address")
            kind = ResponseType.SERVER
        case WelcomeResponse(heartbeat_timeout_ms=heartbeat_timeout_ms):
            body.uint64(heartbeat_timeout_ms, "heartbeat timeout")
            kind = ResponseType.WELCOME
        case ServersResponse(nodes=nodes):
            with_roles = [node.role is not None for node in nodes]
            if any(with_roles) and not all(with_roles):
                raise WireEncodeError("either every node of a SERVERS answer has a role or none has")
            body.uint64(len(nodes), "node count")
            for node in nodes:
                body.uint64(node.node_id, "node id")
                body.text(node.address, "address")
                if node.role is not None:
                    body.uint64(node.role, "role")
            kind = ResponseType.SERVERS
        case DbResponse(db_id=db_id):
            body.uint32_pair(db_id, 0, "db id")
            kind = ResponseType.DB
        case StmtResponse(db_id=db_id, stmt_id=stmt_id, params_count=params_count, tail_offset=tail_offset):
            body.uint32_pair(db_id, stmt_id, "db id, statement id")
            body.uint64(params_count, "parameter count")
            if tail_offset is not None:
                body.uint64(tail_offset, "tail offset")
                schema = 1
            kind = ResponseType.STMT
        case ResultResponse(last_insert_id=last_insert_id, rows_affected=rows_affected):
            body.int64(last_insert_id, "last insert id")
            body.uint64(rows_affected, "rows affected")
            kind = ResponseType.RESULT
        case RowsResponse(columns=columns, rows=rows, more=more):
            _rows_body(body, columns)
            for row in rows:
                if len(row) != len(columns):
                    raise WireEncodeError(f"a row of {len(row)} values under {len(columns)} columns")
                if not columns:
                    raise WireEncodeError("a result without columns has no rows")
                body.row(row)
            body.raw(_U64.pack(ROWS_PART if more else ROWS_DONE))
            kind = ResponseType.ROWS
        case EmptyResponse():
            body.uint64(0, "unused")
            kind = ResponseType.EMPTY
        case FilesResponse(files=files):
            body.uint64(len(files), "file count")
            for file in files:
                body.text(file.name, "file name")
                body.blob(file.data)
            kind = ResponseType.FILES
        case MetadataResponse(failure_domain=failure_domain, weight=weight):
            body.uint64(failure_domain, "failure domain")
            body.uint64(weight, "weight")
            kind = ResponseType.METADATA
        case _:
            raise WireEncodeError(f"not a response: {response!r}")
    return body.message(kind, schema)


class RowsBatchBuilder:
    """Builds the ROWS messages of one result set on the server, batch by batch.

    Append rows while `is_full` is False; then `finish(done=...)` returns the complete
    message and starts the next batch (which repeats the column names, as dqlite does).
    A batch is full once it reaches `batch_bytes` (header included), dqlite's rule, so a
    message exceeds it by at most one row.
    """

    def __init__(self, columns: Sequence[str], *, batch_bytes: int = ROWS_BATCH_BYTES) -> None:
        if batch_bytes < HEADER_BYTES:
            raise ValueError(f"batch_bytes must be at least {HEADER_BYTES}")
        self.columns = tuple(columns)
        self.batch_bytes = batch_bytes
        self.rows_in_batch = 0
        self._body = _BodyWriter()
        _rows_body(self._body, self.columns)

    @property
    def is_full(self) -> bool:
        return HEADER_BYTES + self._body.length >= self.batch_bytes

    def append(self, row: Sequence[Value]) -> None:
        if len(row) != len(self.columns) or not self.columns:
            raise WireEncodeError(f"a row of {len(row)} values under {len(self.columns)} columns")
        self._body.row(row)
        self.rows_in_batch += 1

    def finish(self, *, done: bool) -> bytes:
        """The batch as a complete ROWS message; `done` False announces another batch."""
        self._body.raw(_U64.pack(ROWS_DONE if done else ROWS_PART))
        message = self._body.message(ResponseType.ROWS)
        self._body = _BodyWriter()
        _rows_body(self._body, self.columns)
        self.rows_in_batch = 0
        return message


# -- decoding --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One message as read off the wire: its header fields and raw body."""

    type: int
    schema: int
    body: bytes


class _BodyReader:
    """Reads 8-byte-aligned fields from a message body, checking every length first."""

    __slots__ = ("data", "offset", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.offset = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset

    def fail(self, reason: str) -> WireProtocolError:
        return WireProtocolError(f"{self.what}: {reason} (at byte {self.offset} of {len(self.data)})")

    def need(self, length: int, field: str) -> None:
        if length > self.remaining:
            raise self.fail(f"truncated {field}: needs {length} bytes, {self.remaining} left")

    def uint64(self, field: str) -> int:
        self.need(WORD_BYTES, field)
        value = _U64.unpack_from(self.data, self.offset)[0]
        self.offset += WORD_BYTES
        return value

    def int64(self, field: str) -> int:
        self.need(WORD_BYTES, field)
        value = _I64.unpack_from(self.data, self.offset)[0]
        self.offset += WORD_BYTES
        return value

    def peek_uint64(self) -> int | None:
        if self.remaining < WORD_BYTES:
            return None
        return _U64.unpack_from(self.data, self.offset)[0]

    def uint32_pair(self, field: str) -> tuple[int, int]:
        self.need(WORD_BYTES, field)
        values = _U32_PAIR.unpack_from(self.data, self.offset)
        self.offset += WORD_BYTES
        return values

    def double(self, field: str) -> float:
        self.need(WORD_BYTES, field)
        value = _F64.unpack_from(self.data, self.offset)[0]
        self.offset += WORD_BYTES
        return value

    def raw(self, length: int, field: str) -> bytes:
        self.need(length, field)
        data = self.data[self.offset:self.offset + length]
        self.offset += length
        return data

    def text(self, field: str) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise self.fail(f"truncated {field}: no terminating NUL")
        raw = self.data[self.offset:end]
        padded = end + 1 - self.offset
        padded += _padding(padded)
        self.need(padded, field)
        self.offset += padded
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.fail(f"{field} is not valid UTF-8 ({error.reason})") from None

    def blob(self, field: str) -> bytes:
        length = self.uint64(f"{field} length")
        self.need(length, field)
        data = self.raw(length, field)
        # Skip padding when present: real database and WAL files are multiples of 8 and
        # dqlite writes none (see the module docstring).
        self.offset += min(_padding(length), self.remaining)
        return data

    def value(self, code: int, field: str) -> Value:
        match code:
            case ValueType.INTEGER:
                return self.int64(field)
            case ValueType.FLOAT:
                return self.double(field)
            case ValueType.TEXT:
                return self.text(field)
            case ValueType.BLOB:
                return self.blob(field)
            case ValueType.NULL:
                self.uint64(field)  # dqlite ignores the word's content
                return None
            case ValueType.UNIXTIME:
                return UnixTime(self.int64(field))
            case ValueType.ISO8601:
                return Iso8601(self.text(field))
            case ValueType.BOOLEAN:
                return self.uint64(field) != 0
        raise self.fail(f"bad value type code {code} for {field}")

    def params(self, schema: int) -> tuple[Value, ...]:
        if self.remaining == 0:
            return ()
        if schema == 0:
            count = self.raw(1, "parameter count")[0]
            count_bytes = 1
        elif schema == 1:
            count = int.from_bytes(self.raw(4, "parameter count"), "little")
            count_bytes = 4
        else:
            raise self.fail(f"unknown parameter schema {schema}")
        header_bytes = count + _padding(count_bytes + count)
        self.need(header_bytes, "parameter types")
        codes = self.raw(count, "parameter types")
        self.offset += header_bytes - count
        # Every value takes at least one word: a count the body cannot hold is refused
        # before looping over it.
        self.need(count * WORD_BYTES, f"{count} parameter values")
        return tuple(self.value(code, f"parameter {index + 1}") for index, code in enumerate(codes))

    def rows(self) -> tuple[tuple[str, ...], tuple[tuple[Value, ...], ...], bool]:
        column_count = self.uint64("column count")
        self.need(column_count * WORD_BYTES, f"{column_count} column names")
        columns = tuple(self.text(f"column name {index + 1}") for index in range(column_count))
        header_bytes = (column_count + 1) // 2
        header_bytes += _padding(header_bytes)
        rows: list[tuple[Value, ...]] = []
        while True:
            marker = self.peek_uint64()
            if marker is None:
                raise self.fail("truncated rows: no end marker")
            if marker == ROWS_DONE or marker == ROWS_PART:
                self.offset += WORD_BYTES
                return columns, tuple(rows), marker == ROWS_PART
            if column_count == 0:
                raise self.fail(f"expected an end marker after zero columns, got {marker:#x}")
            header = self.raw(header_bytes, "row header")
            self.need(column_count * WORD_BYTES, "row values")
            row = []
            for index in range(column_count):
                code = (header[index // 2] >> (4 * (index % 2))) & 0x0F
                row.append(self.value(code, f"row {len(rows) + 1} column {index + 1}"))
            rows.append(tuple(row))

    def role(self, field: str) -> int:
        return self.uint64(field)

    def end(self) -> None:
        if self.remaining:
            raise self.fail(f"{self.remaining} unexpected trailing bytes")


def _request_name(code: int) -> str:
    try:
        return RequestType(code).name
    except ValueError:
        return f"request type {code}"


def _response_name(code: int) -> str:
    try:
        return ResponseType(code).name
    except ValueError:
        return f"response type {code}"


_PARAMS_SCHEMAS = frozenset({0, 1})


def decode_request(frame: Frame) -> Request:
    """The request in a frame; WireProtocolError when it does not decode."""
    reader = _BodyReader(frame.body, _request_name(frame.type))
    kind = frame.type
    schema = frame.schema
    params_request = kind in (RequestType.EXEC, RequestType.QUERY, RequestType.EXEC_SQL, RequestType.QUERY_SQL,
                              RequestType.PREPARE)
    if schema != 0 and not (params_request and schema in _PARAMS_SCHEMAS):
        raise reader.fail(f"unknown schema version {schema}")
    request: Request
    match kind:
        case RequestType.LEADER:
            reader.uint64("unused")
            request = LeaderRequest()
        case RequestType.CLIENT:
            request = ClientRequest(client_id=reader.uint64("client id"))
        case RequestType.HEARTBEAT:
            request = HeartbeatRequest(timestamp=reader.uint64("timestamp"))
        case RequestType.OPEN:
            name = reader.text("database name")
            flags = reader.uint64("flags")
            request = OpenRequest(name=name, flags=flags, vfs=reader.text("vfs"))
        case RequestType.PREPARE:
            db_id = reader.uint64("db id")
            request = PrepareRequest(db_id=db_id, sql=reader.text("sql"), with_tail_offset=schema == 1)
        case RequestType.EXEC | RequestType.QUERY:
            db_id, stmt_id = reader.uint32_pair("db id, statement id")
            params = reader.params(schema)
            request_class = ExecRequest if kind == RequestType.EXEC else QueryRequest
            request = request_class(db_id=db_id, stmt_id=stmt_id, params=params)
        case RequestType.FINALIZE:
            db_id, stmt_id = reader.uint32_pair("db id, statement id")
            request = FinalizeRequest(db_id=db_id, stmt_id=stmt_id)
        case RequestType.EXEC_SQL | RequestType.QUERY_SQL:
            db_id = reader.uint64("db id")
            sql = reader.text("sql")
            params = reader.params(schema)
            request_class = ExecSqlRequest if kind == RequestType.EXEC_SQL else QuerySqlRequest
            request = request_class(db_id=db_id, sql=sql, params=params)
        case RequestType.INTERRUPT:
            request = InterruptRequest(db_id=reader.uint64("db id"))
        case RequestType.CONNECT | RequestType.ADD:
            node_id = reader.uint64("node id")
            address = reader.text("address")
            request_class = ConnectRequest if kind == RequestType.CONNECT else AddRequest
            request = request_class(node_id=node_id, address=address)
        case RequestType.ASSIGN:
            node_id = reader.uint64("node id")
            role = reader.role("role") if reader.remaining else None
            request = AssignRequest(node_id=node_id, role=role)
        case RequestType.REMOVE:
            request = RemoveRequest(node_id=reader.uint64("node id"))
        case RequestType.DUMP:
            request = DumpRequest(name=reader.text("database name"))
        case RequestType.CLUSTER:
            request = ClusterRequest(format=reader.uint64("format"))
        case RequestType.TRANSFER:
            request = TransferRequest(node_id=reader.uint64("node id"))
        case RequestType.DESCRIBE:
            request = DescribeRequest(format=reader.uint64("format"))
        case RequestType.WEIGHT:
            request = WeightRequest(weight=reader.uint64("weight"))
        case _:
            raise WireProtocolError(f"unknown request type {kind}", code=ErrorCode.PROTOCOL)
    reader.end()
    return request


def decode_response(frame: Frame, *, cluster_format: int = CLUSTER_FORMAT_WITH_ROLES) -> Response:
    """The response in a frame; WireProtocolError when it does not decode.

    A SERVERS body does not say whether it carries roles: `cluster_format` is the format
    the CLUSTER request asked for.
    """
    reader = _BodyReader(frame.body, _response_name(frame.type))
    kind = frame.type
    if frame.schema != 0 and not (kind == ResponseType.STMT and frame.schema == 1):
        raise reader.fail(f"unknown schema version {frame.schema}")
    response: Response
    match kind:
        case ResponseType.FAILURE:
            code = reader.uint64("failure code")
            response = FailureResponse(code=code, message=reader.text("failure message"))
        case ResponseType.SERVER:
            node_id = reader.uint64("node id")
            response = ServerResponse(node_id=node_id, address=reader.text("address"))
        case ResponseType.WELCOME:
            response = WelcomeResponse(heartbeat_timeout_ms=reader.uint64("heartbeat timeout"))
        case ResponseType.SERVERS:
            count = reader.uint64("node count")
            words_per_node = 3 if cluster_format == CLUSTER_FORMAT_WITH_ROLES else 2
            reader.need(count * words_per_node * WORD_BYTES, f"{count} nodes")
            nodes = []
            for index in range(count):
                node_id = reader.uint64(f"node {index + 1} id")
                address = reader.text(f"node {index + 1} address")
                role = reader.role(f"node {index + 1} role") if words_per_node == 3 else None
                nodes.append(NodeInfo(node_id=node_id, address=address, role=role))
            response = ServersResponse(nodes=tuple(nodes))
        case ResponseType.DB:
            db_id, _pad = reader.uint32_pair("db id")
            response = DbResponse(db_id=db_id)
        case ResponseType.STMT:
            db_id, stmt_id = reader.uint32_pair("db id, statement id")
            params_count = reader.uint64("parameter count")
            tail_offset = reader.uint64("tail offset") if frame.schema == 1 else None
            response = StmtResponse(db_id=db_id, stmt_id=stmt_id, params_count=params_count,
                                    tail_offset=tail_offset)
        case ResponseType.RESULT:
            last_insert_id = reader.int64("last insert id")
            response = ResultResponse(last_insert_id=last_insert_id, rows_affected=reader.uint64("rows affected"))
        case ResponseType.ROWS:
            columns, rows, more = reader.rows()
            response = RowsResponse(columns=columns, rows=rows, more=more)
        case ResponseType.EMPTY:
            reader.uint64("unused")
            response = EmptyResponse()
        case ResponseType.FILES:
            count = reader.uint64("file count")
            reader.need(count * 2 * WORD_BYTES, f"{count} files")
            files = []
            for index in range(count):
                name = reader.text(f"file {index + 1} name")
                files.append(DumpFile(name=name, data=reader.blob(f"file {index + 1} data")))
            response = FilesResponse(files=tuple(files))
        case ResponseType.METADATA:
            failure_domain = reader.uint64("failure domain")
            response = MetadataResponse(failure_domain=failure_domain, weight=reader.uint64("weight"))
        case _:
            raise WireProtocolError(f"unknown response type {kind}", code=ErrorCode.PROTOCOL)
    reader.end()
    return response


# -- streaming -------------------------------------------------------------------------

class FrameReader:
    """Turns a byte stream into frames. Feed it what the socket gives; take frames out.

    The header is checked as soon as its 8 bytes are in: an announced body larger than
    `message_bytes_max`, or (in the subclasses) an unknown type code, raises
    WireProtocolError before the reader waits for any of the body. It never allocates
    according to an announced length: memory held is what was fed and not yet taken
    out. After an error the reader stays failed, as the stream cannot be
    resynchronized. With `expect_handshake` (the accepting side), the first word is the
    protocol version, taken with `read_handshake` before any frame.
    """

    _valid_types: frozenset[int] | None = None
    _kind = "message"

    def __init__(self, *, message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT, expect_handshake: bool = False) -> None:
        if message_bytes_max < WORD_BYTES:
            raise ValueError(f"message_bytes_max must be at least {WORD_BYTES}")
        self.message_bytes_max = message_bytes_max
        self._buffer = bytearray()
        self._handshake_pending = expect_handshake
        self._header: tuple[int, int, int] | None = None  # (body bytes, type, schema)
        self._error: WireProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Adds received bytes; raises at once on a bad header among them."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        self._check_header()

    def read_handshake(self) -> int | None:
        """The protocol version (the connection's first word), once 8 bytes are in."""
        if self._error is not None:
            raise self._error
        if not self._handshake_pending:
            raise RuntimeError("this reader expects no handshake, or it was already read")
        if len(self._buffer) < WORD_BYTES:
            return None
        version = _U64.unpack_from(self._buffer, 0)[0]
        del self._buffer[:WORD_BYTES]
        self._handshake_pending = False
        self._check_header()
        return version

    def _check_header(self) -> None:
        if self._header is not None or self._handshake_pending or len(self._buffer) < HEADER_BYTES:
            return
        words, kind, schema, _unused = _HEADER.unpack_from(self._buffer, 0)
        body_bytes = words * WORD_BYTES
        if body_bytes > self.message_bytes_max:
            self._error = WireProtocolError(
                f"a {self._kind} announces {body_bytes} bytes, above the maximum of {self.message_bytes_max}",
                code=ErrorCode.PROTOCOL)
            raise self._error
        if self._valid_types is not None and kind not in self._valid_types:
            self._error = WireProtocolError(f"unknown {self._kind} type {kind}", code=ErrorCode.PROTOCOL)
            raise self._error
        self._header = (body_bytes, kind, schema)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        if self._handshake_pending:
            raise RuntimeError("read the handshake before the first frame")
        self._check_header()
        if self._header is None:
            return None
        body_bytes, kind, schema = self._header
        end = HEADER_BYTES + body_bytes
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER_BYTES:end])
        del self._buffer[:end]
        self._header = None
        return Frame(type=kind, schema=schema, body=body)

    def frames(self) -> Iterator[Frame]:
        """Every complete frame buffered now."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def _decode_failed(self, error: WireProtocolError) -> WireProtocolError:
        self._error = error
        return error


class RequestReader(FrameReader):
    """The server's reader: frames of known request types, decoded into requests."""

    _valid_types = frozenset(int(code) for code in RequestType)
    _kind = "request"

    def next_request(self) -> Request | None:
        frame = self.next_frame()
        if frame is None:
            return None
        try:
            return decode_request(frame)
        except WireProtocolError as error:
            raise self._decode_failed(error) from None


class ResponseReader(FrameReader):
    """The client's reader: frames of known response types, decoded into responses."""

    _valid_types = frozenset(int(code) for code in ResponseType)
    _kind = "response"

    def next_response(self, *, cluster_format: int = CLUSTER_FORMAT_WITH_ROLES) -> Response | None:
        frame = self.next_frame()
        if frame is None:
            return None
        try:
            return decode_response(frame, cluster_format=cluster_format)
        except WireProtocolError as error:
            raise self._decode_failed(error) from None
