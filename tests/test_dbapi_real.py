"""The DB-API's sqlite3 behaviour end to end against REAL 3-node clusters (raftlite's
and Debian's dqlite-demo): parameters of every style as the wire carries them,
row_factory, isolation_level / begin, the BUSY_SNAPSHOT a deferred read-then-write
transaction meets and what avoids it, iterdump / backup, run_transaction and the
asyncio pool under concurrent transfers."""

import asyncio
import sqlite3
import threading

import pytest

import raftlite.client as client
from raftlite.client import aio

import dqlite_cluster  # noqa: E402  (tests/ is on sys.path, see conftest.py)
from raftlite_cluster import RaftliteCluster  # noqa: E402

pytestmark = pytest.mark.timeout(120)

CLUSTER_KINDS = {"dqlite": dqlite_cluster.DqliteCluster, "raftlite": RaftliteCluster}


@pytest.fixture(scope="module", params=["raftlite", "dqlite"])
def cluster(request, tmp_path_factory):
    started = CLUSTER_KINDS[request.param].start(tmp_path_factory.mktemp(f"{request.param}-dbapi"))
    yield started
    started.stop()


def test_named_numeric_and_qmark_parameters_and_row_factory(cluster):
    connection = client.connect(cluster.addresses, database="params", timeout=10)
    connection.execute("CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER)")
    connection.executemany("INSERT INTO people VALUES (:id, :name, :age)",
                           [{"id": 1, "name": "ann", "age": 31}, {"id": 2, "name": "bob", "age": 42}])
    connection.execute("INSERT INTO people VALUES (?3, ?1, ?2)", ("cy", 53, 3))
    connection.execute("INSERT INTO people VALUES ($id, @name, $id * 10)", {"id": 4, "name": "di"})
    connection.commit()
    assert connection.total_changes == 4
    connection.row_factory = client.Row
    rows = connection.execute("SELECT * FROM people WHERE age > :age ORDER BY id", {"age": 35}).fetchall()
    assert [(row["id"], row["NAME"], row["age"]) for row in rows] == [(2, "bob", 42), (3, "cy", 53), (4, "di", 40)]
    assert connection.execute("SELECT ':not_a_parameter', ?", (1,)).fetchone()[0] == ":not_a_parameter"
    connection.close()


def _balance(connection) -> int:
    return connection.execute("SELECT balance FROM account WHERE id = 1").fetchone()[0]


def test_deferred_read_then_write_meets_busy_snapshot_and_immediate_waits_instead(cluster):
    setup = client.connect(cluster.addresses, database="busy", timeout=10, isolation_level=None)
    setup.execute("CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY, balance INTEGER)")
    setup.execute("INSERT OR REPLACE INTO account VALUES (1, 100)")
    deferred = client.connect(cluster.addresses, database="busy", timeout=10)
    deferred.execute("BEGIN")
    assert _balance(deferred) == 100          # the read takes a snapshot
    setup.execute("UPDATE account SET balance = balance + 1 WHERE id = 1")   # another writer commits
    with pytest.raises(client.OperationalError) as raised:
        deferred.execute("UPDATE account SET balance = ? WHERE id = 1", (_balance(deferred) - 10,))
    assert raised.value.sqlite_errorcode == 517 and raised.value.sqlite_errorname == "SQLITE_BUSY_SNAPSHOT"
    assert client.is_retryable(raised.value)
    deferred.rollback()

    immediate = client.connect(cluster.addresses, database="busy", timeout=10, begin="immediate")
    immediate.begin()                          # BEGIN IMMEDIATE: the write lock, before the read
    before = _balance(immediate)
    other = threading.Thread(target=lambda: setup.execute("UPDATE account SET balance = balance + 1 WHERE id = 1"))
    other.start()                              # refused BUSY (nothing applied) and retried by the client
    immediate.execute("UPDATE account SET balance = ? WHERE id = 1", (before - 10,))
    immediate.commit()
    other.join(timeout=30)
    assert not other.is_alive()
    assert _balance(setup) == before - 10 + 1
    for connection in (setup, deferred, immediate):
        connection.close()


def test_run_transaction_makes_racing_read_then_write_transfers_exact(cluster):
    setup = client.connect(cluster.addresses, database="race", timeout=10, isolation_level=None)
    setup.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
    setup.execute("INSERT OR REPLACE INTO counter VALUES (1, 0)")
    errors = []

    def increment(connection):
        (n,) = connection.execute("SELECT n FROM counter WHERE id = 1").fetchone()
        connection.execute("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))

    def worker():
        connection = client.connect(cluster.addresses, database="race", timeout=20)
        try:
            for _ in range(10):
                client.run_transaction(connection, increment, attempts=50)
        except client.Error as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors[:3]
    assert setup.execute("SELECT n FROM counter").fetchone() == (30,)
    setup.close()


def test_iterdump_and_backup(cluster, tmp_path):
    connection = client.connect(cluster.addresses, database="dumped", timeout=10)
    connection.executescript("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT);"
                             "INSERT OR REPLACE INTO notes VALUES (1, 'it''s replicated');")
    lines = list(connection.iterdump())
    assert "INSERT INTO \"notes\" VALUES(1,'it''s replicated');" in lines
    copy = sqlite3.connect(tmp_path / "copy.db")
    connection.backup(copy)
    assert copy.execute("SELECT text FROM notes").fetchall() == [("it's replicated",)]
    copy.close()
    connection.close()


def test_the_asyncio_pool_runs_concurrent_transfers_and_keeps_the_total(cluster):
    async def main():
        setup = await aio.connect(cluster.addresses, database="pool", timeout=10, isolation_level=None)
        await setup.execute("CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY, balance INTEGER)")
        await setup.execute("DELETE FROM account")
        await setup.executemany("INSERT INTO account VALUES (?, ?)", [(n, 100) for n in range(5)])
        await setup.close()
        async with aio.create_pool(cluster.addresses, database="pool", size=3, timeout=20) as pool:
            async def transfer(number: int):
                source, target = number % 5, (number * 3 + 1) % 5

                async def body(connection):
                    cursor = await connection.execute("SELECT balance FROM account WHERE id = :id", {"id": source})
                    (balance,) = await cursor.fetchone()
                    await connection.execute("UPDATE account SET balance = :b WHERE id = :id",
                                             {"b": balance - 1, "id": source})
                    await connection.execute("UPDATE account SET balance = balance + 1 WHERE id = ?", (target,))

                async with pool.acquire() as connection:
                    await aio.run_transaction(connection, body, attempts=50)

            await asyncio.gather(*(transfer(number) for number in range(24)))
            async with pool.acquire() as connection:
                cursor = await connection.execute("SELECT sum(balance), count(*) FROM account")
                return await cursor.fetchone(), pool._opened

    (total, accounts), opened = asyncio.run(main())
    assert (total, accounts) == (500, 5) and opened <= 3
