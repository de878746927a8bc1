"""Linearizability (Wing–Gong/Lowe search): hand-made histories with known verdicts, the
meaning of fail and info, per-key partitioning, the time budget, and generated histories."""

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftlite.jepsen_like.history import Event, build_history, pair_operations
from raftlite.jepsen_like.linearizability import LinearizabilityLimits, check_linearizability
from raftlite.jepsen_like.models import generate_register_history, make_model

pytestmark = pytest.mark.timeout(60)


def check(rows, model="cas-register", initial=None, **options):
    return check_linearizability(build_history(rows), make_model(model, initial), **options)


def test_sequential_write_then_read_is_valid():
    verdict = check([(0, "invoke", "write", 1), (0, "ok", "write", 1), (1, "invoke", "read", None), (1, "ok", "read", 1)])
    assert verdict.valid is True and not verdict.anomalies


def test_stale_read_after_a_completed_write_is_invalid():
    rows = [
        (0, "invoke", "write", 1), (0, "ok", "write", 1),
        (0, "invoke", "write", 2), (0, "ok", "write", 2),
        (1, "invoke", "read", None), (1, "ok", "read", 1),
    ]
    verdict = check(rows)
    assert verdict.valid is False
    [anomaly] = verdict.anomalies
    assert anomaly.kind == "nonlinearizable" and anomaly.details["stuck_operation"] == "read -> 1"
    # The excerpt shows the read that cannot be placed and what was linearized before it.
    assert {event.index for event in verdict.excerpt} >= {4, 5}


@pytest.mark.parametrize("seen", [1, 2])
def test_a_read_concurrent_with_a_write_may_see_either_value(seen):
    rows = [
        (0, "invoke", "write", 1), (0, "ok", "write", 1),
        (0, "invoke", "write", 2), (1, "invoke", "read", None), (1, "ok", "read", seen), (0, "ok", "write", 2),
    ]
    assert check(rows).valid is True


def test_an_info_write_may_have_happened_or_not_but_not_both():
    crashed = [(0, "invoke", "write", 1), (0, "info", "write", 1)]
    assert check([*crashed, (1, "invoke", "read", None), (1, "ok", "read", None)]).valid is True
    assert check([*crashed, (1, "invoke", "read", None), (1, "ok", "read", 1)]).valid is True
    flip_flop = [*crashed, (1, "invoke", "read", None), (1, "ok", "read", 1), (1, "invoke", "read", None),
                 (1, "ok", "read", None)]
    assert check(flip_flop).valid is False


def test_an_info_write_may_take_effect_long_after_its_invocation():
    rows = [
        (0, "invoke", "write", 1),                                   # never completes
        (1, "invoke", "write", 2), (1, "ok", "write", 2),
        (2, "invoke", "read", None), (2, "ok", "read", 2),
        (2, "invoke", "read", None), (2, "ok", "read", 1),
    ]
    assert check(rows).valid is True


def test_a_failed_write_did_not_happen():
    rows = [(0, "invoke", "write", 1), (0, "fail", "write", 1), (1, "invoke", "read", None), (1, "ok", "read", 1)]
    assert check(rows).valid is False


def test_compare_and_set_follows_the_register():
    good = [(0, "invoke", "cas", [0, 1]), (0, "ok", "cas", [0, 1]), (1, "invoke", "read", None), (1, "ok", "read", 1)]
    assert check(good, initial=0).valid is True
    overwritten = [
        (0, "invoke", "write", 2), (0, "ok", "write", 2),
        (0, "invoke", "write", 4), (0, "ok", "write", 4),
        (1, "invoke", "cas", [2, 3]), (1, "ok", "cas", [2, 3]),
    ]
    assert check(overwritten, initial=0).valid is False
    never_held = [(1, "invoke", "cas", [7, 3]), (1, "ok", "cas", [7, 3])]
    verdict = check(never_held, initial=0)
    assert verdict.valid is False and "never held" in verdict.anomalies[0].description


def test_a_failed_cas_means_not_applied_for_knossos_and_compare_false_for_etcd():
    rows = [(0, "invoke", "write", 1), (0, "ok", "write", 1), (1, "invoke", "cas", [1, 2]), (1, "fail", "cas", [1, 2])]
    assert check(rows, "cas-register").valid is True
    assert check(rows, "etcd-register").valid is False        # the register held 1: the cas had to succeed


def test_read_of_a_value_never_written_is_caught_before_searching():
    rows = [(0, "invoke", "write", 1), (0, "ok", "write", 1), (1, "invoke", "read", None), (1, "ok", "read", 9)]
    verdict = check(rows, "register")
    assert verdict.valid is False and "no operation wrote" in verdict.anomalies[0].description
    assert verdict.details["configurations"] == 0


def test_independent_keys_are_checked_separately():
    rows = [
        (0, "invoke", "write", ["x", 1]), (0, "ok", "write", ["x", 1]),
        (1, "invoke", "write", ["y", 2]), (1, "ok", "write", ["y", 2]),
        (2, "invoke", "read", ["x", None]), (2, "ok", "read", ["x", 1]),
        (2, "invoke", "read", ["y", None]), (2, "ok", "read", ["y", 2]),
    ]
    verdict = check(rows)
    assert verdict.valid is True and verdict.details["keys"] == 2
    broken = rows + [(3, "invoke", "read", ["y", None]), (3, "ok", "read", ["y", 1])]
    verdict = check(broken)
    assert verdict.valid is False
    assert [anomaly.details["key"] for anomaly in verdict.anomalies] == ["y"]


def stale_future_read(events: list[Event], rng: random.Random) -> list[Event] | None:
    """Make one ok read return the unique value of a write invoked only after that read
    completed: impossible in any order, yet a value someone did write (no shortcut)."""
    operations = pair_operations(events)
    values_written: dict = {}
    for operation in operations:
        if operation.f == "write":
            values_written[operation.invoke_value] = values_written.get(operation.invoke_value, 0) + 1
    reads = [operation for operation in operations if operation.f == "read" and operation.type == "ok"]
    rng.shuffle(reads)
    for read in reads:
        later = [operation for operation in operations
                 if operation.f == "write" and operation.invoke_index > read.complete.index
                 and values_written[operation.invoke_value] == 1 and operation.invoke_value != read.value]
        if later:
            value = rng.choice(later).invoke_value
            changed = Event(type="ok", f=read.f, value=value, process=read.process, index=read.complete.index)
            return [changed if event is read.complete else event for event in events]
    return None


def test_time_budget_answers_unknown():
    rng = random.Random(7)
    events = None
    while events is None:
        events = stale_future_read(generate_register_history(
            rng, operations=3000, processes=10, values=10**9, with_cas=False, info_probability=0.05), rng)
    started = time.monotonic()
    verdict = check_linearizability(events, make_model("register"), limits=LinearizabilityLimits(time_limit_s=0.3))
    assert verdict.valid == "unknown" and "time limit" in verdict.details["reason"]
    assert time.monotonic() - started < 5
    verdict = check_linearizability(events, make_model("register"),
                                    limits=LinearizabilityLimits(configurations_max=100))
    assert verdict.valid == "unknown"


def test_ten_thousand_operations_partitioned_within_the_issue_budget():
    events = generate_register_history(random.Random(1), operations=10_000, processes=10, keys=5,
                                       info_probability=0.01, fail_probability=0.02)
    started = time.monotonic()
    verdict = check_linearizability(events, make_model("cas-register"),
                                    limits=LinearizabilityLimits(time_limit_s=30))
    elapsed = time.monotonic() - started
    assert verdict.valid is True and verdict.details["keys"] == 5
    assert elapsed < 10, f"{elapsed:.1f} s"


histories = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "operations": st.integers(1, 60),
    "processes": st.integers(1, 6),
    "keys": st.one_of(st.none(), st.integers(1, 3)),
    "with_cas": st.booleans(),
    "info_probability": st.sampled_from([0.0, 0.05, 0.15]),
    "fail_probability": st.sampled_from([0.0, 0.1]),
})


@settings(max_examples=150)
@given(histories)
def test_generated_histories_of_a_real_register_are_linearizable(parameters):
    rng = random.Random(parameters.pop("seed"))
    events = generate_register_history(rng, **parameters)
    verdict = check_linearizability(events, make_model("cas-register"), limits=LinearizabilityLimits(time_limit_s=20))
    assert verdict.valid is True, verdict.to_json()


@settings(max_examples=100)
@given(histories)
def test_one_read_corrupted_to_a_value_never_written_is_not_linearizable(parameters):
    rng = random.Random(parameters.pop("seed"))
    events = generate_register_history(rng, **parameters)
    reads = [event for event in events if event.type == "ok" and event.f == "read"]
    if not reads:
        return
    victim = rng.choice(reads)
    corrupted_value = "never-written" if parameters["keys"] is None else (victim.value[0], "never-written")
    corrupted = [Event(type="ok", f=event.f, value=corrupted_value, process=event.process, index=event.index)
                 if event is victim else event for event in events]
    verdict = check_linearizability(corrupted, make_model("cas-register"), limits=LinearizabilityLimits(time_limit_s=20))
    assert verdict.valid is False
    assert victim.index in {event.index for event in verdict.excerpt}


@settings(max_examples=100)
@given(st.integers(0, 2**32 - 1), st.integers(4, 60), st.integers(2, 6), st.sampled_from([0.0, 0.05]))
def test_one_read_of_a_future_write_is_found_by_the_search(seed, operations, processes, info_probability):
    rng = random.Random(seed)
    events = generate_register_history(rng, operations=operations, processes=processes, values=10**9,
                                       with_cas=False, info_probability=info_probability)
    corrupted = stale_future_read(events, rng)
    if corrupted is None:
        return
    verdict = check_linearizability(corrupted, make_model("register"), limits=LinearizabilityLimits(time_limit_s=20))
    assert verdict.valid is False
    # Refuted by the search itself (the value was written, so no shortcut applies).
    assert "linearized_prefix" in verdict.anomalies[0].details
