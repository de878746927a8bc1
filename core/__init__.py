"""raftlite.core: pure logic (raft, codecs, formats). No I/O, no clock, no randomness."""

if __name__ != "raftlite.core":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.core', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )
