"""Membership errors that say what happened (issue 14, build item 7): refusals that name
the member concerned, a removed node that learns it and stops, and a promotion that
cannot complete no longer blocking other changes.

The pure core first (tests/test_raft_core.py's perfect network), then the raft node
actor under the simulator."""

import random

import pytest

from raftlite.actors.raft_node import ChangeMembership, ClientError, ProposeResult
from raftlite.core.errors import ProposalDropped
from raftlite.core.raft import Raft, RaftSettings, State
from raftlite.core.raft_messages import Removed, VoteRequest
from raftlite.core.raft_types import Configuration, Role
from raftlite.sim.network import isolate
from raftlite.sim.raft_checkers import RaftChecker
from raftlite.sim.run import ACTORS, leader_of
from raftlite.sim.simulation import NodeState, Simulation
from raftlite.sim.trace import Trace

pytestmark = pytest.mark.timeout(120)

ADDRESSES = {1: "10.0.0.1:9001", 2: "10.0.0.2:9001", 3: "10.0.0.3:9001"}


def cluster(size=3, settings=None, addresses=None):
    settings = settings or RaftSettings()
    configuration = Configuration.of({node: Role.VOTER for node in range(1, size + 1)}, addresses)
    nodes = {}
    for node in range(1, size + 1):
        raft = Raft(node, settings=settings, rng=random.Random(100 + node), configuration=Configuration())
        raft.bootstrap(configuration)
        nodes[node] = raft
    return nodes


def deliver_all(nodes, *, cut=frozenset(), rounds=60):
    """Persist at once and deliver every message, except those to or from `cut` nodes."""
    for _ in range(rounds):
        moved = False
        for node, raft in nodes.items():
            while raft.has_ready():
                ready = raft.ready()
                raft.advance(ready)
                for dst, message in ready.messages + ready.messages_after_persist:
                    if dst in nodes and node not in cut and dst not in cut:
                        nodes[dst].step(node, message)
                        moved = True
        if not moved:
            return


def elected(nodes, node=1):
    nodes[node].campaign(force=True)
    deliver_all(nodes)
    assert nodes[node].state == State.LEADER
    return nodes[node]


# -- refusals that name what is wrong ------------------------------------------------------


def test_removing_a_non_member_says_it_is_not_a_member():
    leader = elected(cluster())
    with pytest.raises(ProposalDropped, match="^node 9 is not a member$"):
        leader.change_membership(9, None)


def test_adding_a_node_at_a_members_address_names_that_member():
    nodes = cluster(addresses=ADDRESSES)
    leader = elected(nodes)
    with pytest.raises(ProposalDropped, match=r"address 10\.0\.0\.1:9001 is already node 1's \(voter\)"):
        leader.change_membership(4, Role.SPARE, ADDRESSES[1])
    # A node keeps its own address when its role changes; a new address is accepted.
    leader.change_membership(4, Role.SPARE, "10.0.0.4:9001")
    deliver_all(nodes)
    assert leader.configuration.address(4) == "10.0.0.4:9001"


# -- a removed node learns it ---------------------------------------------------------------


def removed_node_3(settings=None):
    """A 3-voter cluster that removed node 3 while node 3 was cut off: node 3 never got
    the removal and still believes it is a voter."""
    nodes = cluster(settings=settings)
    leader = elected(nodes)
    index = leader.change_membership(3, None)
    deliver_all(nodes, cut={3})
    assert leader.commit >= index and leader.configuration.role(3) is None
    assert nodes[3].configuration.role(3) == Role.VOTER
    return nodes, leader


def test_a_removed_node_campaigning_after_a_partition_is_told_it_was_removed():
    nodes, leader = removed_node_3()
    outsider = nodes[3]
    outsider.campaign()                      # its pre-vote goes to nodes 1 and 2
    deliver_all(nodes)
    assert outsider.removed is not None
    assert outsider.removed == (
        f"removed from the cluster: node 1, the leader in term {leader.term}, answered that node 3 "
        f"is not in its committed configuration (entry {leader.configuration_index})")
    assert leader.state == State.LEADER


def test_a_removed_nodes_higher_term_deposes_no_leader():
    # Without pre-vote a cut-off node raises its term at every timeout; its vote
    # request must not make the leader step down, only tell it it was removed.
    _, leader = removed_node_3(RaftSettings(pre_vote=False))
    term = leader.term
    leader.step(3, VoteRequest(term=term + 7, last_log_index=1, last_log_term=1))
    assert leader.state == State.LEADER and leader.term == term
    sent = [(dst, message) for dst, message in leader.ready().messages if isinstance(message, Removed)]
    assert sent == [(3, Removed(term=term, configuration_index=leader.configuration_index))]


def test_no_removed_answer_while_the_removal_is_not_committed():
    nodes = cluster()
    leader = elected(nodes)
    leader.change_membership(3, None)        # appended, in force on the leader, not committed
    leader.step(3, VoteRequest(term=leader.term + 1, last_log_index=1, last_log_term=1, pre_vote=True))
    assert not any(isinstance(message, Removed) for _, message in leader.ready().messages)


def test_a_node_added_back_ignores_a_stale_removed_answer():
    nodes, leader = removed_node_3()
    stale = Removed(term=leader.term, configuration_index=leader.configuration_index)
    leader.change_membership(3, Role.STANDBY)     # added back, under the same id
    deliver_all(nodes)
    assert nodes[3].configuration.role(3) == Role.STANDBY
    nodes[3].step(1, stale)
    assert nodes[3].removed is None
    # A member is never answered "removed".
    leader.step(3, VoteRequest(term=leader.term + 1, last_log_index=1, last_log_term=1, pre_vote=True))
    assert not any(isinstance(message, Removed) for _, message in leader.ready().messages)


def test_a_removed_node_holding_its_removal_is_told_when_it_commits():
    # Node 3 gets (and acknowledges) the entry removing it; the leader sends it nothing
    # after that, so it hears "removed" when the entry commits, not from its own messages.
    nodes = cluster()
    leader = elected(nodes)
    index = leader.change_membership(3, None)
    deliver_all(nodes)
    assert leader.commit >= index
    assert nodes[3].configuration.role(3) is None
    assert nodes[3].removed == (
        f"removed from the cluster: node 1, the leader in term {leader.term}, answered that node 3 "
        f"is not in its committed configuration (entry {index})")
    assert nodes[2].removed is None and leader.removed is None


def test_a_leader_that_removes_itself_knows_it_once_committed():
    nodes = cluster()
    leader = elected(nodes)
    index = leader.change_membership(1, None)
    assert leader.removed_self_at is None      # not before the removal commits
    deliver_all(nodes)
    assert leader.removed_self_at == index and leader.state == State.FOLLOWER
    assert nodes[2].removed is None and nodes[3].removed is None


# -- a promotion that cannot complete ------------------------------------------------------


def cluster_with_lagging_standby(settings=None):
    """Node 4 is a standby cut off from the leader: promoting it waits for ever."""
    settings = settings or RaftSettings()
    nodes = cluster(settings=settings)
    nodes[4] = Raft(4, settings=settings, rng=random.Random(104), configuration=Configuration())
    leader = elected(nodes)
    leader.change_membership(4, Role.STANDBY)
    deliver_all(nodes, cut={4})
    assert leader.change_membership(4, Role.VOTER) is None
    assert leader.pending_promotion is not None
    return nodes, leader


def test_another_change_takes_the_place_of_a_waiting_promotion():
    _, leader = cluster_with_lagging_standby()
    index = leader.change_membership(5, Role.SPARE)
    assert index is not None and leader.pending_promotion is None
    node, match, last, why = leader.promotion_ended
    assert (node, match, why) == (4, 0, "superseded by a membership change of node 5")
    assert last == index - 1                  # the leader's log when the promotion was given up


def test_a_refused_change_leaves_the_promotion_waiting():
    _, leader = cluster_with_lagging_standby()
    with pytest.raises(ProposalDropped, match="node 9 is not a member"):
        leader.change_membership(9, None)
    assert leader.pending_promotion is not None and leader.promotion_ended is None


def test_a_promotion_can_be_cancelled_and_its_timeout_says_how_far_behind_it_is():
    _, leader = cluster_with_lagging_standby()
    assert leader.cancel_promotion(4)
    assert leader.pending_promotion is None and leader.promotion_ended[3] == "cancelled"
    assert not leader.cancel_promotion(4)     # nothing left to cancel

    _, leader = cluster_with_lagging_standby(RaftSettings(promotion_timeout_ticks=5))
    for _ in range(5):
        leader.tick()
    assert leader.pending_promotion is None
    assert leader.promotion_ended == (4, 0, leader.last_index, "timeout")


# -- the raft node actor under the simulator -----------------------------------------------


def raft_cluster(seed=3, nodes=(1, 2, 3, 4), founders=(1, 2, 3), config=None):
    kwargs = {} if config is None else {"config": config}
    sim = Simulation(seed=seed, node_ids=list(nodes), actor_factory=ACTORS["raft"](list(founders)),
                     trace=Trace(keep=True), **kwargs)
    RaftChecker(sim).attach()
    sim.start()
    sim.run_for(3000)
    return sim


def request(sim, node, message, wait=500.0):
    client = sim.submit(node, message)
    sim.run_for(wait)
    return sim.replies[client]


def removed_node_halts(seed):
    sim = raft_cluster(seed=seed, nodes=(1, 2, 3), founders=(1, 2, 3))
    leader = leader_of(sim)
    victim = next(node for node in sim.node_ids if node != leader)
    sim.partition(isolate(victim, sim.node_ids), "cut-victim")
    (answer,) = request(sim, leader, ChangeMembership(node=victim, role=None))
    assert isinstance(answer, ProposeResult)
    sim.heal()
    sim.run_for(5000)
    return sim, victim


def test_a_removed_node_halts_after_the_partition_heals_and_the_trace_says_why():
    sim, victim = removed_node_halts(seed=3)
    assert sim.nodes[victim].state == NodeState.HALTED
    assert sim.nodes[victim].halt_reason.startswith("removed from the cluster: node ")
    halts = [event for event in sim.trace.events() if event["ev"] == "halt"]
    assert [event["n"] for event in halts] == [victim]
    # The rest of the cluster goes on: the remaining two voters still commit.
    leader = leader_of(sim)
    assert leader is not None and leader != victim
    (answer,) = request(sim, leader, ChangeMembership(node=victim, role=Role.SPARE))
    assert isinstance(answer, ProposeResult)


def test_a_leader_that_removes_itself_answers_the_client_then_halts():
    sim = raft_cluster(nodes=(1, 2, 3), founders=(1, 2, 3))
    leader = leader_of(sim)
    (answer,) = request(sim, leader, ChangeMembership(node=leader, role=None))
    assert answer == ProposeResult(index=answer.index, term=answer.term, result="membership changed")
    assert sim.nodes[leader].state == NodeState.HALTED
    assert sim.nodes[leader].halt_reason == (
        f"removed from the cluster: this node, as leader in term {answer.term}, committed its own removal "
        f"(entry {answer.index})")
    sim.run_for(3000)
    successor = leader_of(sim)
    assert successor is not None and successor != leader


def test_a_removed_follower_halts_without_a_partition():
    sim = raft_cluster(nodes=(1, 2, 3), founders=(1, 2, 3))
    leader = leader_of(sim)
    victim = next(node for node in sim.node_ids if node != leader)
    (answer,) = request(sim, leader, ChangeMembership(node=victim, role=None))
    assert isinstance(answer, ProposeResult)
    sim.run_for(100)
    assert sim.nodes[victim].state == NodeState.HALTED
    assert sim.nodes[victim].halt_reason.startswith(f"removed from the cluster: node {leader}, the leader")


def test_the_removed_node_run_is_deterministic():
    first, _ = removed_node_halts(seed=5)
    second, _ = removed_node_halts(seed=5)
    assert first.trace.hexdigest() == second.trace.hexdigest()


def test_a_waiting_promotion_is_answered_with_why_when_another_change_takes_its_place():
    sim = raft_cluster()
    leader = leader_of(sim)
    sim.partition(isolate(4, sim.node_ids), "cut-4")
    (answer,) = request(sim, leader, ChangeMembership(node=4, role=Role.STANDBY))
    assert isinstance(answer, ProposeResult)
    promotion = sim.submit(leader, ChangeMembership(node=4, role=Role.VOTER))
    sim.run_for(200)
    assert sim.replies[promotion] == []                      # waiting for node 4 to catch up
    (removal,) = request(sim, leader, ChangeMembership(node=4, role=None))
    assert isinstance(removal, ProposeResult)                # not blocked behind the promotion
    (refusal,) = sim.replies[promotion]
    assert isinstance(refusal, ClientError) and refusal.kind == "dropped"
    assert refusal.message.startswith("promotion of node 4 to voter superseded by a membership change of node 4")
    assert "its match index 0, the leader's last index" in refusal.message


def test_a_waiting_promotion_is_cancelled_by_assigning_the_role_it_has():
    sim = raft_cluster()
    leader = leader_of(sim)
    sim.partition(isolate(4, sim.node_ids), "cut-4")
    request(sim, leader, ChangeMembership(node=4, role=Role.STANDBY))
    promotion = sim.submit(leader, ChangeMembership(node=4, role=Role.VOTER))
    sim.run_for(200)
    (cancel,) = request(sim, leader, ChangeMembership(node=4, role=Role.STANDBY))
    assert cancel == ProposeResult(index=0, term=cancel.term, result="promotion of node 4 to voter cancelled")
    (refusal,) = sim.replies[promotion]
    assert refusal.message.startswith("promotion of node 4 to voter cancelled (its match index 0")


def test_a_promotion_that_times_out_says_how_far_behind_the_node_was():
    from raftlite.actors.config import Config

    config = Config(promotion_timeout_ms=1000)
    sim = raft_cluster(config=config)
    leader = leader_of(sim)
    sim.partition(isolate(4, sim.node_ids), "cut-4")
    request(sim, leader, ChangeMembership(node=4, role=Role.STANDBY))
    (refusal,) = request(sim, leader, ChangeMembership(node=4, role=Role.VOTER), wait=2000)
    assert isinstance(refusal, ClientError)
    assert refusal.message.startswith("node 4 did not catch up within 1000 ms: its match index 0, the leader's last index ")


def test_refusals_of_the_actor_name_the_member():
    sim = raft_cluster(nodes=(1, 2, 3), founders=(1, 2, 3))
    leader = leader_of(sim)
    (answer,) = request(sim, leader, ChangeMembership(node=9, role=None))
    assert answer == ClientError(kind="dropped", message="node 9 is not a member")
    (answer,) = request(sim, leader, ChangeMembership(node=2, role=Role.STANDBY, must_be_new=True))
    assert answer == ClientError(kind="dropped", message="node 2 is already a member (voter)")
