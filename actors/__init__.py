"""raftlite.actors: deterministic actors and the command set they emit (the actor contract)."""

if __name__ != "raftlite.actors":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.actors', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )
