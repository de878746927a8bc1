"""ReadIndex bookkeeping: linearizable reads served without writing to the log
(Raft thesis §6.4; etcd-io/raft's read_only.go).

A read asked of the leader is released with the leader's commit index at the time it
arrived, but only once
1. the leader has committed an entry of its own term (until then its commit index may
   lag the previous leader's): reads arriving before that wait in
   `waiting_for_commit`;
2. a quorum has answered a heartbeat sent after the read arrived, proving no newer
   leader existed then. Heartbeats carry an increasing sequence number; a read waits
   for the sequence of the next heartbeat (`PendingRead.sequence`), and reads are
   released in order as quorums confirm.

The leader's Raft state machine (core/raft.py) sends the heartbeats and counts the
answers; this holds the queue. It is plain data, like core/raft_progress.py.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PendingRead", "ReadOnly", "ReadState"]


@dataclass(frozen=True, slots=True)
class ReadState:
    """A released read: the state machine may answer `context` once it has applied
    through `index`."""

    context: Any
    index: int


@dataclass(slots=True)
class PendingRead:
    context: Any
    index: int      # the leader's commit index when the read arrived
    sequence: int   # the first heartbeat whose quorum of answers releases it


@dataclass(slots=True)
class ReadOnly:
    """The leader's reads not yet released, and the heartbeat counter that confirms
    them (etcd-io/raft's readOnly)."""

    heartbeat_sequence: int = 0
    pending: list[PendingRead] = field(default_factory=list)
    waiting_for_commit: list[Any] = field(default_factory=list)

    def wait_for_own_term_commit(self, context: Any) -> None:
        self.waiting_for_commit.append(context)

    def take_waiting_for_commit(self) -> list[Any]:
        """The reads that waited for the leader's first commit in its term, in order."""
        waiting, self.waiting_for_commit = self.waiting_for_commit, []
        return waiting

    def queue(self, context: Any, commit: int) -> None:
        """A read at `commit`, released by answers to the next heartbeat."""
        self.pending.append(PendingRead(context, commit, self.heartbeat_sequence + 1))

    def next_heartbeat(self) -> int:
        """The sequence number of a heartbeat about to be broadcast."""
        self.heartbeat_sequence += 1
        return self.heartbeat_sequence

    def release(self, confirmed: Callable[[int], bool]) -> list[ReadState]:
        """Take out the reads, oldest first, whose heartbeat a quorum answered;
        `confirmed(sequence)` tells. Stops at the first one still unconfirmed."""
        released: list[ReadState] = []
        for read in self.pending:
            if not confirmed(read.sequence):
                break
            released.append(ReadState(read.context, read.index))
        del self.pending[:len(released)]
        return released

    def clear(self) -> None:
        """Leadership changed: the reads are dropped (the node actor refuses them with
        NotLeader, actors/raft_node.py)."""
        self.pending.clear()
        self.waiting_for_commit.clear()
