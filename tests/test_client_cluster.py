"""The raftlite client (DB-API, asyncio, shell) against a REAL 3-node cluster.

The `cluster` fixture is parametrized by server kind; today only "dqlite" (Debian's
dqlite-demo, tests/dqlite_cluster.py). A raftlite cluster helper with the same methods
(`addresses`, `leader_address()`, `kill()`, `restart()`, `stop()`) becomes a second
parameter; tests that rely on a dqlite 1.11 quirk say so.
"""

import asyncio
import datetime
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import raftlite.client as client
from raftlite.client import aio
from raftlite.client.connection import Connection as NodeConnection, RequestFailed
from raftlite.core.wire import ErrorCode

pytestmark = pytest.mark.timeout(120)


import dqlite_cluster  # noqa: E402  (tests/ is on sys.path, see conftest.py)
from raftlite_cluster import RaftliteCluster  # noqa: E402

CLUSTER_KINDS = {"dqlite": dqlite_cluster.DqliteCluster, "raftlite": RaftliteCluster}


@pytest.fixture(scope="module", params=["dqlite", "raftlite"])
def cluster(request, tmp_path_factory):
    started = CLUSTER_KINDS[request.param].start(tmp_path_factory.mktemp(f"{request.param}-cluster"))
    yield started
    dead = [node.address for node in started.nodes if not node.alive()]
    started.stop()
    assert not dead, f"nodes died during the tests: {dead}"


def _followers(cluster) -> list[str]:
    leader = cluster.wait_for_leader()
    return [address for address in cluster.addresses if address != leader]


TYPES_TABLE = ("CREATE TABLE IF NOT EXISTS types (i INTEGER, f REAL, s TEXT, b BLOB, n, d DATETIME, "
               "day DATE, flag BOOLEAN)")


def test_every_type_round_trips(cluster):
    connection = client.connect(cluster.addresses, database="types", timeout=10)
    cursor = connection.cursor()
    cursor.execute(TYPES_TABLE)
    moment = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456)
    rows = [
        (1, 1.5, "héllo ✓", b"\x00\x01\xff", None, moment, datetime.date(2024, 3, 1), True),
        (-(1 << 63), -0.0, "", b"", None, None, None, False),
        ((1 << 63) - 1, 1e308, "x" * 5000, bytes(range(256)) * 20, None, None, None, None),
    ]
    cursor.executemany("INSERT INTO types VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    assert cursor.rowcount == 3 and cursor.lastrowid == 3
    connection.commit()
    cursor.execute("INSERT INTO types (i, d) VALUES (?, ?)", (4, 1_700_000_000))   # an integer date: UNIXTIME
    connection.commit()
    cursor.execute("SELECT i, f, s, b, n, d, day, flag FROM types ORDER BY rowid")
    assert [column[0] for column in cursor.description] == ["i", "f", "s", "b", "n", "d", "day", "flag"]
    assert cursor.description[0][1] == client.NUMBER and cursor.description[2][1] == client.STRING
    assert cursor.description[3][1] == client.BINARY and cursor.description[5][1] == client.DATETIME
    fetched = cursor.fetchall()
    assert fetched[0] == (1, 1.5, "héllo ✓", b"\x00\x01\xff", None, moment,
                          datetime.datetime(2024, 3, 1), True)
    # dqlite 1.11 sends a NULL in a BOOLEAN column as false (raftlite sends NULL).
    assert fetched[1][:7] == (-(1 << 63), -0.0, "", b"", None, None, None) and fetched[1][7] is False
    assert fetched[2][:4] == ((1 << 63) - 1, 1e308, "x" * 5000, bytes(range(256)) * 20)
    assert fetched[3][5] == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc)
    assert cursor.fetchone() is None
    cursor.execute("SELECT i FROM types ORDER BY rowid")
    assert cursor.fetchone() == (1,) and cursor.fetchmany(2) == [(-(1 << 63),), ((1 << 63) - 1,)]
    assert list(cursor) == [(4,)]
    connection.close()


def test_transactions_commit_and_roll_back(cluster):
    connection = client.connect(cluster.addresses, database="transactions", timeout=10)
    observer = client.connect(cluster.addresses, database="transactions", timeout=10, autocommit=True)
    connection.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER UNIQUE)")
    connection.execute("INSERT INTO t VALUES (1)")
    assert connection.in_transaction
    assert observer.execute("SELECT count(*) FROM t").fetchone() == (0,)   # not committed yet
    connection.rollback()
    assert not connection.in_transaction
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (0,)
    with connection:
        connection.execute("INSERT INTO t VALUES (2)")
        connection.execute("INSERT INTO t VALUES (3)")
    assert observer.execute("SELECT x FROM t ORDER BY x").fetchall() == [(2,), (3,)]
    with pytest.raises(ZeroDivisionError), connection:
        connection.execute("INSERT INTO t VALUES (4)")
        raise ZeroDivisionError
    assert observer.execute("SELECT count(*) FROM t").fetchone() == (2,)
    # An SQL error inside a transaction keeps the transaction (as in SQLite).
    connection.execute("INSERT INTO t VALUES (5)")
    with pytest.raises(client.IntegrityError) as raised:
        connection.execute("INSERT INTO t VALUES (2)")
    assert raised.value.sqlite_errorcode == 2067 and connection.in_transaction
    connection.commit()
    assert observer.execute("SELECT x FROM t ORDER BY x").fetchall() == [(2,), (3,), (5,)]
    # Explicit BEGIN ... COMMIT in autocommit mode.
    observer.execute("BEGIN")
    assert observer.in_transaction
    observer.execute("DELETE FROM t WHERE x = 5")
    observer.execute("COMMIT")
    assert not observer.in_transaction
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (2,)
    connection.close()
    observer.close()


def test_errors_carry_sqlite_codes_and_misuse_is_a_programming_error(cluster):
    connection = client.connect(cluster.addresses, database="errors", timeout=10, autocommit=True)
    with pytest.raises(client.OperationalError, match="syntax error") as raised:
        connection.execute("SELEC 1")
    assert raised.value.sqlite_errorcode == 1 and raised.value.sqlite_errorname == "SQLITE_ERROR"
    with pytest.raises(client.OperationalError, match="no such table"):
        connection.execute("SELECT * FROM missing")
    with pytest.raises(client.ProgrammingError, match="one statement"):
        connection.execute("SELECT 1; SELECT 2")
    cursor = connection.execute("CREATE TABLE IF NOT EXISTS e (x NOT NULL)")
    with pytest.raises(client.ProgrammingError, match="no result set"):
        cursor.fetchall()
    with pytest.raises(client.IntegrityError, match="NOT NULL"):
        connection.execute("INSERT INTO e VALUES (?)", (None,))
    connection.executescript("INSERT INTO e VALUES (1); INSERT INTO e VALUES (2);")
    assert connection.execute("SELECT sum(x) FROM e").fetchone() == (3,)
    connection.close()
    with pytest.raises(client.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


def test_a_follower_refuses_a_write_with_10250_and_the_client_finds_the_leader(cluster):
    follower = _followers(cluster)[0]
    with NodeConnection.connect(follower, timeout_s=5) as raw:
        raw.client(1)
        db_id = raw.open("followers")
        with pytest.raises(RequestFailed) as refused:
            raw.exec_sql(db_id, "CREATE TABLE t (x)")
        assert refused.value.code == ErrorCode.NOT_LEADER
    connection = client.connect(",".join(_followers(cluster)), database="followers", timeout=10, autocommit=True)
    connection.execute("CREATE TABLE IF NOT EXISTS t (x)")
    connection.execute("INSERT INTO t VALUES (?)", ("via a follower",))
    assert connection.session.connected_to == cluster.wait_for_leader()
    assert connection.execute("SELECT x FROM t").fetchall()[-1] == ("via a follower",)
    assert {node.address for node in connection.cluster()} == set(cluster.addresses)
    assert connection.leader().address == cluster.wait_for_leader()
    connection.close()


def test_asyncio_api_behaves_like_the_dbapi(cluster):
    async def scenario():
        connection = await aio.connect(",".join(_followers(cluster)), database="asyncio", timeout=10)
        await connection.execute(TYPES_TABLE)
        moment = datetime.datetime(2023, 1, 2, 3, 4, 5)
        async with connection:
            await connection.execute("INSERT INTO types (i, s, b, d, flag) VALUES (?, ?, ?, ?, ?)",
                                     (7, "seven", b"\x07", moment, True))
            assert connection.in_transaction
        await connection.execute("INSERT INTO types (i) VALUES (8)")
        await connection.rollback()
        cursor = await connection.execute("SELECT i, s, b, d, flag FROM types")
        rows = await cursor.fetchall()
        assert rows == [(7, "seven", b"\x07", moment, True)]
        cursor = await connection.executemany("INSERT INTO types (i) VALUES (?)", [(9,), (10,)])
        assert cursor.rowcount == 2
        await connection.commit()
        cursor = await connection.execute("SELECT i FROM types ORDER BY i")
        assert [row async for row in cursor] == [(7,), (9,), (10,)]
        with pytest.raises(client.OperationalError, match="syntax error"):
            await connection.execute("SELEC 1")
        assert len(await connection.cluster()) == 3
        await connection.close()

    asyncio.run(scenario())


# -- the shell ---------------------------------------------------------------------------

def _shell(cluster, *arguments: str, stdin: str | None = None, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raftlite", "shell", "-s", ",".join(cluster.addresses), *arguments],
        input=stdin, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(home)},
    )


def test_shell_one_shot_tabular_and_json(cluster, tmp_path):
    setup = _shell(cluster, "shell", "CREATE TABLE IF NOT EXISTS t (n INTEGER, s TEXT, b BLOB); "
                   "INSERT INTO t VALUES (1, 'one', x'0a0b'); INSERT INTO t VALUES (2, NULL, NULL);",
                   home=tmp_path)
    assert setup.returncode == 0, setup.stderr
    assert setup.stdout == ""
    tabular = _shell(cluster, "shell", "SELECT n, s, b FROM t ORDER BY n", home=tmp_path)
    assert tabular.returncode == 0, tabular.stderr
    assert tabular.stdout.splitlines() == ["n  s     b", "1  one   X'0A0B'", "2  NULL  NULL"]
    as_json = _shell(cluster, "--format", "json", "shell", "SELECT n, s, b FROM t ORDER BY n", home=tmp_path)
    assert json.loads(as_json.stdout) == [{"n": 1, "s": "one", "b": "0a0b"}, {"n": 2, "s": None, "b": None}]
    members = json.loads(_shell(cluster, "--format", "json", "shell", ".cluster", home=tmp_path).stdout)
    assert {member["address"] for member in members} == set(cluster.addresses)
    assert {member["role"] for member in members} == {"voter"}
    leader = _shell(cluster, "shell", ".leader", home=tmp_path)
    assert leader.stdout.strip() == cluster.wait_for_leader()
    failed = _shell(cluster, "shell", "SELECT * FROM missing", home=tmp_path)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.strip() == "Error: no such table: missing"


def test_shell_dot_commands_and_interactive_input(cluster, tmp_path):
    members = json.loads(_shell(cluster, "--format", "json", "dump", ".cluster", home=tmp_path).stdout)
    follower = next(member for member in members if member["address"] != cluster.wait_for_leader())
    weight = _shell(cluster, "dump", f".weight {follower['id']} 7", home=tmp_path)
    assert weight.returncode == 0, weight.stderr
    described = _shell(cluster, "dump", f".describe {follower['address']}", home=tmp_path)
    assert described.stdout.strip() == f"{follower['address']}|0|7"
    # Interactive: a statement over several lines, a dot-command, an error that does not stop the session.
    session = _shell(cluster, "dump", stdin=(
        "CREATE TABLE IF NOT EXISTS kv (k TEXT,\n v INTEGER);\n"
        "INSERT INTO kv VALUES\n ('a', 1),\n ('b', 2);\n"
        "SELEC oops;\n"
        ".bogus\n"
        "SELECT k, v FROM kv\n ORDER BY k;\n"
        ".quit\n"
        "SELECT 'not reached';\n"), home=tmp_path)
    assert session.returncode == 0
    assert session.stdout.splitlines() == ["k  v", "a  1", "b  2"]
    errors = [line for line in session.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and "syntax error" in errors[0] and ".bogus" in errors[1]
    # .dump FILE writes the database files; .dump alone prints SQL.
    target = tmp_path / "copy.db"
    dumped = _shell(cluster, "dump", f".dump {target}", home=tmp_path)
    assert dumped.returncode == 0, dumped.stderr
    with sqlite3.connect(target) as copy:
        assert copy.execute("SELECT k, v FROM kv ORDER BY k").fetchall() == [("a", 1), ("b", 2)]
    text = _shell(cluster, "dump", ".dump", home=tmp_path)
    assert "CREATE TABLE kv (k TEXT,\n v INTEGER);" in text.stdout
    assert "INSERT INTO \"kv\" VALUES('a',1);" in text.stdout
    usage = _shell(cluster, "dump", ".weight nobody 1", home=tmp_path)
    assert usage.returncode == 1 and usage.stderr.strip() == "Error: no member has id or address 'nobody' (see .cluster)"
