"""Real `raftlite node` processes on loopback, driven from a test: start, SIGTERM, SIGKILL,
SIGSTOP / SIGCONT and restart nodes by PID; find the leader; a writer thread that follows
the leader and records every write's outcome; DUMP every node and compare.

Every node runs in its own process session (start_new_session=True), listens on a free
127.0.0.1 port, logs to `<directory>/node<ID>.log`, and is killed by PID in `close()` (the
tests call it in a `finally`). Loaded by name (tests/conftest.py puts tests/ on sys.path).

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
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from raftlite.client.connection import Connection, ConnectionBroken, RequestFailed
from raftlite.core.wire import WireProtocolError
from raftlite.io.admin import AdminError, node_status

from raftlite_inprocess import free_ports

NOT_LEADER = 10250
LEADERSHIP_LOST = 10506
STATUS_TIMEOUT_S = 1.0
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
DATABASE = "app"
TABLE_SQL = "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"


class ClusterError(AssertionError):
    """The cluster did not reach the state a test waited for (the message says which)."""


def status_of(address: str, timeout_s: float = STATUS_TIMEOUT_S) -> dict | None:
    """A node's admin status, or None when it does not answer in time."""
    try:
        return node_status(address, timeout_seconds=timeout_s)
    except AdminError:
        return None


# -- one node process --------------------------------------------------------------------


@dataclass
class NodeProcess:
    node_id: int
    address: str
    data_dir: Path
    log_path: Path
    election_timeout_ms: float = 1000.0
    disk_backend: str | None = None
    process: subprocess.Popen | None = None
    stopped: bool = False           # SIGSTOPped

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, join: tuple[str, ...] = (), role: str | None = None) -> None:
        assert not self.alive, f"node {self.node_id} is already running (PID {self.pid})"
        command = [sys.executable, "-m", "raftlite", "node", "--id", str(self.node_id), "--address", self.address,
                   "--data-dir", str(self.data_dir), "--election-timeout", str(self.election_timeout_ms),
                   "--heartbeat-interval", str(min(100.0, self.election_timeout_ms / 10))]
        if join:
            command += ["--join", ",".join(join)]
        if role is not None:
            command += ["--role", role]
        if self.disk_backend is not None:
            command += ["--disk-backend", self.disk_backend]
        with open(self.log_path, "ab") as log:
            log.write(f"---- {time.strftime('%H:%M:%S')} start: {' '.join(command[3:])}\n".encode())
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        self.stopped = False

    def signal(self, number: int) -> None:
        if self.alive:
            os.kill(self.process.pid, number)

    def kill(self) -> int | None:
        """SIGKILL and reap; the exit status (None if it was not running)."""
        if self.process is None:
            return None
        self.signal(signal.SIGKILL)
        status = self.process.wait(10)
        self.stopped = False
        return status

    def terminate(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM (graceful stop with hand-over), SIGKILL after `grace_s`; the exit status."""
        if self.process is None:
            return None
        if self.stopped:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.stopped = False

    def wait_exit(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)

    def status(self, timeout_s: float = STATUS_TIMEOUT_S) -> dict | None:
        if not self.alive or self.stopped:
            return None
        return status_of(self.address, timeout_s)

    def rss_bytes(self) -> int:
        """Resident set size from /proc/PID/status (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ClusterError(f"no VmRSS for node {self.node_id} (PID {self.process.pid})")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])


# -- the cluster ---------------------------------------------------------------------------


class ProcessCluster:
    """Node 1 bootstraps, the others join it (as `raftlite cluster up` does); each node's
    data directory is `<directory>/node<ID>` unless given."""

    def __init__(self, directory: Path, size: int = 3, *, election_timeout_ms: float = 1000.0,
                 disk_backend: str | None = None, data_dirs: dict[int, Path] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.election_timeout_ms = election_timeout_ms
        self.disk_backend = disk_backend
        self.nodes: dict[int, NodeProcess] = {}
        data_dirs = data_dirs or {}
        for node_id, port in zip(range(1, size + 1), free_ports(size)):
            self.add_node(node_id, port=port, data_dir=data_dirs.get(node_id))

    def add_node(self, node_id: int, *, port: int | None = None, data_dir: Path | None = None) -> NodeProcess:
        port = port if port is not None else free_ports(1)[0]
        node = NodeProcess(node_id=node_id, address=f"127.0.0.1:{port}",
                           data_dir=Path(data_dir) if data_dir else self.directory / f"node{node_id}",
                           log_path=self.directory / f"node{node_id}.log",
                           election_timeout_ms=self.election_timeout_ms, disk_backend=self.disk_backend)
        self.nodes[node_id] = node
        return node

    # lifecycle

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "ProcessCluster":
        first = min(self.nodes)
        for node_id, node in self.nodes.items():
            node.start(join=() if node_id == first else (self.nodes[first].address,))
        self.wait_voters(set(self.nodes), timeout_s)
        return self

    def close(self) -> None:
        """SIGKILL every node this cluster started, by PID (also stopped ones)."""
        for node in self.nodes.values():
            try:
                node.kill()
            except Exception:
                pass

    def __enter__(self) -> "ProcessCluster":
        return self

    def __exit__(self, *_exception) -> None:
        self.close()

    def restart(self, node_id: int, **start_options) -> None:
        node = self.nodes[node_id]
        if node.alive:
            node.kill()
        node.start(**start_options)

    def address(self, node_id: int) -> str:
        return self.nodes[node_id].address

    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes.values()]

    def running(self) -> list[int]:
        return [node_id for node_id, node in self.nodes.items() if node.alive and not node.stopped]

    def logs(self) -> str:
        return "\n".join(f"== node {n} (PID {node.pid}, alive {node.alive}):\n{node.log_tail()}"
                         for n, node in self.nodes.items())

    # observation

    def statuses(self) -> dict[int, dict]:
        answers = {}
        for node_id in self.running():
            status = self.nodes[node_id].status()
            if status is not None:
                answers[node_id] = status
        return answers

    def leader(self) -> tuple[int, dict] | None:
        """The node that says it leads in the highest term, with its status; None if none."""
        leaders = [(status["term"], node_id, status) for node_id, status in self.statuses().items()
                   if status.get("role") == "leader"]
        if not leaders:
            return None
        _, node_id, status = max(leaders)
        return node_id, status

    def wait_leader(self, timeout_s: float = 30.0, *, after_term: int = 0) -> int:
        """Waits for a leader in a term after `after_term` (e.g. the term of a leader just
        killed: a restarted node may well win the next election); returns its id."""
        return self.wait_leader_status(timeout_s, after_term=after_term)[0]

    def wait_leader_status(self, timeout_s: float = 30.0, *, after_term: int = 0) -> tuple[int, dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.leader()
            if found is not None and found[1]["term"] > after_term:
                return found
            time.sleep(0.05)
        raise ClusterError(f"no leader after term {after_term} within {timeout_s} s\n{self.logs()}")

    def wait_voters(self, voters: set[int], timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while time.monotonic() < deadline:
            found = self.leader()
            if found is not None:
                seen = {m["id"] for m in found[1].get("members", []) if m["role"] == "voter"}
                if seen == voters:
                    return
            for node_id in voters:
                if node_id in self.nodes and self.nodes[node_id].process is not None and not self.nodes[node_id].alive:
                    raise ClusterError(f"node {node_id} exited (status {self.nodes[node_id].process.returncode})\n"
                                       f"{self.logs()}")
            time.sleep(0.1)
        raise ClusterError(f"voters {sorted(seen)} within {timeout_s} s, wanted {sorted(voters)}\n{self.logs()}")

    def wait_converged(self, timeout_s: float = 60.0, nodes: list[int] | None = None) -> int:
        """Waits until every given node (default: every running one) applied everything the
        leader committed, all at the same index; returns that index."""
        deadline = time.monotonic() + timeout_s
        last: dict = {}
        while time.monotonic() < deadline:
            found = self.leader()
            wanted = nodes if nodes is not None else self.running()
            if found is not None:
                statuses = self.statuses()
                last = {n: statuses.get(n, {}).get("applied_index") for n in wanted}
                commit = found[1]["commit"]
                if all(applied == commit for applied in last.values()):
                    time.sleep(0.2)   # still the same a moment later: settled
                    again = self.leader()
                    if again is not None and again[1]["commit"] == commit:
                        return commit
            time.sleep(0.1)
        raise ClusterError(f"not converged within {timeout_s} s: applied {last}\n{self.logs()}")

    # SQL

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

    def dump_rows(self, node_id: int, sql: str = "SELECT k, v FROM kv ORDER BY k") -> list[tuple]:
        """DUMP of the node's database, opened in a scratch directory, integrity-checked."""
        with Connection.connect(self.address(node_id), timeout_s=30.0) as connection:
            files = connection.dump(DATABASE)
        return rows_of_dump(files, sql)

    def dumps(self, nodes: list[int] | None = None) -> dict[int, list[tuple]]:
        return {node_id: self.dump_rows(node_id) for node_id in (nodes or self.running())}


def rows_of_dump(files, sql: str) -> list[tuple]:
    with tempfile.TemporaryDirectory(prefix="raftlite-dump-") as scratch:
        for dump_file in files:
            Path(scratch, dump_file.name).write_bytes(dump_file.data)
        database = sqlite3.connect(os.path.join(scratch, DATABASE))
        try:
            (check,) = database.execute("PRAGMA integrity_check").fetchone()
            if check != "ok":
                raise ClusterError(f"integrity_check of a DUMP: {check}")
            return [tuple(row) for row in database.execute(sql)]
        finally:
            database.close()


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
