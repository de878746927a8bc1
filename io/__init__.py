"""raftlite.io: the real runtime (asyncio TCP, durable disk, node server)."""

if __name__ != "raftlite.io":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.io', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )
