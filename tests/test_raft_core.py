"""Unit tests of the pure raft core's contracts (the simulator tests its behaviour)."""

import random

import pytest
from hypothesis import given, strategies as st

from raftlite.core.errors import NotLeader, ProposalDropped
from raftlite.core.raft import Raft, RaftSettings, State
from raftlite.core.raft_messages import AppendRequest, AppendResponse, VoteRequest, VoteResponse
from raftlite.core.raft_types import Configuration, Entry, EntryKind, HardState, Role


def cluster(size=3, seed=1):
    configuration = Configuration.of({node: Role.VOTER for node in range(1, size + 1)})
    nodes = {}
    for node in range(1, size + 1):
        raft = Raft(node, settings=RaftSettings(), rng=random.Random(seed * 100 + node), configuration=Configuration())
        raft.bootstrap(configuration)
        nodes[node] = raft
    return nodes


def deliver_all(nodes, rounds=50):
    """Persist instantly, then deliver every message (a perfect network)."""
    for _ in range(rounds):
        moved = False
        for node, raft in nodes.items():
            while raft.has_ready():
                ready = raft.ready()
                raft.advance(ready)
                for dst, message in ready.messages + ready.messages_after_persist:
                    if dst in nodes:  # messages to nodes outside `nodes` are lost
                        nodes[dst].step(node, message)
                        moved = True
        if not moved:
            return


def elect(nodes, node=1, force=False):
    nodes[node].campaign(force=force)
    deliver_all(nodes)
    assert nodes[node].state == State.LEADER
    return nodes[node]


def test_votes_and_append_acknowledgements_wait_for_persistence():
    voter = cluster()[2]
    voter.ready()  # the bootstrap entry
    voter.step(1, VoteRequest(term=2, last_log_index=1, last_log_term=1))
    ready = voter.ready()
    assert ready.hard_state == HardState(term=2, vote=1)
    assert not any(isinstance(m, VoteResponse) for _, m in ready.messages)
    assert [(dst, m.granted) for dst, m in ready.messages_after_persist] == [(1, True)]

    voter.step(1, AppendRequest(term=2, prev_index=1, prev_term=1, entries=(Entry(2, 2, EntryKind.NOOP),), commit=1))
    ready = voter.ready()
    assert [e.index for e in ready.entries] == [2]
    assert [(dst, type(m)) for dst, m in ready.messages_after_persist] == [(1, AppendResponse)]
    assert ready.messages == ()


def test_leader_counts_itself_only_for_persisted_entries():
    nodes = cluster(size=1)
    leader = elect(nodes)
    index = leader.propose(b"x")
    assert leader.commit < index            # appended, not yet persisted
    ready = leader.ready()
    assert [e.index for e in ready.entries] == [index]
    leader.advance(ready)
    assert leader.commit == index


def test_one_vote_per_term():
    voter = cluster()[3]
    voter.step(1, VoteRequest(term=2, last_log_index=1, last_log_term=1))
    voter.step(2, VoteRequest(term=2, last_log_index=1, last_log_term=1))
    responses = [(dst, m.granted) for dst, m in voter.ready().messages_after_persist]
    assert responses == [(1, True), (2, False)]


def test_followers_refuse_requests_with_the_leader_hint():
    nodes = cluster()
    elect(nodes, 2)
    with pytest.raises(NotLeader) as refused:
        nodes[1].propose(b"x")
    assert refused.value.leader_hint == 2


def test_membership_change_needs_a_committed_entry_of_the_term_and_one_at_a_time():
    nodes = cluster()
    nodes[1].campaign(force=True)
    for node in (2, 3):
        while nodes[node].has_ready():
            nodes[node].advance(nodes[node].ready())
    # Votes arrive, node 1 becomes leader, but its no-op is not committed yet.
    ready = nodes[1].ready()
    nodes[1].advance(ready)
    for dst, message in ready.messages_after_persist:   # its own vote, then the requests
        nodes[dst].step(1, message)
        if dst != 1:
            for reply_dst, reply in nodes[dst].ready().messages_after_persist:
                nodes[reply_dst].step(dst, reply)
    assert nodes[1].state == State.LEADER
    with pytest.raises(ProposalDropped, match="has not yet committed an entry of its term"):
        nodes[1].change_membership(4, Role.STANDBY)
    deliver_all(nodes)
    nodes[1].change_membership(4, Role.STANDBY)
    with pytest.raises(ProposalDropped, match="already in progress"):
        nodes[1].change_membership(5, Role.SPARE)


def test_a_configuration_takes_effect_when_appended_and_reverts_when_truncated():
    follower = cluster()[2]
    follower.step(1, AppendRequest(term=2, prev_index=1, prev_term=1, entries=(Entry(2, 2, EntryKind.NOOP),), commit=1))
    new = Configuration.of({1: Role.VOTER, 2: Role.VOTER, 3: Role.VOTER, 4: Role.STANDBY})
    follower.step(1, AppendRequest(term=2, prev_index=2, prev_term=2,
                                   entries=(Entry(2, 3, EntryKind.CONFIG, new.encode()),), commit=2))
    assert follower.configuration == new
    # A leader of term 3 holds a different entry at index 3: the configuration reverts.
    follower.step(5, AppendRequest(term=3, prev_index=2, prev_term=2, entries=(Entry(3, 3, EntryKind.NOOP),), commit=2))
    assert follower.configuration.role(4) is None


def test_read_index_waits_for_a_quorum_heartbeat_round():
    nodes = cluster()
    leader = elect(nodes)
    leader.read_index("r1")
    ready = leader.ready()
    assert ready.read_states == ()                   # heartbeats sent, no answers yet
    leader.advance(ready)
    for dst, message in ready.messages:
        nodes[dst].step(1, message)
        back = nodes[dst].ready()
        for _, answer in back.messages:
            leader.step(dst, answer)
    states = leader.ready().read_states
    assert [s.context for s in states] == ["r1"] and states[0].index == leader.commit


def test_a_deposed_leader_serves_no_reads():
    nodes = cluster()
    leader = elect(nodes)
    leader.read_index("stale?")
    ready = leader.ready()
    # The heartbeats are lost (partition); the followers elect someone else.
    elect({2: nodes[2], 3: nodes[3]}, 2, force=True)
    assert leader.ready().read_states == ()
    # Check-quorum looks back one election timeout: within two, the leader steps down.
    for _ in range(2 * leader.settings.election_ticks):
        leader.tick()
    assert leader.state != State.LEADER
    assert leader.ready().read_states == ()


@given(
    roles=st.dictionaries(st.integers(0, 2**63 - 1), st.sampled_from(list(Role)), max_size=7),
    with_addresses=st.booleans(),
    hosts=st.lists(st.text(min_size=1, max_size=40), min_size=7, max_size=7),
)
def test_configurations_survive_encoding_with_and_without_addresses(roles, with_addresses, hosts):
    addresses = {node: hosts[i] for i, node in enumerate(roles)} if with_addresses else {}
    configuration = Configuration.of(roles, addresses)
    assert Configuration.decode(configuration.encode()) == configuration
    for node in roles:
        assert configuration.address(node) == addresses.get(node)
        assert configuration.with_role(node, None).address(node) is None
