"""raftlite: a replicated SQLite in Python (Raft over WAL frames, dqlite's wire protocol).

The repository root is the package. pytest imports this file under the checkout
folder's name while collecting, so it must import cleanly under any name and only
re-export the public API when it really is `raftlite`.

Public API:
    raftlite.Node       a node inside an asyncio application (raftlite.io.node)
    raftlite.connect    a DB-API 2.0 connection to a cluster (raftlite.client)
    raftlite.Config     node configuration (timeouts, limits)
"""

__version__ = "0.1.0"

if __name__ == "raftlite":
    from .actors.config import Config, ConfigError

    __all__ = ["Config", "ConfigError", "Node", "__version__", "connect"]

    def __getattr__(name: str):
        # Imported on first use: the command line should not pay for asyncio and the
        # runtime when it only runs the simulator.
        if name == "Node":
            from .io.node import Node

            return Node
        if name == "connect":
            from .client import connect

            return connect
        raise AttributeError(f"module 'raftlite' has no attribute {name!r}")
