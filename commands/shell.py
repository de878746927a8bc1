"""`raftlite shell`: an SQL shell on a raftlite or dqlite cluster (client/shell.py has the
parser and the shell; see its docstring)."""

from ..client.shell import add_shell_parser, run_shell

__all__ = ["register"]


def register(commands) -> None:
    add_shell_parser(commands).set_defaults(func=run_shell)
