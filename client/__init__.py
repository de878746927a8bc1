"""raftlite.client: the client of raftlite and dqlite clusters (wire protocol, DB-API 2.0, asyncio)."""

if __name__ != "raftlite.client":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.client', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )

# The DB-API 2.0 module interface lives in raftlite.client.dbapi; `raftlite.client`
# re-exports it so that `raftlite.client.connect(...)` is the entry point (PEP 249).
from .dbapi import *  # noqa: E402,F401,F403
from .dbapi import __all__ as _dbapi_all  # noqa: E402

__all__ = list(_dbapi_all)
