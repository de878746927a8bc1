"""Local clusters of `raftlite node` processes on 127.0.0.1: the one harness behind
`raftlite cluster up|down`, `raftlite demo`, `raftlite bench`, jepsen_like's real runtime
and the tests that start node processes.

Theory of operation
-------------------
A `NodeProcess` is one `python -m raftlite node` process. It is started in its own
process session (a Ctrl-C in the terminal, or the end of the test that started it,
does not reach it) and is only ever signalled by its PID: SIGTERM to stop it gracefully
(a leader hands over first), SIGKILL to crash it, SIGSTOP / SIGCONT to pause it. Its
stdout and stderr go to its log file, where every start is marked by a `---- start:`
line, so `log_tail()` shows what the last runs said.

A `ProcessCluster` is N such nodes: node 1 bootstraps, the others join it (as an
operator would start them). `start()` waits until every node is a voter, as the leader
reports it through the admin protocol (raftlite.io.admin); `leader()`, `wait_leader()`
and `wait_converged()` observe the cluster the same way. `dump_rows()` and
`dump_tables()` read a node's copy of a database through a DUMP (dqlite's protocol),
opened in a scratch directory and integrity-checked.

`raftlite cluster up` outlives the command that started it, so `ProcessCluster(...,
pid_files=True)` writes each node's PID to `DIR/nodeI.pid`; `ProcessCluster.adopt(DIR)`
finds those processes again for `raftlite cluster down DIR`.

Peers authenticate with a cluster key (raftlite.io.peer_auth): a `ProcessCluster` makes
one, `DIR/cluster.key` (mode 0600), unless it exists already, and gives every node
`--cluster-key-file` pointing at it; `cluster_key=False` runs the nodes without one.

Ports come from `free_ports`: the kernel's choice of free ports at the time of the call
(another process may take one before the node binds it; the tests accept that race).
"""

import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .client.connection import Connection
from .io.admin import AdminError, node_status
from .io.peer_auth import create_cluster_key_file

__all__ = [
    "ClusterError", "NodeProcess", "NotConverged", "ProcessCluster", "free_ports", "pid_alive", "running_pids",
    "status_of",
]

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
STATUS_TIMEOUT_S = 1.0
KILL_WAIT_S = 10.0
LEADER_TIMEOUT_S = 30.0
CONVERGENCE_TIMEOUT_S = 60.0
DUMP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1
PROGRESS_EVERY_S = 1.0
# wait_converged asks once more after this pause: a commit index that did not move is settled.
SETTLE_S = 0.2
CLUSTER_KEY_FILE_NAME = "cluster.key"

Report = Callable[[str], None]


class ClusterError(Exception):
    """The cluster did not reach the state waited for, or a node could not be run (the
    message says which, in one line)."""


class NotConverged(ClusterError):
    """wait_converged timed out; `applied` holds the last applied indexes seen."""

    def __init__(self, message: str, applied: dict[int, int | None]) -> None:
        super().__init__(message)
        self.applied = applied


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports of 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def status_of(address: str, timeout_s: float = STATUS_TIMEOUT_S) -> dict | None:
    """A node's admin status, or None when it does not answer in time."""
    try:
        return node_status(address, timeout_seconds=timeout_s)
    except AdminError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        # Our own child that exited is a zombie until reaped: reap it (no-op otherwise).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"   # another's zombie
    except (OSError, IndexError):
        return True


def _pid_file(directory: Path, node_id: int) -> Path:
    return directory / f"node{node_id}.pid"


def running_pids(directory: Path) -> dict[int, int]:
    """{node id: PID} of the processes named by DIR/nodeI.pid that still run."""
    pids = {}
    for path in sorted(Path(directory).glob("node*.pid")):
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            pids[int(path.stem[4:])] = pid
    return pids


# -- one node process --------------------------------------------------------------------


@dataclass(eq=False)
class NodeProcess:
    """One `raftlite node` process. `join` is given on every start (an initialized node
    ignores it); `dial_via` maps peers to the address this node dials for them (e.g. a
    fault-injecting proxy); `expected_up` says whether an exit would be a surprise (a
    watcher such as jepsen_like's reads it under `lock`)."""

    node_id: int
    address: str
    data_dir: Path
    log_path: Path
    join: tuple[str, ...] = ()
    election_timeout_ms: float = 1000.0
    disk_backend: str | None = None
    dial_via: dict[int, str] = field(default_factory=dict)
    cluster_key_file: Path | None = None
    pid_file: Path | None = None
    # The process's file descriptor limit (soft and hard), for tests of running out of them.
    nofile_limit: int | None = None
    process: subprocess.Popen | None = None
    adopted_pid: int | None = None   # started by an earlier command (its PID file), not by us
    paused: bool = False
    expected_up: bool = False
    unexpected_exit_reported: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else self.adopted_pid

    @property
    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.adopted_pid is not None and pid_alive(self.adopted_pid)

    def command(self, join: tuple[str, ...], role: str | None = None) -> list[str]:
        command = [sys.executable, "-m", "raftlite", "node", "--id", str(self.node_id), "--address", self.address,
                   "--data-dir", str(self.data_dir), "--election-timeout", str(self.election_timeout_ms),
                   "--heartbeat-interval", str(min(100.0, self.election_timeout_ms / 10))]
        if join:
            command += ["--join", ",".join(join)]
        if role is not None:
            command += ["--role", role]
        if self.disk_backend is not None:
            command += ["--disk-backend", self.disk_backend]
        if self.cluster_key_file is not None:
            command += ["--cluster-key-file", str(self.cluster_key_file)]
        if self.dial_via:
            command += ["--dial-via", ",".join(f"{peer}={address}" for peer, address in sorted(self.dial_via.items()))]
        return command

    def start(self, *, join: tuple[str, ...] | None = None, role: str | None = None, expect_up: bool = True) -> None:
        """Start the process (`join` overrides the node's own for this start); with
        `expect_up` False (a node that must refuse to start) its exit is no surprise."""
        if self.alive:
            raise ClusterError(f"node {self.node_id} is already running (PID {self.pid})")
        command = self.command(self.join if join is None else join, role)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"---- {time.strftime('%H:%M:%S')} start: {' '.join(command[3:])}\n".encode())
            log.flush()
            limit = self.nofile_limit
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True, preexec_fn=None if limit is None else (
                                                lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))))
        self.adopted_pid = None
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self.process.pid}\n")
        self.paused = False
        with self.lock:
            self.expected_up = expect_up

    def signal(self, number: int) -> None:
        if self.alive:
            os.kill(self.pid, number)

    def kill(self) -> int | None:
        """SIGKILL by PID and reap; the exit status (None if it never ran here)."""
        with self.lock:
            self.expected_up = False
        self.paused = False
        if self.process is None:
            self.signal(signal.SIGKILL)
            return None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait(KILL_WAIT_S)

    def terminate(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM (a graceful stop: a leader hands over first), SIGKILL after `grace_s`;
        the exit status."""
        if self.process is None:
            return None
        with self.lock:
            self.expected_up = False
        self.resume()
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def pause(self) -> None:
        if self.alive:
            os.kill(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.alive and self.paused:
            os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def wait_exit(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)

    def status(self, timeout_s: float = STATUS_TIMEOUT_S) -> dict | None:
        if not self.alive or self.paused:
            return None
        return status_of(self.address, timeout_s)

    def rss_bytes(self) -> int:
        """Resident set size from /proc/PID/status (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ClusterError(f"no VmRSS for node {self.node_id} (PID {self.pid})")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_text()
        return "\n".join(text.splitlines()[-lines:]) if text else "(no log)"


# -- the cluster ---------------------------------------------------------------------------


class ProcessCluster:
    """Nodes on 127.0.0.1 (free ports unless `addresses` are given); node data in
    `DIR/nodeI/` unless `data_dirs` says otherwise, logs in `DIR/nodeI.log`. The first
    node bootstraps; every other node joins it."""

    def __init__(self, directory: Path, size: int = 3, *, addresses: dict[int, str] | None = None,
                 election_timeout_ms: float = 1000.0, disk_backend: str | None = None,
                 data_dirs: dict[int, Path] | None = None, dial_via: dict[int, dict[int, str]] | None = None,
                 pid_files: bool = False, cluster_key: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cluster_key_file: Path | None = None
        if cluster_key and (size or addresses):
            self.cluster_key_file = self.directory / CLUSTER_KEY_FILE_NAME
            if not self.cluster_key_file.exists():
                create_cluster_key_file(str(self.cluster_key_file))
        self.election_timeout_ms = election_timeout_ms
        self.disk_backend = disk_backend
        self.pid_files = pid_files
        self.nodes: dict[int, NodeProcess] = {}
        self.formed_in_s: float | None = None
        if addresses is None:
            addresses = {node_id: f"127.0.0.1:{port}" for node_id, port in zip(range(1, size + 1), free_ports(size))}
        data_dirs = data_dirs or {}
        dial_via = dial_via or {}
        for node_id, address in addresses.items():
            self.add_node(node_id, address=address, data_dir=data_dirs.get(node_id), dial_via=dial_via.get(node_id))

    @classmethod
    def adopt(cls, directory: Path) -> "ProcessCluster":
        """The running nodes a `pid_files` cluster started from `directory` (possibly in
        another process), to stop them."""
        cluster = cls(directory, size=0, pid_files=True)
        for node_id, pid in running_pids(cluster.directory).items():
            node = cluster.add_node(node_id, address="")
            node.adopted_pid = pid
        return cluster

    def add_node(self, node_id: int, *, address: str | None = None, data_dir: Path | None = None,
                 dial_via: dict[int, str] | None = None) -> NodeProcess:
        """A new node (not started) that joins the first node of the cluster."""
        address = address if address is not None else f"127.0.0.1:{free_ports(1)[0]}"
        join = (self.nodes[min(self.nodes)].address,) if self.nodes else ()
        node = NodeProcess(node_id=node_id, address=address, join=join,
                           data_dir=Path(data_dir) if data_dir else self.directory / f"node{node_id}",
                           log_path=self.directory / f"node{node_id}.log",
                           election_timeout_ms=self.election_timeout_ms, disk_backend=self.disk_backend,
                           dial_via=dict(dial_via or {}), cluster_key_file=self.cluster_key_file,
                           pid_file=_pid_file(self.directory, node_id) if self.pid_files else None)
        self.nodes[node_id] = node
        return node

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = START_TIMEOUT_S, *, report: Report | None = None) -> "ProcessCluster":
        """Start every node and wait until all are voters (`formed_in_s` says how long it
        took). ClusterError when a node exits or the cluster does not form in time (the
        processes keep running: `close()` or `stop()` them)."""
        started = time.monotonic()
        for node in self.nodes.values():
            node.start()
        if report is not None:
            report(f"starting {len(self.nodes)} nodes from {self.directory} ...")
        self.wait_voters(set(self.nodes), timeout_s, report=report, during="during start-up")
        self.formed_in_s = time.monotonic() - started
        return self

    def stop(self, grace_s: float = STOP_GRACE_S) -> dict[int, str]:
        """SIGTERM every running node (a leader hands over first), SIGKILL what is left
        after `grace_s`; {node id: "stopped" or "killed"} of the nodes that ran."""
        running = {node_id: node for node_id, node in self.nodes.items() if node.alive}
        for node in running.values():
            with node.lock:
                node.expected_up = False
            node.resume()
            node.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(node.alive for node in running.values()):
            time.sleep(POLL_INTERVAL_S)
        outcome = {}
        for node_id, node in running.items():
            if node.alive:
                node.kill()
                outcome[node_id] = "killed"
            else:
                outcome[node_id] = "stopped"
            if node.pid_file is not None:
                node.pid_file.unlink(missing_ok=True)
        return outcome

    def close(self) -> None:
        """SIGKILL every node by PID (paused ones too)."""
        for node in self.nodes.values():
            try:
                node.kill()
            except (OSError, subprocess.TimeoutExpired):
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

    # -- names -------------------------------------------------------------------------

    def address(self, node_id: int) -> str:
        return self.nodes[node_id].address

    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes.values()]

    def running(self) -> list[int]:
        return [node_id for node_id, node in self.nodes.items() if node.alive and not node.paused]

    def logs(self) -> str:
        return "\n".join(f"== node {n} (PID {node.pid}, alive {node.alive}):\n{node.log_tail()}"
                         for n, node in self.nodes.items())

    # -- observation -------------------------------------------------------------------

    def statuses(self) -> dict[int, dict]:
        answers = {}
        for node_id in self.running():
            status = self.nodes[node_id].status()
            if status is not None:
                answers[node_id] = status
        return answers

    def leader(self) -> tuple[int, dict] | None:
        """The node that says it leads in the highest term, with its status; None if none."""
        leaders = [(status.get("term", 0), node_id, status) for node_id, status in self.statuses().items()
                   if status.get("role") == "leader"]
        if not leaders:
            return None
        _, node_id, status = max(leaders)
        return node_id, status

    def wait_leader(self, timeout_s: float = LEADER_TIMEOUT_S, *, after_term: int = 0) -> int:
        """Waits for a leader in a term after `after_term` (e.g. the term of a leader just
        killed: a restarted node may well win the next election); returns its id."""
        return self.wait_leader_status(timeout_s, after_term=after_term)[0]

    def wait_leader_status(self, timeout_s: float = LEADER_TIMEOUT_S, *, after_term: int = 0) -> tuple[int, dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.leader()
            if found is not None and found[1]["term"] > after_term:
                return found
            time.sleep(POLL_INTERVAL_S / 2)
        raise ClusterError(f"no leader after term {after_term} within {timeout_s:.0f} s; logs in {self.directory}")

    def wait_voters(self, voters: set[int], timeout_s: float = START_TIMEOUT_S, *, report: Report | None = None,
                    during: str = "while the cluster formed") -> None:
        """Waits until the leader names exactly `voters` as voters; ClusterError when one
        of them exits (`during` says when, in the message) or time runs out."""
        started = time.monotonic()
        last_report = 0.0
        seen: set[int] = set()
        while True:
            found = self.leader()
            if found is not None:
                seen = {m["id"] for m in found[1].get("members", []) if m["role"] == "voter"}
                if seen == voters:
                    return
            for node_id in sorted(voters):
                node = self.nodes.get(node_id)
                if node is not None and node.pid is not None and not node.alive:
                    raise ClusterError(f"node {node_id} exited {during}; see {node.log_path}")
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                raise ClusterError(f"the cluster did not form within {timeout_s:.0f} s "
                                   f"(voters so far: {sorted(seen)}); logs in {self.directory}")
            if report is not None and elapsed - last_report >= PROGRESS_EVERY_S:
                last_report = elapsed
                report(f"  {elapsed:4.1f} s: {len(seen)}/{len(voters)} voters")
            time.sleep(POLL_INTERVAL_S)

    def wait_converged(self, timeout_s: float = CONVERGENCE_TIMEOUT_S, nodes: list[int] | None = None) -> int:
        """Waits until every given node (default: every running one) applied everything the
        leader committed, all at the same index, still so a moment later; returns that
        index. NotConverged (with the last applied indexes) when time runs out."""
        deadline = time.monotonic() + timeout_s
        applied: dict[int, int | None] = {}
        while time.monotonic() < deadline:
            found = self.leader()
            wanted = nodes if nodes is not None else self.running()
            if found is not None:
                statuses = self.statuses()
                applied = {n: statuses.get(n, {}).get("applied_index") for n in wanted}
                commit = found[1]["commit"]
                if all(index == commit for index in applied.values()):
                    time.sleep(SETTLE_S)
                    again = self.leader()
                    if again is not None and again[1]["commit"] == commit:
                        return commit
            time.sleep(POLL_INTERVAL_S)
        raise NotConverged(f"replicas did not converge within {timeout_s:.0f} s: applied indexes {applied}", applied)

    # -- a node's copy of a database -----------------------------------------------------

    def dump_files(self, node_id: int, database: str) -> tuple:
        """The files of a DUMP of the node's copy of `database` (dqlite's protocol)."""
        with Connection.connect(self.address(node_id), timeout_s=DUMP_TIMEOUT_S) as connection:
            return connection.dump(database)

    def dump_rows(self, node_id: int, sql: str, *, database: str) -> list[tuple]:
        """The rows `sql` selects from a DUMP of the node's copy of `database`."""
        with _opened_dump(self.dump_files(node_id, database), database, node_id) as copy:
            return [tuple(row) for row in copy.execute(sql)]

    def dump_tables(self, node_id: int, *, database: str) -> dict[str, list[tuple]]:
        """Every table's rows (ordered by the first column) in a DUMP of the node's copy."""
        with _opened_dump(self.dump_files(node_id, database), database, node_id) as copy:
            tables = [row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return {table: [tuple(row) for row in copy.execute(f'SELECT * FROM "{table}" ORDER BY 1')]
                    for table in tables}


@contextmanager
def _opened_dump(files, database: str, node_id: int) -> Iterator[sqlite3.Connection]:
    """The DUMPed files written to a scratch directory and opened; ClusterError when the
    copy fails SQLite's integrity check."""
    with tempfile.TemporaryDirectory(prefix="raftlite-dump-") as scratch:
        for dump_file in files:
            Path(scratch, dump_file.name).write_bytes(dump_file.data)
        copy = sqlite3.connect(os.path.join(scratch, database))
        try:
            (check,) = copy.execute("PRAGMA integrity_check").fetchone()
            if check != "ok":
                raise ClusterError(f"node {node_id}: integrity_check of its DUMP says {check}")
            yield copy
        finally:
            copy.close()
