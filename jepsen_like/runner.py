"""One jepsen_like run in the simulator: cluster, workload, nemesis, checks, outputs.

Theory of operation
-------------------
`run_jepsen` builds a simulated cluster of database nodes (plus spare nodes when the
membership nemesis is on), waits for a leader and creates the workload's schema before
any fault. Then, for ``time_limit_s`` simulated seconds, the workload's processes run
operations and the nemesis injects faults on its schedule; at the end the nemesis heals
everything (the final heal). After the heal the operations still under way finish or
time out, the workload's final operations run (retried until they succeed: a cluster
that cannot serve them after the heal fails the liveness check), and a quiet period
lets every replica catch up. Then the run is judged:

- the history by the workload's checker (linearizability, bank, set, Elle);
- the raft safety checkers, which run after every simulated step (a broken invariant
  stops the run at once and is reported with the seed);
- no node halted, except one the disk nemesis corrupted at rest (refusing to start on
  corrupt storage is the designed answer, DESIGN.md §3);
- convergence: every up member applied the same index and holds the same database
  pages (compared after a checkpoint of a copy of its files).

The run is valid when the checker says valid and nothing else was found; "unknown" when
the checker ran out of time. Everything derives from ``seed``: the same options give the
same history.

`write_outputs` writes history.edn, verdict.json and report.html into a directory;
`add_jepsen_parser` / `run_jepsen_command` are the ``raftlite jepsen`` command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence, TextIO

from raftlite.argument_types import non_negative_int, positive_float, positive_int
from raftlite.core.raft import SAFE, UnsafeSwitches
from raftlite.core.raft_types import Configuration, Role
from raftlite.jepsen_like.history import Event, HistoryError, Verdict, to_json_value, write_edn_history
from raftlite.jepsen_like.nemesis_schedule import (
    MEMBERSHIP_SPARE_NODES, NEMESIS_CHOICES, FaultTrace, NemesisInterval, NemesisSchedule, parse_nemesis_schedule,
)
from raftlite.jepsen_like.workloads import (
    DATABASE, WORKLOADS, HistoryRecorder, WorkloadDriver, WorkloadOptions, leaders, make_workload,
)

__all__ = [
    "EXIT_INVALID", "EXIT_UNKNOWN", "EXIT_USAGE", "EXIT_VALID", "JepsenOptions", "RunResult", "add_jepsen_parser",
    "run_jepsen", "run_jepsen_command", "write_outputs",
]

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class JepsenOptions:
    workload: str = "register"
    nemesis: tuple[str, ...] = ()
    time_limit_s: float = 10.0
    seed: int = 1
    nodes: int = 3
    concurrency: int = 5
    rate_per_s: float = 100.0
    operation_timeout_ms: float = 3000.0
    nemesis_interval_ms: tuple[float, float] = (300.0, 2000.0)
    nemesis_duration_ms: tuple[float, float] = (200.0, 3000.0)
    checker_time_limit_s: float = 30.0
    quiet_period_s: float = 3.0
    setup_timeout_s: float = 30.0
    unsafe: UnsafeSwitches = SAFE   # test-only deliberate bugs (core/raft.py)
    raft_checker: bool = True       # the raft safety checkers after every step
    # Simulator only: crash a node right after it grants a vote (jepsen_like/targeted_nemesis.py),
    # the teeth of the vote_before_persist switch.
    crash_after_vote: bool = False

    def validate(self) -> "JepsenOptions":
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; choose from {', '.join(WORKLOADS)}")
        unknown = [kind for kind in self.nemesis if kind not in NEMESIS_CHOICES]
        if unknown:
            raise ValueError(f"unknown nemesis {', '.join(unknown)}")
        if not self.time_limit_s > 0:
            raise ValueError("the time limit must be positive")
        if self.nodes < 1 or self.concurrency < 1 or not self.rate_per_s > 0:
            raise ValueError("nodes, concurrency and rate must be positive")
        return self


@dataclass
class RunResult:
    options: JepsenOptions
    events: list[Event]
    verdict: Verdict | None
    problems: list[str]
    intervals: list[NemesisInterval]
    heal_ms: float | None
    simulated_ms: float
    wall_seconds: float
    faults: dict[str, int] = field(default_factory=dict)
    status: dict[int, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)   # paths, once written
    origin_ms: float = 0.0   # simulation time of the history's time zero (intervals are in simulation time)
    runtime: str = "sim"     # "real": node processes (jepsen_like/real_runtime.py), wall-clock time

    @property
    def valid(self) -> bool | str:
        if self.problems or self.verdict is None or self.verdict.valid is False:
            return False
        return self.verdict.valid

    def counts(self) -> dict[str, int]:
        counts = {"invoke": 0, "ok": 0, "fail": 0, "info": 0}
        for event in self.events:
            if isinstance(event.process, int):
                counts[event.type] += 1
        return counts

    def latencies_ms(self) -> list[tuple[float, float, str, str, Any]]:
        """(invoke time s, latency ms, completion type, f, process) of each completed operation."""
        from raftlite.jepsen_like.history import pair_operations

        found = []
        for operation in pair_operations(self.events):
            if not isinstance(operation.process, int) or operation.complete is None:
                continue
            start, end = operation.invoke.time or 0, operation.complete.time or 0
            found.append((start / 1e9, (end - start) / 1e6, operation.type, str(operation.f), operation.process))
        return found

    def summary(self) -> str:
        options, counts = self.options, self.counts()
        nemesis = ",".join(options.nemesis) or "none"
        verdict = self.verdict.valid if self.verdict is not None else "not checked"
        clock = "simulated s" if self.runtime == "sim" else f"s of history on {options.nodes} node processes,"
        lines = [
            f"jepsen {options.workload} seed {options.seed} nemesis {nemesis}: {self.simulated_ms / 1000:.1f} "
            f"{clock} in {self.wall_seconds:.1f} wall s",
            f"operations {counts['invoke']}: ok {counts['ok']}, fail {counts['fail']}, info {counts['info']}; "
            f"faults " + (", ".join(f"{kind}={count}" for kind, count in sorted(self.faults.items())) or "none"),
            f"checker: {verdict}",
        ]
        if self.verdict is not None:
            for anomaly in self.verdict.anomalies[:5]:
                lines.append(f"  ANOMALY {anomaly.kind}: {anomaly.description[:300]}")
        for problem in self.problems[:10]:
            lines.append(f"  PROBLEM {problem[:300]}")
        lines.append(f"valid: {json.dumps(self.valid)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        options = self.options
        return {
            "valid": self.valid,
            "workload": options.workload,
            "runtime": self.runtime,
            "seed": options.seed,
            "nemesis": list(options.nemesis),
            "time_limit_s": options.time_limit_s,
            "unsafe": list(options.unsafe.enabled()),
            "checker": self.verdict.to_json() if self.verdict is not None else None,
            "problems": list(self.problems),
            "operations": self.counts(),
            "faults": dict(sorted(self.faults.items())),
            "nemesis_intervals": [
                {**interval.to_json(), "start_s": round((interval.start_ms - self.origin_ms) / 1000, 6),
                 "end_s": round((interval.end_ms - self.origin_ms) / 1000, 6)}
                for interval in self.intervals
            ],
            "final_heal_ms": self.heal_ms,
            "simulated_s": round(self.simulated_ms / 1000, 3),
            "wall_s": round(self.wall_seconds, 3),
            "nodes": to_json_value({str(node): status for node, status in self.status.items()}),
        }


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

def database_actor_factory(founders: Sequence[int], config, unsafe: UnsafeSwitches) -> Callable[[int], Any]:
    from raftlite.actors.database import DatabaseNode
    from raftlite.actors.raft_node import settings_from_config

    bootstrap = Configuration.of({node: Role.VOTER for node in founders})
    # With every switch off the node computes its settings itself, exactly as in production.
    settings = replace(settings_from_config(config), unsafe=unsafe) if unsafe != SAFE else None
    return lambda node_id: DatabaseNode(bootstrap=bootstrap if node_id in founders else None, settings=settings)


def run_jepsen(options: JepsenOptions, *, progress: Callable[[str], None] | None = None) -> RunResult:
    """Run one seeded simulation with the workload and nemesis, and judge it."""
    from raftlite.sim.client import SimDatabaseClient, SqlFailure, Unavailable
    from raftlite.sim.raft_checkers import RaftChecker
    from raftlite.sim.run import swarm_config
    from raftlite.sim.simulation import Simulation, SimulationFailure

    options = options.validate()
    config = swarm_config(options.seed, small_snapshots=False)
    founders = list(range(1, options.nodes + 1))
    spares = list(range(options.nodes + 1, options.nodes + 1 + MEMBERSHIP_SPARE_NODES)) \
        if "membership" in options.nemesis else []
    trace = FaultTrace()
    sim = Simulation(seed=options.seed, node_ids=founders + spares,
                     actor_factory=database_actor_factory(founders, config, options.unsafe),
                     config=config, trace=trace, scratch_dir=True)
    checker = None
    if options.raft_checker:
        checker = RaftChecker(sim).attach()
        sim.actor_hooks.append(checker.instrument)
    workload = make_workload(options.workload, options.seed)
    recorder = HistoryRecorder(sim)
    nemesis = NemesisSchedule(sim, options.nemesis, founders=founders, spares=spares,
                              interval_ms=options.nemesis_interval_ms, duration_ms=options.nemesis_duration_ms)
    crasher = None
    if options.crash_after_vote:
        from raftlite.jepsen_like.targeted_nemesis import CrashAfterVote

        crasher = CrashAfterVote(sim, from_ms=float("inf"))   # armed when the workload starts
    driver = WorkloadDriver(sim, workload, recorder, WorkloadOptions(
        concurrency=options.concurrency, rate_per_s=options.rate_per_s,
        operation_timeout_ms=options.operation_timeout_ms))
    problems: list[str] = []
    started = time.perf_counter()
    try:
        sim.start()
        # The schema exists before any fault or operation.
        setup = SimDatabaseClient(sim, database=DATABASE, timeout_ms=options.setup_timeout_s * 1000.0)
        try:
            for statement in workload.schema:
                setup.execute(statement)
        except (SqlFailure, Unavailable) as error:
            raise _SetupFailed(f"setup: could not create the schema: {error}") from None
        origin = sim.now_ms
        recorder.time_origin_ms = origin
        end = origin + options.time_limit_s * 1000.0
        nemesis.observers.append(recorder.nemesis)   # Jepsen's :nemesis info events
        if crasher is not None:
            crasher.until_ms = end
            crasher.start(origin + config.election_timeout_ms)
            crasher.observers.append(recorder.nemesis)
        nemesis.start(heal_at_ms=end)
        driver.start(stop_at_ms=end)
        if progress is not None:
            _report_progress(sim, driver, origin, end, progress, started)
        sim.run_until(end)
        driver.drain(options.operation_timeout_ms + 100.0)
        liveness_limit_ms = 20.0 * 2 * config.election_timeout_ms
        problems.extend(driver.run_final_operations(liveness_limit_ms))
        driver.drain(options.operation_timeout_ms + 100.0)
        sim.run_for(options.quiet_period_s * 1000.0)
        problems.extend(_convergence_problems(sim, checker, liveness_limit_ms))
    except SimulationFailure as failure:
        problems.append(f"invariant: {failure}")
    except _SetupFailed as failure:
        problems.append(str(failure))
    except Exception as error:   # an actor raised: in a real process the node would have crashed
        problems.append(f"crash: {_crash_description(error)} (seed {options.seed} at {sim.now_ms:.3f} ms)")
    verdict = None
    events = list(recorder.events)
    try:
        verdict = workload.check(events, time_limit_s=options.checker_time_limit_s)
    except HistoryError as error:
        problems.append(f"the history could not be checked: {error}")
    intervals, faults = list(nemesis.intervals), dict(nemesis.injected)
    if crasher is not None:
        intervals = sorted(intervals + crasher.intervals, key=lambda interval: interval.start_ms)
        for interval in crasher.intervals:
            faults[interval.kind] = faults.get(interval.kind, 0) + 1
    result = RunResult(
        options=options, events=events, verdict=verdict, problems=problems, intervals=intervals,
        heal_ms=(nemesis.heal_time_ms - recorder.time_origin_ms) if nemesis.heal_time_ms is not None else None,
        simulated_ms=sim.now_ms, wall_seconds=time.perf_counter() - started, faults=faults,
        status=sim.status(), origin_ms=recorder.time_origin_ms,
    )
    sim.close()
    return result


class _SetupFailed(Exception):
    pass


def _crash_description(error: BaseException) -> str:
    """The exception and the innermost frames of the project's code that raised it."""
    import traceback

    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if "site-packages" not in frame.filename]
    where = " <- ".join(f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.name}" for frame in reversed(frames[-4:]))
    return f"{type(error).__name__}: {error} at {where}"


def _report_progress(sim, driver: WorkloadDriver, origin: float, end: float, progress: Callable[[str], None],
                     started: float) -> None:
    step_ms = max(1000.0, (end - origin) / 10)

    def tick() -> None:
        counts = driver.counts
        elapsed = (sim.now_ms - origin) / 1000
        progress(f"  {elapsed:6.1f}/{(end - origin) / 1000:.1f} simulated s  ops {counts['invoke']:5d} "
                 f"(ok {counts['ok']}, fail {counts['fail']}, info {counts['info']})  "
                 f"wall {time.perf_counter() - started:.1f} s")
        if sim.now_ms + step_ms <= end + 1e-6:
            sim.call_later(step_ms, tick)

    sim.call_later(step_ms, tick)


def _corrupted_nodes(sim) -> set[int]:
    return set().union(*sim.corrupted.values()) if sim.corrupted else set()


def _convergence_problems(sim, checker, limit_ms: float) -> list[str]:
    """After the heal and a quiet period: no unexpected halt, one leader, and every up
    member at the same applied index with the same pages."""
    from raftlite.sim.database_workload import replica_page_digest
    from raftlite.sim.simulation import NodeState

    problems = []
    corrupted = _corrupted_nodes(sim)
    for node_id in sim.node_ids:
        node = sim.nodes[node_id]
        if node.state == NodeState.HALTED and node_id not in corrupted:
            problems.append(f"node {node_id} halted: {node.halt_reason}")

    def members_applied() -> dict[int, int] | None:
        found = leaders(sim)
        if len(found) != 1:
            return None
        leader = sim.nodes[found[0]].actor
        replicas = leader.raft.configuration.replicas
        return {n: sim.nodes[n].actor.applied_index for n in replicas
                if sim.nodes[n].state == NodeState.UP and sim.nodes[n].actor is not None}

    # Wait (bounded) until every up member has applied the same index.
    deadline = sim.now_ms + limit_ms
    applied = members_applied()
    while (applied is None or len(set(applied.values())) > 1) and sim.now_ms < deadline:
        sim.run_for(50.0)
        applied = members_applied()
    if applied is None:
        problems.append(f"liveness: {len(leaders(sim))} leaders {limit_ms:.0f} ms after the final operations")
        return problems
    if len(set(applied.values())) > 1:
        problems.append(f"replicas did not converge: applied indexes {applied}")
    if checker is not None:
        problems.extend(checker.check_convergence())
    digests = {}
    for node_id in sorted(applied):
        try:
            digest = replica_page_digest(sim, node_id, DATABASE)
        except AssertionError as error:
            problems.append(str(error))
            continue
        if digest is not None:
            digests[node_id] = digest
    if len(set(digests.values())) > 1:
        problems.append(f"replicas differ page by page after a checkpoint (digests {digests})")
    return problems


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------

def write_outputs(result: RunResult, directory: str) -> dict[str, str]:
    """history.edn, verdict.json and report.html in `directory` (created); their paths."""
    from raftlite.jepsen_like.report import render_report

    os.makedirs(directory, exist_ok=True)
    paths = {
        "history": os.path.join(directory, "history.edn"),
        "verdict": os.path.join(directory, "verdict.json"),
        "report": os.path.join(directory, "report.html"),
    }
    with open(paths["history"], "w", encoding="utf-8") as handle:
        handle.write(write_edn_history(result.events))
    with open(paths["verdict"], "w", encoding="utf-8") as handle:
        json.dump(result.to_json(), handle, indent=2, default=repr)
        handle.write("\n")
    with open(paths["report"], "w", encoding="utf-8") as handle:
        handle.write(render_report(result))
    result.outputs = paths
    return paths


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------

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


def add_jepsen_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``jepsen`` on an argparse sub-command set."""
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
    return parser


def run_jepsen_command(args: argparse.Namespace, *, stdout: TextIO | None = None,
                       stderr: TextIO | None = None) -> int:
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    from raftlite.sim.nemesis import NemesisError

    def usage(message: str) -> int:
        print(f"raftlite: error: {message}", file=stderr)
        return EXIT_USAGE

    try:
        if args.runtime == "real":
            from raftlite.jepsen_like.real_runtime import parse_real_nemesis

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
        from raftlite.jepsen_like.real_runtime import run_jepsen_real

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
