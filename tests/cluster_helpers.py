"""Test helpers on top of raftlite.process_cluster (the node processes themselves: start,
SIGTERM, SIGKILL, SIGSTOP / SIGCONT and restart by PID, the leader, convergence, DUMPs):
the tests' `app` database and its `kv` table, a writer thread that follows the leader and
records every write's outcome, the checks of a history against DUMPs, and a node killed
the moment a file appears or goes. Loaded by name (tests/conftest.py puts tests/ on
sys.path).

Outcomes of a write, as Jepsen records them:
- "ok": the leader acknowledged it: it must be present on every node, forever;
- "failed": certainly not applied (10250 not leader, or an SQL error): it must never appear;
- "unknown": 10506 leadership lost, or the connection broke after the request was sent:
  it may or may not be present.
"""

import ctypes
import ctypes.util
import os
import select
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from raftlite import process_cluster
from raftlite.client.connection import Connection, ConnectionBroken, RequestFailed
from raftlite.core.wire import WireProtocolError
from raftlite.process_cluster import ClusterError, NodeProcess

__all__ = ["ClusterError", "IN_DELETE", "KillOnFile", "NodeProcess", "ProcessCluster", "TABLE_SQL", "Writer",
           "check_history", "check_same_everywhere", "send_and_read_to_end"]

NOT_LEADER = 10250
LEADERSHIP_LOST = 10506
DATABASE = "app"
TABLE_SQL = "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"
KV_ROWS_SQL = "SELECT k, v FROM kv ORDER BY k"


class ProcessCluster(process_cluster.ProcessCluster):
    """raftlite.process_cluster's cluster with the tests' SQL on the `app` database."""

    def connect_leader(self, timeout_s: float = 30.0) -> tuple[Connection, int]:
        """A connection to the current leader with the database open: (connection, db id)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            connection = _leader_connection(self.addresses())
            if connection is not None:
                try:
                    return connection, connection.open(DATABASE)
                except (RequestFailed, ConnectionBroken, OSError, WireProtocolError):
                    connection.close()
            time.sleep(0.05)
        raise ClusterError(f"no leader connection within {timeout_s} s\n{self.logs()}")

    def execute(self, sql: str, params: tuple = (), timeout_s: float = 30.0) -> None:
        """Runs one statement on the leader, retrying only refusals that were certainly not applied."""
        deadline = time.monotonic() + timeout_s
        while True:
            connection, db = self.connect_leader(max(1.0, deadline - time.monotonic()))
            try:
                connection.exec_sql(db, sql, params)
                return
            except RequestFailed as error:
                if error.code != NOT_LEADER or time.monotonic() > deadline:
                    raise
            finally:
                connection.close()

    def kv_rows(self, node_id: int, sql: str = KV_ROWS_SQL) -> list[tuple]:
        """The rows `sql` selects from a DUMP of the node's `app` database."""
        return self.dump_rows(node_id, sql, database=DATABASE)

    def dumps(self, nodes: list[int] | None = None) -> dict[int, list[tuple]]:
        return {node_id: self.kv_rows(node_id) for node_id in (nodes or self.running())}


def _leader_connection(addresses: list[str]) -> Connection | None:
    for address in addresses:
        try:
            with Connection.connect(address, timeout_s=2.0) as probe:
                leader = probe.leader()
            if leader is None:
                continue
            return Connection.connect(leader.address, timeout_s=5.0)
        except (ConnectionBroken, RequestFailed, OSError, WireProtocolError):
            continue
    return None


# -- the writer ------------------------------------------------------------------------------


@dataclass
class Writer:
    """A thread writing unique keys to whoever leads, one at a time, recording outcomes."""

    cluster: ProcessCluster
    prefix: str = "w"
    value_bytes: int = 100
    pause_s: float = 0.0
    request_timeout_s: float = 5.0
    outcomes: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> "Writer":
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.request_timeout_s + 10)
            assert not self._thread.is_alive(), "the writer thread did not stop"

    def keys(self, outcome: str) -> set[str]:
        with self._lock:
            return {key for key, seen in self.outcomes.items() if seen == outcome}

    def count(self, outcome: str) -> int:
        with self._lock:
            return sum(1 for seen in self.outcomes.values() if seen == outcome)

    def _record(self, key: str, outcome: str, error: str | None = None) -> None:
        with self._lock:
            self.outcomes[key] = outcome
            if error is not None:
                self.errors[key] = error

    def wait_acknowledged(self, count: int, timeout_s: float = 60.0) -> None:
        """Waits until `count` more writes were acknowledged."""
        target = self.count("ok") + count
        deadline = time.monotonic() + timeout_s
        while self.count("ok") < target:
            if time.monotonic() > deadline:
                raise ClusterError(f"only {self.count('ok')} of {target} writes acknowledged within {timeout_s} s "
                                   f"(outcomes {self.summary()})\n{self.cluster.logs()}")
            time.sleep(0.05)

    def summary(self) -> dict[str, int]:
        return {outcome: self.count(outcome) for outcome in ("ok", "failed", "unknown")}

    def _run(self) -> None:
        sequence = 0
        connection = None
        value = "v" * self.value_bytes
        while not self._stop.is_set():
            if connection is None:
                connection = _leader_connection(self.cluster.addresses())
                if connection is None:
                    time.sleep(0.05)
                    continue
                connection.timeout_s = self.request_timeout_s
                try:
                    db = connection.open(DATABASE)
                except (RequestFailed, ConnectionBroken, OSError, WireProtocolError):
                    connection.close()
                    connection = None
                    time.sleep(0.05)
                    continue
            sequence += 1
            key = f"{self.prefix}{sequence:07d}"
            try:
                connection.exec_sql(db, "INSERT INTO kv (k, v) VALUES (?, ?)", (key, value))
                self._record(key, "ok")
            except RequestFailed as error:
                self._record(key, "unknown" if error.code == LEADERSHIP_LOST else "failed", str(error))
                if error.code in (NOT_LEADER, LEADERSHIP_LOST):
                    connection.close()
                    connection = None
                time.sleep(0.05)   # e.g. the others still name a leader that just restarted
            except (ConnectionBroken, OSError, WireProtocolError) as error:
                self._record(key, "unknown", f"{type(error).__name__}: {error}")
                connection.close()
                connection = None
            if self.pause_s:
                time.sleep(self.pause_s)
        if connection is not None:
            connection.close()


def check_history(writer: Writer, rows: list[tuple]) -> None:
    """Every acknowledged write is present; no write that certainly failed is."""
    present = {row[0] for row in rows if row[0].startswith(writer.prefix)}
    lost = writer.keys("ok") - present
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:5]}"
    phantom = writer.keys("failed") & present
    assert not phantom, (f"{len(phantom)} writes that failed are present, e.g. "
                         f"{[(key, writer.errors[key]) for key in sorted(phantom)[:5]]}")
    unexpected = present - set(writer.outcomes)
    assert not unexpected, f"rows nobody wrote: {sorted(unexpected)[:5]}"


def check_same_everywhere(dumps: dict[int, list[tuple]]) -> list[tuple]:
    first_node, first = next(iter(dumps.items()))
    for node_id, rows in dumps.items():
        if rows != first:
            only_here = set(rows) - set(first)
            only_there = set(first) - set(rows)
            raise AssertionError(f"node {node_id}'s DUMP differs from node {first_node}'s: "
                                 f"{len(only_here)} rows only on {node_id}, {len(only_there)} only on {first_node}")
    return first


# -- killing a node the moment a file appears or goes (inotify) -------------------------------

IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")


class KillOnFile:
    """SIGKILLs `node` the moment a file whose name starts with `prefix` is created (or,
    with `mask=IN_DELETE`, deleted) in its data directory: inotify, so within
    microseconds rather than a polling interval. `fired` is set once it did; `name` is
    the file that triggered it. Arm it right after starting the node."""

    def __init__(self, node: NodeProcess, prefix: str, mask: int = IN_CREATE | IN_MOVED_TO) -> None:
        self.node = node
        self.prefix = prefix
        self.name: str | None = None
        self.fired = threading.Event()
        self._done = threading.Event()
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = libc.inotify_init1(_IN_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self._fd, str(node.data_dir).encode(), mask) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {node.data_dir}")
        self._thread = threading.Thread(target=self._watch, name=f"kill-on-{prefix}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        pid = self.node.pid
        try:
            while not self._done.is_set():
                readable, _, _ = select.select([self._fd], [], [], 0.05)
                if not readable:
                    continue
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    continue
                offset = 0
                while offset < len(data):
                    _, _, _, length = _EVENT.unpack_from(data, offset)
                    name = data[offset + _EVENT.size: offset + _EVENT.size + length].split(b"\0", 1)[0].decode()
                    offset += _EVENT.size + length
                    if name.startswith(self.prefix):
                        os.kill(pid, signal.SIGKILL)
                        self.name = name
                        self.fired.set()
                        return
        finally:
            os.close(self._fd)

    def wait(self, timeout_s: float) -> bool:
        return self.fired.wait(timeout_s)

    def cancel(self) -> None:
        self._done.set()
        self._thread.join(2)


def send_and_read_to_end(sock, data: bytes) -> bytes:
    """Send `data` on `sock`, close our side, and read until the node closes (the socket's
    timeout bounds each read). A node that closed first, refusing, gives b""."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        return b""
    received = b""
    try:
        while chunk := sock.recv(1 << 16):
            received += chunk
    except ConnectionResetError:
        pass
    return received

