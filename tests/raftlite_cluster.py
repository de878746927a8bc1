"""Test helper: a 3-node raftlite cluster of `raftlite node` processes on loopback, with
the interface of tests/dqlite_cluster.py's DqliteCluster (`addresses`, `leader_address()`,
`wait_for_leader()`, `wait_for_voters()`, `kill()`, `restart()`, `stop()`), so the client
tests run against both servers."""

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dqlite_cluster import DqliteCluster
from raftlite_inprocess import free_ports

_KILL_WAIT_S = 10.0


@dataclass
class RaftliteProcess:
    node_id: int
    address: str
    directory: Path
    join: list[str]
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        arguments = [sys.executable, "-m", "raftlite", "node", "--id", str(self.node_id), "--address", self.address,
                     "--data-dir", str(self.directory / "data"), "--election-timeout", "1000"]
        if self.join:
            arguments += ["--join", ",".join(self.join)]
        with open(self.directory / "node.log", "ab") as log:
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
            return (self.directory / "node.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class RaftliteCluster(DqliteCluster):
    @classmethod
    def start(cls, directory: Path, size: int = 3) -> "RaftliteCluster":
        cluster = cls(kind="raftlite")
        try:
            addresses = [f"127.0.0.1:{port}" for port in free_ports(size)]
            for index, address in enumerate(addresses):
                node = RaftliteProcess(node_id=index + 1, address=address, directory=directory / f"node{index + 1}",
                                       join=[] if index == 0 else [addresses[0]])
                cluster.nodes.append(node)
                node.start()
                if index == 0:
                    cluster.wait_for_leader(among=[address])
            cluster.wait_for_voters(size)
        except BaseException:
            cluster.stop()
            raise
        return cluster
