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
  corrupt storage is the designed answer, docs/architecture.md §3) and one the cluster
  removed (told so by the leader, it stops; the membership nemesis restarts it when it
  adds it back);
- convergence: every up member applied the same index and holds the same database
  pages (compared after a checkpoint of a copy of its files).

The run is valid when the checker says valid and nothing else was found; "unknown" when
the checker ran out of time. Everything derives from ``seed``: the same options give the
same history.

`write_outputs` writes history.edn, verdict.json and report.html into a directory. The
options and the result are jepsen_like/run_result.py's; the ``raftlite jepsen`` command
is commands/jepsen.py.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import replace
from typing import Any, Callable, Sequence

from ..actors.database import DatabaseNode
from ..actors.raft_node import settings_from_config
from ..core.raft import REMOVED_FROM_CLUSTER, SAFE, UnsafeSwitches
from ..core.raft_types import Configuration, Role
from .history import HistoryError, write_edn_history
from .nemesis_schedule import MEMBERSHIP_SPARE_NODES, FaultTrace, NemesisSchedule
from .report import render_report
from .run_result import JepsenOptions, RunResult
from ..sim.crash_after_vote import CrashAfterVote
from .workloads import (
    DATABASE, HistoryRecorder, WorkloadDriver, WorkloadOptions, make_workload,
)
from ..sim.client import SimDatabaseClient, SqlFailure, Unavailable
from ..sim.database_workload import replica_page_digest
from ..sim.raft_checkers import RaftChecker
from ..sim.run import swarm_config
from ..sim.simulation import NodeState, Simulation, SimulationFailure

__all__ = ["database_actor_factory", "run_jepsen", "write_outputs"]

# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

def database_actor_factory(founders: Sequence[int], config, unsafe: UnsafeSwitches) -> Callable[[int], Any]:
    bootstrap = Configuration.of({node: Role.VOTER for node in founders})
    # With every switch off the node computes its settings itself, exactly as in production.
    settings = replace(settings_from_config(config), unsafe=unsafe) if unsafe != SAFE else None
    return lambda node_id: DatabaseNode(bootstrap=bootstrap if node_id in founders else None, settings=settings)


def run_jepsen(options: JepsenOptions, *, progress: Callable[[str], None] | None = None) -> RunResult:
    """Run one seeded simulation with the workload and nemesis, and judge it."""
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
    problems = []
    corrupted = _corrupted_nodes(sim)
    for node_id in sim.node_ids:
        node = sim.nodes[node_id]
        removed = (node.halt_reason or "").startswith(REMOVED_FROM_CLUSTER)   # an orderly end, not a fault
        if node.state == NodeState.HALTED and node_id not in corrupted and not removed:
            problems.append(f"node {node_id} halted: {node.halt_reason}")

    def members_applied() -> dict[int, int] | None:
        found = sim.leaders()
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
        problems.append(f"liveness: {len(sim.leaders())} leaders {limit_ms:.0f} ms after the final operations")
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
