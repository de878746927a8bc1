"""raftlite.jepsen_like: workloads, nemeses, histories and checkers."""

if __name__ != "raftlite.jepsen_like":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.jepsen_like', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )
