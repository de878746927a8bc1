"""`raftlite jepsen`: one Jepsen-style run in the simulator (jepsen_like/runner.py) or
against node processes (jepsen_like/real_runtime.py), its outputs written to --out.

    raftlite jepsen --runtime sim|real --workload W --nemesis LIST --time-limit S [--seed N] --out DIR

Exit status: 0 valid, 1 invalid, 3 unknown (the checker ran out of time), 2 a usage
mistake, reported as one line.
"""

import argparse
import os
import sys
from typing import Any, TextIO

from ..argument_types import non_negative_int, positive_float, positive_int
from ..jepsen_like.nemesis_schedule import NEMESIS_CHOICES, parse_nemesis_schedule
from ..jepsen_like.real_runtime import parse_real_nemesis, run_jepsen_real
from ..jepsen_like.run_result import JepsenOptions
from ..jepsen_like.runner import run_jepsen, write_outputs
from ..jepsen_like.workloads import WORKLOADS
from ..sim.nemesis import NemesisError

__all__ = ["EXIT_INVALID", "EXIT_UNKNOWN", "EXIT_USAGE", "EXIT_VALID", "register", "run"]

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3

_DESCRIPTION = """\
Run a Jepsen-style test: a workload through SQL clients, a nemesis injecting faults on a
schedule, a final heal, then the history checker, the raft safety checkers and a
convergence check. Writes history.edn, verdict.json and report.html into --out.

workloads: register (linearizable read/write/cas per key), bank (transfers; totals hold),
set (unique inserts; nothing lost), append (Elle list-append; strict serializability).

--runtime real starts node processes on 127.0.0.1 (partitions through a TCP proxy per
directed link; kill -9, SIGSTOP, damaged files that a node must refuse to start on) and
also checks that no node process died unexpectedly and that a DUMP of every node holds
the same rows. Wall-clock time: a seed fixes the choices, not the history.

exit status: 0 valid, 1 invalid, 3 unknown (the checker ran out of time), 2 usage error."""


def register(commands: Any) -> None:
    parser = commands.add_parser("jepsen", help="Jepsen-style test: workload, nemesis, checkers, report",
                                 description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", choices=("sim", "real"), default="sim",
                        help="sim (deterministic simulator; default) or real (node processes on 127.0.0.1; their "
                             "data and logs go under OUT/cluster)")
    parser.add_argument("--workload", required=True, choices=tuple(WORKLOADS), metavar="WORKLOAD",
                        help="one of: " + ", ".join(WORKLOADS))
    parser.add_argument("--nemesis", default="none", metavar="LIST",
                        help="comma list of: " + ", ".join(NEMESIS_CHOICES) + "; or 'all' or 'none' (default). "
                        "--runtime real: partition, leader-partition, kill, pause, corrupt")
    parser.add_argument("--time-limit", type=positive_float, default=10.0, metavar="S",
                        help="seconds of workload and faults (simulated seconds under sim); default 10")
    parser.add_argument("--seed", type=non_negative_int, default=1, help="the run's seed (default 1)")
    parser.add_argument("--nodes", type=positive_int, default=3, help="founding voters (default 3)")
    parser.add_argument("--concurrency", type=positive_int, default=5, help="client processes (default 5)")
    parser.add_argument("--rate", type=positive_float, default=100.0, help="operations per second (default 100)")
    parser.add_argument("--checker-time-limit", type=positive_float, default=30.0, metavar="S",
                        help="wall seconds the checker may search before answering unknown (default 30)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for history.edn, verdict.json, report.html")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr

    def usage(message: str) -> int:
        print(f"raftlite: error: {message}", file=stderr)
        return EXIT_USAGE

    try:
        if args.runtime == "real":
            kinds = parse_real_nemesis(args.nemesis)
        else:
            kinds = parse_nemesis_schedule(args.nemesis)
    except NemesisError as error:
        return usage(str(error))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return usage(f"--out {args.out} exists and is not a directory")
    try:
        os.makedirs(args.out, exist_ok=True)
        probe = os.path.join(args.out, ".raftlite-write-test")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as error:
        return usage(f"cannot write into --out {args.out}: {error.strerror}")
    options = JepsenOptions(workload=args.workload, nemesis=kinds, time_limit_s=args.time_limit, seed=args.seed,
                            nodes=args.nodes, concurrency=args.concurrency, rate_per_s=args.rate,
                            checker_time_limit_s=args.checker_time_limit)
    progress = lambda line: print(line, file=stderr, flush=True)  # noqa: E731
    if args.runtime == "real":
        print(f"jepsen: {options.workload} on {options.nodes} node processes on 127.0.0.1, seed {options.seed}, "
              f"nemesis {','.join(kinds) or 'none'}, {options.time_limit_s:g} s", file=stderr)
        result = run_jepsen_real(options, os.path.join(args.out, "cluster"), progress=progress)
    else:
        print(f"jepsen: {options.workload} on {options.nodes} simulated nodes, seed {options.seed}, "
              f"nemesis {','.join(kinds) or 'none'}, {options.time_limit_s:g} s", file=stderr)
        result = run_jepsen(options, progress=progress)
    paths = write_outputs(result, args.out)
    print(result.summary(), file=stdout)
    print(f"wrote {paths['history']}, {paths['verdict']}, {paths['report']}", file=stdout)
    if result.valid is True:
        return EXIT_VALID
    if result.valid is False:
        return EXIT_INVALID
    return EXIT_UNKNOWN
