"""`raftlite check`: judge a recorded history file and print a JSON verdict.

    raftlite check --model cas-register|register|etcd-register|set|bank|list-append
                   [--time-limit S] [...model options] FILE

The file is Jepsen EDN (op maps) or Jepsen log lines; the format is detected. The
verdict is one JSON object: ``valid`` (true, false or "unknown"), ``anomalies`` (each
with its kind, a description and the operations that show it), ``excerpt`` (the
events of the first anomaly, in history order), and model-specific details.

Ops without ``:process`` (completions only, as Elle may write them) have no
real-time order: bank and list-append with ``--consistency serializable`` accept
them; the register models, set, and strict-serializable list-append need invocations
and refuse such a history with a usage error. Output cut short by the reader (``|
head``) ends quietly.

Exit status: 0 valid, 1 invalid, 3 unknown (a time limit or search limit reached
before a verdict, or nothing to judge), 2 a usage mistake (missing or unreadable file,
a file that is not a history, a history the model cannot read), reported as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from ..argument_types import positive_seconds as _positive_seconds
from .bank import check_bank
from .history import HistoryError, parse_edn_value, parse_history
from .linearizability import LinearizabilityLimits, check_linearizability
from .list_append import check_list_append
from .models import make_model
from .set_checker import check_set

__all__ = ["EXIT_INVALID", "EXIT_UNKNOWN", "EXIT_USAGE", "EXIT_VALID", "MODEL_CHOICES", "add_check_parser",
           "run_check"]

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3

MODEL_CHOICES = ("cas-register", "register", "etcd-register", "set", "bank", "list-append")

_DESCRIPTION = """\
Check a Jepsen-style history (EDN op maps, or Jepsen log lines) and print a JSON verdict.

models:
  cas-register   linearizable register with read/write/cas (Knossos: a failed op did not happen)
  register       linearizable read/write register
  etcd-register  as cas-register, but a failed cas returned false (Porcupine's etcd logs)
  set            every acknowledged add is in the final read, nothing unexpected or duplicated
  bank           every read sums to the initial total, no negative balance
  list-append    Elle-style dependency cycles (G0, G1a, G1b, G1c, G-single, G2, internal)

Register histories whose values are Jepsen independent pairs [key value] are checked
per key (see --independent).

exit status: 0 valid, 1 invalid, 3 unknown (time limit reached, or nothing to judge),
2 usage error (missing file, unparsable history)."""


def add_check_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``check`` on an argparse sub-command set."""
    check = commands.add_parser("check", help="check a history file (linearizability, Elle, bank, set)",
                                description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("file", metavar="FILE", help="history: EDN op maps or Jepsen log lines")
    check.add_argument("--model", required=True, choices=MODEL_CHOICES, metavar="MODEL",
                       help="one of: " + ", ".join(MODEL_CHOICES))
    check.add_argument("--time-limit", type=_positive_seconds, default=60.0, metavar="S",
                       help="seconds of search before answering unknown (exit 3); default 60")
    check.add_argument("--initial-value", default="nil", metavar="EDN",
                       help="registers: the initial value, as EDN (default nil)")
    check.add_argument("--independent", choices=("auto", "yes", "no"), default="auto",
                       help="registers: values are [key value] pairs checked per key (default: detect)")
    check.add_argument("--consistency", choices=("strict-serializable", "serializable"),
                       default="strict-serializable",
                       help="list-append: strict-serializable adds real-time order (default)")
    check.add_argument("--total", type=float, default=None, metavar="N",
                       help="bank: the initial total (default: the first read's total)")
    check.add_argument("--negative-balances", action="store_true", help="bank: negative balances are allowed")
    return check


def run_check(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the check the parsed arguments describe; returns the exit status."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    try:
        verdict = _judge(args)
    except _UsageError as error:
        print(f"raftlite: error: {error}", file=stderr)
        return EXIT_USAGE
    except HistoryError as error:
        print(f"raftlite: error: {args.file}: {error}" if not str(error).startswith(args.file)
              else f"raftlite: error: {error}", file=stderr)
        return EXIT_USAGE
    document = verdict.to_json()
    try:
        print(json.dumps(document, indent=2, default=repr), file=stdout)
        stdout.flush()
    except BrokenPipeError:
        _silence(stdout)   # the reader stopped reading (`| head`): nothing more to say to it
    if verdict.valid is True:
        return EXIT_VALID
    if verdict.valid is False:
        return EXIT_INVALID
    return EXIT_UNKNOWN


def _silence(stream: TextIO) -> None:
    """Point a stream whose reader went away at /dev/null, so that the flush at exit
    does not raise BrokenPipeError again (the recipe of Python's signal documentation)."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return   # not a file (a StringIO in tests): nothing is flushed at exit
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, descriptor)
    os.close(null)


class _UsageError(Exception):
    pass


# What each model needs of the history's order: all but these need real-time order,
# which ops recorded without :process (timeless) do not have.
_ACCEPTS_TIMELESS = ("bank",)


def _refuse_timeless(events, args: argparse.Namespace) -> None:
    timeless = [event for event in events if event.timeless]
    if not timeless:
        return
    if args.model in _ACCEPTS_TIMELESS or (args.model == "list-append" and args.consistency == "serializable"):
        return
    needs = "strict-serializable list-append" if args.model == "list-append" else f"--model {args.model}"
    raise _UsageError(f"{args.file}: {len(timeless)} op(s) have no :process (the first is op {timeless[0].index}), so their "
                      f"invocations and real-time order are unknown, which {needs} needs; bank and list-append "
                      "--consistency serializable accept such histories")


def _judge(args: argparse.Namespace):
    try:
        with open(args.file, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise _UsageError(f"no such history file: {args.file}") from None
    except IsADirectoryError:
        raise _UsageError(f"{args.file} is a directory, not a history file") from None
    except UnicodeDecodeError:
        raise _UsageError(f"{args.file} is not a text file (not UTF-8)") from None
    except OSError as error:
        raise _UsageError(f"cannot read {args.file}: {error.strerror}") from None
    events = parse_history(text, source=args.file)
    _refuse_timeless(events, args)

    match args.model:
        case "cas-register" | "register" | "etcd-register":
            model = make_model(args.model, _initial_value(args.initial_value))
            independent = {"auto": None, "yes": True, "no": False}[args.independent]
            return check_linearizability(events, model, independent=independent,
                                         limits=LinearizabilityLimits(time_limit_s=args.time_limit))
        case "set":
            return check_set(events)
        case "bank":
            total = args.total
            if total is not None and total == int(total):
                total = int(total)
            return check_bank(events, total=total, negative_balances_allowed=args.negative_balances)
        case "list-append":
            return check_list_append(events, consistency=args.consistency)
    raise _UsageError(f"unknown model {args.model!r}")


def _initial_value(text: str) -> Any:
    try:
        return parse_edn_value(text)
    except HistoryError:
        raise _UsageError(f"--initial-value must be an EDN value (nil, 0, :a, [1 2]), not {text!r}") from None
