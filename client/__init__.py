"""raftlite.client: the client of raftlite and dqlite clusters (wire protocol, DB-API 2.0, asyncio)."""

if __name__ != "raftlite.client":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.client', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )
