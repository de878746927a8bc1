"""The `raftlite` command line.

    raftlite sim run   --seed S --nodes N --duration SECONDS [--nemesis LIST] [--fault-points LIST]
                       [--unsafe SWITCH ...] [--checkers all|end-to-end] [--trace FILE]
    raftlite sim check --seeds A..B --nodes N [--nemesis LIST] [--fault-points LIST] [--duration SECONDS]
                       [--liveness]   (prints coverage counts and recovery times; exit 1 on a failing
                       seed or, over the standard budget, a named path never reached)
    raftlite sim shrink --seed S [--nodes N] [--nemesis LIST] [--fault-points LIST] [--unsafe SWITCH ...]
    raftlite sim script FILE    (run a scenario script; exit 1 on a safety violation)
    raftlite sim mutations [--seeds A..B] [--only NAME,...] [--budget-seconds S]   (planted bugs vs checkers)
    raftlite sim demo  [--seed S]
    raftlite sim bench [--nodes N] [--duration SECONDS]
    raftlite sim explore [--nodes 3] [--depth D] [--max-term T] [--proposals P] [--unsafe SWITCH]   (model checking)
    raftlite check --model MODEL [--time-limit S] FILE   (a Jepsen history; see check --help)
    raftlite jepsen --runtime sim --workload W --nemesis LIST --time-limit S [--seed N] --out DIR
    raftlite shell -s ADDRS [--format tabular|json] DB [SQL]   (an SQL shell on a cluster)
    raftlite node --id N --address HOST:PORT --data-dir DIR [--join ADDR,...]
    raftlite status ADDR [--json]
    raftlite cluster up --nodes N --base-port P --data-dir DIR  |  raftlite cluster down DIR
    raftlite bench --workload kvwrite --workers W --duration S [--vs-dqlite] [--runs R]

User mistakes (bad flags, unknown nemesis, unwritable trace file) print one clear line
and exit with status 2; they never print a traceback.
"""

import argparse
import sys
from typing import Sequence

from raftlite.argument_types import non_negative_int, positive_float, positive_int

__all__ = ["main"]


class UsageError(Exception):
    pass


_positive_int = positive_int
_non_negative_int = non_negative_int
_positive_float = positive_float


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftlite", description="raftlite: replicated SQLite over Raft")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser("sim", help="deterministic simulations with fault injection")
    sim_commands = sim.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")

    run = sim_commands.add_parser("run", help="one seeded run with faults, then a summary and trace hash")
    run.add_argument("--seed", type=_non_negative_int, required=True)
    run.add_argument("--nodes", type=_positive_int, default=3)
    run.add_argument("--duration", type=_positive_float, default=10.0, help="simulated seconds of faults")
    run.add_argument("--nemesis", default="none", help="comma list of fault kinds, or 'all' (default: none)")
    run.add_argument("--actor", default="raft", help="which actor to run: raft (default) or heartbeat")
    run.add_argument("--trace", metavar="FILE", help="write every event as JSON lines to FILE")
    run.add_argument("--timeline", action="store_true", help="print the plain-text timeline of faults")
    _add_fault_arguments(run, fault_points_default="none")
    run.add_argument("--liveness", action="store_true",
                     help="liveness mode: heal only a random quorum core at the end of chaos (see sim check --help)")

    check = sim_commands.add_parser("check", help="a sweep of seeded raft runs with the safety checkers on")
    check.add_argument("--seeds", required=True, help="A..B (inclusive) or one seed")
    check.add_argument("--nodes", type=_positive_int, default=3)
    check.add_argument("--nemesis", default="all", help="comma list of fault kinds, or 'all' (default: all)")
    check.add_argument("--duration", type=_positive_float, default=10.0, help="simulated seconds of faults per seed")
    check.add_argument("--actor", choices=("raft", "database"), default="raft",
                       help="raft (a log of opaque commands) or database (replicated SQLite)")
    _add_fault_arguments(check, fault_points_default="all")
    check.add_argument("--liveness", action="store_true",
                       help="liveness mode (TigerBeetle's VOPR): at the end of chaos heal only a random quorum core, "
                            "keep every other fault for good, and require the core to commit a write within "
                            "10 maximum election timeouts (default: heal everything; every node must converge)")

    shrink = sim_commands.add_parser(
        "shrink", help="minimize a failing seed's faults (delta debugging) and print a scenario script replaying them")
    shrink.add_argument("--seed", type=_non_negative_int, required=True)
    shrink.add_argument("--nodes", type=_positive_int, default=3)
    shrink.add_argument("--duration", type=_positive_float, default=10.0, help="simulated seconds of faults")
    shrink.add_argument("--nemesis", default="none", help="comma list of fault kinds, or 'all' (default: none)")
    shrink.add_argument("--actor", choices=("raft", "database"), default="raft")
    _add_fault_arguments(shrink, fault_points_default="none")

    script = sim_commands.add_parser("script", help="run a scenario script and print it with its outputs")
    script.add_argument("file", metavar="FILE")

    from raftlite.sim.mutations import add_mutations_parser

    add_mutations_parser(sim_commands)

    demo = sim_commands.add_parser("demo", help="a 3-node replicated SQLite cluster surviving a leader kill")
    demo.add_argument("--seed", type=_non_negative_int, default=1)

    bench = sim_commands.add_parser("bench", help="simulator speed: events per wall second")
    bench.add_argument("--nodes", type=_positive_int, default=5)
    bench.add_argument("--duration", type=_positive_float, default=20.0, help="simulated seconds")
    bench.add_argument("--seed", type=_non_negative_int, default=1)
    bench.add_argument("--actor", choices=("heartbeat", "raft"), default="heartbeat")
    bench.add_argument("--rate", type=_positive_float, default=100.0, help="raft: client writes per simulated second")
    bench.add_argument("--faults", action="store_true", help="raft: inject every fault kind while measuring")

    from raftlite.sim.explore import add_explore_parser

    add_explore_parser(sim_commands, _positive_int, _non_negative_int)

    from raftlite.jepsen_like.check_command import add_check_parser

    add_check_parser(commands)

    from raftlite.jepsen_like.runner import add_jepsen_parser

    add_jepsen_parser(commands)

    from raftlite.client.shell import add_shell_parser

    add_shell_parser(commands)

    from raftlite.io.node_command import add_node_parsers

    add_node_parsers(commands, _positive_int, _positive_float)
    demo = commands.add_parser("demo", help="a real 3-node cluster on loopback surviving a leader kill")
    demo.add_argument("--keep", action="store_true", help="keep the cluster's files and logs")

    from raftlite.io.bench import add_bench_parser

    add_bench_parser(commands, _positive_int)
    return parser


def _add_fault_arguments(parser: argparse.ArgumentParser, *, fault_points_default: str) -> None:
    parser.add_argument("--fault-points", default=fault_points_default,
                        help="fault points at persistence boundaries the seed may enable (swarm): comma list of "
                             "slow-persist, crash-after-send, crash-before-sync, metadata-eio; 'all' or 'none' "
                             f"(default: {fault_points_default})")
    parser.add_argument("--unsafe", action="append", default=[], metavar="SWITCH",
                        help="turn on a deliberate bug of core/raft.py's UnsafeSwitches (repeatable; tests only)")
    parser.add_argument("--checkers", choices=("all", "end-to-end"), default="all",
                        help="end-to-end: leave out the durability checker (see whether a bug does visible harm)")


def _fault_options(args: argparse.Namespace) -> dict:
    """--nemesis, --fault-points and --unsafe as run_simulation's arguments; a clear error
    for what is unknown."""
    from raftlite.sim.fault_points import FaultPointError, parse_fault_points
    from raftlite.sim.nemesis import NemesisError, parse_nemesis_list
    from raftlite.sim.run import UnsafeSwitchError, parse_unsafe

    try:
        return dict(nemesis=parse_nemesis_list(args.nemesis), fault_points=parse_fault_points(args.fault_points),
                    unsafe=parse_unsafe(args.unsafe), checkers=args.checkers)
    except (NemesisError, FaultPointError, UnsafeSwitchError) as error:
        raise UsageError(str(error)) from None


def _sim_run(args: argparse.Namespace) -> int:
    from raftlite.sim.run import ACTORS, run_simulation

    options = _fault_options(args)
    if args.actor not in ACTORS:
        raise UsageError(f"unknown actor {args.actor!r}; choose from {', '.join(sorted(ACTORS))}")
    sink = None
    if args.trace:
        try:
            sink = open(args.trace, "w", encoding="utf-8")
        except OSError as error:
            raise UsageError(f"cannot write trace file {args.trace}: {error.strerror}") from None
    try:
        summary, sim = run_simulation(
            seed=args.seed, nodes=args.nodes, duration_ms=args.duration * 1000.0, actor=args.actor,
            trace_sink=sink, keep_trace=args.timeline, liveness=args.liveness and args.actor == "raft", **options,
        )
    finally:
        if sink is not None:
            sink.close()
    if args.timeline:
        print(sim.trace.timeline())
    print(summary.render())
    return 0


def _sim_check(args: argparse.Namespace) -> int:
    from raftlite.sim.sweep import parse_seed_range, sweep

    options = _fault_options(args)
    try:
        seeds = parse_seed_range(args.seeds)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.liveness and args.actor != "raft":
        raise UsageError("--liveness runs the raft actor only (the database's replica checks need every node healed)")
    result = sweep(seeds=seeds, nodes=args.nodes, nemesis_text=args.nemesis, duration_s=args.duration,
                   actor=args.actor, fault_points_text=args.fault_points, liveness=args.liveness, **options)
    print(result.render())
    return 0 if result.ok else 1


def _sim_shrink(args: argparse.Namespace) -> int:
    from raftlite.sim.shrink import shrink
    from raftlite.sim.sweep import replay_command

    options = _fault_options(args)
    command = replay_command(args.seed, args.nodes, args.nemesis, args.duration, args.actor,
                             fault_points=args.fault_points, unsafe=options["unsafe"], checkers=args.checkers,
                             subcommand="shrink")
    result = shrink(seed=args.seed, nodes=args.nodes, duration_ms=args.duration * 1000.0, actor=args.actor,
                    command=command, **options)
    if result.original.violation is None:
        print(result.render())
        return 1
    print(result.script, end="")
    print(result.render(), file=sys.stderr)
    return 0 if result.reproduced else 1


def _sim_script(args: argparse.Namespace) -> int:
    from raftlite.sim.scenario import execute_script

    try:
        with open(args.file, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise UsageError(f"cannot read scenario script {args.file}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{args.file} is not a text file") from None
    output, runner, errors = execute_script(text)
    if runner.sim is not None:
        runner.sim.close()
    print(output, end="")
    if errors:
        for error in errors:
            print(f"raftlite: error: {args.file}: {error}", file=sys.stderr)
        return 2
    return 1 if runner.violation is not None or runner.problems else 0


def _sim_bench(args: argparse.Namespace) -> int:
    from raftlite.sim.bench import run_benchmark, run_raft_benchmark

    if args.actor == "raft":
        result = run_raft_benchmark(nodes=args.nodes, duration_s=args.duration, rate_per_s=args.rate,
                                    faults=args.faults, seed=args.seed)
    else:
        result = run_benchmark(nodes=args.nodes, duration_s=args.duration, seed=args.seed)
    print(result.render())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "sim" and args.sim_command == "run":
            return _sim_run(args)
        if args.command == "sim" and args.sim_command == "check":
            return _sim_check(args)
        if args.command == "sim" and args.sim_command == "shrink":
            return _sim_shrink(args)
        if args.command == "sim" and args.sim_command == "script":
            return _sim_script(args)
        if args.command == "sim" and args.sim_command == "mutations":
            from raftlite.sim.mutations import run_mutations_command

            return run_mutations_command(args, UsageError)
        if args.command == "sim" and args.sim_command == "demo":
            from raftlite.sim.demo import run_demo

            return run_demo(seed=args.seed)
        if args.command == "sim" and args.sim_command == "bench":
            return _sim_bench(args)
        if args.command == "sim" and args.sim_command == "explore":
            from raftlite.sim.explore import run_explore_command

            return run_explore_command(args)
        if args.command == "demo":
            from raftlite.io.demo import run_demo

            return run_demo(keep=args.keep)
        if args.command in ("node", "status", "cluster"):
            from raftlite.io.node_command import run_node_command

            return run_node_command(args)
        if args.command == "check":
            from raftlite.jepsen_like.check_command import run_check

            return run_check(args)
        if args.command == "jepsen":
            from raftlite.jepsen_like.runner import run_jepsen_command

            return run_jepsen_command(args)
        if args.command == "bench":
            from raftlite.io.bench import run_bench_command

            return run_bench_command(args)
        if args.command == "shell":
            from raftlite.client.shell import run_shell

            return run_shell(args)
    except UsageError as error:
        print(f"raftlite: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error("unknown command")
    return 2
