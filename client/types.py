"""Conversions between Python values and the wire's values, and PEP 249's type objects.

Theory of operation
-------------------
Parameters (`parameter_to_wire`): int, float, str, bytes (bytearray and memoryview
too), None and bool travel as the wire types of the same names (bool as BOOLEAN, which
SQLite stores as the integer 0 or 1). A `datetime` travels as ISO 8601 text
("YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM]"), a `date` as "YYYY-MM-DD": the text form
SQLite's date functions read and go-dqlite writes. It is sent as TEXT, not as the
ISO8601 wire type, because TEXT is what SQLite stores either way and every server
accepts it (dqlite 1.11 refuses the UNIXTIME type as a parameter).

Results (`value_from_wire`): INTEGER, FLOAT, TEXT, BLOB, NULL and BOOLEAN come back as
int, float, str, bytes, None and bool. Values of columns declared DATETIME / DATE /
TIMESTAMP arrive as UNIXTIME (an integer: seconds since the epoch, returned as an aware
UTC `datetime`) or ISO8601 (a text, parsed with `datetime.fromisoformat`; naive when the
text has no offset, as SQLite's `datetime('now')` writes UTC without one; the empty
text is NULL -> None; a text that is not a date-time is returned unchanged rather than
failing the whole query).

`description_type_codes` gives PEP 249's description `type_code` per column: the wire
type of the column's first non-NULL value in the result (SQLite has no column types, so
this is what the result itself says), None when no row says. The type objects STRING,
BINARY, NUMBER, DATETIME and ROWID compare equal to the matching codes.
"""

import datetime as _datetime
import time as _time
from collections.abc import Sequence

from .errors import DataError, ProgrammingError
from ..core.wire import Iso8601, UnixTime, Value, ValueType

__all__ = [
    "BINARY", "Binary", "DATETIME", "Date", "DateFromTicks", "NUMBER", "ROWID", "STRING", "Time",
    "TimeFromTicks", "Timestamp", "TimestampFromTicks", "TypeObject", "description_type_codes",
    "parameter_to_wire", "parameters_to_wire", "row_from_wire", "value_from_wire",
]

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

Parameter = int | float | str | bytes | bytearray | memoryview | bool | None | _datetime.datetime | _datetime.date
Python = int | float | str | bytes | bool | None | _datetime.datetime


class TypeObject:
    """A PEP 249 type object: equal to each wire type code it stands for."""

    __slots__ = ("name", "codes")

    def __init__(self, name: str, *codes: ValueType) -> None:
        self.name = name
        self.codes = frozenset(int(code) for code in codes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TypeObject):
            return self.codes == other.codes
        if isinstance(other, int):
            return other in self.codes
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.codes)

    def __repr__(self) -> str:
        return f"<TypeObject {self.name}>"


STRING = TypeObject("STRING", ValueType.TEXT)
BINARY = TypeObject("BINARY", ValueType.BLOB)
NUMBER = TypeObject("NUMBER", ValueType.INTEGER, ValueType.FLOAT, ValueType.BOOLEAN)
DATETIME = TypeObject("DATETIME", ValueType.UNIXTIME, ValueType.ISO8601)
ROWID = TypeObject("ROWID", ValueType.INTEGER)

# PEP 249's constructors.
Date = _datetime.date
Time = _datetime.time
Timestamp = _datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> _datetime.date:  # noqa: N802 - PEP 249's name
    return Date(*_time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> _datetime.time:  # noqa: N802 - PEP 249's name
    return Time(*_time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> _datetime.datetime:  # noqa: N802 - PEP 249's name
    return Timestamp(*_time.localtime(ticks)[:6])


def _iso_text(value: _datetime.datetime | _datetime.date | _datetime.time) -> str:
    if isinstance(value, _datetime.datetime):
        return value.isoformat(sep=" ")
    return value.isoformat()


def parameter_to_wire(value: Parameter) -> Value:
    """The wire value for one statement parameter; ProgrammingError for a type the wire
    cannot carry, DataError for an integer outside SQLite's 64-bit range."""
    match value:
        case bool() | float() | str() | None:
            return value
        case int():
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise DataError(f"integer {value} does not fit in SQLite's 64-bit integers")
            return value
        case bytes():
            return value
        case bytearray() | memoryview():
            return bytes(value)
        case _datetime.datetime() | _datetime.date() | _datetime.time():
            return _iso_text(value)
    raise ProgrammingError(f"a parameter of type {type(value).__name__} cannot be sent "
                           "(use int, float, str, bytes, None, bool, datetime or date)")


def parameters_to_wire(parameters: Sequence[Parameter] | None) -> tuple[Value, ...]:
    """The wire values of a parameter sequence, in order (named parameters given as a
    mapping are placed by raftlite.client.compat.bind_parameters)."""
    if parameters is None:
        return ()
    if isinstance(parameters, (str, bytes, bytearray, memoryview)) or not isinstance(parameters, Sequence):
        raise ProgrammingError("parameters must be a sequence (list or tuple), or a mapping (dict) for "
                               f"named parameters, not {type(parameters).__name__}")
    return tuple(parameter_to_wire(value) for value in parameters)


def _parse_iso8601(text: str) -> _datetime.datetime | str | None:
    if text == "":
        return None
    try:
        return _datetime.datetime.fromisoformat(text)
    except ValueError:
        return text


def value_from_wire(value: Value) -> Python:
    """The Python value of one result value."""
    match value:
        case UnixTime(seconds=seconds):
            try:
                return _datetime.datetime.fromtimestamp(seconds, _datetime.timezone.utc)
            except (OverflowError, OSError, ValueError):
                return seconds  # outside datetime's years 1..9999: keep the integer SQLite holds
        case Iso8601(text=text):
            return _parse_iso8601(text)
    return value


def row_from_wire(row: Sequence[Value]) -> tuple[Python, ...]:
    return tuple(value_from_wire(value) for value in row)


def _wire_type(value: Value) -> int | None:
    match value:
        case None:
            return None
        case bool():
            return int(ValueType.BOOLEAN)
        case int():
            return int(ValueType.INTEGER)
        case float():
            return int(ValueType.FLOAT)
        case str():
            return int(ValueType.TEXT)
        case bytes():
            return int(ValueType.BLOB)
        case UnixTime():
            return int(ValueType.UNIXTIME)
        case Iso8601(text=text):
            return int(ValueType.ISO8601) if text else None
    return None


def description_type_codes(column_count: int, rows: Sequence[Sequence[Value]]) -> list[int | None]:
    """Per column, the wire type code of its first non-NULL value in `rows` (None if none)."""
    codes: list[int | None] = [None] * column_count
    missing = column_count
    for row in rows:
        if missing == 0:
            break
        for index, value in enumerate(row[:column_count]):
            if codes[index] is None and (code := _wire_type(value)) is not None:
                codes[index] = code
                missing -= 1
    return codes
