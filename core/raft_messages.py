"""Messages between raft peers: frozen values, dispatched with `match` in core/raft.py.

Every message carries the sender's term. `wire_bytes` estimates its size for the
simulator's bandwidth model and the runtime's message limits.
"""

from dataclasses import dataclass

from .raft_types import Entry, SnapshotMeta

__all__ = [
    "AppendRequest", "AppendResponse", "HeartbeatRequest", "HeartbeatResponse", "RaftMessage", "Removed",
    "SnapshotChunk", "SnapshotResponse", "TimeoutNow", "VoteRequest", "VoteResponse",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest:
    term: int               # for a pre-vote: the term the candidate would campaign in
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False  # campaign started by leadership transfer: ignores leases

    def wire_bytes(self) -> int:
        return 48


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse:
    term: int
    granted: bool
    pre_vote: bool = False

    def wire_bytes(self) -> int:
        return 32


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest:
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int

    def wire_bytes(self) -> int:
        return 48 + sum(entry.wire_bytes() for entry in self.entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResponse:
    term: int
    success: bool
    # On success: the index up to which the follower's log now matches the leader's.
    # On rejection: a hint where to retry (the follower's last index, or the index
    # before the first entry of its conflicting term).
    index: int

    def wire_bytes(self) -> int:
        return 32


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatRequest:
    term: int
    commit: int      # min(leader commit, follower's known match): safe to commit
    sequence: int    # echoed back; ReadIndex waits for a quorum of echoes

    def wire_bytes(self) -> int:
        return 40


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse:
    term: int
    sequence: int
    last_index: int

    def wire_bytes(self) -> int:
        return 40


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunk:
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    total_bytes: int

    @property
    def done(self) -> bool:
        return self.offset + len(self.data) >= self.total_bytes

    def wire_bytes(self) -> int:
        return 96 + len(self.data)


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotResponse:
    term: int
    index: int         # the snapshot's index
    next_offset: int   # bytes received so far; == total when installed
    done: bool

    def wire_bytes(self) -> int:
        return 40


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow:
    term: int

    def wire_bytes(self) -> int:
        return 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Removed:
    """The leader's answer to a node its committed configuration does not hold (etcd's
    ErrRemoved): "you were removed". `configuration_index` is the index of that
    configuration's entry: a receiver whose own log holds a later configuration naming
    it (it was added back) knows the answer is stale."""

    term: int
    configuration_index: int

    def wire_bytes(self) -> int:
        return 24


RaftMessage = (
    VoteRequest | VoteResponse | AppendRequest | AppendResponse | HeartbeatRequest | HeartbeatResponse
    | SnapshotChunk | SnapshotResponse | TimeoutNow | Removed
)
