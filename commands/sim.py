"""`raftlite sim ...`: deterministic simulations with fault injection.

    raftlite sim run   --seed S --nodes N --duration SECONDS [--nemesis LIST] [--fault-points LIST]
                       [--unsafe SWITCH ...] [--checkers all|end-to-end] [--trace FILE]
    raftlite sim check --seeds A..B --nodes N [--nemesis LIST] [--fault-points LIST] [--duration SECONDS]
                       [--jobs N] [--dask ADDRESS|local] [--jsonl FILE]
                       [--liveness]   (prints coverage counts and recovery times; exit 1 on a failing
                       seed or, over the standard budget, a named path never reached)
    raftlite sim shrink --seed S [--nodes N] [--nemesis LIST] [--fault-points LIST] [--unsafe SWITCH ...]
    raftlite sim script FILE    (run a scenario script; exit 1 on a safety violation)
    raftlite sim mutations [--seeds A..B] [--only NAME,...] [--budget-seconds S]   (planted bugs vs checkers)
    raftlite sim demo  [--seed S]
    raftlite sim bench [--nodes N] [--duration SECONDS]
    raftlite sim explore [--nodes 3] [--depth D] [--max-term T] [--proposals P] [--unsafe SWITCH]   (model checking)

The simulator's own modules (sim/) do the work; this module only turns arguments into
their calls and their results into output.
"""

import argparse
import importlib.util
import sys

from ..argument_types import non_negative_int, positive_float, positive_int
from ..sim.bench import run_benchmark, run_raft_benchmark
from ..sim.demo import run_demo
from ..sim.explore import add_explore_parser, run_explore_command
from ..sim.fault_points import FaultPointError, parse_fault_points
from ..sim.mutations import add_mutations_parser, run_mutations_command
from ..sim.nemesis import NemesisError, parse_nemesis_list
from ..sim.run import ACTORS, UnsafeSwitchError, parse_unsafe, run_simulation
from ..sim.scenario import execute_script
from ..sim.shrink import shrink
from ..sim.sweep import parse_seed_range, replay_command, sweep
from . import UsageError

__all__ = ["register"]


def register(commands) -> None:
    sim = commands.add_parser("sim", help="deterministic simulations with fault injection")
    sim_commands = sim.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")

    run = sim_commands.add_parser("run", help="one seeded run with faults, then a summary and trace hash")
    run.add_argument("--seed", type=non_negative_int, required=True)
    run.add_argument("--nodes", type=positive_int, default=3)
    run.add_argument("--duration", type=positive_float, default=10.0, help="simulated seconds of faults")
    run.add_argument("--nemesis", default="none", help="comma list of fault kinds, or 'all' (default: none)")
    run.add_argument("--actor", default="raft", help="which actor to run: raft (default) or heartbeat")
    run.add_argument("--trace", metavar="FILE", help="write every event as JSON lines to FILE")
    run.add_argument("--timeline", action="store_true", help="print the plain-text timeline of faults")
    _add_fault_arguments(run, fault_points_default="none")
    run.add_argument("--liveness", action="store_true",
                     help="liveness mode: heal only a random quorum core at the end of chaos (see sim check --help)")
    run.set_defaults(func=_run)

    check = sim_commands.add_parser("check", help="a sweep of seeded raft runs with the safety checkers on")
    check.add_argument("--seeds", required=True, help="A..B (inclusive) or one seed")
    check.add_argument("--nodes", type=positive_int, default=3)
    check.add_argument("--nemesis", default="all", help="comma list of fault kinds, or 'all' (default: all)")
    check.add_argument("--duration", type=positive_float, default=10.0, help="simulated seconds of faults per seed")
    check.add_argument("--actor", choices=("raft", "database"), default="raft",
                       help="raft (a log of opaque commands) or database (replicated SQLite)")
    _add_fault_arguments(check, fault_points_default="all")
    check.add_argument("--liveness", action="store_true",
                       help="liveness mode (TigerBeetle's VOPR): at the end of chaos heal only a random quorum core, "
                            "keep every other fault for good, and require the core to commit a write within "
                            "10 maximum election timeouts (default: heal everything; every node must converge)")
    check.add_argument("--jobs", type=positive_int, default=1,
                       help="run seeds in this many processes (with --dask: the local cluster's workers)")
    check.add_argument("--dask", metavar="ADDRESS|local",
                       help="run seeds on Dask: 'local' starts a LocalCluster of --jobs workers, an address joins "
                            "a running scheduler (needs raftlite[sweeps])")
    check.add_argument("--jsonl", metavar="FILE",
                       help="write one JSON line per seed as it finishes (no wall-clock figures: sorted by seed, "
                            "two sweeps' files compare equal)")
    check.set_defaults(func=_check)

    shrink_parser = sim_commands.add_parser(
        "shrink", help="minimize a failing seed's faults (delta debugging) and print a scenario script replaying them")
    shrink_parser.add_argument("--seed", type=non_negative_int, required=True)
    shrink_parser.add_argument("--nodes", type=positive_int, default=3)
    shrink_parser.add_argument("--duration", type=positive_float, default=10.0, help="simulated seconds of faults")
    shrink_parser.add_argument("--nemesis", default="none", help="comma list of fault kinds, or 'all' (default: none)")
    shrink_parser.add_argument("--actor", choices=("raft", "database"), default="raft")
    _add_fault_arguments(shrink_parser, fault_points_default="none")
    shrink_parser.set_defaults(func=_shrink)

    script = sim_commands.add_parser("script", help="run a scenario script and print it with its outputs")
    script.add_argument("file", metavar="FILE")
    script.set_defaults(func=_script)

    add_mutations_parser(sim_commands)
    sim_commands.choices["mutations"].set_defaults(func=lambda args: run_mutations_command(args, UsageError))

    demo = sim_commands.add_parser("demo", help="a 3-node replicated SQLite cluster surviving a leader kill")
    demo.add_argument("--seed", type=non_negative_int, default=1)
    demo.set_defaults(func=lambda args: run_demo(seed=args.seed))

    bench = sim_commands.add_parser("bench", help="simulator speed: events per wall second")
    bench.add_argument("--nodes", type=positive_int, default=5)
    bench.add_argument("--duration", type=positive_float, default=20.0, help="simulated seconds")
    bench.add_argument("--seed", type=non_negative_int, default=1)
    bench.add_argument("--actor", choices=("heartbeat", "raft"), default="heartbeat")
    bench.add_argument("--rate", type=positive_float, default=100.0, help="raft: client writes per simulated second")
    bench.add_argument("--faults", action="store_true", help="raft: inject every fault kind while measuring")
    bench.set_defaults(func=_bench)

    add_explore_parser(sim_commands, positive_int, non_negative_int)
    sim_commands.choices["explore"].set_defaults(func=run_explore_command)


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
    try:
        return dict(nemesis=parse_nemesis_list(args.nemesis), fault_points=parse_fault_points(args.fault_points),
                    unsafe=parse_unsafe(args.unsafe), checkers=args.checkers)
    except (NemesisError, FaultPointError, UnsafeSwitchError) as error:
        raise UsageError(str(error)) from None


def _run(args: argparse.Namespace) -> int:
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


def _check(args: argparse.Namespace) -> int:
    options = _fault_options(args)
    try:
        seeds = parse_seed_range(args.seeds)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.liveness and args.actor != "raft":
        raise UsageError("--liveness runs the raft actor only (the database's replica checks need every node healed)")
    if args.dask is not None and importlib.util.find_spec("distributed") is None:
        raise UsageError("--dask needs Dask distributed: pip install 'raftlite[sweeps]'")
    try:
        jsonl = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None
    except OSError as error:
        raise UsageError(f"cannot write {args.jsonl}: {error.strerror}") from None
    try:
        result = sweep(seeds=seeds, nodes=args.nodes, nemesis_text=args.nemesis, duration_s=args.duration,
                       actor=args.actor, fault_points_text=args.fault_points, liveness=args.liveness,
                       jobs=args.jobs, dask=args.dask, jsonl=jsonl, **options)
    finally:
        if jsonl is not None:
            jsonl.close()
    print(result.render())
    return 0 if result.ok else 1


def _shrink(args: argparse.Namespace) -> int:
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


def _script(args: argparse.Namespace) -> int:
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


def _bench(args: argparse.Namespace) -> int:
    if args.actor == "raft":
        result = run_raft_benchmark(nodes=args.nodes, duration_s=args.duration, rate_per_s=args.rate,
                                    faults=args.faults, seed=args.seed)
    else:
        result = run_benchmark(nodes=args.nodes, duration_s=args.duration, seed=args.seed)
    print(result.render())
    return 0
