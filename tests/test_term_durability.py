"""Bug 1 of the safety review, in the pure core: a candidate that counted its own vote
and sent messages of its new term before that term was durable could crash, restart in
the old term with no vote, vote for another candidate of the same term, and so let two
leaders share it. Three `Raft` cores follow the Ready contract by hand here; a crash
rebuilds a core from what it had made durable, nothing else."""

import random
from dataclasses import dataclass, field
from pathlib import Path

from raftlite.core.raft import Raft, RaftSettings, Ready, State, UnsafeSwitches
from raftlite.core.raft_messages import AppendRequest, VoteRequest, VoteResponse
from raftlite.core.raft_types import Configuration, Entry, HardState, Role
from raftlite.sim.scenario import run_script

CONFIGURATION = Configuration.of({1: Role.VOTER, 2: Role.VOTER, 3: Role.VOTER})


@dataclass
class Node:
    """One core plus what its disk holds: the durable hard state and log."""

    node_id: int
    settings: RaftSettings
    durable: HardState = HardState()
    durable_log: list[Entry] = field(default_factory=list)
    raft: Raft | None = None
    unpersisted: list[Ready] = field(default_factory=list)

    def start(self) -> None:
        self.raft = Raft(self.node_id, settings=self.settings, rng=random.Random(self.node_id),
                         configuration=CONFIGURATION, hard_state=self.durable, entries=self.durable_log)
        self.unpersisted = []

    def take_ready(self) -> list[tuple[int, object]]:
        """Hand out a Ready: its persist is pending; returns what may be sent now."""
        if not self.raft.has_ready():
            return []
        ready = self.raft.ready()
        self.unpersisted.append(ready)
        return list(ready.messages)

    def persist(self) -> list[tuple[int, object]]:
        """Complete every pending persist; returns the messages that waited for it."""
        after = []
        for ready in self.unpersisted:
            if ready.hard_state is not None:
                self.durable = ready.hard_state
            if ready.truncate_after is not None:
                self.durable_log = [e for e in self.durable_log if e.index <= ready.truncate_after]
            for entry in ready.entries:
                self.durable_log = [e for e in self.durable_log if e.index < entry.index] + [entry]
            self.raft.advance(ready)
            after.extend(ready.messages_after_persist)
        self.unpersisted = []
        return after

    def crash_and_restart(self) -> None:
        self.start()   # whatever was not persisted is gone


def _bootstrapped_cluster(unsafe: UnsafeSwitches) -> dict[int, Node]:
    settings = RaftSettings(pre_vote=False, unsafe=unsafe)
    nodes = {}
    for node_id in (1, 2, 3):
        node = Node(node_id, settings)
        node.start()
        node.raft.bootstrap(CONFIGURATION)
        node.take_ready()
        node.persist()
        nodes[node_id] = node
    return nodes


def _deliver(nodes: dict[int, Node], src: int, messages, reachable: set[int], leaders: dict[int, set[int]],
             stalled: frozenset[int] = frozenset()) -> None:
    """Deliver `messages` from `src` among the `reachable` nodes, and the answers, until
    none is left. A node persists at once before it answers (a correct voter), except
    the `stalled` ones, whose writes stay in flight (they send only what the core lets
    go before the persist)."""
    for dst, message in messages:
        if dst not in reachable or src not in reachable:
            continue
        target = nodes[dst]
        target.raft.step(src, message)
        _note_leader(target, leaders)
        replies = target.take_ready()
        if dst not in stalled:
            replies += target.persist()
        for _, message_to_self in [(d, m) for d, m in replies if d == dst]:
            target.raft.step(dst, message_to_self)   # a candidate's own vote, once durable
        _note_leader(target, leaders)
        _deliver(nodes, dst, [(d, m) for d, m in replies if d != dst], reachable, leaders, stalled)


def _note_leader(node: Node, leaders: dict[int, set[int]]) -> None:
    if node.raft.state == State.LEADER:
        leaders.setdefault(node.raft.term, set()).add(node.node_id)


def two_leaders_sequence(unsafe: UnsafeSwitches) -> dict[int, set[int]]:
    """The sequence the review reproduced; returns who led each term."""
    nodes = _bootstrapped_cluster(unsafe)
    leaders: dict[int, set[int]] = {}
    # Node 3 campaigns while node 1 is cut off. Its term 2 and self-vote go to disk;
    # whatever the core lets it send before that write completes reaches node 2.
    nodes[3].raft.campaign(force=True)
    sent_early = nodes[3].take_ready()
    _note_leader(nodes[3], leaders)
    _deliver(nodes, 3, sent_early, reachable={2, 3}, leaders=leaders, stalled=frozenset({3}))
    # The answers came back while the write was still in flight; then node 3 crashes:
    # the write never completed. It restarts in term 1 with no vote.
    nodes[3].crash_and_restart()
    # Node 1 campaigns in term 2 too: node 3, in term 1 with no vote, grants it.
    nodes[1].raft.campaign(force=True)
    messages = nodes[1].take_ready()
    after = nodes[1].persist()
    for dst, message in after:
        if dst == 1:
            nodes[1].raft.step(1, message)
            _note_leader(nodes[1], leaders)
    _deliver(nodes, 1, messages + [(d, m) for d, m in after if d != 1], reachable={1, 3}, leaders=leaders)
    return leaders


def test_the_fixed_core_never_lets_two_leaders_share_a_term():
    leaders = two_leaders_sequence(UnsafeSwitches())
    assert all(len(nodes) == 1 for nodes in leaders.values()), leaders
    assert leaders.get(2) == {1}   # node 3's campaign left nothing behind: node 1 leads term 2


def test_with_the_fix_reverted_two_leaders_share_term_2():
    """The same sequence with the old behaviour (self-vote counted at once, messages of
    a term sent before it is durable) gives the bug: the test above can fail."""
    leaders = two_leaders_sequence(UnsafeSwitches(self_vote_before_persist=True))
    assert leaders.get(2) == {1, 3}


def test_a_candidate_sends_nothing_of_its_term_before_the_term_is_durable():
    nodes = _bootstrapped_cluster(UnsafeSwitches())
    candidate = nodes[1].raft
    candidate.campaign(force=True)
    ready = candidate.ready()
    assert ready.hard_state == HardState(term=2, vote=1)
    assert ready.messages == ()
    waiting = ready.messages_after_persist
    assert waiting[0] == (1, VoteResponse(term=2, granted=True))          # its own vote, counted later
    assert sorted(dst for dst, m in waiting if isinstance(m, VoteRequest)) == [2, 3]
    assert candidate.votes == {}


def test_a_single_node_becomes_leader_only_once_its_vote_is_durable():
    settings = RaftSettings()
    solo = Configuration.of({1: Role.VOTER})
    raft = Raft(1, settings=settings, rng=random.Random(1), configuration=solo)
    raft.bootstrap(solo)
    raft.advance(raft.ready())
    raft.campaign()
    assert raft.state == State.CANDIDATE
    ready = raft.ready()
    raft.advance(ready)
    for dst, message in ready.messages_after_persist:
        raft.step(dst, message)
    assert raft.state == State.LEADER and raft.term == 2


def test_a_node_whose_storage_fails_neither_campaigns_nor_grants_votes():
    nodes = _bootstrapped_cluster(UnsafeSwitches())
    raft = nodes[2].raft
    raft.storage_failing = True
    for _ in range(3 * raft.settings.election_ticks):
        raft.tick()
    assert raft.state == State.FOLLOWER and raft.term == 1
    raft.step(1, VoteRequest(term=2, last_log_index=1, last_log_term=1))
    ready = raft.ready()
    answers = [m for _, m in ready.messages + ready.messages_after_persist if isinstance(m, VoteResponse)]
    assert [m.granted for m in answers] == [False]


def test_a_new_leaders_first_appends_follow_its_durable_term():
    nodes = _bootstrapped_cluster(UnsafeSwitches())
    leader = nodes[1]
    leader.raft.campaign(force=True)
    assert leader.take_ready() == []          # nothing of term 2 before it is durable
    after = leader.persist()
    assert leader.durable == HardState(term=2, vote=1)
    answers = []
    for dst, message in after:
        if dst == 1:
            leader.raft.step(1, message)
            continue
        nodes[dst].raft.step(1, message)
        nodes[dst].take_ready()
        answers += [(dst, m) for _, m in nodes[dst].persist()]
    for src, answer in answers:
        leader.raft.step(src, answer)
    assert leader.raft.state == State.LEADER
    ready = leader.raft.ready()
    appends = [m for _, m in ready.messages if isinstance(m, AppendRequest)]
    assert len(appends) == 2 and all(m.term == leader.durable.term == 2 for m in appends)


# -- the same bug in the simulator: the golden two-leaders scenario ----------------------

GOLDEN = Path(__file__).parent / "testdata" / "sim" / "raft_two_leaders_one_term.txt"


def _script_with(options: str) -> str:
    """The golden script, its `nodes` line given extra options, outputs stripped."""
    lines = []
    for block in GOLDEN.read_text().split("\n\n"):
        command = [line for line in block.splitlines() if not line.startswith("#")][:1]
        if command:
            lines.append(command[0] + (" " + options if command[0].startswith("nodes ") else ""))
    return "\n\n".join(lines) + "\n"


def test_with_the_fix_reverted_the_durability_checker_fails_the_golden_scenario():
    # At the very first campaign: node 2's vote requests leave before its term is durable.
    output = run_script(_script_with("unsafe=self_vote_before_persist"))
    assert "SAFETY VIOLATION (durability)" in output
    assert "node 2 sent VoteRequest of term 2 to node 1 while its durable term is" in output


def test_with_the_fix_reverted_the_end_to_end_checkers_see_two_leaders_in_one_term():
    output = run_script(_script_with("unsafe=self_vote_before_persist checkers=end-to-end"))
    assert "SAFETY VIOLATION (election safety)" in output
    assert "nodes 3 and 1 both led term 3" in output


def test_the_golden_scenario_passes_with_the_fix_under_every_checker():
    output = run_script(_script_with(""))
    assert "SAFETY VIOLATION" not in output
    assert "n1 up role=leader term=3" in output
