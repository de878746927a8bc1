"""Majority arithmetic for Raft: when a set of nodes is a quorum, which index a quorum
has replicated, and how an election stands (etcd-io/raft's quorum/majority.go).

These are pure functions of the voters of one configuration. raftlite changes
membership one server at a time (core/raft_membership.py), so every decision is taken
by a single majority: there is no joint configuration to count twice. Callers pass the
voters (a `Configuration.voters` tuple) and what they know about them; nothing here
reads a clock, a log or a message.
"""

from collections.abc import Collection, Mapping, Sequence
from enum import Enum

__all__ = ["VoteResult", "committed_index", "has_quorum", "majority", "vote_result"]


def majority(voter_count: int) -> int:
    """How many voters make a quorum: more than half."""
    return voter_count // 2 + 1


def has_quorum(voters: Sequence[int], members: Collection[int]) -> bool:
    """Whether `members` include a majority of `voters` (members that are not voters do
    not count). With no voters at all, nothing is a quorum."""
    return sum(1 for voter in voters if voter in members) >= majority(len(voters))


def committed_index(matches: Sequence[int]) -> int | None:
    """The highest index a majority has replicated, given one match index per voter;
    None when there are no voters. Sorted ascending, the quorum-th highest match is the
    one a majority has reached."""
    if not matches:
        return None
    ordered = sorted(matches)
    return ordered[len(ordered) - majority(len(ordered))]


class VoteResult(Enum):
    PENDING = "pending"  # neither a majority granted nor enough refused to rule one out
    WON = "won"          # a majority of the voters granted
    LOST = "lost"        # so many refused that a majority can no longer grant


def vote_result(voters: Sequence[int], votes: Mapping[int, bool]) -> VoteResult:
    """How an election stands, given the answers so far (node -> granted)."""
    granted = {node for node, yes in votes.items() if yes}
    rejected = {node for node, yes in votes.items() if not yes}
    if has_quorum(voters, granted):
        return VoteResult.WON
    if len(rejected) >= len(voters) - majority(len(voters)) + 1:
        return VoteResult.LOST
    return VoteResult.PENDING
