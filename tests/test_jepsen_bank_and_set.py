"""Bank totals and set membership checkers."""

import pytest

from raftlite.jepsen_like.history import build_history
from raftlite.jepsen_like.bank import check_bank
from raftlite.jepsen_like.set_checker import check_set

pytestmark = pytest.mark.timeout(30)


def read(process, balances):
    return [(process, "invoke", "read", None), (process, "ok", "read", balances)]


def transfer(process, source, target, amount, outcome="ok"):
    value = {"from": source, "to": target, "amount": amount}
    return [(process, "invoke", "transfer", value), (process, outcome, "transfer", value)]


def test_bank_reads_that_keep_the_total_are_valid():
    history = build_history([*read(0, {0: 10, 1: 10}), *transfer(1, 0, 1, 3), *read(0, {0: 7, 1: 13})])
    verdict = check_bank(history, total=20, accounts=[0, 1])
    assert verdict.valid is True and verdict.details["reads"] == 2


def test_bank_wrong_total_negative_and_unknown_accounts():
    history = build_history([*read(0, {0: 10, 1: 10}), *read(1, {0: 12, 1: 10}), *read(2, {0: -1, 1: 21}),
                             *read(3, {0: 10, 1: 5, 9: 5})])
    verdict = check_bank(history, total=20, accounts=[0, 1])
    assert [anomaly.kind for anomaly in verdict.anomalies] == ["wrong-total", "negative-value", "unexpected-key"]
    assert verdict.anomalies[0].details == {"total": 22, "expected": 20}
    assert verdict.valid is False and [event.index for event in verdict.excerpt] == [2, 3]
    allowed = check_bank(build_history(read(0, {0: -1, 1: 21})), total=20, negative_balances_allowed=True)
    assert allowed.valid is True


def test_bank_total_inferred_from_the_first_read_and_said_so():
    history = build_history([*read(0, {0: 10, 1: 10}), *read(0, {0: 10, 1: 11})])
    verdict = check_bank(history)
    assert verdict.valid is False and verdict.details["total"] == 20
    assert verdict.details["total_inferred_from_event"] == 1


def test_bank_without_reads_is_unknown():
    assert check_bank(build_history(transfer(0, 0, 1, 5))).valid == "unknown"


def add(process, element, outcome="ok"):
    return [(process, "invoke", "add", element), (process, outcome, "add", element)]


def test_set_all_acknowledged_adds_present_is_valid_and_info_may_go_either_way():
    history = build_history([*add(0, 1), *add(1, 2), *add(2, 3, "info"), *add(3, 4, "info"),
                             (0, "invoke", "read", None), (0, "ok", "read", [1, 2, 3])])
    verdict = check_set(history)
    assert verdict.valid is True and verdict.details["recovered"] == [3]


def test_set_lost_unexpected_and_duplicated():
    history = build_history([*add(0, 1), *add(1, 2), *add(2, 3, "fail"),
                             (0, "invoke", "read", None), (0, "ok", "read", [1, 3, 7, 1])])
    verdict = check_set(history)
    found = {anomaly.kind: anomaly.details["elements"] for anomaly in verdict.anomalies}
    assert found == {"lost": [2], "unexpected": [3, 7], "duplicated": [1]}
    assert verdict.valid is False


def test_set_an_add_acknowledged_during_the_final_read_is_not_lost():
    history = build_history([(0, "invoke", "add", 1), (1, "invoke", "read", None), (0, "ok", "add", 1),
                             (1, "ok", "read", [])])
    assert check_set(history).valid is True


def test_set_without_a_read_is_unknown():
    assert check_set(build_history(add(0, 1))).valid == "unknown"
