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
