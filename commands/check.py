"""`raftlite check`: judge a recorded history file (jepsen_like/check_command.py has the
parser and the checkers' wiring; see its docstring)."""

from ..jepsen_like.check_command import add_check_parser, run_check

__all__ = ["register"]


def register(commands) -> None:
    add_check_parser(commands).set_defaults(func=run_check)
