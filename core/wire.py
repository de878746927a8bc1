"""dqlite's client wire protocol v1: every request and response as a frozen value, and
the pure codec between those values and bytes, in both directions.

Theory of operation
-------------------
A connection starts with one 8-byte word, the protocol version (`PROTOCOL_VERSION`,
1). After it, both sides exchange messages: an 8-byte header (`words` u32 = body length
in 8-byte words, `type` u8, `schema` u8, two unused bytes) followed by the body. Every
field of a body is aligned to 8 bytes (dqlite's description of its wire protocol,
called WIRE.md below).

- `encode_request` / `encode_response` turn a message value into the bytes of one
  complete message (header included). The client encodes requests, the server
  responses.
- The codec is table-driven: each message is described once (`_REQUESTS`,
  `_RESPONSES`: its type code, its class, the schemas it may carry, its fields in wire
  order with their kinds), and one generic encoder and one generic decoder walk the
  descriptions. A new message is a class and one description.
- `FrameReader` is the streaming half: it is fed bytes as they arrive and hands out
  complete `Frame`s. It reads the header first and refuses a frame whose announced
  body exceeds `message_bytes_max` before buffering any of it; it never allocates
  according to an announced length, only for bytes actually received. The server's
  reader may instead *skip* such a request (`skip_oversized`): it hands out an
  `OversizedRequest` in the request's place and discards its body as it arrives, so the
  stream stays in step and the connection usable (the session answers SQLITE_TOOBIG).
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
from enum import Enum, IntEnum
import struct
from typing import Any, cast

__all__ = [
    "AddRequest", "AssignRequest", "CLUSTER_FORMAT_ID_ADDRESS", "CLUSTER_FORMAT_WITH_ROLES",
    "ClientRequest", "ClusterRequest", "ConnectRequest", "DbResponse", "DescribeRequest",
    "DumpFile", "DumpRequest", "EmptyResponse", "ErrorCode", "ExecRequest", "ExecSqlRequest",
    "FailureResponse", "FilesResponse", "FinalizeRequest", "Frame", "FrameReader",
    "HEADER_BYTES", "HeartbeatRequest", "InterruptRequest", "Iso8601", "LeaderRequest",
    "MESSAGE_BYTES_MAX_DEFAULT", "MetadataResponse", "NodeInfo", "OpenRequest", "OversizedRequest",
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
    TOOBIG = 18            # SQLITE_TOOBIG: a request above the message limit
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


# -- the body of a message: writing fields ---------------------------------------------

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
        # `code` says which of Value's types `value` has; mypy cannot tie the two
        # together, hence the targeted ignores below.
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


def _rows_body(body: _BodyWriter, columns: Sequence[str]) -> None:
    body.uint64(len(columns), "column count")
    for column in columns:
        body.text(column, "column name")


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


# -- the body of a message: reading fields ---------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One message as read off the wire: its header fields and raw body."""

    type: int
    schema: int
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class OversizedRequest:
    """What a skipping `RequestReader` hands out in place of a request whose header
    announced more than its limit: the request's type and announced size (its body is
    discarded, never buffered)."""

    type: int
    body_bytes: int
    limit_bytes: int

    @property
    def type_name(self) -> str:
        return _request_name(self.type)


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


# -- message descriptions ----------------------------------------------------------------
#
# Every message is described once, in `_REQUESTS` and `_RESPONSES` below: its type code,
# its class, the header schemas it may carry, and its body's fields in wire order, each
# a kind and the attribute it holds. One generic encoder (`_encode`, writing each field
# with `_write_field`) and one generic decoder (`_decode`, `_read_field`) walk them.

class _Kind(Enum):
    U64 = "u64"                    # one word, unsigned
    I64 = "i64"                    # one word, signed
    UNUSED = "unused"              # one word, written as 0, ignored when read
    ID_PAIR = "id pair"            # two u32 in one word: `attribute`, then `second` (0 when None)
    TEXT = "text"                  # NUL-terminated UTF-8, padded to a word
    PARAMS = "params"              # statement parameters: schema 0 (u8 count) or 1 (u32 count)
    SCHEMA_FLAG = "schema flag"    # a bool in the header's schema byte (1 when true), not in the body
    SCHEMA_1_U64 = "schema 1 u64"  # one word present in schema 1 only (None otherwise)
    TRAILING_U64 = "trailing u64"  # one word ending the body when present (None when absent)
    NODES = "nodes"                # SERVERS' node list: count, then id, address and (format 1) role
    FILES = "files"                # FILES' file list: count, then name and blob
    ROWS = "rows"                  # one ROWS batch: columns, rows, end marker (`columns`, `rows`, `more`)


@dataclass(frozen=True, slots=True)
class _Field:
    kind: _Kind
    attribute: str | None = None   # the message attribute it holds (None: UNUSED, ROWS)
    label: str = ""                # names the field in error messages
    second: str | None = None      # ID_PAIR's second attribute


@dataclass(frozen=True, slots=True)
class _MessageSpec:
    code: int
    message_class: type
    fields: tuple[_Field, ...]
    schemas: frozenset[int] = frozenset({0})   # the header schema values it may carry


def _by_code(*specs: _MessageSpec) -> dict[int, _MessageSpec]:
    return {spec.code: spec for spec in specs}


_SCHEMAS_0_1 = frozenset({0, 1})
_UNUSED = _Field(_Kind.UNUSED, label="unused")
_DB_ID = _Field(_Kind.U64, "db_id", "db id")
_NODE_ID = _Field(_Kind.U64, "node_id", "node id")
_ADDRESS = _Field(_Kind.TEXT, "address", "address")
_SQL = _Field(_Kind.TEXT, "sql", "sql")
_PARAMS = _Field(_Kind.PARAMS, "params")
_STMT = _Field(_Kind.ID_PAIR, "db_id", "db id, statement id", second="stmt_id")
_FORMAT = _Field(_Kind.U64, "format", "format")

_REQUESTS = _by_code(
    _MessageSpec(RequestType.LEADER, LeaderRequest, (_UNUSED,)),
    _MessageSpec(RequestType.CLIENT, ClientRequest, (_Field(_Kind.U64, "client_id", "client id"),)),
    _MessageSpec(RequestType.HEARTBEAT, HeartbeatRequest, (_Field(_Kind.U64, "timestamp", "timestamp"),)),
    _MessageSpec(RequestType.OPEN, OpenRequest, (
        _Field(_Kind.TEXT, "name", "database name"), _Field(_Kind.U64, "flags", "flags"),
        _Field(_Kind.TEXT, "vfs", "vfs"))),
    _MessageSpec(RequestType.PREPARE, PrepareRequest,
                 (_DB_ID, _SQL, _Field(_Kind.SCHEMA_FLAG, "with_tail_offset")), _SCHEMAS_0_1),
    _MessageSpec(RequestType.EXEC, ExecRequest, (_STMT, _PARAMS), _SCHEMAS_0_1),
    _MessageSpec(RequestType.QUERY, QueryRequest, (_STMT, _PARAMS), _SCHEMAS_0_1),
    _MessageSpec(RequestType.FINALIZE, FinalizeRequest, (_STMT,)),
    _MessageSpec(RequestType.EXEC_SQL, ExecSqlRequest, (_DB_ID, _SQL, _PARAMS), _SCHEMAS_0_1),
    _MessageSpec(RequestType.QUERY_SQL, QuerySqlRequest, (_DB_ID, _SQL, _PARAMS), _SCHEMAS_0_1),
    _MessageSpec(RequestType.INTERRUPT, InterruptRequest, (_DB_ID,)),
    _MessageSpec(RequestType.CONNECT, ConnectRequest, (_NODE_ID, _ADDRESS)),
    _MessageSpec(RequestType.ADD, AddRequest, (_NODE_ID, _ADDRESS)),
    _MessageSpec(RequestType.ASSIGN, AssignRequest, (_NODE_ID, _Field(_Kind.TRAILING_U64, "role", "role"))),
    _MessageSpec(RequestType.REMOVE, RemoveRequest, (_NODE_ID,)),
    _MessageSpec(RequestType.DUMP, DumpRequest, (_Field(_Kind.TEXT, "name", "database name"),)),
    _MessageSpec(RequestType.CLUSTER, ClusterRequest, (_FORMAT,)),
    _MessageSpec(RequestType.TRANSFER, TransferRequest, (_NODE_ID,)),
    _MessageSpec(RequestType.DESCRIBE, DescribeRequest, (_FORMAT,)),
    _MessageSpec(RequestType.WEIGHT, WeightRequest, (_Field(_Kind.U64, "weight", "weight"),)),
)

_RESPONSES = _by_code(
    _MessageSpec(ResponseType.FAILURE, FailureResponse, (
        _Field(_Kind.U64, "code", "failure code"), _Field(_Kind.TEXT, "message", "failure message"))),
    _MessageSpec(ResponseType.SERVER, ServerResponse, (_NODE_ID, _ADDRESS)),
    _MessageSpec(ResponseType.WELCOME, WelcomeResponse,
                 (_Field(_Kind.U64, "heartbeat_timeout_ms", "heartbeat timeout"),)),
    _MessageSpec(ResponseType.SERVERS, ServersResponse, (_Field(_Kind.NODES, "nodes"),)),
    _MessageSpec(ResponseType.DB, DbResponse, (_Field(_Kind.ID_PAIR, "db_id", "db id"),)),
    _MessageSpec(ResponseType.STMT, StmtResponse, (
        _STMT, _Field(_Kind.U64, "params_count", "parameter count"),
        _Field(_Kind.SCHEMA_1_U64, "tail_offset", "tail offset")), _SCHEMAS_0_1),
    _MessageSpec(ResponseType.RESULT, ResultResponse, (
        _Field(_Kind.I64, "last_insert_id", "last insert id"), _Field(_Kind.U64, "rows_affected", "rows affected"))),
    _MessageSpec(ResponseType.ROWS, RowsResponse, (_Field(_Kind.ROWS),)),
    _MessageSpec(ResponseType.EMPTY, EmptyResponse, (_UNUSED,)),
    _MessageSpec(ResponseType.FILES, FilesResponse, (_Field(_Kind.FILES, "files"),)),
    _MessageSpec(ResponseType.METADATA, MetadataResponse, (
        _Field(_Kind.U64, "failure_domain", "failure domain"), _Field(_Kind.U64, "weight", "weight"))),
)

_REQUESTS_BY_CLASS = {spec.message_class: spec for spec in _REQUESTS.values()}
_RESPONSES_BY_CLASS = {spec.message_class: spec for spec in _RESPONSES.values()}


# -- the generic encoder -----------------------------------------------------------------

def _write_field(body: _BodyWriter, field: _Field, message: object) -> int:
    """Writes one field of `message`; returns the schema the message needs because of it
    (0 when it imposes none)."""
    value: Any = getattr(message, field.attribute) if field.attribute is not None else None
    match field.kind:
        case _Kind.U64:
            body.uint64(value, field.label)
        case _Kind.I64:
            body.int64(value, field.label)
        case _Kind.UNUSED:
            body.uint64(0, field.label)
        case _Kind.ID_PAIR:
            second = getattr(message, field.second) if field.second is not None else 0
            body.uint32_pair(value, second, field.label)
        case _Kind.TEXT:
            body.text(value, field.label)
        case _Kind.PARAMS:
            return body.params(value)
        case _Kind.SCHEMA_FLAG:
            return 1 if value else 0
        case _Kind.SCHEMA_1_U64:
            if value is not None:
                body.uint64(value, field.label)
                return 1
        case _Kind.TRAILING_U64:
            if value is not None:
                body.uint64(value, field.label)
        case _Kind.NODES:
            with_roles = [node.role is not None for node in value]
            if any(with_roles) and not all(with_roles):
                raise WireEncodeError("either every node of a SERVERS answer has a role or none has")
            body.uint64(len(value), "node count")
            for node in value:
                body.uint64(node.node_id, "node id")
                body.text(node.address, "address")
                if node.role is not None:
                    body.uint64(node.role, "role")
        case _Kind.FILES:
            body.uint64(len(value), "file count")
            for file in value:
                body.text(file.name, "file name")
                body.blob(file.data)
        case _Kind.ROWS:
            batch = cast(RowsResponse, message)
            _rows_body(body, batch.columns)
            for row in batch.rows:
                if len(row) != len(batch.columns):
                    raise WireEncodeError(f"a row of {len(row)} values under {len(batch.columns)} columns")
                if not batch.columns:
                    raise WireEncodeError("a result without columns has no rows")
                body.row(row)
            body.raw(_U64.pack(ROWS_PART if batch.more else ROWS_DONE))
    return 0


def _encode(specs_by_class: dict[type, _MessageSpec], message: object, kind: str) -> bytes:
    spec = next((specs_by_class[cls] for cls in type(message).__mro__ if cls in specs_by_class), None)
    if spec is None:
        raise WireEncodeError(f"not a {kind}: {message!r}")
    body = _BodyWriter()
    schema = 0
    for field in spec.fields:
        schema = max(schema, _write_field(body, field, message))
    return body.message(spec.code, schema)


def encode_request(request: Request) -> bytes:
    """The bytes of one complete request message (header included)."""
    return _encode(_REQUESTS_BY_CLASS, request, "request")


def encode_response(response: Response) -> bytes:
    """The bytes of one complete response message (header included)."""
    return _encode(_RESPONSES_BY_CLASS, response, "response")


# -- the generic decoder -----------------------------------------------------------------

def _read_field(reader: _BodyReader, field: _Field, schema: int, cluster_format: int, values: dict) -> None:
    """Reads one field into `values` (attribute -> value)."""
    value: object
    match field.kind:
        case _Kind.U64:
            value = reader.uint64(field.label)
        case _Kind.I64:
            value = reader.int64(field.label)
        case _Kind.UNUSED:
            reader.uint64(field.label)
            return
        case _Kind.ID_PAIR:
            value, second = reader.uint32_pair(field.label)
            if field.second is not None:
                values[field.second] = second
        case _Kind.TEXT:
            value = reader.text(field.label)
        case _Kind.PARAMS:
            value = reader.params(schema)
        case _Kind.SCHEMA_FLAG:
            value = schema == 1
        case _Kind.SCHEMA_1_U64:
            value = reader.uint64(field.label) if schema == 1 else None
        case _Kind.TRAILING_U64:
            value = reader.uint64(field.label) if reader.remaining else None
        case _Kind.NODES:
            count = reader.uint64("node count")
            words_per_node = 3 if cluster_format == CLUSTER_FORMAT_WITH_ROLES else 2
            reader.need(count * words_per_node * WORD_BYTES, f"{count} nodes")
            nodes = []
            for index in range(count):
                node_id = reader.uint64(f"node {index + 1} id")
                address = reader.text(f"node {index + 1} address")
                role = reader.uint64(f"node {index + 1} role") if words_per_node == 3 else None
                nodes.append(NodeInfo(node_id=node_id, address=address, role=role))
            value = tuple(nodes)
        case _Kind.FILES:
            count = reader.uint64("file count")
            reader.need(count * 2 * WORD_BYTES, f"{count} files")
            files = []
            for index in range(count):
                name = reader.text(f"file {index + 1} name")
                files.append(DumpFile(name=name, data=reader.blob(f"file {index + 1} data")))
            value = tuple(files)
        case _Kind.ROWS:
            values["columns"], values["rows"], values["more"] = reader.rows()
            return
    values[field.attribute] = value


def _decode(specs: dict[int, _MessageSpec], frame: Frame, reader: _BodyReader, kind: str,
            cluster_format: int = CLUSTER_FORMAT_WITH_ROLES) -> object:
    spec = specs.get(frame.type)
    # A bad schema is reported before an unknown type, as it always was.
    if frame.schema != 0 and not (spec is not None and frame.schema in spec.schemas):
        raise reader.fail(f"unknown schema version {frame.schema}")
    if spec is None:
        raise WireProtocolError(f"unknown {kind} type {frame.type}", code=ErrorCode.PROTOCOL)
    values: dict = {}
    for field in spec.fields:
        _read_field(reader, field, frame.schema, cluster_format, values)
    reader.end()
    # The class comes from the table (`specs`), so mypy sees only `object`; the callers
    # know which table holds requests and which responses (their targeted ignores).
    return spec.message_class(**values)


def decode_request(frame: Frame) -> Request:
    """The request in a frame; WireProtocolError when it does not decode."""
    reader = _BodyReader(frame.body, _request_name(frame.type))
    return _decode(_REQUESTS, frame, reader, "request")  # type: ignore[return-value]


def decode_response(frame: Frame, *, cluster_format: int = CLUSTER_FORMAT_WITH_ROLES) -> Response:
    """The response in a frame; WireProtocolError when it does not decode.

    A SERVERS body does not say whether it carries roles: `cluster_format` is the format
    the CLUSTER request asked for.
    """
    reader = _BodyReader(frame.body, _response_name(frame.type))
    return _decode(_RESPONSES, frame, reader, "response", cluster_format)  # type: ignore[return-value]


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
        # RequestReader(skip_oversized=True): a frame above the limit becomes an
        # OversizedRequest (handed out in its turn) and its body is dropped as it
        # arrives, so memory stays bounded and the stream stays in step.
        self._skip_oversized = False
        self._oversized: OversizedRequest | None = None
        self._skip_bytes = 0                              # body bytes still to drop

    @property
    def skipping(self) -> bool:
        """An oversized body is being dropped: its bytes are still to come."""
        return self._skip_bytes > 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Adds received bytes; raises at once on a bad header among them."""
        if self._error is not None:
            raise self._error
        if self._skip_bytes:
            dropped = min(self._skip_bytes, len(data))
            self._skip_bytes -= dropped
            data = data[dropped:]
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
        if (self._header is not None or self._oversized is not None or self._handshake_pending
                or len(self._buffer) < HEADER_BYTES):
            return
        words, kind, schema, _unused = _HEADER.unpack_from(self._buffer, 0)
        body_bytes = words * WORD_BYTES
        if body_bytes > self.message_bytes_max and self._skip_oversized:
            self._oversized = OversizedRequest(type=kind, body_bytes=body_bytes, limit_bytes=self.message_bytes_max)
            dropped = min(body_bytes, len(self._buffer) - HEADER_BYTES)
            del self._buffer[:HEADER_BYTES + dropped]
            self._skip_bytes = body_bytes - dropped
            return
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
    """The server's reader: frames of known request types, decoded into requests.

    With `skip_oversized`, a request announcing more than `message_bytes_max` is not an
    error: `next_request` hands out an `OversizedRequest` in its place (after every
    request before it), and its body is dropped as it arrives (`skipping`)."""

    _valid_types = frozenset(int(code) for code in RequestType)
    _kind = "request"

    def __init__(self, *, message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT, expect_handshake: bool = False,
                 skip_oversized: bool = False) -> None:
        super().__init__(message_bytes_max=message_bytes_max, expect_handshake=expect_handshake)
        self._skip_oversized = skip_oversized

    def next_request(self) -> "Request | OversizedRequest | None":
        frame = self.next_frame() if self._oversized is None else None
        if frame is None:
            # next_frame found (or had found) an oversized header where a frame would start.
            oversized, self._oversized = self._oversized, None
            return oversized
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
