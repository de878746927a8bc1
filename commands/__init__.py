"""The `raftlite` commands, one module per command, all registered the same way.

Each module offers `register(commands)`: it adds its parser to `commands` (the
top-level argparse sub-command set) and sets the parser's `func` default to the
function that runs it, `run(args) -> exit status`. cli.py registers every module in
the order the help lists them and calls `args.func(args)`.

A command reports a user mistake or an environment problem by raising one of the two
errors below; cli.py prints it as one line (never a traceback) and exits with status 2.
"""

if __name__ != "raftlite.commands":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.commands', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )

__all__ = ["CommandError", "UsageError"]


class UsageError(Exception):
    """A bad argument: printed as `raftlite: error: MESSAGE`."""


class CommandError(Exception):
    """The command could not do its work (an address in use, a node that does not
    answer, ...): printed as `raftlite COMMAND: MESSAGE`."""
