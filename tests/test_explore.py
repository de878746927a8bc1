"""The bounded exhaustive explorer of tiny raft clusters (sim/explore.py)."""

import os
import subprocess
import sys

import pytest

from raftlite.cli import main
from raftlite.core.raft import UnsafeSwitches
from raftlite.core.raft_messages import VoteRequest
from raftlite.core.raft_types import Entry, EntryKind
from raftlite.sim.explore import (
    _CONSTANT_ATTRIBUTES, ExploreBounds, _clone_raft, _Explorer, _freeze, _log_mismatch, explore,
)

# One bound for the fixed core and for the reverted fix: the fixed core must come out
# clean exactly where the old behaviour is caught. About 70,000 states: a few seconds.
STANDARD = ExploreBounds(depth_max=10, term_max=3, proposals_max=1, crashes_max=1)


def test_the_fixed_core_keeps_one_leader_per_term_and_matching_logs_within_the_bounds():
    result = explore(STANDARD, progress=None)
    assert result.ok, result.render()
    assert result.depth_reached == STANDARD.depth_max
    assert result.states > 10_000
    assert "distinct states" in result.render() and f"depth reached {STANDARD.depth_max}" in result.render()


def test_the_self_vote_counted_before_persist_elects_two_leaders_in_one_term():
    result = explore(ExploreBounds(**{**_fields(STANDARD), "unsafe": UnsafeSwitches(self_vote_before_persist=True)}),
                     progress=None)
    violation = result.violation
    assert violation is not None and violation.kind == "election safety", result.render()
    assert "both led term 2" in violation.message
    # The shortest path: a candidate wins before its term is durable, crashes, and votes
    # again in the term it forgot.
    assert len(violation.path) <= STANDARD.depth_max
    assert any(step.startswith("crash n") for step in violation.path)
    assert "VIOLATION (election safety)" in result.render() and "path (" in result.render()


def test_a_vote_sent_before_it_is_durable_is_caught_too():
    result = explore(ExploreBounds(**{**_fields(STANDARD), "unsafe": UnsafeSwitches(vote_before_persist=True)}),
                     progress=None)
    assert result.violation is not None and result.violation.kind == "election safety", result.render()


def test_the_state_count_is_the_same_on_every_run():
    bounds = ExploreBounds(depth_max=8)
    first, second = explore(bounds, progress=None), explore(bounds, progress=None)
    def counts(result):
        return result.states, result.transitions, result.node_states

    assert counts(first) == counts(second)
    assert first.states > 1_000


def test_the_output_does_not_depend_on_the_hash_seed():
    script = (
        "from raftlite.sim.explore import ExploreBounds, explore\n"
        "from raftlite.core.raft import UnsafeSwitches\n"
        "r = explore(ExploreBounds(depth_max=9, term_max=2, proposals_max=1, "
        "unsafe=UnsafeSwitches(self_vote_before_persist=True)), progress=None)\n"
        "print(r.states, r.transitions, r.node_states)\n"
        "print(*r.violation.path, sep='\\n')\n"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
        outputs.add(subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                                   check=True).stdout)
    assert len(outputs) == 1


def test_the_command_exits_0_when_clean_1_on_a_violation_and_2_on_bad_flags(capsys):
    small = ["sim", "explore", "--depth", "9", "--max-term", "2", "--proposals", "0", "--quiet"]
    assert main(small) == 0
    assert "ok: " in capsys.readouterr().out
    assert main([*small, "--unsafe", "self-vote-before-persist"]) == 1
    assert "both led term 2" in capsys.readouterr().out
    for bad in (["--unsafe", "no_such_bug"], ["--depth", "0"], ["--proposals", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*small, *bad])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert "error:" in error and "Traceback" not in error


def test_log_matching_compares_prefixes_at_the_highest_index_of_equal_terms():
    def log(*terms):
        return tuple(Entry(term, index, EntryKind.NOOP) for index, term in enumerate(terms, 1))

    assert _log_mismatch(log(1, 2, 2), log(1, 2)) is None
    assert _log_mismatch(log(1, 2), log(1, 3)) is None           # diverging after a common prefix is allowed
    assert _log_mismatch(log(1, 2, 3), log(1, 3, 3)) == 3        # same (index, term), different prefix
    assert _log_mismatch((), log(1)) is None


def test_committed_entries_are_never_replaced_and_earlier_terms_commits_are_in_every_later_leader():
    explorer = _Explorer(STANDARD)
    state = explorer.initial_state()
    # n1 wins term 2 (its own vote, then n2's, each counted once durable).
    for action in (("timeout", 0), ("persist", 0), ("deliver", 0), ("persist", 1)):
        state, kind, _ = explorer.successor(state, action)
        assert kind is None
    response = next(message_id for message_id in state[STANDARD.nodes] if explorer.messages[message_id][1] == 1)
    state, kind, _ = explorer.successor(state, ("deliver", response))
    assert kind is None and explorer.node_models[state[0]].leader_term == 2
    leader = state[0]
    # A record saying index 2 was committed in term 1 with an entry of term 1: the
    # leader of term 2 holds 2@2 there instead.
    nodes = list(state[: STANDARD.nodes])
    _, kind, message = explorer._check_commits(((1, 1), (1, 1)), nodes, 0)
    assert kind == "leader completeness" and "without the entry 2@1" in message
    # Committed in a later term than the leader's: no claim on it.
    assert explorer._check_commits(((1, 1), (1, 3)), nodes, 0)[1] is None



def test_a_cloned_core_shares_no_mutable_state_with_its_original():
    explorer = _Explorer(STANDARD)
    state = explorer.initial_state()
    original = explorer.node_models[state[0]].raft

    def frozen(raft):
        return _freeze([(name, value) for name, value in sorted(raft.__dict__.items())
                        if name not in _CONSTANT_ATTRIBUTES])

    before = frozen(original)
    clone = _clone_raft(original)
    clone.campaign()
    clone.step(2, VoteRequest(term=5, last_log_index=1, last_log_term=1))
    clone.ready()
    assert frozen(clone) != before
    assert frozen(original) == before


def _fields(bounds: ExploreBounds) -> dict:
    return {name: getattr(bounds, name) for name in bounds.__slots__}
