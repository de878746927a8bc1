"""PEP 249 exception classes of the raftlite client, carrying SQLite's error codes.

Theory of operation
-------------------
Every failure the client raises is an `Error` (PEP 249's root class). A FAILURE answer
from a node carries dqlite's code: SQLite's (extended) result code, or one of dqlite's
own (1001 protocol, 1005 parse, 10250 not leader, 10506 leadership lost).
`error_from_failure` turns it into the PEP 249 class Python's own sqlite3 module would
raise for that code (a syntax error is an OperationalError, a UNIQUE violation an
IntegrityError, ...), with `sqlite_errorcode` / `sqlite_errorname` set as sqlite3 sets
them since Python 3.11.

Three classes exist for what only a replicated database can do, all OperationalErrors
so that code written for sqlite3 still catches them:
- `OutcomeUnknownError`: a write reached the leader and then the leader was lost (a
  10506 answer, or the connection broke after the request was sent). The write may or
  may not be applied; the client does not re-send it unless asked to.
- `TransactionLostError`: the leader changed while a transaction was open. The
  transaction's statements ran only on the old leader and were never committed, so
  nothing of it is applied; the caller may run it again from BEGIN.
- `NoLeaderError`: no leader could be reached (or none answered) within the
  connection's timeout.
"""

import builtins

__all__ = [
    "DataError", "DatabaseError", "Error", "IntegrityError", "InterfaceError", "InternalError",
    "NoLeaderError", "NotSupportedError", "OperationalError", "OutcomeUnknownError", "ProgrammingError",
    "TransactionLostError", "Warning", "error_from_failure", "error_name",
]

SQLITE_PRIMARY_MASK = 0xFF


class Warning(builtins.Exception):  # noqa: A001 - the name PEP 249 prescribes
    """PEP 249: an important warning (not raised by this client; part of the API)."""


class Error(builtins.Exception):
    """PEP 249's root of every client error. `sqlite_errorcode` is the code the server
    sent (SQLite's extended result code, or dqlite's own), None for client-side errors."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlite_errorcode = code
        self.sqlite_errorname = error_name(code) if code is not None else None

    @property
    def code(self) -> int | None:
        """The same as `sqlite_errorcode`."""
        return self.sqlite_errorcode


class InterfaceError(Error):
    """A mistake in using the client itself (bad address, closed connection, protocol mismatch)."""


class DatabaseError(Error):
    """An error reported by (or about) the database."""


class DataError(DatabaseError):
    """A value the database or the wire cannot hold (too big, out of range)."""


class OperationalError(DatabaseError):
    """The database could not do the operation (SQL error, busy, I/O, leadership)."""


class IntegrityError(DatabaseError):
    """A constraint failed (UNIQUE, NOT NULL, FOREIGN KEY, CHECK, ...)."""


class InternalError(DatabaseError):
    """The database reports an internal inconsistency."""


class ProgrammingError(DatabaseError):
    """Wrong use of the API: a fetch with no result set, several statements in execute, a bad parameter."""


class NotSupportedError(DatabaseError):
    """A feature the database does not support."""


class OutcomeUnknownError(OperationalError):
    """A write reached the leader and then the leader was lost: it may or may not be
    applied. It was not re-sent (connect with retry_unknown_writes=True to allow that)."""


class TransactionLostError(OperationalError):
    """The leader changed while a transaction was open: nothing of the transaction was
    committed; run it again from BEGIN."""


class NoLeaderError(OperationalError):
    """No leader answered within the connection's timeout."""


# SQLite's primary result codes (the low byte of an extended code) and the names sqlite3
# reports for them; dqlite's own codes above 255 by their full value.
_PRIMARY_NAMES = {
    0: "SQLITE_OK", 1: "SQLITE_ERROR", 2: "SQLITE_INTERNAL", 3: "SQLITE_PERM", 4: "SQLITE_ABORT",
    5: "SQLITE_BUSY", 6: "SQLITE_LOCKED", 7: "SQLITE_NOMEM", 8: "SQLITE_READONLY", 9: "SQLITE_INTERRUPT",
    10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT", 12: "SQLITE_NOTFOUND", 13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL", 16: "SQLITE_EMPTY", 17: "SQLITE_SCHEMA", 18: "SQLITE_TOOBIG",
    19: "SQLITE_CONSTRAINT", 20: "SQLITE_MISMATCH", 21: "SQLITE_MISUSE", 22: "SQLITE_NOLFS",
    23: "SQLITE_AUTH", 24: "SQLITE_FORMAT", 25: "SQLITE_RANGE", 26: "SQLITE_NOTADB",
}
_EXTENDED_NAMES = {
    517: "SQLITE_BUSY_SNAPSHOT", 1555: "SQLITE_CONSTRAINT_PRIMARYKEY", 2067: "SQLITE_CONSTRAINT_UNIQUE",
    1299: "SQLITE_CONSTRAINT_NOTNULL", 787: "SQLITE_CONSTRAINT_FOREIGNKEY", 275: "SQLITE_CONSTRAINT_CHECK",
    10250: "DQLITE_NOT_LEADER", 10506: "DQLITE_LEADERSHIP_LOST", 1001: "DQLITE_PROTO", 1005: "DQLITE_PARSE",
}
_DQLITE_PROTOCOL_CODES = frozenset({1001, 1005})
_SQLITE_AUTH = 23
_REFUSED_FOR_REPLICATION = ("the leader refuses statements that would break replication (ATTACH, DETACH, "
                            "pragmas that change journaling, locking, syncing, checkpoints or page size, "
                            "and process-wide settings)")

# The class Python's sqlite3 raises for each primary code (Modules/_sqlite/util.c).
_PRIMARY_CLASSES: dict[int, type[Error]] = {
    2: InternalError, 12: InternalError,
    1: OperationalError, 3: OperationalError, 4: OperationalError, 5: OperationalError, 6: OperationalError,
    8: OperationalError, 9: OperationalError, 10: OperationalError, 13: OperationalError,
    14: OperationalError, 15: OperationalError, 16: OperationalError, 17: OperationalError,
    7: OperationalError,  # NOMEM: sqlite3 raises MemoryError; a remote server's memory is an operational matter
    18: DataError,
    19: IntegrityError, 20: IntegrityError,
    23: DatabaseError,  # SQLITE_AUTH: sqlite3 raises DatabaseError for a statement its authorizer denied
    21: InterfaceError, 25: InterfaceError,
}


def error_name(code: int) -> str:
    """SQLite's (or dqlite's) symbolic name for a result code, e.g. "SQLITE_CONSTRAINT_UNIQUE"."""
    if code in _EXTENDED_NAMES:
        return _EXTENDED_NAMES[code]
    return _PRIMARY_NAMES.get(code & SQLITE_PRIMARY_MASK, f"code {code}")


def error_from_failure(code: int, message: str) -> Error:
    """The PEP 249 exception for a FAILURE answer (code, message) from a node."""
    if code in _DQLITE_PROTOCOL_CODES:
        return InterfaceError(f"the server did not understand the request: {message} (code {code})", code=code)
    cls = _PRIMARY_CLASSES.get(code & SQLITE_PRIMARY_MASK, DatabaseError)
    if code & SQLITE_PRIMARY_MASK == _SQLITE_AUTH and "replicat" not in message:
        # SQLite says only "not authorized"; the reason is raftlite's authorizer.
        message = f"{message}: {_REFUSED_FOR_REPLICATION}"
    return cls(message, code=code)
