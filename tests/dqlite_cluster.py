"""Test helper: a real 3-node dqlite cluster (Debian's `dqlite-demo`) on loopback.

The first node bootstraps, the others start with `--join` and are promoted to voters by
go-dqlite's app (seen live: all three voters within ~3 s). Every node runs in its own
process session on 127.0.0.1 free ports; `kill` sends SIGKILL to one node by its PID
(a crash: nothing flushed, sockets reset), `restart` brings it back on the same ports
and data directory, `stop` kills every node. Every wait is bounded.

The client tests take a `cluster` object with this interface (`addresses`,
`leader_address()`, `kill()`, `restart()`, `stop()`), so that a raftlite cluster
helper with the same methods can be added as a second fixture parameter.

Live facts (dqlite 1.11.1 via go-dqlite 1.11.5's dqlite-demo): after the leader is
SIGKILLed a new one is elected in ~5 s; a lone survivor of three stops naming a leader
after ~3 s. SIGTERM makes dqlite-demo try a graceful hand-over that can take many
seconds without a quorum, which is why the helper kills with SIGKILL.
"""

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dqlite_debian  # tests/ is on sys.path (conftest.py)
from raftlite.process_cluster import free_ports

__all__ = ["DqliteCluster", "DqliteProcess", "ServerProcess"]

_START_TIMEOUT_S = 30.0
_KILL_WAIT_S = 10.0


@dataclass(kw_only=True)
class ServerProcess:
    """One server process in its own session, its output in DIRECTORY/LOG_NAME; the
    subclasses say which command runs it."""

    address: str
    directory: Path
    join: list[str]
    process: subprocess.Popen | None = None
    log_name = "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        arguments = self.command()
        with open(self.directory / self.log_name, "ab") as log:
            self.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID, then reap."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=_KILL_WAIT_S)

    def log(self) -> str:
        try:
            return (self.directory / self.log_name).read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@dataclass(kw_only=True)
class DqliteProcess(ServerProcess):
    api_address: str
    log_name = "dqlite-demo.log"

    def command(self) -> list[str]:
        arguments = [dqlite_debian.ensure_dqlite_demo(), "--api", self.api_address, "--db", self.address,
                     "--dir", str(self.directory / "data")]
        for address in self.join:
            arguments += ["--join", address]
        return arguments


@dataclass
class DqliteCluster:
    nodes: list[DqliteProcess] = field(default_factory=list)
    kind: str = "dqlite"

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    @classmethod
    def start(cls, directory: Path, size: int = 3) -> "DqliteCluster":
        """Start the first node, wait for it to lead, then the others joining it."""
        cluster = cls()
        try:
            for index, node in enumerate(cls.planned_nodes(directory, size)):
                cluster.nodes.append(node)
                node.start()
                if index == 0:
                    cluster.wait_for_leader(among=[node.address])
            cluster.wait_for_voters(size)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @staticmethod
    def planned_nodes(directory: Path, size: int) -> list:
        """The processes to start, the first one bootstrapping, the others joining it."""
        ports = iter(free_ports(2 * size))   # an address and an API address per node
        addresses = [f"127.0.0.1:{next(ports)}" for _ in range(size)]
        return [DqliteProcess(address=address, api_address=f"127.0.0.1:{next(ports)}",
                              directory=directory / f"node{index + 1}", join=[] if index == 0 else [addresses[0]])
                for index, address in enumerate(addresses)]

    def node(self, address: str) -> DqliteProcess:
        return next(node for node in self.nodes if node.address == address)

    def _ask_leader(self, address: str) -> str | None:
        from raftlite.client.connection import Connection, ConnectionBroken, RequestFailed

        try:
            with Connection.connect(address, timeout_s=1.0) as connection:
                leader = connection.leader()
        except (ConnectionBroken, RequestFailed, OSError):
            return None
        return leader.address if leader is not None else None

    def leader_address(self) -> str | None:
        """The leader as a live node names it, if that leader is alive and agrees."""
        for node in self.nodes:
            if not node.alive():
                continue
            named = self._ask_leader(node.address)
            if named is not None and self.node(named).alive() and self._ask_leader(named) == named:
                return named
        return None

    def wait_for_leader(self, *, among: list[str] | None = None, timeout_s: float = _START_TIMEOUT_S,
                        other_than: str | None = None) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for address in among or []:
                if not self.node(address).alive():
                    raise RuntimeError(f"dqlite-demo {address} exited: {self.node(address).log()}")
            leader = self.leader_address()
            if leader is not None and leader != other_than and (among is None or leader in among):
                return leader
            time.sleep(0.1)
        raise RuntimeError(f"no leader within {timeout_s} s: " + " | ".join(node.log()[-300:] for node in self.nodes))

    def wait_for_voters(self, count: int, timeout_s: float = _START_TIMEOUT_S) -> None:
        from raftlite.client.connection import Connection, ConnectionBroken, RequestFailed

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader_address()
            if leader is not None:
                try:
                    with Connection.connect(leader, timeout_s=1.0) as connection:
                        voters = [node for node in connection.cluster() if node.role == 0]
                    if len(voters) >= count:
                        return
                except (ConnectionBroken, RequestFailed, OSError):
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"fewer than {count} voters after {timeout_s} s")

    def kill(self, address: str) -> None:
        self.node(address).kill()

    def restart(self, address: str) -> None:
        node = self.node(address)
        node.kill()
        node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
