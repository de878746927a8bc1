"""raftlite: a replicated SQLite in Python (Raft over WAL frames, dqlite's wire protocol).

The repository root is the package. pytest imports this file under the checkout
folder's name while collecting, so it must import cleanly under any name and only
re-export the public API when it really is `raftlite`.
"""

__version__ = "0.1.0"

if __name__ == "raftlite":
    from raftlite.actors.config import Config, ConfigError

    __all__ = ["Config", "ConfigError", "__version__"]
