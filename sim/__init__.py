"""raftlite.sim: the simpy runtime: simulated network, disk, clocks, faults and traces."""

if __name__ != "raftlite.sim":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.sim', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )
