"""The client idle timeout (issue 14, item 3): a dqlite client connection idle past
`raftlite node --client-idle-timeout` is closed, so idle sockets cannot hold the client
connection limit; its open transaction is rolled back, as when a client goes away."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raftlite.client.connection import Connection, ConnectionBroken, RequestFailed
from raftlite.core.wire import ErrorCode
from raftlite.process_cluster import free_ports

pytestmark = [pytest.mark.real_cluster, pytest.mark.timeout(90)]

IDLE_TIMEOUT_S = 1.0
START_TIMEOUT_S = 30.0


class _NodeUnderTest:
    """One bootstrapped `raftlite node` process with a short client idle timeout."""

    def __init__(self, directory: Path, idle_timeout: str) -> None:
        (port,) = free_ports(1)
        self.address = f"127.0.0.1:{port}"
        self.log_path = directory / "node.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "raftlite", "node", "--id", "1", "--address", self.address,
             "--data-dir", str(directory / "data"), "--client-idle-timeout", idle_timeout],
            stdout=self.log, stderr=self.log, start_new_session=True,
        )

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with Connection.connect(self.address, timeout_s=5) as connection:
                    db = connection.open("app")
                    connection.exec_sql(db, "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
                return
            except (ConnectionBroken, RequestFailed, TimeoutError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(self.log_text()) from None
                time.sleep(0.2)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.log.close()


@pytest.fixture
def node(tmp_path):
    node = _NodeUnderTest(tmp_path, str(IDLE_TIMEOUT_S))
    try:
        node.wait_serving()
        yield node
    finally:
        node.stop()


def _closed_for_idleness(connection: Connection, db: int) -> None:
    """The idle connection's next request reads the node's FAILURE (10250: reconnect)."""
    assert connection.peer_closed()   # what a pool checks before reusing a connection
    with pytest.raises(RequestFailed) as failure:
        connection.query_sql(db, "SELECT 1")
    assert failure.value.code == ErrorCode.NOT_LEADER
    assert "idle" in failure.value.message
    with pytest.raises(ConnectionBroken):   # and nothing after it: the connection is over
        connection.query_sql(db, "SELECT 1")


def test_an_idle_client_is_closed_and_an_active_one_is_not(node):
    idle = Connection.connect(node.address, timeout_s=5)
    active = Connection.connect(node.address, timeout_s=5)
    try:
        idle_db = idle.open("app")
        active_db = active.open("app")
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < 3 * IDLE_TIMEOUT_S:   # a request every 0.3 s
            active.exec_sql(active_db, "INSERT INTO t (v) VALUES ('active')")
            answered += 1
            time.sleep(0.3)
        assert answered >= 9
        assert not active.peer_closed()
        assert active.query_sql(active_db, "SELECT count(*) FROM t WHERE v = 'active'").rows[0][0] == answered
        _closed_for_idleness(idle, idle_db)
        assert node.process.poll() is None
        assert "idle for 1 s (client idle timeout)" in node.log_text()
    finally:
        idle.close()
        active.close()


def test_an_idle_client_s_transaction_is_rolled_back(node):
    holder = Connection.connect(node.address, timeout_s=5)
    writer = Connection.connect(node.address, timeout_s=10)
    try:
        holder_db = holder.open("app")
        holder.exec_sql(holder_db, "BEGIN")
        holder.exec_sql(holder_db, "INSERT INTO t (k, v) VALUES (7, 'held')")
        writer_db = writer.open("app")
        # The holder's open write transaction keeps another writer out until the node
        # closes the idle holder (after 1 s; the transaction's own idle limit,
        # Config.transaction_idle_timeout_ms, is 30 s).
        started = time.monotonic()
        outcome: list[BaseException | None] = []

        def write_the_same_row() -> None:
            deadline = started + 10
            while True:
                try:
                    writer.exec_sql(writer_db, "INSERT INTO t (k, v) VALUES (7, 'writer')")
                    outcome.append(None)
                    return
                except RequestFailed as failure:
                    if failure.code & 0xFF != 5 or time.monotonic() > deadline:   # SQLITE_BUSY: retry
                        outcome.append(failure)
                        return
                    time.sleep(0.1)
                except Exception as error:   # noqa: BLE001 - reported by the assertion below
                    outcome.append(error)
                    return

        thread = threading.Thread(target=write_the_same_row)
        thread.start()
        thread.join(15)
        elapsed = time.monotonic() - started
        assert not thread.is_alive()
        assert outcome == [None], outcome
        assert elapsed < 10, elapsed
        rows = writer.query_sql(writer_db, "SELECT v FROM t WHERE k = 7").rows
        assert [tuple(row) for row in rows] == [("writer",)]   # the held row was rolled back
        _closed_for_idleness(holder, holder_db)
    finally:
        holder.close()
        writer.close()


def test_zero_means_never(tmp_path):
    node = _NodeUnderTest(tmp_path, "0")
    try:
        node.wait_serving()
        with Connection.connect(node.address, timeout_s=5) as connection:
            db = connection.open("app")
            time.sleep(2.5)
            assert not connection.peer_closed()
            assert connection.query_sql(db, "SELECT 1").rows[0][0] == 1
    finally:
        node.stop()
