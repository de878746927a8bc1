"""The DB-API's sqlite3 compatibility with no node processes: parameter binding
(qmark, numeric, named) computed by the statement scanner, row_factory / text_factory,
isolation_level / autocommit, total_changes, iterdump / backup, the refusals that
name replication, is_retryable, run_transaction and the asyncio pool.

The peer is `SqlNode`: test_client_policy's scripted node answering EXEC_SQL /
QUERY_SQL / DUMP with a real SQLite (apsw, as raftlite's leader runs it, binding
parameters by position as dqlite's wire does), one SQLite connection per client
connection, on one file; a test can make chosen requests fail first."""

import asyncio
import os
import sqlite3
from collections.abc import Callable

import apsw
import pytest

import raftlite.client as client
from raftlite.client import aio
from raftlite.client.cluster import parameter_positions, parameter_slots
from raftlite.client.compat import bind_parameters
from raftlite.core.wire import (
    DumpFile, DumpRequest, ExecSqlRequest, FailureResponse, FilesResponse, QuerySqlRequest, ResultResponse,
    RowsResponse,
)
from test_client_policy import CLOSE, ScriptedNode

pytestmark = pytest.mark.timeout(60)


class SqlNode(ScriptedNode):
    """A scripted node that runs the SQL it gets. `fail(request_sql, number)` may
    return answers to send instead (a failure, CLOSE) for a request."""

    def __init__(self, directory, fail: Callable | None = None) -> None:
        self.path = os.path.join(directory, "app")
        self.fail = fail or (lambda sql, number: None)
        self.connections: dict[int, apsw.Connection] = {}
        super().__init__(self._run)

    def _connection(self, number: int) -> apsw.Connection:
        if number not in self.connections:
            connection = apsw.Connection(self.path)
            connection.execute("PRAGMA journal_mode=WAL").fetchall()
            connection.set_busy_timeout(0)
            self.connections[number] = connection
        return self.connections[number]

    def _run(self, request, number: int) -> list:
        match request:
            case DumpRequest():
                # The committed database as one file (the leader's DUMP sends its main file and WAL).
                data = self._connection(number).serialize("main")
                return [FilesResponse(files=(DumpFile(name="app", data=data), DumpFile(name="app-wal", data=b"")))]
            case ExecSqlRequest(sql=sql, params=params) | QuerySqlRequest(sql=sql, params=params):
                failed = self.fail(sql, number)
                if failed is not None:
                    leadership_lost = any(getattr(answer, "code", None) in (10250, 10506) for answer in failed)
                    if (CLOSE in failed or leadership_lost) and number in self.connections:
                        self.connections.pop(number).close()   # as a node does: its transaction is gone
                    return failed
                connection = self._connection(number)
                try:
                    cursor = connection.execute(sql, params)
                    columns = _columns(cursor)
                    rows = tuple(tuple(row) for row in cursor)
                except apsw.Error as error:
                    return [FailureResponse(code=error.extendedresult, message=str(error))]
                if isinstance(request, QuerySqlRequest):
                    return [RowsResponse(columns=columns, rows=rows)]
                return [ResultResponse(last_insert_id=connection.last_insert_rowid(),
                                       rows_affected=connection.changes())]
        return [FailureResponse(code=1, message="unexpected")]


def _columns(cursor) -> tuple[str, ...]:
    try:
        return tuple(column[0] for column in cursor.get_description())
    except apsw.ExecutionCompleteError:   # the statement answered no rows and has finished
        return ()


@pytest.fixture
def node(tmp_path):
    started = SqlNode(tmp_path)
    yield started
    started.stop()


def _connect(node, **options):
    return client.connect(node.address, database="app", timeout=3, **options)


# -- parameters --------------------------------------------------------------------------

def test_the_scanner_numbers_parameters_as_sqlite_does_and_skips_strings_names_and_comments():
    sql = "SELECT ?, ?5, ?, :a, $b, @c, :a, 'x?:y', \"q:z\", [w@v], x$y, 1e5 -- :no\n/* ?9 */"
    assert parameter_slots(sql) == [1, 5, 6, ":a", "$b", "@c", ":a"]
    assert parameter_positions(sql) == (9, {":a": 7, "$b": 8, "@c": 9})
    assert parameter_positions("SELECT :a, ?3, :b, :a") == (4, {":a": 1, ":b": 4})


def test_binding_a_mapping_puts_each_value_at_its_names_position():
    assert bind_parameters("SELECT :a, $b, @a, :a", {"a": 1, "b": "two"}) == (1, "two", 1)
    assert bind_parameters("SELECT ?2, ?1", (10, 20)) == (10, 20)
    with pytest.raises(client.ProgrammingError, match="no value supplied for the binding parameter :missing"):
        bind_parameters("SELECT :missing", {"a": 1})
    with pytest.raises(client.ProgrammingError, match="binding 1 has no name"):
        bind_parameters("SELECT ?, :a", {"a": 1})
    with pytest.raises(client.ProgrammingError, match="uses 2, and 1 were supplied"):
        bind_parameters("SELECT ?, ?", (1,))
    with pytest.raises(client.ProgrammingError, match="between 1 and 250000"):
        bind_parameters("SELECT ?0", ())


def test_every_parameter_style_round_trips_through_the_server(node):
    connection = _connect(node)
    assert connection.execute("SELECT :x + 1, $y, @x", {"x": 41, "y": "why"}).fetchone() == (42, "why", 41)
    assert connection.execute("SELECT ?2, ?1, ?2", ("a", "b")).fetchone() == ("b", "a", "b")
    assert connection.execute("SELECT ':x', ?", (3,)).fetchone() == (":x", 3)
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    connection.executemany("INSERT INTO t VALUES (:id, :name)", [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}])
    connection.commit()
    assert connection.execute("SELECT name FROM t ORDER BY id").fetchall() == [("one",), ("two",)]
    with pytest.raises(client.ProgrammingError, match="binding parameter :nope"):
        connection.execute("SELECT :nope", {})
    connection.close()


# -- rows and text -----------------------------------------------------------------------

def test_row_factory_gives_rows_by_name_and_accepts_sqlite3_row_and_any_callable(node):
    connection = _connect(node)
    connection.row_factory = client.Row
    row = connection.execute("SELECT 1 AS id, 'ann' AS Name").fetchone()
    assert row["id"] == 1 and row["name"] == row["NAME"] == row[1] == "ann"
    assert row.keys() == ["id", "Name"] and tuple(row) == (1, "ann") and len(row) == 2
    with pytest.raises(IndexError, match="no column named 'other'"):
        row["other"]
    connection.row_factory = sqlite3.Row   # sqlite3's own only takes sqlite3 cursors: ours stands in
    assert connection.execute("SELECT 2 AS n").fetchone()["n"] == 2
    connection.row_factory = lambda cursor, values: dict(zip((d[0] for d in cursor.description), values))
    assert connection.execute("SELECT 3 AS n, 4 AS m").fetchall() == [{"n": 3, "m": 4}]
    cursor = connection.cursor()
    cursor.row_factory = None
    assert cursor.execute("SELECT 5").fetchone() == (5,)
    with pytest.raises(TypeError, match="row_factory must be callable"):
        connection.row_factory = 7
    connection.close()


def test_text_factory_converts_text_values_only(node):
    connection = _connect(node)
    connection.text_factory = bytes
    assert connection.execute("SELECT 'é', 1, x'00'").fetchone() == ("é".encode(), 1, b"\x00")
    connection.text_factory = lambda data: data.decode().upper()
    assert connection.execute("SELECT 'abc'").fetchone() == ("ABC",)
    connection.close()


# -- transactions ------------------------------------------------------------------------

def _sent(node) -> list[str]:
    return [request.sql for _, request in node.requests if isinstance(request, (ExecSqlRequest, QuerySqlRequest))]


def test_isolation_level_and_begin_choose_the_implicit_begin(node):
    connection = _connect(node, begin="immediate")
    assert connection.isolation_level == "IMMEDIATE"
    connection.execute("CREATE TABLE t (x)")
    connection.execute("INSERT INTO t VALUES (1)")
    connection.commit()
    assert _sent(node)[-3:] == ["BEGIN IMMEDIATE", "INSERT INTO t VALUES (1)", "COMMIT"]
    connection.isolation_level = None          # autocommit: no BEGIN
    connection.execute("INSERT INTO t VALUES (2)")
    assert _sent(node)[-1] == "INSERT INTO t VALUES (2)" and not connection.in_transaction
    connection.isolation_level = "exclusive"
    connection.execute("DELETE FROM t")
    assert _sent(node)[-2] == "BEGIN EXCLUSIVE" and connection.in_transaction
    connection.rollback()
    with pytest.raises(ValueError, match="isolation_level must be"):
        connection.isolation_level = "SERIALIZABLE"
    connection.close()
    with pytest.raises(client.InterfaceError, match="begin must be"):
        _connect(node, begin="later")


def test_autocommit_attribute_follows_python_3_12(node):
    connection = _connect(node, autocommit=False)    # PEP 249: a transaction before any statement
    assert connection.execute("SELECT 1").fetchone() == (1,)
    assert connection.in_transaction and _sent(node)[-2:] == ["BEGIN", "SELECT 1"]
    connection.autocommit = True                     # commits the open transaction, as sqlite3 does
    assert _sent(node)[-1] == "COMMIT" and not connection.in_transaction
    connection.execute("CREATE TABLE t (x)")
    connection.execute("INSERT INTO t VALUES (1)")
    assert not connection.in_transaction
    connection.autocommit = client.LEGACY_TRANSACTION_CONTROL
    connection.execute("INSERT INTO t VALUES (2)")
    assert connection.in_transaction
    connection.commit()
    with pytest.raises(ValueError, match="autocommit must be"):
        connection.autocommit = "yes"
    connection.close()


def test_total_changes_counts_rows_changed_by_dml(node):
    connection = _connect(node, isolation_level=None)
    connection.execute("CREATE TABLE t (x)")
    connection.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    connection.execute("UPDATE t SET x = x + 1")
    connection.execute("SELECT * FROM t").fetchall()
    assert connection.total_changes == 6
    connection.close()


def test_iterdump_and_backup_read_the_leaders_files(node, tmp_path):
    connection = _connect(node)
    connection.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'it''s');")
    dumped = list(connection.iterdump())
    assert dumped[0] == "BEGIN TRANSACTION;" and dumped[-1] == "COMMIT;"
    assert "INSERT INTO \"t\" VALUES(1,'it''s');" in dumped
    target = sqlite3.connect(tmp_path / "copy.db")
    connection.backup(target)
    assert target.execute("SELECT * FROM t").fetchall() == [(1, "it's")]
    with pytest.raises(client.NotSupportedError, match="sqlite3.Connection"):
        connection.backup(connection)
    connection.close()


def test_user_functions_are_refused_because_they_would_not_run_on_the_leader(node):
    connection = _connect(node)
    for define in (lambda: connection.create_function("f", 1, abs), lambda: connection.create_aggregate("g", 1, object),
                   lambda: connection.create_collation("c", lambda a, b: 0)):
        with pytest.raises(client.NotSupportedError, match="would live in this client process .* leader"):
            define()
    assert client.sqlite_version_info == tuple(int(p) for p in apsw.sqlite_lib_version().split("."))[:3]
    connection.close()


# -- retries -----------------------------------------------------------------------------

def test_is_retryable_says_which_failures_applied_nothing():
    assert client.is_retryable(client.TransactionLostError("lost"))
    assert client.is_retryable(client.NoLeaderError("none"))
    assert client.is_retryable(client.OperationalError("busy snapshot", code=517))
    assert client.is_retryable(client.OperationalError("locked", code=5))
    assert not client.is_retryable(client.OutcomeUnknownError("maybe", code=10506))
    assert client.is_retryable(client.OutcomeUnknownError("maybe"), idempotent=True)
    assert not client.is_retryable(client.IntegrityError("unique", code=2067))
    assert not client.is_retryable(ValueError("not ours"))


def _failing_first(sql_to_fail: str, answers: list):
    """Fail the first len(answers) requests of `sql_to_fail` with those answers."""
    remaining = list(answers)

    def fail(sql, number):
        if sql == sql_to_fail and remaining:
            return remaining.pop(0)
        return None

    return fail


def _transfer(connection):
    (balance,) = connection.execute("SELECT balance FROM account WHERE id = 1").fetchone()
    connection.execute("UPDATE account SET balance = ? WHERE id = 1", (balance - 10,))
    return balance - 10


def _bank(tmp_path, fail) -> SqlNode:
    setup = sqlite3.connect(os.path.join(tmp_path, "app"))
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE account (id INTEGER PRIMARY KEY, balance INTEGER)")
    setup.execute("INSERT INTO account VALUES (1, 100)")
    setup.commit()
    setup.close()
    return SqlNode(tmp_path, fail)


def test_run_transaction_retries_busy_and_a_lost_transaction_and_applies_once(tmp_path):
    busy = [FailureResponse(code=517, message="database is locked")]
    node = _bank(tmp_path, _failing_first("UPDATE account SET balance = ? WHERE id = 1", [busy, [CLOSE]]))
    try:
        connection = _connect(node, begin="immediate")
        assert client.run_transaction(connection, _transfer) == 90
        assert connection.execute("SELECT balance FROM account").fetchone() == (90,)
        assert _sent(node).count("BEGIN IMMEDIATE") == 3 and _sent(node).count("COMMIT") == 1
        connection.close()
    finally:
        node.stop()


def test_run_transaction_does_not_retry_an_unknown_commit_unless_idempotent(tmp_path):
    node = _bank(tmp_path, _failing_first("COMMIT", [[FailureResponse(code=10506, message="leadership lost")]]))
    try:
        connection = _connect(node)
        with pytest.raises(client.OutcomeUnknownError):
            client.run_transaction(connection, _transfer)
        assert _sent(node).count("COMMIT") == 1
        node.fail = _failing_first("COMMIT", [[FailureResponse(code=10506, message="leadership lost")]])
        assert client.run_transaction(connection, lambda c: c.execute("SELECT 7").fetchone()[0], idempotent=True) == 7
        with pytest.raises(client.IntegrityError):   # not retryable: raised at once, rolled back
            client.run_transaction(connection, lambda c: c.execute("INSERT INTO account VALUES (1, 0)"))
        assert not connection.in_transaction
        with pytest.raises(ValueError, match="attempts must be a positive integer"):
            client.run_transaction(connection, _transfer, attempts=0)
        connection.close()
    finally:
        node.stop()


def test_run_transaction_gives_up_after_its_attempts(tmp_path):
    busy = [FailureResponse(code=5, message="database is locked")]
    node = _bank(tmp_path, _failing_first("UPDATE account SET balance = ? WHERE id = 1", [busy] * 10))
    try:
        connection = _connect(node)
        with pytest.raises(client.OperationalError, match="locked"):
            client.run_transaction(connection, _transfer, attempts=3)
        assert _sent(node).count("UPDATE account SET balance = ? WHERE id = 1") == 3
        connection.close()
    finally:
        node.stop()


# -- asyncio -----------------------------------------------------------------------------

def test_the_pool_gives_each_task_its_own_connection_and_transactions_do_not_mix(node):
    async def main():
        setup = await aio.connect(node.address, database="app", isolation_level=None)
        await setup.execute("CREATE TABLE t (task INTEGER, step INTEGER)")
        await setup.close()
        async with aio.create_pool(node.address, database="app", size=2, begin="immediate", timeout=5) as pool:
            in_use = []

            async def task(number: int):
                async def body(connection):
                    for step in range(3):
                        await connection.execute("INSERT INTO t VALUES (:task, :step)", {"task": number, "step": step})
                        await asyncio.sleep(0)
                async with pool.acquire() as connection:
                    in_use.append(id(connection))
                    await aio.run_transaction(connection, body)

            await asyncio.gather(*(task(number) for number in range(6)))
            assert len(set(in_use)) <= 2 and pool._opened <= 2
            async with pool.acquire() as connection:
                await connection.execute("INSERT INTO t VALUES (99, 0)")   # left open: rolled back on release
            async with pool.acquire() as connection:
                rows = await (await connection.execute("SELECT count(*) FROM t")).fetchone()
                dumped = await connection.iterdump()
        assert pool.closed
        with pytest.raises(client.InterfaceError, match="pool is closed"):
            async with pool.acquire():
                pass
        return rows, dumped

    rows, dumped = asyncio.run(main())
    assert rows == (18,)
    assert any(line.startswith('CREATE TABLE t') for line in dumped)
    assert _sent(node).count("BEGIN IMMEDIATE") >= 7


def test_create_pool_reports_a_bad_address_at_once():
    with pytest.raises(client.InterfaceError):
        aio.create_pool("not-an-address", size=2)
    with pytest.raises(client.InterfaceError, match="pool size"):
        aio.create_pool("127.0.0.1:1", size=0)


def test_executescript_commits_first_and_adds_no_begin_under_legacy_control(node):
    connection = _connect(node)
    connection.execute("CREATE TABLE t (x)")
    connection.execute("INSERT INTO t VALUES (1)")
    assert connection.in_transaction
    script = "INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);"
    connection.executescript(script)
    assert _sent(node)[-2:] == ["COMMIT", script] and not connection.in_transaction
    connection.executescript("BEGIN; INSERT INTO t VALUES (4);")
    assert connection.in_transaction       # the script's own BEGIN is tracked
    connection.rollback()
    pep249 = _connect(node, autocommit=False)
    pep249.executescript("INSERT INTO t VALUES (5);")
    assert pep249.in_transaction and _sent(node)[-2] == "BEGIN"
    pep249.rollback()
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (3,)
    connection.close()
    pep249.close()


def test_the_asyncio_run_transaction_is_the_same_loop(tmp_path):
    node = _bank(tmp_path, _failing_first("UPDATE account SET balance = ? WHERE id = 1", [[CLOSE]]))

    async def transfer(connection):
        cursor = await connection.execute("SELECT balance FROM account WHERE id = 1")
        (balance,) = await cursor.fetchone()
        await connection.execute("UPDATE account SET balance = ? WHERE id = 1", (balance - 10,))
        return balance - 10

    async def main():
        connection = await aio.connect(node.address, database="app", timeout=3)
        try:
            applied = await aio.run_transaction(connection, transfer)
            cursor = await connection.execute("SELECT balance FROM account")
            return applied, await cursor.fetchone()
        finally:
            await connection.close()

    try:
        assert asyncio.run(main()) == (90, (90,))
        assert _sent(node).count("BEGIN") == 2 and _sent(node).count("COMMIT") == 1
    finally:
        node.stop()
