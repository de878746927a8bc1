"""What makes the DB-API connection behave like Python's sqlite3 beyond PEP 249, with
no I/O: parameter binding by name and number, `Row`, text_factory, and reading a
DUMP of the database as a local SQLite file (iterdump, backup).

Theory of operation
-------------------
Parameters. dqlite's wire carries a statement's parameters as one list bound by
position: value i goes to SQLite's parameter index i + 1, whatever the SQL calls it.
So every SQLite parameter form works once its index is known: `?NNN` is index NNN,
a bare `?` the largest index so far plus one, and a name (`:id`, `$id`, `@id`, the
prefix part of the name) the next index at its first use, later uses sharing it.
`bind_parameters` computes those indexes with the statement scanner of
raftlite.client.cluster (strings, quoted names and comments skipped) and sends
a mapping's values at their names' positions; a sequence is sent as it is, its
length checked against what the statement uses, as sqlite3 checks it.

Dumps. DUMP answers the database's files (main file and WAL) as the leader holds
them. `local_copy` writes them to a temporary directory and opens them with Python's
sqlite3, which replays the WAL: `iterdump()` is then sqlite3's own, and `backup()`
copies into any sqlite3 connection.
"""

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .cluster import parameter_positions
from .errors import InterfaceError, ProgrammingError
from .types import Parameter, Python, parameter_to_wire, parameters_to_wire
from ..core.wire import DumpFile, Value

__all__ = ["Row", "bind_parameters", "checked_row_factory", "local_copy", "text_converter"]


def bind_parameters(sql: str, parameters: Sequence[Parameter] | Mapping[str, Parameter] | None) -> tuple[Value, ...]:
    """The wire values for `sql` given sqlite3-style parameters: a sequence for `?`,
    `?NNN` (and, positionally, names), a mapping for `:name` / `$name` / `@name`.
    ProgrammingError, worded as sqlite3 words it, when they do not fit the statement."""
    if parameters is None:
        parameters = ()
    try:
        count, names = parameter_positions(sql)
    except ValueError as error:
        raise ProgrammingError(str(error)) from None
    if isinstance(parameters, Mapping):
        if len(names) < count:
            unnamed = next(position for position in range(1, count + 1) if position not in names.values())
            raise ProgrammingError(f"binding {unnamed} has no name, but a mapping (which has only names) "
                                   "was supplied")
        values: list[Value] = [None] * count
        for name, position in names.items():
            try:
                value = parameters[name[1:]]
            except KeyError:
                raise ProgrammingError(f"no value supplied for the binding parameter {name}") from None
            values[position - 1] = parameter_to_wire(value)
        return tuple(values)
    values_in_order = parameters_to_wire(parameters)
    if len(values_in_order) != count:
        raise ProgrammingError(f"incorrect number of bindings supplied: the statement uses {count}, "
                               f"and {len(values_in_order)} were supplied")
    return values_in_order


class Row:
    """A result row with access by index and by column name (case-insensitive), like
    sqlite3.Row: `connection.row_factory = raftlite.client.Row`."""

    __slots__ = ("_names", "_values")

    def __init__(self, cursor: Any, values: Sequence[Python]) -> None:
        description = cursor.description or ()
        self._names = tuple(column[0] for column in description)
        self._values = tuple(values)

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            folded = key.casefold()
            for name, value in zip(self._names, self._values):
                if name.casefold() == folded:
                    return value
            raise IndexError(f"no column named {key!r}")
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Python]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._names == other._names and self._values == other._values

    def __hash__(self) -> int:
        return hash((self._names, self._values))

    def __repr__(self) -> str:
        return f"<Row {dict(zip(self._names, self._values))!r}>"


def checked_row_factory(factory: Any) -> Any:
    """A row_factory as the connection stores it: None, or a callable (cursor, row);
    sqlite3.Row (which only accepts sqlite3's own cursors) stands for `Row`."""
    if factory is sqlite3.Row:
        return Row
    if factory is not None and not callable(factory):
        raise TypeError(f"row_factory must be callable or None, not {type(factory).__name__}")
    return factory


def text_converter(text_factory: Any):
    """How a TEXT value is handed out under `text_factory` (None: str, unchanged).
    As in sqlite3, the factory receives the value's UTF-8 bytes."""
    if text_factory is str or text_factory is None:
        return None
    if not callable(text_factory):
        raise TypeError(f"text_factory must be callable, not {type(text_factory).__name__}")
    if text_factory is bytes:
        return lambda text: text.encode("utf-8")
    return lambda text: text_factory(text.encode("utf-8"))


@contextlib.contextmanager
def local_copy(files: Sequence[DumpFile], database: str) -> Iterator[sqlite3.Connection]:
    """A read-only sqlite3 connection on the dumped files, removed on exit."""
    names = {os.path.basename(dump_file.name) for dump_file in files}
    if database not in names:
        raise InterfaceError(f"the dump of {database!r} has no main file (got {sorted(names)})")
    with tempfile.TemporaryDirectory(prefix="raftlite-dump-") as directory:
        for dump_file in files:
            with open(os.path.join(directory, os.path.basename(dump_file.name)), "wb") as handle:
                handle.write(dump_file.data)
        local = sqlite3.connect(os.path.join(directory, database))
        try:
            yield local
        finally:
            local.close()
