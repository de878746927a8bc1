"""Fault points at persistence boundaries, and replay of a run from its recorded faults."""

import subprocess
import sys

import pytest

from raftlite.sim.fault_points import FAULT_POINTS, FaultPointError, parse_fault_points, swarm_fault_points
from raftlite.sim.nemesis import NEMESIS_KINDS, FaultEvent
from raftlite.sim.run import run_simulation

pytestmark = pytest.mark.timeout(120)


def run(seed, **options):
    summary, sim = run_simulation(seed=seed, nodes=3, duration_ms=5_000, actor="raft", quiet_period_ms=1_000,
                                  keep_trace=options.pop("keep_trace", False), **options)
    sim.close()
    return summary, sim


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_each_fault_point_fires_and_is_reported_and_the_run_stays_safe(point):
    fired = 0
    for seed in range(1, 7):
        summary, _ = run(seed, nemesis=("partition", "crash"), fault_points=(point,))
        assert summary.ok, summary.render()
        assert list(summary.fault_points) == [point]      # one point asked for: always on
        fired += summary.fault_points[point]["fired"]
        assert sum(1 for e in summary.fault_events if e.kind == point) == summary.fault_points[point]["fired"]
    assert fired > 0


def test_crash_after_send_lands_before_anything_else_happens_on_that_node():
    landed = 0
    for seed in range(1, 7):
        summary, sim = run(seed, fault_points=("crash-after-send",), keep_trace=True)
        events = list(sim.trace.events())
        for position, event in enumerate(events):
            if event["ev"] == "nemesis" and "crash-after-send" in event["fault"]:
                following = next(e for e in events[position + 1:] if e["n"] == event["n"])
                assert following["ev"] == "crash" and following["t"] == event["t"]
                landed += 1
    assert landed > 0


def test_each_seed_enables_its_own_subset_with_its_own_probabilities():
    subsets = {tuple(swarm_fault_points(seed, FAULT_POINTS)) for seed in range(1, 40)}
    assert len(subsets) > 4 and () not in subsets
    assert swarm_fault_points(5, FAULT_POINTS) == swarm_fault_points(5, FAULT_POINTS)
    assert list(swarm_fault_points(5, ("metadata-eio",))) == ["metadata-eio"]


@pytest.mark.parametrize("seed", [3, 4])
def test_replaying_the_recorded_fault_events_gives_the_identical_trace(seed):
    original, _ = run(seed, nemesis=NEMESIS_KINDS, fault_points=FAULT_POINTS)
    kinds = {event.kind for event in original.fault_events}
    assert len(original.fault_events) >= 4 and kinds & set(FAULT_POINTS), original.render()
    # The same nemesis kinds: they decide the cluster's shape (membership faults add a
    # node that is not a founder), not which faults happen.
    replayed, _ = run(seed, nemesis=NEMESIS_KINDS, replay=original.fault_events)
    assert replayed.trace_hash == original.trace_hash
    assert replayed.fault_events == original.fault_events
    # Without one event the run differs, and the other events keep their parameters.
    shorter, _ = run(seed, replay=original.fault_events[1:])
    assert shorter.trace_hash != original.trace_hash


def test_events_print_as_script_lines_that_read_back_exactly():
    original, _ = run(3, nemesis=NEMESIS_KINDS, fault_points=FAULT_POINTS)
    for event in original.fault_events:
        words = event.script_line().split()
        assert words[0] == "fault"
        assert FaultEvent.parse(words[1:]) == event


def test_the_seed_stream_of_one_event_does_not_depend_on_the_others():
    # The nemesis draws event n's parameters from its own stream: a run with only crashes
    # and a run with only pauses pick their nodes from the same per-event streams, so the
    # n-th crash and the n-th pause target the same node whenever both have the same candidates.
    crashes, _ = run(4, nemesis=("crash",))
    pauses, _ = run(4, nemesis=("pause",))
    assert crashes.fault_events and pauses.fault_events
    first_crash, first_pause = crashes.fault_events[0], pauses.fault_events[0]
    assert first_crash.time_ms == first_pause.time_ms        # the schedule is its own stream
    assert first_crash["node"] == first_pause["node"]


def test_unknown_fault_points_are_named():
    with pytest.raises(FaultPointError, match="unknown fault point meteor"):
        parse_fault_points("slow-persist,meteor")
    assert parse_fault_points("all") == FAULT_POINTS and parse_fault_points("none") == ()


def test_sim_run_and_check_report_fault_points():
    run_result = subprocess.run(
        [sys.executable, "-m", "raftlite", "sim", "run", "--seed", "3", "--duration", "4", "--nemesis", "all",
         "--fault-points", "all"], capture_output=True, text=True, timeout=100)
    assert run_result.returncode == 0, run_result.stderr
    assert "fault points slow-persist fired" in run_result.stdout
    check = subprocess.run(
        [sys.executable, "-m", "raftlite", "sim", "check", "--seeds", "1..3", "--duration", "4"],
        capture_output=True, text=True, timeout=100)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "3 seeds, 0 failing" in check.stdout and "fault points: " in check.stdout
    bad = subprocess.run([sys.executable, "-m", "raftlite", "sim", "run", "--seed", "1", "--fault-points", "meteor"],
                         capture_output=True, text=True, timeout=100)
    assert bad.returncode == 2 and "unknown fault point meteor" in bad.stderr and "Traceback" not in bad.stderr
