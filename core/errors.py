"""Expected refusals, as a small hierarchy of typed exceptions (docs/architecture.md §6).

A peer's bad or stale message is dropped or rejected in a reply, never raised; a broken
invariant is `raftlite.core.invariant.InvariantViolation`. What remains are refusals a
caller must expect and handle: these.
"""

__all__ = ["LeadershipLost", "NotLeader", "ProposalDropped", "RaftError"]


class RaftError(Exception):
    """Base of the refusals raft gives a caller."""


class NotLeader(RaftError):
    """This node is not the leader; the request was certainly not applied (dqlite 10250)."""

    def __init__(self, leader_hint: int | None) -> None:
        super().__init__(f"not leader (leader: {leader_hint if leader_hint is not None else 'unknown'})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The request was refused before entering the log (transfer in progress, a
    membership change already pending, a limit reached, ...). It was not applied."""


class LeadershipLost(RaftError):
    """Leadership was lost after the request entered the log: its outcome is unknown
    (dqlite 10506). It may still commit under the next leader."""
