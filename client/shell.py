"""`raftlite shell`: an SQL prompt on a raftlite (or dqlite) cluster, like go-dqlite's `dqlite`.

    raftlite shell -s 127.0.0.1:9001,127.0.0.1:9002 app                 # interactive
    raftlite shell -s 127.0.0.1:9001 app "SELECT * FROM t"              # one-shot
    raftlite shell -s 127.0.0.1:9001 --format json app "SELECT 1 AS x"  # [{"x": 1}]

Theory of operation
-------------------
The shell is a DB-API connection in autocommit mode: each statement is its own
transaction unless the user types BEGIN ... COMMIT, and the connection (so the open
transaction) lives as long as the shell. Input is cut into statements where SQLite
itself would (`apsw.complete`, which knows trigger bodies and quoted ';'), so a
statement may span lines; a line starting with '.' at the start of a statement is a
dot-command. Interactive mode keeps a readline history in ~/.raftlite_history.

Output: `tabular` prints a header and aligned columns (NULL as "NULL", blobs as
X'..'), `json` one JSON array of row objects per result (blobs as hex text, date-times
in ISO 8601). Statements without a result set print nothing, as in go-dqlite's shell.

Dot-commands mirror go-dqlite's shell, taking a node id or an address:
  .cluster               members: id|address|role
  .leader                the leader's address
  .remove ID|ADDR        REMOVE the member (on the leader)
  .describe ID|ADDR      DESCRIBE, straight to that node: address|failure domain|weight
  .weight ID|ADDR N      WEIGHT, straight to that node
  .dump [FILE]           DUMP on the leader: FILE (and FILE-wal) are the database's files,
                         ready to open with sqlite3; without FILE, an SQL text dump
                         (go-dqlite's `.dump ADDR [DB]` writes the files into the current
                         directory under the server's names instead)
  .help, .quit / .exit

Every error is one line on stderr ("Error: ..."). A one-shot run exits 1 when a
statement failed; a usage mistake (bad flag or address) exits 2.
"""

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

import apsw

from ..argument_types import positive_seconds as _positive_seconds
from .cluster import RequestKind
from .connection import Connection as NodeConnection, ConnectionBroken, RequestFailed
from .dbapi import Connection, connect
from .errors import Error, InterfaceError, error_from_failure
from ..core.wire import NodeInfo, Role

__all__ = ["Shell", "StatementReader", "add_shell_parser", "run_shell", "split_statements"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
HISTORY_LINES_MAX = 1000
FORMATS = ("tabular", "json")

_HELP = """\
Enter SQL statements terminated with ';' (they may span lines), or a dot-command:
  .cluster               show the cluster's members (id|address|role)
  .leader                show the current leader's address
  .remove ID|ADDR        remove a member from the cluster
  .describe ID|ADDR      show a node's failure domain and weight
  .weight ID|ADDR N      set a node's weight
  .dump [FILE]           write the database's files to FILE (and FILE-wal), or print an SQL dump
  .help                  show this help
  .quit                  leave the shell"""


class ShellError(Exception):
    """A dot-command used wrongly; printed as one line."""


def add_shell_parser(commands: Any) -> argparse.ArgumentParser:
    """Registers `shell` on an argparse sub-command set."""
    shell = commands.add_parser("shell", help="an SQL shell on a raftlite or dqlite cluster",
                                description=_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    shell.add_argument("-s", "--servers", required=True, metavar="ADDRS",
                       help="comma-separated node addresses (host:port); any node will do")
    shell.add_argument("--format", choices=FORMATS, default="tabular", help="output format (default tabular)")
    shell.add_argument("--timeout", type=_positive_seconds, default=10.0, metavar="S",
                       help="seconds each statement may take, leader discovery included (default 10)")
    shell.add_argument("database", metavar="DB", help="database name")
    shell.add_argument("sql", metavar="SQL", nargs="?", help="run this and exit (default: interactive)")
    return shell


def split_statements(text: str) -> tuple[list[str], str]:
    """The complete statements at the start of `text` and the incomplete rest."""
    statements: list[str] = []
    start = 0
    position = text.find(";")
    while position >= 0:
        candidate = text[start:position + 1]
        if apsw.complete(candidate):
            if candidate.strip(" \t\r\n;"):
                statements.append(candidate.strip())
            start = position + 1
        position = text.find(";", position + 1)
    return statements, text[start:]


def _text(value: Any) -> str:
    match value:
        case None:
            return "NULL"
        case bytes():
            return f"X'{value.hex().upper()}'"
        case datetime() | date():
            return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    match value:
        case bytes():
            return value.hex()
        case datetime() | date():
            return value.isoformat()
    return value


def _role_name(role: int | None) -> str:
    try:
        return Role(role).name.lower() if role is not None else "unknown"
    except ValueError:
        return str(role)


class Shell:
    """One shell session: runs statements and dot-commands, writes results to `out`."""

    def __init__(self, connection: Connection, *, output_format: str = "tabular", out: TextIO = sys.stdout) -> None:
        self.connection = connection
        self.format = output_format
        self.out = out
        self.done = False

    # -- output ------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        if text:
            print(text, file=self.out)

    def _table(self, columns: list[str], rows: list[tuple[Any, ...]]) -> str:
        if self.format == "json":
            return json.dumps([dict(zip(columns, (_json_value(value) for value in row))) for row in rows],
                              ensure_ascii=False)
        cells = [columns] + [[_text(value) for value in row] for row in rows]
        widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
        return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                         for line in cells)

    # -- statements ----------------------------------------------------------------------

    def run(self, statement: str) -> None:
        """Runs one statement or dot-command; raises Error / ShellError on failure."""
        if statement.startswith("."):
            self._dot(statement)
            return
        cursor = self.connection.execute(statement)
        if cursor.description is not None:
            self._print(self._table([column[0] for column in cursor.description], cursor.fetchall()))

    # -- dot-commands --------------------------------------------------------------------

    def _dot(self, line: str) -> None:
        name, *arguments = line.split()
        match name.lower(), arguments:
            case (".quit" | ".exit"), []:
                self.done = True
            case ".help", []:
                self._print(_HELP)
            case ".cluster", []:
                self._cluster()
            case ".leader", []:
                leader = self.connection.leader()
                if self.format == "json":
                    self._print(json.dumps(None if leader is None else
                                           {"id": leader.node_id, "address": leader.address}))
                elif leader is not None:
                    self._print(leader.address)
            case ".remove", [node]:
                member = self._member(node)
                self.connection.session.call(RequestKind.WRITE, lambda connection, _db: connection.remove(member.node_id))
            case ".describe", [node]:
                member = self._member(node)
                metadata = self._on_node(member.address, lambda connection: connection.describe())
                if self.format == "json":
                    self._print(json.dumps({"id": member.node_id, "address": member.address,
                                            "failure_domain": metadata.failure_domain, "weight": metadata.weight}))
                else:
                    self._print(f"{member.address}|{metadata.failure_domain}|{metadata.weight}")
            case ".weight", [node, weight_text]:
                if not weight_text.isdigit():
                    raise ShellError(f"bad weight {weight_text!r}: expected a whole number >= 0")
                member = self._member(node)
                self._on_node(member.address, lambda connection: connection.weight(int(weight_text)))
            case ".dump", ([] | [_]):
                self._dump(arguments[0] if arguments else None)
            case _:
                raise ShellError(f"unknown or malformed command {line!r}; see .help")

    def _cluster(self) -> None:
        members = self.connection.cluster()
        if self.format == "json":
            self._print(json.dumps([{"id": member.node_id, "address": member.address, "role": _role_name(member.role)}
                                    for member in members]))
        else:
            self._print("\n".join(f"{member.node_id}|{member.address}|{_role_name(member.role)}" for member in members))

    def _member(self, node: str) -> NodeInfo:
        """The member a user named by id or address."""
        members = self.connection.cluster()
        for member in members:
            if node == member.address or (node.isdigit() and int(node) == member.node_id):
                return member
        raise ShellError(f"no member has id or address {node!r} (see .cluster)")

    def _on_node(self, address: str, operation: Any) -> Any:
        """A request straight to one node (DESCRIBE and WEIGHT go to the node they are about)."""
        timeout_s = self.connection.session.policy.timeout_s
        try:
            with NodeConnection.connect(address, timeout_s=timeout_s) as connection:
                return operation(connection)
        except RequestFailed as failure:
            raise error_from_failure(failure.code, failure.message) from None
        except ConnectionBroken as error:
            raise InterfaceError(f"{address}: {error}") from None

    def _dump(self, path: str | None) -> None:
        database = self.connection.session.database
        files = self.connection.session.call(RequestKind.READ, lambda connection, _db: connection.dump(database))
        images = {file.name: file.data for file in files}
        main = images.get(database, b"")
        wal = images.get(f"{database}-wal", b"")
        if path is not None:
            target = Path(path)
            try:
                target.write_bytes(main)
                wal_path = Path(f"{path}-wal")
                if wal:
                    wal_path.write_bytes(wal)
                elif wal_path.exists():
                    wal_path.unlink()   # a stale WAL would be replayed over the new file
            except OSError as error:
                raise ShellError(f"cannot write {path}: {error.strerror}") from None
            if self.format == "json":
                self._print(json.dumps({"file": str(target), "bytes": len(main), "wal_bytes": len(wal)}))
            else:
                self._print(f"wrote {target} ({len(main)} bytes)" + (f" and {target}-wal ({len(wal)} bytes)" if wal else ""))
            return
        with tempfile.TemporaryDirectory(prefix="raftlite-dump-") as directory:
            copy = Path(directory) / "db"
            copy.write_bytes(main)
            if wal:
                Path(f"{copy}-wal").write_bytes(wal)
            database_copy = sqlite3.connect(copy)
            try:
                lines = list(database_copy.iterdump()) if main else ["BEGIN TRANSACTION;", "COMMIT;"]
            except sqlite3.DatabaseError as error:
                raise ShellError(f"the dumped files do not open as a database: {error}") from None
            finally:
                database_copy.close()
        self._print("\n".join(lines))


class StatementReader:
    """Cuts lines of input into statements and dot-commands (a dot-command is one line,
    taken only at the start of a statement)."""

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, line: str) -> list[str]:
        if not self.pending.strip() and line.lstrip().startswith("."):
            self.pending = ""
            return [line.strip()]
        statements, self.pending = split_statements(self.pending + line + "\n")
        return statements

    def finish(self) -> list[str]:
        """What is left at the end of input, run as one last statement."""
        rest, self.pending = self.pending.strip(), ""
        return [rest] if rest else []


def _report(error: BaseException) -> None:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"Error: {message}", file=sys.stderr)


def _run_all(shell: Shell, statements: list[str], *, stop_on_error: bool) -> bool:
    """Runs statements in order; False when one failed."""
    for statement in statements:
        try:
            shell.run(statement)
        except (Error, ShellError) as error:
            _report(error)
            if stop_on_error:
                return False
        if shell.done:
            break
    return True


def _one_shot(shell: Shell, sql: str) -> bool:
    reader = StatementReader()
    statements = [statement for line in sql.splitlines() for statement in reader.feed(line)]
    return _run_all(shell, statements + reader.finish(), stop_on_error=True)


def _interactive(shell: Shell) -> None:
    # Prompts and history only on a terminal: piped input gives just the results, as sqlite3 does.
    terminal = sys.stdin.isatty()
    readline = None
    if terminal:
        try:
            import readline
        except ImportError:  # no readline on this platform: plain input()
            pass
    history = Path(os.path.expanduser("~")) / ".raftlite_history"
    if readline is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass
        readline.set_history_length(HISTORY_LINES_MAX)
    reader = StatementReader()
    try:
        while not shell.done:
            try:
                line = input(("   ...> " if reader.pending.strip() else "raftlite> ") if terminal else "")
            except KeyboardInterrupt:
                if not terminal:
                    raise
                print(file=sys.stderr)
                reader.pending = ""
                continue
            except EOFError:
                if terminal:
                    print(file=sys.stderr)
                _run_all(shell, reader.finish(), stop_on_error=False)
                return
            _run_all(shell, reader.feed(line), stop_on_error=False)
    finally:
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError:
                pass


def run_shell(args: argparse.Namespace) -> int:
    """The `raftlite shell` command."""
    try:
        connection = connect(args.servers, database=args.database, timeout=args.timeout, autocommit=True)
    except InterfaceError as error:
        _report(error)
        return EXIT_USAGE
    except Error as error:
        _report(error)
        return EXIT_FAILED
    shell = Shell(connection, output_format=args.format)
    failed = False
    try:
        if args.sql is not None:
            failed = not _one_shot(shell, args.sql)
        else:
            _interactive(shell)
    except KeyboardInterrupt:
        return 130
    finally:
        try:
            connection.close()
        except Error:
            pass
    return EXIT_FAILED if failed else EXIT_OK
