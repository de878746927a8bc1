"""A raftlite cluster of `raftlite.io.node.Node`s in this process, on a loop in a thread,
for tests that talk to it over TCP with blocking clients. Loaded by file path (tests/
is not a package): see `load_helper` in the test modules."""

import asyncio
import threading

from raftlite.actors.config import Config
from raftlite.io.node import Node
from raftlite.process_cluster import free_ports  # noqa: F401  (re-exported for the tests)

# Generous: a shared 2-core machine must not see elections from scheduling delays.
TEST_CONFIG = Config(election_timeout_ms=1000, heartbeat_interval_ms=100)


class InProcessCluster:
    """Node 1 bootstraps; the others join it, as `raftlite cluster up` does."""

    def __init__(self, directory, size: int = 3, config: Config = TEST_CONFIG) -> None:
        self.directory = directory
        self.config = config
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(size)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="raftlite-cluster", daemon=True)
        self.nodes: dict[int, Node] = {}

    def run(self, coroutine, timeout_s: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def start(self) -> "InProcessCluster":
        self.thread.start()
        for node_id in range(1, len(self.addresses) + 1):
            self.start_node(node_id)
        for node in self.nodes.values():
            self.run(asyncio.wait_for(node.joined.wait(), 60))
        return self

    def start_node(self, node_id: int) -> Node:
        join = () if node_id == 1 else (self.addresses[0],)
        node = Node(node_id=node_id, address=self.addresses[node_id - 1], data_dir=str(self.directory / f"node{node_id}"),
                    join=join, config=self.config)
        self.run(node.start())
        self.nodes[node_id] = node
        return node

    def stop_node(self, node_id: int, *, hand_over: bool = True) -> None:
        self.run(self.nodes[node_id].stop(hand_over=hand_over))

    def leader(self) -> int | None:
        leaders = [n for n, node in self.nodes.items() if node.running and node.status().get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def address(self, node_id: int) -> str:
        return self.addresses[node_id - 1]

    def close(self) -> None:
        try:
            for node in self.nodes.values():
                self.run(node.stop(hand_over=False))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
