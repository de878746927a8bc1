"""Elle-style list-append checking: each anomaly kind on a small history that has exactly
it, real-time order catching a stale read, and histories of a real store that are valid."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftlite.jepsen_like.history import build_history
from raftlite.jepsen_like.list_append import check_list_append

pytestmark = pytest.mark.timeout(60)


def A(key, value):
    return ["append", key, value]


def R(key, values=None):
    return ["r", key, values]


def invoke_form(micro_operations):
    return [[kind, key, None if kind == "r" else value] for kind, key, value in micro_operations]


def serial(*transactions):
    """Transactions one after another (each completes before the next is invoked)."""
    rows = []
    for process, (kind, micro_operations) in enumerate(transactions):
        rows += [(process, "invoke", "txn", invoke_form(micro_operations)), (process, kind, "txn", micro_operations)]
    return build_history(rows)


def concurrent(*transactions):
    """All invoked, then all completed: no real-time order between them."""
    rows = [(process, "invoke", "txn", invoke_form(micro_operations))
            for process, (_, micro_operations) in enumerate(transactions)]
    rows += [(process, kind, "txn", micro_operations) for process, (kind, micro_operations) in enumerate(transactions)]
    return build_history(rows)


def kinds(verdict):
    return sorted({anomaly.kind for anomaly in verdict.anomalies})


def test_a_serial_history_is_valid():
    history = serial(("ok", [A("x", 1), R("x", [1])]), ("ok", [R("x", [1]), A("x", 2), A("y", 1)]),
                     ("ok", [R("x", [1, 2]), R("y", [1])]))
    verdict = check_list_append(history)
    assert verdict.valid is True and verdict.anomalies == ()
    assert verdict.details["edges"] > 0


def test_G0_write_cycle():
    history = concurrent(("ok", [A("x", 1), A("y", 2)]), ("ok", [A("x", 2), A("y", 1)]),
                         ("ok", [R("x", [1, 2]), R("y", [1, 2])]))
    verdict = check_list_append(history, consistency="serializable")
    assert kinds(verdict) == ["G0"]
    [anomaly] = verdict.anomalies
    assert {step["edge"] for step in anomaly.details["cycle"]} == {"ww"}
    assert {step["key"] for step in anomaly.details["cycle"]} == {"x", "y"}
    assert {event.process for event in verdict.excerpt} == {0, 1}


def test_G1c_circular_information_flow():
    history = concurrent(("ok", [A("x", 1), R("y", [1])]), ("ok", [A("y", 1), R("x", [1])]))
    verdict = check_list_append(history, consistency="serializable")
    assert kinds(verdict) == ["G1c"]
    assert [step["edge"] for step in verdict.anomalies[0].details["cycle"]] == ["wr", "wr"]


def test_G_single_read_skew():
    history = concurrent(("ok", [R("x", []), R("y", [1])]), ("ok", [A("x", 1), A("y", 1)]), ("ok", [R("x", [1])]))
    verdict = check_list_append(history, consistency="serializable")
    assert kinds(verdict) == ["G-single"]
    assert sorted(step["edge"] for step in verdict.anomalies[0].details["cycle"]) == ["rw", "wr"]


def test_G2_write_skew():
    history = concurrent(("ok", [R("x", []), A("y", 1)]), ("ok", [R("y", []), A("x", 1)]),
                         ("ok", [R("x", [1]), R("y", [1])]))
    verdict = check_list_append(history, consistency="serializable")
    assert kinds(verdict) == ["G2"]
    assert [step["edge"] for step in verdict.anomalies[0].details["cycle"]] == ["rw", "rw"]


def test_G1a_aborted_read():
    history = serial(("fail", [A("x", 1)]), ("ok", [R("x", [1])]))
    verdict = check_list_append(history)
    assert kinds(verdict) == ["G1a"]
    assert verdict.anomalies[0].details == {"key": "x", "element": 1}


def test_G1b_intermediate_read():
    history = concurrent(("ok", [A("x", 1), A("x", 2)]), ("ok", [R("x", [1])]))
    verdict = check_list_append(history, consistency="serializable")
    assert kinds(verdict) == ["G1b"]


@pytest.mark.parametrize("micro_operations", [
    [A("x", 1), R("x", [])],                       # does not see its own append
    [R("x", [5]), A("x", 6), R("x", [5])],         # forgets its own append after a read
    [R("x", [5]), R("x", [])],                     # two reads of the key disagree
])
def test_internal_inconsistency(micro_operations):
    writes = [A("x", 5)] if any(value == [5] for _, _, value in micro_operations) else []
    history = serial(*([("ok", writes)] if writes else []), ("ok", micro_operations))
    verdict = check_list_append(history)
    assert "internal" in kinds(verdict)


def test_duplicate_elements_and_incompatible_orders():
    history = serial(("ok", [A("x", 1)]), ("ok", [A("x", 2)]), ("ok", [R("x", [1, 1, 2])]))
    assert "duplicate-elements" in kinds(check_list_append(history))
    history = concurrent(("ok", [A("x", 1)]), ("ok", [A("x", 2)]), ("ok", [R("x", [1, 2])]), ("ok", [R("x", [2, 1])]))
    assert kinds(check_list_append(history)) == ["incompatible-order"]


def test_a_read_of_an_element_nobody_appended():
    assert kinds(check_list_append(serial(("ok", [R("x", [7])])))) == ["unwritten-read"]


def test_a_stale_read_is_caught_only_under_real_time_order():
    history = serial(("ok", [A("x", 1)]), ("ok", [R("x", [])]), ("ok", [R("x", [1])]))
    assert check_list_append(history, consistency="serializable").valid is True
    verdict = check_list_append(history, consistency="strict-serializable")
    assert kinds(verdict) == ["G-single-realtime"]
    assert sorted(step["edge"] for step in verdict.anomalies[0].details["cycle"]) == ["rt", "rw"]


def test_info_transactions_may_or_may_not_have_committed():
    unseen = serial(("info", [A("x", 1)]), ("ok", [R("x", [])]))
    assert check_list_append(unseen).valid is True
    seen = serial(("info", [A("x", 1)]), ("ok", [R("x", [1])]))
    assert check_list_append(seen).valid is True


def run_store(rng: random.Random, transactions: int, processes: int, keys: int):
    """A history of a real serializable store: each transaction applies atomically at a
    random moment between its invocation and its completion (so strictly serializable)."""
    store: dict[int, list[int]] = {}
    rows = []
    pending: dict[int, list] = {}
    next_value = 0
    started = 0
    while started < transactions or pending:
        process = rng.randrange(processes)
        if process not in pending:
            if started >= transactions:
                continue
            started += 1
            micro_operations = []
            for _ in range(rng.randint(1, 4)):
                key = rng.randrange(keys)
                if rng.random() < 0.5:
                    next_value += 1
                    micro_operations.append(A(key, next_value))
                else:
                    micro_operations.append(R(key))
            pending[process] = [micro_operations, None]
            rows.append((process, "invoke", "txn", micro_operations))
        elif pending[process][1] is None:
            completed = []
            for kind, key, value in pending[process][0]:
                if kind == "append":
                    store.setdefault(key, []).append(value)
                    completed.append(A(key, value))
                else:
                    completed.append(R(key, list(store.get(key, []))))
            pending[process][1] = completed
        else:
            rows.append((process, "ok", "txn", pending.pop(process)[1]))
    return build_history(rows)


@settings(max_examples=60)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 5), st.integers(1, 4))
def test_histories_of_a_real_store_are_strictly_serializable(seed, transactions, processes, keys):
    verdict = check_list_append(run_store(random.Random(seed), transactions, processes, keys))
    assert verdict.valid is True, verdict.to_json()["anomalies"][:2]
