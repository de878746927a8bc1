"""What plain Raft cannot survive (docs/architecture.md §3), documented by a test.

A flipped bit in a node's last *synced* batch looks exactly like a torn write: start-up
cuts it off as a torn tail, so an acknowledged entry silently disappears from that node.
On a minority that is harmless (the majority still holds the entry). On a majority, the
entry can be overwritten by a new leader — which is why the simulator's at-rest
corruption never touches the last durable write, nor reaches a majority of nodes.
Protocol-aware recovery (Alagappan et al., FAST '18) would be needed to do better.
"""

import pytest

from raftlite.actors.raft_node import Propose, ProposeResult
from raftlite.core.raft import State
from raftlite.sim.raft_checkers import RaftChecker
from raftlite.sim.run import ACTORS, leader_of
from raftlite.sim.simulation import Simulation, SimulationFailure

pytestmark = pytest.mark.timeout(60)


def flip_last_batch(sim: Simulation, node_id: int) -> None:
    disk = sim.nodes[node_id].disk
    segment = max(name for name in disk.files if name.startswith("segment-"))
    start, end = disk.files[segment].last_durable_write
    disk.files[segment].durable[end - 1] ^= 0x01


def cluster_with_an_acknowledged_write() -> tuple[Simulation, int]:
    sim = Simulation(seed=3, node_ids=[1, 2, 3], actor_factory=ACTORS["raft"]([1, 2, 3]))
    checker = RaftChecker(sim).attach()
    sim.actor_hooks.append(checker.instrument)
    sim.start()
    sim.run_for(3000)
    leader = leader_of(sim)
    client = sim.submit(leader, Propose(data=b"acknowledged"))
    sim.run_for(50)
    (reply,) = sim.replies[client]
    assert isinstance(reply, ProposeResult)
    return sim, reply.index


def test_last_batch_flip_on_a_minority_is_repaired_by_the_majority():
    sim, index = cluster_with_an_acknowledged_write()
    follower = next(n for n in sim.node_ids if sim.actor(n).raft.state != State.LEADER)
    sim.crash(follower)
    flip_last_batch(sim, follower)
    sim.restart(follower)
    assert sim.actor(follower).raft.last_index < index    # cut off as a "torn tail"
    sim.run_for(1000)
    assert sim.actor(follower).raft.commit >= index       # the leader sent it again


def test_last_batch_flip_on_a_majority_loses_an_acknowledged_write():
    sim, index = cluster_with_an_acknowledged_write()
    leader = leader_of(sim)
    for node in sim.node_ids:
        sim.crash(node)
    victims = [n for n in sim.node_ids if n != leader]     # two of three: a majority
    for node in victims:
        flip_last_batch(sim, node)
    sim.start(victims)
    with pytest.raises(SimulationFailure, match="leader completeness|durability|commit safety"):
        sim.run_for(5000)
        # Even if the victims did not elect a leader of their own yet, the old leader's
        # return must not hide the loss: they hold a log without the acknowledged entry.
        sim.restart(leader)
        sim.run_for(5000)
