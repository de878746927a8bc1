"""The `raftlite` command line: one parser, one module per command (commands/).

    raftlite sim run|check|shrink|script|mutations|demo|bench|explore ...   (commands/sim.py)
    raftlite check --model MODEL [--time-limit S] FILE   (a Jepsen history; see check --help)
    raftlite jepsen --runtime sim --workload W --nemesis LIST --time-limit S [--seed N] --out DIR
    raftlite shell -s ADDRS [--format tabular|json] DB [SQL]   (an SQL shell on a cluster)
    raftlite node --id N --address HOST:PORT --data-dir DIR [--join ADDR,...]
    raftlite status ADDR [--json]
    raftlite cluster up --nodes N --base-port P --data-dir DIR  |  raftlite cluster down DIR
    raftlite demo [--keep]
    raftlite bench --workload kvwrite --workers W --duration S [--vs-dqlite] [--runs R]

Every command module registers itself the same way (commands/__init__.py says how).
User mistakes (bad flags, unknown nemesis, unwritable trace file) print one clear line
and exit with status 2; they never print a traceback.
"""

import argparse
import sys
from typing import Sequence

from .commands import CommandError, UsageError, bench, check, cluster, demo, jepsen, node, shell, sim, status

__all__ = ["main"]

# In the order `raftlite --help` lists them.
COMMANDS = (sim, check, jepsen, shell, node, status, cluster, demo, bench)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftlite", description="raftlite: replicated SQLite over Raft")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"raftlite: error: {error}", file=sys.stderr)
    except CommandError as error:
        print(f"raftlite {args.command}: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2
