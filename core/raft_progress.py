"""The leader's view of its followers: one `Progress` per replica, and the
`ProgressTracker` that holds them along with the votes of an election (etcd-io/raft's
tracker/progress.go, tracker/inflights.go and tracker/tracker.go).

A leader replicates to each follower in one of three states:
- PROBE: it does not know where the follower's log matches its own, so it sends one
  append at a time and waits for the answer (accepted: the match point is found;
  rejected: it backs off to the follower's hint);
- REPLICATE: the match point is known, so appends are pipelined optimistically, up to
  `inflight_appends_max` messages and `inflight_bytes_max` bytes not yet acknowledged;
- SNAPSHOT: the entries the follower needs were compacted away, so the snapshot is
  sent chunk by chunk; the follower goes back to PROBE once it is installed.

The state transitions live here; deciding when to send, and what, stays with the
Raft state machine (core/raft.py). Everything here is plain data (dataclasses of
numbers, lists and dicts): the explorer (sim/explore.py) copies and compares it field
by field.
"""

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from .raft_types import Snapshot

__all__ = ["STALLED_HEARTBEATS_MAX", "Progress", "ProgressState", "ProgressTracker"]

# Heartbeat answers in a row showing a follower's log stuck behind appends in flight
# before the leader presumes those appends lost, plus one per STALLED_BYTES_PER_HEARTBEAT
# in flight: a 105 MB append takes over a second to arrive (measured on loopback, 2
# cores), and with 3 heartbeats alone it was presumed lost and sent again every time.
STALLED_HEARTBEATS_MAX = 3
STALLED_BYTES_PER_HEARTBEAT = 4 << 20


class ProgressState(str, Enum):
    PROBE = "probe"          # one append at a time until the match point is found
    REPLICATE = "replicate"  # optimistic pipelining, bounded by the inflight limits
    SNAPSHOT = "snapshot"    # sending a snapshot, chunk by chunk


@dataclass(slots=True)
class Progress:
    """The leader's view of one replica."""

    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    inflight: deque = field(default_factory=deque)   # (last index, bytes) of appends in flight
    inflight_bytes: int = 0
    recent_active: bool = False
    snapshot_offset: int = 0
    # The snapshot being sent: kept until the transfer ends even if a newer one is taken
    # meanwhile, so a slow transfer is never restarted from scratch by compaction.
    snapshot: Snapshot | None = None
    heartbeat_sequence: int = 0
    stalled_last_index: int = -1
    stalled_heartbeats: int = 0

    def release_inflight(self, index: int) -> None:
        while self.inflight and self.inflight[0][0] <= index:
            self.inflight_bytes -= self.inflight.popleft()[1]

    def reset_inflight(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0

    # -- state transitions -------------------------------------------------------------

    def become_probe(self) -> None:
        """Find the match point again, one append at a time. Whatever was in flight is
        forgotten (nothing is in flight when coming from SNAPSHOT)."""
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.reset_inflight()

    def become_replicate(self) -> None:
        """The match point is known (an append was accepted while probing)."""
        self.state = ProgressState.REPLICATE
        self.probe_sent = False

    def become_snapshot(self, snapshot: Snapshot) -> None:
        """Send `snapshot` from its first byte; appends wait until it is installed."""
        self.state = ProgressState.SNAPSHOT
        self.snapshot_offset = 0
        self.snapshot = snapshot
        self.reset_inflight()

    # -- what the leader sent and heard --------------------------------------------------

    def is_paused(self, inflight_appends_max: int, inflight_bytes_max: int) -> bool:
        """No append may be sent now: a snapshot is on its way, the probe has not been
        answered, or the replication window is full."""
        if self.state == ProgressState.SNAPSHOT:
            return True
        if self.state == ProgressState.PROBE and self.probe_sent:
            return True
        return self.state == ProgressState.REPLICATE and (
            len(self.inflight) >= inflight_appends_max or self.inflight_bytes >= inflight_bytes_max
        )

    def sent_append(self, last_index: int | None, size: int) -> None:
        """An append went out, carrying entries through `last_index` (None: no entries)
        of `size` bytes: in REPLICATE it joins the window; in PROBE it is the probe."""
        if self.state == ProgressState.REPLICATE:
            if last_index is not None:
                self.next = last_index + 1
                self.inflight.append((last_index, size))
                self.inflight_bytes += size
        else:
            self.probe_sent = True

    def append_accepted(self, index: int, compacted_through: int) -> None:
        """The follower holds the leader's log through `index`. A follower receiving a
        snapshot goes back to probing once it has caught up past `compacted_through`
        (the leader's log base, or 0 when it has no snapshot)."""
        self.match = max(self.match, index)
        self.next = max(self.next, self.match + 1)
        self.release_inflight(self.match)
        if self.state == ProgressState.PROBE:
            self.become_replicate()
        elif self.state == ProgressState.SNAPSHOT and self.match >= compacted_through:
            self.become_probe()

    def append_rejected(self, hint: int) -> bool:
        """The follower's log does not match; `hint` is where it may. Backs off to the
        hint (never below what it has acknowledged) and probes. False when ignored: a
        snapshot is being sent."""
        if self.state == ProgressState.SNAPSHOT:
            return False
        self.next = max(self.match + 1, min(self.next - 1, hint + 1))
        self.become_probe()
        return True

    def snapshot_installed(self, index: int) -> None:
        """The follower installed the snapshot at `index`: probe from just after it."""
        self.match = max(self.match, index)
        self.next = self.match + 1
        self.snapshot = None
        self.become_probe()

    def entries_lost(self, last_index: int) -> None:
        """The follower's log ends at `last_index`, before entries it acknowledged (a
        tail cut off at restart): replicate again from what it still has."""
        self.match = last_index
        self.next = last_index + 1
        self.become_probe()

    def heartbeat_behind_window(self, last_index: int) -> None:
        """A heartbeat answer shows the follower's log at `last_index`, behind appends in
        flight. If it has not grown for several heartbeats, they were lost: find the
        match point again."""
        if last_index == self.stalled_last_index:
            self.stalled_heartbeats += 1
        else:
            self.stalled_last_index, self.stalled_heartbeats = last_index, 0
        if self.stalled_heartbeats >= STALLED_HEARTBEATS_MAX + self.inflight_bytes // STALLED_BYTES_PER_HEARTBEAT:
            self.next = max(self.match + 1, min(self.next, last_index + 1))
            self.become_probe()


@dataclass(slots=True)
class ProgressTracker:
    """What a node tracks about its peers: as leader, the progress of every other
    replica (voters and standbys); as (pre-)candidate, the votes received."""

    progress: dict[int, Progress] = field(default_factory=dict)
    votes: dict[int, bool] = field(default_factory=dict)

    def start_leading(self, replicas: tuple[int, ...], self_id: int, next_index: int) -> None:
        """A new leader knows nothing of its followers: probe each from `next_index`."""
        self.progress = {node: Progress(match=0, next=next_index) for node in replicas if node != self_id}

    def stop_leading(self) -> None:
        self.progress = {}

    def forget_absent(self, replicas: tuple[int, ...]) -> None:
        """Stop tracking nodes that no longer receive the log."""
        for node in list(self.progress):
            if node not in replicas:
                del self.progress[node]

    def match_indexes(self, voters: tuple[int, ...], self_id: int, own_match: int) -> list[int]:
        """One match index per voter, in voter order: the leader's is `own_match` (what
        it has persisted), an untracked voter's is 0."""
        return [
            own_match if voter == self_id else self.progress[voter].match if voter in self.progress else 0
            for voter in voters
        ]

    def caught_up(self, node: int, last_index: int, lag_entries_max: int) -> bool:
        progress = self.progress.get(node)
        return progress is not None and progress.match + lag_entries_max >= last_index

    def take_recently_active(self, self_id: int) -> set[int]:
        """The nodes heard from since the previous call (the leader counts itself);
        starts the next period (check-quorum)."""
        active = {self_id} | {node for node, progress in self.progress.items() if progress.recent_active}
        for progress in self.progress.values():
            progress.recent_active = False
        return active

    def heartbeat_acknowledged(self, sequence: int, self_id: int) -> set[int]:
        """The nodes that answered heartbeat `sequence` or a later one (the leader counts
        itself)."""
        return {self_id} | {node for node, progress in self.progress.items() if progress.heartbeat_sequence >= sequence}

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: int, granted: bool) -> None:
        self.votes[node] = granted
