"""A joining node's ADD and its join marker (io/node.py), against a scripted leader.

The marker says whether an earlier ADD of this node may have taken effect; only then is
"already a member" this node's own ADD rather than a different node under the same id.
So it must be written whenever the ADD may commit: after it was sent and nothing came
back, and when the leader took it and then lost its leadership (outcome unknown). A
refusal given before the request entered the log leaves it unwritten.
"""

import asyncio

import pytest

from raftlite.actors.database import LEADERSHIP_LOST, NOT_LEADER, SqlError
from raftlite.actors.raft_node import ClientError, ProposeResult
from raftlite.io.node import JOIN_MARKER_ADD_MAY_HAVE_HAPPENED, JoinFailed, Node, _Refused

pytestmark = pytest.mark.timeout(60)


class ScriptedLeader:
    """Answers every request with the next scripted answer (or raises it)."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.requests = []

    async def request(self, message):
        self.requests.append(message)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def joining_node(tmp_path) -> Node:
    return Node(node_id=4, address="127.0.0.1:1", data_dir=str(tmp_path), join=["127.0.0.1:2"])


def add(node: Node, leader: ScriptedLeader):
    return asyncio.run(node._add(leader))


@pytest.mark.parametrize("refusal", [
    SqlError(code=LEADERSHIP_LOST, message="leadership lost: the outcome is unknown"),
    ClientError(kind="leadership-lost", message="leadership lost: the outcome is unknown"),
])
def test_an_add_whose_leader_was_lost_may_have_happened(tmp_path, refusal):
    node = joining_node(tmp_path)
    with pytest.raises(_Refused) as refused:
        add(node, ScriptedLeader(refusal))
    assert refused.value.outcome_unknown
    assert node._read_join_marker() == JOIN_MARKER_ADD_MAY_HAVE_HAPPENED
    # The retry finds the node already a member: its own ADD, so the join goes on.
    add(node, ScriptedLeader(SqlError(code=1, message="node 4 is already a member")))


def test_an_add_refused_before_the_log_leaves_no_marker(tmp_path):
    node = joining_node(tmp_path)
    with pytest.raises(_Refused) as refused:
        add(node, ScriptedLeader(SqlError(code=NOT_LEADER, message="not leader")))
    assert not refused.value.outcome_unknown
    assert node._read_join_marker() != JOIN_MARKER_ADD_MAY_HAVE_HAPPENED
    # An id that is already a member, with no earlier ADD of ours: someone else's data.
    with pytest.raises(JoinFailed, match="already a member"):
        add(node, ScriptedLeader(SqlError(code=1, message="node 4 is already a member")))


def test_an_add_with_no_answer_may_have_happened(tmp_path):
    node = joining_node(tmp_path)
    with pytest.raises(ConnectionError):
        add(node, ScriptedLeader(ConnectionError("the leader went away")))
    assert node._read_join_marker() == JOIN_MARKER_ADD_MAY_HAVE_HAPPENED


def test_an_accepted_add_writes_the_marker(tmp_path):
    node = joining_node(tmp_path)
    add(node, ScriptedLeader(ProposeResult(index=7, term=2)))
    assert node._read_join_marker() == JOIN_MARKER_ADD_MAY_HAVE_HAPPENED
