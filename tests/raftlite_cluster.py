"""Test helper: a 3-node raftlite cluster of `raftlite node` processes on loopback, with
the interface of tests/dqlite_cluster.py's DqliteCluster (`addresses`, `leader_address()`,
`wait_for_leader()`, `wait_for_voters()`, `kill()`, `restart()`, `stop()`), so the client
tests run against both servers."""

import sys
from dataclasses import dataclass
from pathlib import Path

from dqlite_cluster import DqliteCluster, ServerProcess
from raftlite.process_cluster import free_ports


@dataclass(kw_only=True)
class RaftliteProcess(ServerProcess):
    node_id: int
    log_name = "node.log"

    def command(self) -> list[str]:
        arguments = [sys.executable, "-m", "raftlite", "node", "--id", str(self.node_id), "--address", self.address,
                     "--data-dir", str(self.directory / "data"), "--election-timeout", "1000"]
        if self.join:
            arguments += ["--join", ",".join(self.join)]
        return arguments


@dataclass
class RaftliteCluster(DqliteCluster):
    kind: str = "raftlite"

    @staticmethod
    def planned_nodes(directory: Path, size: int) -> list:
        addresses = [f"127.0.0.1:{port}" for port in free_ports(size)]
        return [RaftliteProcess(node_id=index + 1, address=address, directory=directory / f"node{index + 1}",
                                join=[] if index == 0 else [addresses[0]])
                for index, address in enumerate(addresses)]
