"""The Raft consensus core: a pure state machine in etcd-io/raft's shape.

Theory of operation
-------------------
`Raft` holds one node's consensus state. Inputs are method calls: `step(src, message)`
for a peer's message, `tick()` for the passage of time (the runtime calls it every
`tick_ms`; all timeouts are counted in ticks), and the requests `propose`,
`read_index`, `transfer_leadership`, `change_membership`, `compact`. It performs no I/O.

Outputs accumulate until the runtime asks for them with `ready()`, which returns one
`Ready` batch, and promises to handle it in this order (the ordering contract):

1. persist `ready.hard_state`, `ready.snapshot` and `ready.entries` (discarding the log
   after `ready.truncate_after` first), all durably;
2. send `ready.messages` (these may go before persisting: the leader's appends), and
   only after step 1 completed, `ready.messages_after_persist` (votes, append and
   snapshot acknowledgements, and every message carrying a term this node has not yet
   made durable: etcd-io/raft's persist-then-send rule). A message in it addressed to
   this node itself (a candidate's own vote) is stepped back into `step`;
3. apply `ready.committed_entries` (and install `ready.snapshot` into the state machine);
   deliver `ready.read_states`;
4. call `advance(ready)`.

The runtime may step more messages while a Ready is being persisted; it takes the next
Ready only after `advance`. `advance` marks entries stable only if they are still in the
log with the same term (a later truncation may have replaced them meanwhile).

Safety rules enforced here (Raft paper §5, §6, the Raft thesis §3.10, §4, §6, §9):
- a leader commits only entries of its own term by counting replicas (Figure 8); it
  counts itself only for entries it has persisted;
- a vote is granted at most once per term, to candidates whose log is at least as up to
  date, and a vote is sent only once it is durable; a candidate's own vote counts only
  once durable, and no message of a term leaves before that term is durable (so a crash
  can never make a node forget a term it acted in); a node whose storage is failing
  neither campaigns nor grants votes;
- pre-vote and check-quorum: a node that heard from a leader within an election timeout
  ignores (pre-)vote requests, except for campaigns started by leadership transfer;
  a leader that has not heard from a quorum within an election timeout steps down;
- membership changes one server at a time, taking effect when appended and reverted
  when truncated; proposed only once the leader committed an entry of its term and no
  other change is pending; promotion to voter only after the node has caught up (a
  promotion waiting for that blocks no other change: the change takes its place); a
  node a committed configuration dropped is told so (`Removed`), and its messages,
  whatever their term, change nothing on the leader;
- ReadIndex: a read is released only after a quorum answered a heartbeat sent after the
  read arrived, and only once the leader has committed an entry of its term.

Roles change only in `_become_follower`, `_become_pre_candidate`, `_become_candidate`
and `_become_leader`.

Parts
-----
This module is the state machine: roles, terms, the log, elections, replication and
the Ready contract. It composes four parts, split the way etcd-io/raft splits raft.go:
- core/raft_progress.py: each follower's `Progress` (probe / replicate / snapshot, the
  window of appends in flight) and the `ProgressTracker` holding them and the votes;
- core/raft_quorum.py: majority arithmetic (the committed index, election results);
- core/raft_read_only.py: the ReadIndex queue and the heartbeat sequence confirming it;
- core/raft_membership.py: the configurations in the log, the rules for the next
  change, and a promotion waiting for its node to catch up.
The parts decide nothing on their own that depends on a test-only `UnsafeSwitches`:
every deliberate bug is switched here. `Raft.progress`, `votes`, `configurations` and
`pending_promotion` are views of the parts, for the node actor and the checkers.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence

from .errors import NotLeader, ProposalDropped
from .invariant import invariant, present
from .raft_membership import Membership
from .raft_messages import (
    AppendRequest, AppendResponse, HeartbeatRequest, HeartbeatResponse, Removed, SnapshotChunk, SnapshotResponse,
    TimeoutNow, VoteRequest, VoteResponse,
)
from .raft_progress import Progress, ProgressState, ProgressTracker
from .raft_quorum import VoteResult, committed_index, has_quorum, vote_result
from .raft_read_only import ReadOnly, ReadState
from .raft_types import Configuration, Entry, EntryKind, HardState, Role, Snapshot, SnapshotMeta

__all__ = [
    "Progress", "Raft", "RaftSettings", "Ready", "ReadState", "REMOVED_FROM_CLUSTER", "SAFE", "State", "UnsafeSwitches",
]

# How `Raft.removed` begins: the runtime tells a node stopped because it was removed
# from one stopped for a fault by it.
REMOVED_FROM_CLUSTER = "removed from the cluster"


class State(str, Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsafeSwitches:
    """Deliberate safety bugs, for tests only: each proves the checkers would notice
    (jepsen_like's teeth tests). All default off; with all off no code path changes."""

    acknowledge_before_commit: bool = False   # actors/database.py: answer a write once proposed
    skip_fsync: bool = False                  # actors/raft_storage.py: a Sync counts as done
    read_without_read_index: bool = False     # actors/raft_node.py: answer reads at once
    vote_before_persist: bool = False         # here: a vote leaves before it is durable
    # here: a candidate counts its own vote, and a node sends messages of a new term,
    # before that term (and the self-vote) is durable: bug 1 of the safety review
    self_vote_before_persist: bool = False
    # The catalogue of `raftlite sim mutations` (sim/mutations.py says how each is reached):
    append_ack_before_persist: bool = False           # here: a follower acknowledges entries not yet durable
    commit_without_current_term: bool = False         # here: an earlier term's entry committed by counting replicas (Figure 8)
    accept_stale_term_append: bool = False            # here: a follower appends what a deposed leader of an older term sends
    keep_conflicting_entries: bool = False            # here: a follower keeps its own entry where the leader's conflicts
    commit_past_quorum: bool = False                  # here: the leader commits the highest match, not the quorum's
    concurrent_membership_changes: bool = False       # here: a second change proposed while one is pending
    read_index_without_own_term_commit: bool = False  # here: a new leader serves reads before committing in its term
    snapshot_ack_before_persist: bool = False         # here: InstallSnapshot acknowledged before the snapshot is durable
    apply_past_commit: bool = False                   # here: entries applied once durable locally, committed or not
    vote_without_log_check: bool = False              # here: a vote granted to a candidate whose log is behind
    vote_twice_in_term: bool = False                  # here: a vote granted to a second candidate in the same term
    deposed_leader_keeps_wal: bool = False            # actors/database.py: leadership lost, the uncommitted WAL stays

    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in self.__slots__ if getattr(self, name))


SAFE = UnsafeSwitches()


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftSettings:
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    append_entries_max: int = 512
    append_batch_bytes_max: int = 1 << 20
    inflight_appends_max: int = 64
    inflight_bytes_max: int = 32 << 20
    snapshot_chunk_bytes: int = 256 << 10
    # Promotion to voter waits until the node is this close to the leader's last index,
    # for at most `promotion_timeout_ticks`.
    promotion_lag_entries_max: int = 0
    promotion_timeout_ticks: int = 100
    # A leader whose storage has failed for this many ticks steps aside (`step_aside`).
    storage_failure_step_down_ticks: int = 20
    pre_vote: bool = True
    check_quorum: bool = True
    unsafe: UnsafeSwitches = SAFE   # test-only deliberate bugs; see UnsafeSwitches

    def validate(self) -> "RaftSettings":
        invariant(self.election_ticks > self.heartbeat_ticks > 0, "need election_ticks > heartbeat_ticks > 0")
        invariant(self.inflight_appends_max > 0 and self.append_entries_max > 0, "limits must be positive")
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    hard_state: HardState | None
    truncate_after: int | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    messages: tuple[tuple[int, Any], ...]
    messages_after_persist: tuple[tuple[int, Any], ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]

    def needs_persist(self) -> bool:
        return bool(self.hard_state or self.entries or self.snapshot or self.truncate_after is not None)


def _carries_future_term(message: Any) -> bool:
    """A pre-vote request, or a pre-vote granted: its term is one the sender is not in."""
    if type(message) is VoteRequest:
        return message.pre_vote
    return type(message) is VoteResponse and message.pre_vote and message.granted


class Raft:
    def __init__(
        self,
        node_id: int,
        *,
        settings: RaftSettings,
        rng,
        configuration: Configuration,
        hard_state: HardState = HardState(),
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        applied: int | None = None,
        commit: int = 0,
    ) -> None:
        """Restart from durable state: `snapshot` (if any), the log `entries` after it,
        and the bootstrap `configuration` (used when neither names a newer one).
        `commit` is a commit index this node knew before it stopped (a persisted hint);
        the entries through it are committed, so they may be applied at once."""
        self.id = node_id
        self.settings = settings.validate()
        self.rng = rng
        self.term = hard_state.term
        self.vote = hard_state.vote
        # The latest snapshot (served to peers whose next entry was compacted away).
        self.snapshot = snapshot
        # The in-memory log holds the entries after the log base. The base is the
        # snapshot's index at restart; compaction may keep trailing entries before a
        # newer snapshot's index, so the base can lag the snapshot.
        self.log_base_index = snapshot.meta.index if snapshot else 0
        self.log_base_term = snapshot.meta.term if snapshot else 0
        self.entries: list[Entry] = [e for e in entries if e.index > self.log_base_index]
        if self.entries:
            invariant(self.entries[0].index == self.log_base_index + 1, "log must start right after the snapshot")
        # Durable state given at restart is stable by definition.
        self.stable_index = self.last_index              # persisted through here
        self.persist_requested_index = self.last_index   # handed to the runtime through here
        self.truncate_after: int | None = None           # a truncation not yet handed out
        self.commit = max(self.log_base_index, min(commit, self.last_index))
        self.applied = self.log_base_index if applied is None else applied
        self.apply_requested_index = self.applied
        # The configurations in the log, and a promotion to voter waiting (if any).
        if snapshot:
            self.membership = Membership.from_log(
                snapshot.meta.configuration_index, snapshot.meta.configuration, self.entries)
        else:
            self.membership = Membership.from_log(0, configuration, self.entries)

        self.state = State.FOLLOWER
        # A node whose storage may have been wiped must not vote or campaign: it may have
        # forgotten entries its earlier votes and acknowledgements vouched for. The runtime
        # sets this for a node that starts empty to join, until its own join completed.
        self.voting_blocked = False
        # Set by the runtime while durable storage is failing (EIO, ENOSPC): a node that
        # cannot make a term or a vote durable neither campaigns nor grants votes.
        self.storage_failing = False
        self.storage_failing_ticks = 0   # consecutive ticks with storage failing
        # Set when this leader stepped aside for failing storage: the voter it told to
        # campaign (None: there was none), for the runtime to report; it clears it.
        self.stepped_aside_to: int | None = None
        self.stepped_aside = False
        # Set when the leader answered that this node is no longer a member (a `Removed`
        # message): why, for the runtime to log before it stops the node.
        self.removed: str | None = None
        # The index of a committed configuration, proposed by this node as leader, that
        # removed this node itself: the runtime stops it once that entry is applied.
        self.removed_self_at: int | None = None
        # A pending promotion to voter that ended without it, for the runtime to tell
        # the waiting client why: (node, its match index, the leader's last index, why).
        self.promotion_ended: tuple[int, int, int, str] | None = None
        self.leader: int | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = settings.election_ticks
        # Votes received as (pre-)candidate; each follower's progress as leader.
        self.tracker = ProgressTracker()
        self.transfer_target: int | None = None
        self.transfer_elapsed = 0
        self.read_only = ReadOnly()   # reads waiting for a quorum's heartbeat answers
        self.incoming_snapshot: tuple[SnapshotMeta, bytearray] | None = None
        self.snapshot_to_persist: Snapshot | None = None

        self.messages: list[tuple[int, Any]] = []
        self.messages_after_persist: list[tuple[int, Any]] = []
        self.read_states: list[ReadState] = []
        self.persisted_hard_state = HardState(self.term, self.vote)   # handed out to persist
        self.durable_hard_state = HardState(self.term, self.vote)     # known to be durable
        self._reset_election_timer()

    # ------------------------------------------------------------------------------------
    # The log

    @property
    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.log_base_index

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.log_base_term

    @property
    def first_index(self) -> int:
        return self.log_base_index + 1

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`; None if it is compacted away or beyond the log."""
        if index == self.log_base_index:
            return self.log_base_term
        if index < self.log_base_index or index > self.last_index:
            return None
        return self.entries[index - self.log_base_index - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.log_base_index - 1]

    def _entries_between(self, start: int, end: int) -> list[Entry]:
        """Entries with start <= index <= end (both within the log)."""
        offset = self.log_base_index + 1
        return self.entries[start - offset : end - offset + 1]

    def _truncate_after(self, index: int) -> None:
        invariant(index >= self.commit, f"node {self.id}: truncating committed entries ({index} < {self.commit})")
        del self.entries[index - self.log_base_index :]
        self.membership.truncated_after(index)
        self.stable_index = min(self.stable_index, index)
        if index < self.persist_requested_index:
            self.persist_requested_index = index
            self.truncate_after = index if self.truncate_after is None else min(self.truncate_after, index)

    def _append(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            invariant(entry.index == self.last_index + 1, f"node {self.id}: appending index {entry.index} after {self.last_index}")
            self.entries.append(entry)
            self.membership.appended(entry)

    def _is_up_to_date(self, last_index: int, last_term: int) -> bool:
        return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)

    # ------------------------------------------------------------------------------------
    # Views of the parts (core/raft_membership.py, core/raft_progress.py), as the node
    # actor, the simulator and the checkers read them

    @property
    def configuration(self) -> Configuration:
        return self.membership.current

    @property
    def configuration_index(self) -> int:
        return self.membership.current_index

    @property
    def configurations(self) -> list[tuple[int, Configuration]]:
        """The configurations in the log: (index of the CONFIG entry, configuration),
        oldest first."""
        return self.membership.history

    @property
    def pending_promotion(self) -> tuple[int, int] | None:
        """(node, ticks waited) of a promotion to voter waiting for its node to catch up."""
        return self.membership.pending_promotion

    @property
    def progress(self) -> dict[int, Progress]:
        """As leader, the progress of every other replica."""
        return self.tracker.progress

    @property
    def votes(self) -> dict[int, bool]:
        """As (pre-)candidate, the votes received so far."""
        return self.tracker.votes

    @property
    def is_voter(self) -> bool:
        return self.configuration.role(self.id) == Role.VOTER

    def _quorum_reached(self, members: set[int]) -> bool:
        return has_quorum(self.configuration.voters, members)

    # ------------------------------------------------------------------------------------
    # Role transitions (the only places the role changes)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_election_timer()
        self.tracker.reset_votes()
        self.transfer_target = None
        self.membership.pending_promotion = None
        self.read_only.clear()

    def _reset_election_timer(self) -> None:
        ticks = self.settings.election_ticks
        self.randomized_election_ticks = ticks + self.rng.randrange(ticks)

    def _become_follower(self, term: int, leader: int | None) -> None:
        self._reset(term)
        self.state = State.FOLLOWER
        self.leader = leader
        self.tracker.stop_leading()

    def _become_pre_candidate(self) -> None:
        invariant(self.state != State.LEADER, "a leader does not pre-campaign")
        # Pre-vote changes neither term nor vote: a partitioned node cannot inflate terms.
        self.state = State.PRE_CANDIDATE
        self.tracker.reset_votes()
        self.leader = None
        self.election_elapsed = 0
        self._reset_election_timer()

    def _become_candidate(self) -> None:
        invariant(self.state != State.LEADER, "a leader does not campaign")
        self._reset(self.term + 1)
        self.state = State.CANDIDATE
        self.vote = self.id

    def _become_leader(self) -> None:
        invariant(self.state == State.CANDIDATE, "only a candidate becomes leader")
        self._reset(self.term)
        self.state = State.LEADER
        self.leader = self.id
        self.tracker.start_leading(self.configuration.replicas, self.id, self.last_index + 1)
        # Commit entries of earlier terms by committing one of our own (Raft §5.4.2).
        self._append([Entry(self.term, self.last_index + 1, EntryKind.NOOP)])
        self._broadcast_append()

    def bootstrap(self, configuration: Configuration) -> None:
        """Start a brand-new cluster: the first log entry (term 1, index 1) holds the
        initial configuration. Every founding node writes the very same entry."""
        invariant(self.last_index == 0 and self.term == 0, f"node {self.id}: bootstrap of a node that has state")
        self.term = 1
        self._append([Entry(1, 1, EntryKind.CONFIG, configuration.encode())])
        # A founding node may count the bootstrap entry as committed: it is identical on
        # every founding node, and nothing can precede it.
        self.commit = 1

    # ------------------------------------------------------------------------------------
    # Time

    def tick(self) -> None:
        self.storage_failing_ticks = self.storage_failing_ticks + 1 if self.storage_failing else 0
        if self.state == State.LEADER:
            if self.storage_failing_ticks >= self.settings.storage_failure_step_down_ticks:
                self.step_aside()
                return
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self.election_elapsed >= self.randomized_election_ticks and self._may_campaign():
                self._campaign(transfer=False)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.settings.election_ticks:
            self.election_elapsed = 0
            if self.settings.check_quorum and not self._quorum_reached(self.tracker.take_recently_active(self.id)):
                self._become_follower(self.term, None)
                return
            if self.transfer_target is not None:
                self.transfer_target = None  # the transfer did not finish in time
        promotion = self.membership.pending_promotion
        if self.membership.promotion_tick(self.settings.promotion_timeout_ticks):
            self._maybe_promote()
        elif promotion is not None:
            self._promotion_ended(promotion[0], "timeout")
        if self.heartbeat_elapsed >= self.settings.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    # ------------------------------------------------------------------------------------
    # Elections

    def campaign(self, *, force: bool = False) -> None:
        """Start an election now (etcd's MsgHup). `force` campaigns as leadership transfer
        does: no pre-vote, and voters ignore their leader lease."""
        if self.state != State.LEADER and self._may_campaign():
            self._campaign(transfer=force)

    def _may_campaign(self) -> bool:
        return self.is_voter and not self.voting_blocked and not self.storage_failing

    def _campaign(self, *, transfer: bool) -> None:
        if not self.settings.pre_vote or transfer:
            self._become_candidate()
            self._request_votes(transfer=transfer)
            return
        self._become_pre_candidate()
        # A pre-vote promises nothing and changes no durable state: counted at once.
        self.tracker.record_vote(self.id, True)
        if self._quorum_reached({self.id}):
            self._campaign_after_pre_vote()
            return
        for voter in self.configuration.voters:
            if voter != self.id:
                self._send(voter, VoteRequest(
                    term=self.term + 1, last_log_index=self.last_index, last_log_term=self.last_term,
                    pre_vote=True, transfer=False,
                ))

    def _win_vote(self, pre_vote: bool) -> None:
        if pre_vote:
            self._campaign_after_pre_vote()
        else:
            self._become_leader()

    def _campaign_after_pre_vote(self) -> None:
        self._become_candidate()
        self._request_votes(transfer=False)

    def _request_votes(self, *, transfer: bool) -> None:
        """A candidate's own vote counts only once its new term and vote are durable: like
        etcd-io/raft, it sends itself a vote response after the persist (the runtime
        steps messages addressed to this node back into it). Counted at once, a crash
        before the write lands would let the node restart in the old term with no vote,
        vote for another candidate of the same term, and two leaders share it. The
        requests themselves carry the new term, so `_send` holds them until then too."""
        if self.settings.unsafe.self_vote_before_persist:
            self.tracker.record_vote(self.id, True)
            if self._quorum_reached({self.id}):
                self._become_leader()
                return
        else:
            self.messages_after_persist.append((self.id, VoteResponse(term=self.term, granted=True)))
        for voter in self.configuration.voters:
            if voter != self.id:
                self._send(voter, VoteRequest(
                    term=self.term, last_log_index=self.last_index, last_log_term=self.last_term, transfer=transfer,
                ))

    def _in_lease(self) -> bool:
        """Heard from a live leader within the election timeout (check-quorum's lease)."""
        return self.settings.check_quorum and self.leader is not None and self.election_elapsed < self.settings.election_ticks

    def _handle_vote_request(self, src: int, message: VoteRequest) -> None:
        up_to_date = self._is_up_to_date(message.last_log_index, message.last_log_term)
        if self.settings.unsafe.vote_without_log_check:
            up_to_date = True   # a deliberate bug for tests: a candidate missing committed entries can win
        if message.pre_vote:
            grant = (
                message.term > self.term
                and not self.voting_blocked
                and not self.storage_failing
                and (message.transfer or not self._in_lease())
                and up_to_date
            )
            # A granted pre-vote answers in the candidate's future term without adopting it.
            self._send(src, VoteResponse(term=message.term if grant else self.term, granted=grant, pre_vote=True))
            return
        can_vote = self.vote == src or (self.vote is None and self.leader is None)
        if self.settings.unsafe.vote_twice_in_term:
            can_vote = True   # a deliberate bug for tests: the vote already given this term is forgotten
        grant = can_vote and not self.voting_blocked and not self.storage_failing and up_to_date
        if grant:
            self.vote = src
            self.election_elapsed = 0
        # The vote is durable before the candidate hears of it (unless a test breaks that on purpose).
        outbox = self.messages if self.settings.unsafe.vote_before_persist else self.messages_after_persist
        outbox.append((src, VoteResponse(term=self.term, granted=grant)))

    def _handle_vote_response(self, src: int, message: VoteResponse) -> None:
        expected = State.PRE_CANDIDATE if message.pre_vote else State.CANDIDATE
        if self.state != expected:
            return
        self.tracker.record_vote(src, message.granted)
        result = vote_result(self.configuration.voters, self.tracker.votes)
        if result == VoteResult.WON:
            self._win_vote(message.pre_vote)
        elif result == VoteResult.LOST:
            self._become_follower(self.term, None)

    # ------------------------------------------------------------------------------------
    # Messages

    def step(self, src: int, message: Any) -> None:
        if type(message) is Removed:
            self._handle_removed(src, message)
            return
        if self.state == State.LEADER and self._sender_was_removed(src, message):
            # Answered whatever its term: a removed node's campaign must neither depose
            # this leader nor go on for ever (etcd answers it with ErrRemoved).
            self._send(src, Removed(term=self.term, configuration_index=self.configuration_index))
            return
        term = message.term
        if term > self.term:
            if isinstance(message, VoteRequest):
                if message.pre_vote:
                    self._handle_vote_request(src, message)
                    return
                if not message.transfer and self._in_lease():
                    return  # a disruptive candidate: we hear from a live leader
                self._become_follower(term, None)
            elif isinstance(message, VoteResponse) and message.pre_vote and message.granted:
                pass  # a granted pre-vote carries our own future term
            else:
                leader = src if isinstance(message, (AppendRequest, HeartbeatRequest, SnapshotChunk, TimeoutNow)) else None
                self._become_follower(term, leader)
        elif term < self.term:
            if type(message) is AppendRequest and self.settings.unsafe.accept_stale_term_append:
                # A deliberate bug for tests: a deposed leader's entries overwrite the current term's.
                self._handle_append(src, message)
                return
            if isinstance(message, (AppendRequest, HeartbeatRequest, SnapshotChunk)):
                # A stale leader: tell it the current term so it steps down.
                self._send(src, AppendResponse(term=self.term, success=False, index=self.last_index))
            elif isinstance(message, VoteRequest) and message.pre_vote:
                self._send(src, VoteResponse(term=self.term, granted=False, pre_vote=True))
            return

        match message:
            case VoteRequest():
                self._handle_vote_request(src, message)
            case VoteResponse():
                self._handle_vote_response(src, message)
            case AppendRequest():
                self._follow(src)
                self._handle_append(src, message)
            case HeartbeatRequest():
                self._follow(src)
                self._handle_heartbeat(src, message)
            case SnapshotChunk():
                self._follow(src)
                self._handle_snapshot_chunk(src, message)
            case TimeoutNow():
                # A transfer target campaigns at once, but only if it may campaign at
                # all: not with failing storage (it could not make its term durable).
                if self._may_campaign() and self.state != State.LEADER:
                    self._campaign(transfer=True)
            case AppendResponse():
                if self.state == State.LEADER:
                    self._handle_append_response(src, message)
            case HeartbeatResponse():
                if self.state == State.LEADER:
                    self._handle_heartbeat_response(src, message)
            case SnapshotResponse():
                if self.state == State.LEADER:
                    self._handle_snapshot_response(src, message)

    def _sender_was_removed(self, src: int, message: Any) -> bool:
        """`src` was a member and a committed configuration removed it. Only a voter
        campaigns, and a node becomes a voter only after its joining change committed;
        only a replica this leader sent to in this term answers in this term. Either
        message from a node missing from this leader's committed configuration means
        that node was removed since (a node added back is in the configuration again)."""
        if self.configuration.role(src) is not None or self.configuration_index > self.commit:
            return False
        if type(message) is VoteRequest:
            return True
        return message.term == self.term and type(message) in (AppendResponse, HeartbeatResponse, SnapshotResponse)

    def _handle_removed(self, src: int, message: Removed) -> None:
        for index, configuration in self.membership.history:
            if index > message.configuration_index and configuration.role(self.id) is not None:
                return   # stale: this node's log already holds a later configuration naming it
        if self.removed is None:
            self.removed = (
                f"{REMOVED_FROM_CLUSTER}: node {src}, the leader in term {message.term}, answered that node "
                f"{self.id} is not in its committed configuration (entry {message.configuration_index})")

    def _follow(self, leader: int) -> None:
        if self.state != State.FOLLOWER:
            # A candidate that hears from the leader of its term steps back (Raft §5.2).
            invariant(self.state != State.LEADER, f"two leaders in term {self.term}")
            self._become_follower(self.term, leader)
        self.leader = leader
        self.election_elapsed = 0

    # -- follower side -------------------------------------------------------------------

    def _handle_append(self, src: int, message: AppendRequest) -> None:
        if message.prev_index < self.commit:
            # Already committed here; acknowledge what we know matches.
            self.messages_after_persist.append((src, AppendResponse(term=self.term, success=True, index=self.commit)))
            return
        if self.term_at(message.prev_index) != message.prev_term:
            if message.prev_index > self.last_index:
                hint = self.last_index
            else:
                conflict_term = self.term_at(message.prev_index)
                hint = message.prev_index - 1
                while hint > self.commit and self.term_at(hint) == conflict_term:
                    hint -= 1
            self._send(src, AppendResponse(term=self.term, success=False, index=hint))
            return
        new_entries = message.entries
        for position, entry in enumerate(message.entries):
            existing = self.term_at(entry.index)
            if existing is not None and existing != entry.term and self.settings.unsafe.keep_conflicting_entries:
                continue   # a deliberate bug for tests: our conflicting entry stays, yet the append is acknowledged
            if existing is None or existing != entry.term:
                if existing is not None:
                    self._truncate_after(entry.index - 1)
                new_entries = message.entries[position:]
                break
        else:
            new_entries = ()
        if new_entries:
            self._append(new_entries)
        last_new = message.prev_index + len(message.entries)
        self._commit_to(min(message.commit, last_new))
        # The acknowledgement vouches for durable entries (unless a test breaks that on purpose).
        outbox = self.messages if self.settings.unsafe.append_ack_before_persist else self.messages_after_persist
        outbox.append((src, AppendResponse(term=self.term, success=True, index=last_new)))

    def _handle_heartbeat(self, src: int, message: HeartbeatRequest) -> None:
        self._commit_to(min(message.commit, self.last_index))
        self._send(src, HeartbeatResponse(term=self.term, sequence=message.sequence, last_index=self.last_index))

    def _commit_to(self, index: int) -> None:
        if index > self.commit:
            invariant(index <= self.last_index, f"node {self.id}: commit {index} beyond last index {self.last_index}")
            self.commit = index

    def _handle_snapshot_chunk(self, src: int, message: SnapshotChunk) -> None:
        meta = message.meta
        if meta.index <= self.commit:
            # Nothing to learn: we already have (and committed) everything it holds. Both
            # answers vouch for entries through the commit index, which may still be on
            # their way to this node's disk: they wait for the persist.
            self.messages_after_persist.append(
                (src, SnapshotResponse(term=self.term, index=meta.index, next_offset=message.total_bytes, done=True))
            )
            self.messages_after_persist.append((src, AppendResponse(term=self.term, success=True, index=self.commit)))
            return
        if message.offset == 0 or self.incoming_snapshot is None or self.incoming_snapshot[0] != meta:
            if message.offset != 0:
                self._send(src, SnapshotResponse(term=self.term, index=meta.index, next_offset=0, done=False))
                return
            self.incoming_snapshot = (meta, bytearray())
        buffer = self.incoming_snapshot[1]
        if message.offset != len(buffer):
            self._send(src, SnapshotResponse(term=self.term, index=meta.index, next_offset=len(buffer), done=False))
            return
        buffer.extend(message.data)
        if not message.done:
            self._send(src, SnapshotResponse(term=self.term, index=meta.index, next_offset=len(buffer), done=False))
            return
        self.incoming_snapshot = None
        self._restore(Snapshot(meta, bytes(buffer)))
        # The snapshot is durable before the leader hears of it (unless a test breaks that on purpose).
        outbox = self.messages if self.settings.unsafe.snapshot_ack_before_persist else self.messages_after_persist
        outbox.append((src, SnapshotResponse(term=self.term, index=meta.index, next_offset=len(buffer), done=True)))

    def _restore(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        if self.term_at(meta.index) == meta.term:
            # Our log already has the snapshot's last entry: keep what follows it.
            kept = [e for e in self.entries if e.index > meta.index]
        else:
            kept = []
        self.entries = kept
        self.snapshot = snapshot
        self.log_base_index, self.log_base_term = meta.index, meta.term
        self.membership.restored(meta, kept)
        self.commit = max(self.commit, meta.index)
        self.applied = self.apply_requested_index = meta.index
        if kept:
            self.stable_index = min(self.stable_index, self.last_index)
            self.persist_requested_index = min(self.persist_requested_index, self.last_index)
        else:
            # Whatever the disk holds after the snapshot's index conflicts or is missing.
            self.stable_index = self.persist_requested_index = meta.index
            self.truncate_after = meta.index
        self.snapshot_to_persist = snapshot

    # -- leader side ---------------------------------------------------------------------

    def _send_append(self, node: int, *, allow_empty: bool = False) -> bool:
        progress = self.progress[node]
        if progress.is_paused(self.settings.inflight_appends_max, self.settings.inflight_bytes_max):
            return False
        prev_index = progress.next - 1
        prev_term = self.term_at(prev_index)
        if prev_term is None:
            self._start_snapshot(node)
            return True
        last = min(self.last_index, prev_index + self.settings.append_entries_max)
        entries: list[Entry] = []
        size = 0
        for entry in self._entries_between(prev_index + 1, last):
            if entries and size + entry.wire_bytes() > self.settings.append_batch_bytes_max:
                break
            entries.append(entry)
            size += entry.wire_bytes()
        if not entries and not allow_empty and progress.state == ProgressState.REPLICATE:
            return False
        self._send(node, AppendRequest(
            term=self.term, prev_index=prev_index, prev_term=prev_term, entries=tuple(entries), commit=self.commit,
        ))
        progress.sent_append(entries[-1].index if entries else None, size)
        return True

    def _broadcast_append(self) -> None:
        for node in self.progress:
            self._send_append(node, allow_empty=True)

    def _broadcast_heartbeat(self) -> None:
        sequence = self.read_only.next_heartbeat()
        for node, progress in self.progress.items():
            self._send(node, HeartbeatRequest(
                term=self.term, commit=min(self.commit, progress.match), sequence=sequence,
            ))
        self._release_reads()

    def _start_snapshot(self, node: int) -> None:
        snapshot = present(self.snapshot, f"node {self.id}: log compacted without a snapshot")
        self.progress[node].become_snapshot(snapshot)
        self._send_snapshot_chunk(node)

    def _send_snapshot_chunk(self, node: int) -> None:
        progress = self.progress[node]
        snapshot = present(progress.snapshot, f"node {self.id}: no snapshot being sent to {node}")
        offset = progress.snapshot_offset
        chunk = snapshot.data[offset : offset + self.settings.snapshot_chunk_bytes]
        self._send(node, SnapshotChunk(
            term=self.term, meta=snapshot.meta, offset=offset, data=chunk, total_bytes=len(snapshot.data),
        ))

    def _handle_snapshot_response(self, src: int, message: SnapshotResponse) -> None:
        progress = self.progress.get(src)
        if progress is None or progress.state != ProgressState.SNAPSHOT:
            return
        progress.recent_active = True
        if progress.snapshot is None or message.index != progress.snapshot.meta.index:
            # A response about another transfer: start over with the current snapshot.
            self._start_snapshot(src)
            return
        if message.done:
            progress.snapshot_installed(message.index)
            self._send_append(src, allow_empty=True)
            return
        progress.snapshot_offset = message.next_offset
        self._send_snapshot_chunk(src)

    def _handle_append_response(self, src: int, message: AppendResponse) -> None:
        progress = self.progress.get(src)
        if progress is None:
            return
        progress.recent_active = True
        if message.success:
            progress.append_accepted(message.index, self.log_base_index if self.snapshot else 0)
            self._maybe_commit()
            if self.state != State.LEADER:
                return   # the commit removed this leader from the voters: it stepped down
            if self.transfer_target == src and progress.match == self.last_index:
                self._send(src, TimeoutNow(term=self.term))
            self._maybe_promote()
            while self._send_append(src):
                pass
        elif progress.append_rejected(message.index):   # backs off to the follower's hint
            self._send_append(src, allow_empty=True)

    def _handle_heartbeat_response(self, src: int, message: HeartbeatResponse) -> None:
        progress = self.progress.get(src)
        if progress is None:
            return
        progress.recent_active = True
        progress.heartbeat_sequence = max(progress.heartbeat_sequence, message.sequence)
        if message.last_index < progress.match:
            # The follower lost entries it had acknowledged (a tail cut off at restart:
            # damage to the last batch written cannot be told from a torn write). Raft
            # assumes this never happens; re-replicating from what it still has is the
            # only way forward.
            progress.entries_lost(message.last_index)
        if progress.state == ProgressState.PROBE:
            progress.probe_sent = False  # the probe may have been lost: send it again
        elif progress.state == ProgressState.SNAPSHOT:
            # A chunk or its answer may have been lost: send the expected chunk again;
            # the follower answers with the offset it really needs.
            self._send_snapshot_chunk(src)
        elif progress.state == ProgressState.REPLICATE and progress.inflight and message.last_index < progress.next - 1:
            # Appends are in flight beyond the follower's log: lost, if it stays stuck.
            progress.heartbeat_behind_window(message.last_index)
        elif progress.state == ProgressState.REPLICATE and progress.match < progress.next - 1 <= message.last_index:
            # The follower holds everything sent but its acknowledgements were lost: an
            # empty append at the window's end (outside the window) gets a fresh one.
            prev_term = self.term_at(progress.next - 1)
            if prev_term is None:
                self._start_snapshot(src)  # compacted meanwhile: only a snapshot can help
            else:
                self._send(src, AppendRequest(
                    term=self.term, prev_index=progress.next - 1, prev_term=prev_term, entries=(), commit=self.commit,
                ))
        if progress.match < self.last_index:
            self._send_append(src, allow_empty=progress.state == ProgressState.PROBE)
        self._release_reads()

    def _maybe_commit(self) -> None:
        # The leader counts itself only for the entries it has persisted.
        matches = self.tracker.match_indexes(self.configuration.voters, self.id, self.stable_index)
        candidate = committed_index(matches)
        if candidate is None:
            return
        if self.settings.unsafe.commit_past_quorum:
            candidate = max(matches)   # a deliberate bug for tests: the best replica's match, not a quorum's
        own_term = self.term_at(candidate) == self.term
        if self.settings.unsafe.commit_without_current_term:
            own_term = True   # a deliberate bug for tests: Figure 8's unsafe commit
        if candidate > self.commit and own_term:
            previous_commit, self.commit = self.commit, candidate
            self._on_leader_commit(previous_commit)

    def _on_leader_commit(self, previous_commit: int) -> None:
        if self.read_only.waiting_for_commit and self._committed_own_term():
            for context in self.read_only.take_waiting_for_commit():
                self._queue_read(context)
        self._tell_removed_nodes(previous_commit)
        # A leader that is no longer a voter in a committed configuration steps down.
        if self.configuration_index <= self.commit and not self.is_voter:
            self._become_follower(self.term, None)

    def _tell_removed_nodes(self, previous_commit: int) -> None:
        """The nodes a configuration committed just now drops learn it at once: the
        leader sends them nothing more, and one that already holds its removal would
        otherwise wait, silent, for ever. A leader that removed itself stops once it has
        applied its removal (`removed_self_at`), so that the client is answered first."""
        history = self.membership.history
        for position in range(len(history) - 1, 0, -1):
            index, configuration = history[position]
            if index <= previous_commit:
                break
            if index > self.commit:
                continue
            for node in history[position - 1][1].nodes:
                if configuration.role(node) is not None or self.configuration.role(node) is not None:
                    continue   # still a member, or added back since
                if node == self.id:
                    self.removed_self_at = index
                else:
                    self._send(node, Removed(term=self.term, configuration_index=index))

    def _committed_own_term(self) -> bool:
        return self.term_at(self.commit) == self.term

    # ------------------------------------------------------------------------------------
    # Requests

    def _require_leader(self) -> None:
        if self.state != State.LEADER:
            raise NotLeader(self.leader)

    def propose(self, data: bytes, kind: EntryKind = EntryKind.NORMAL) -> int:
        """Append a command to the leader's log; returns its index."""
        self._require_leader()
        if self.transfer_target is not None:
            raise ProposalDropped("leadership transfer in progress")
        index = self.last_index + 1
        self._append([Entry(self.term, index, kind, bytes(data))])
        for node in self.progress:
            self._send_append(node)
        if not self.configuration.voters or self.configuration.voters == (self.id,):
            self._maybe_commit()
        return index

    def change_membership(self, node: int, role: Role | None, address: str | None = None) -> int | None:
        """Give `node` a role (None removes it), and `address` as its address when given.
        Returns the CONFIG entry's index, or None when a promotion to voter waits for
        the node to catch up first."""
        self._require_leader()
        if not self._committed_own_term():
            raise ProposalDropped("the leader has not yet committed an entry of its term")
        if (self.configuration_index > self.commit
                and not self.settings.unsafe.concurrent_membership_changes):   # (a deliberate bug for tests)
            raise ProposalDropped(
                f"a membership change is already in progress (the configuration at index "
                f"{self.configuration_index} is not committed yet)")
        waiting = self.membership.pending_promotion
        self.membership.cancel_promotion()
        try:
            configuration = self.membership.plan_change(node, role, address, caught_up=self._caught_up(node))
        except ProposalDropped:
            self.membership.pending_promotion = waiting   # a refused request leaves it waiting
            raise
        if waiting is not None:
            # A promotion that cannot complete must not block every other change: the
            # new request takes its place, and its client is told why.
            self._promotion_ended(waiting[0], f"superseded by a membership change of node {node}")
        return None if configuration is None else self._propose_configuration(configuration)

    def cancel_promotion(self, node: int) -> bool:
        """Give up the pending promotion of `node` to voter (asked by a client). False
        when none is pending for it."""
        self._require_leader()
        pending = self.membership.pending_promotion
        if pending is None or pending[0] != node:
            return False
        self.membership.cancel_promotion()
        self._promotion_ended(node, "cancelled")
        return True

    def _promotion_ended(self, node: int, why: str) -> None:
        progress = self.progress.get(node)
        self.promotion_ended = (node, 0 if progress is None else progress.match, self.last_index, why)

    def _caught_up(self, node: int) -> bool:
        return self.tracker.caught_up(node, self.last_index, self.settings.promotion_lag_entries_max)

    def _maybe_promote(self) -> None:
        # Not during a leadership transfer either: proposals are refused then, and the
        # promotion is retried on a later tick (or by the next leader, if asked again).
        if self.transfer_target is not None:
            return
        configuration = self.membership.due_promotion(self.commit, self._caught_up)
        if configuration is not None:
            self._propose_configuration(configuration)

    def _propose_configuration(self, configuration: Configuration) -> int:
        index = self.propose(configuration.encode(), EntryKind.CONFIG)
        for node in configuration.replicas:
            if node != self.id and node not in self.progress:
                self.progress[node] = Progress(match=0, next=self.last_index)
                self._send_append(node, allow_empty=True)
        self.tracker.forget_absent(configuration.replicas)
        self._maybe_commit()
        return index

    def step_aside(self) -> None:
        """Stop leading because storage is failing (the log's for a while, or the state
        machine's): entries are neither durable here nor applied, so this node's clients
        would wait for nothing. Tell the most caught-up other voter to campaign now
        (TimeoutNow; the lowest id among equals) and step down, staying in the term. This
        node cannot win it back: while its storage fails it neither campaigns nor votes.
        With no other voter, it stays follower until storage heals."""
        if self.state != State.LEADER:
            return
        others = [node for node in self.configuration.voters if node != self.id and node in self.progress]
        self.stepped_aside = True
        self.stepped_aside_to = None
        if others:
            target = max(others, key=lambda node: (self.progress[node].match, -node))
            self.stepped_aside_to = target
            self._send(target, TimeoutNow(term=self.term))
        self._become_follower(self.term, None)

    def transfer_leadership(self, target: int) -> None:
        self._require_leader()
        if target == self.id:
            raise ProposalDropped("already the leader")
        if self.configuration.role(target) != Role.VOTER:
            raise ProposalDropped(f"node {target} is not a voter")
        self.transfer_target = target
        self.election_elapsed = 0
        if self.progress[target].match == self.last_index:
            self._send(target, TimeoutNow(term=self.term))
        else:
            self._send_append(target, allow_empty=True)

    def read_index(self, context: Any) -> None:
        """Ask for a linearizable read point; a ReadState(context, index) comes in a later
        Ready once leadership is confirmed by a quorum."""
        self._require_leader()
        # (a deliberate bug for tests skips the wait: the commit index may lag the last leader's)
        if not self._committed_own_term() and not self.settings.unsafe.read_index_without_own_term_commit:
            self.read_only.wait_for_own_term_commit(context)
            return
        self._queue_read(context)

    def _queue_read(self, context: Any) -> None:
        self.read_only.queue(context, self.commit)
        self._broadcast_heartbeat()

    def _release_reads(self) -> None:
        self.read_states.extend(self.read_only.release(self._heartbeat_confirmed))

    def _heartbeat_confirmed(self, sequence: int) -> bool:
        """A quorum answered heartbeat `sequence` (or a later one): this node was still
        the leader when it was sent."""
        return self._quorum_reached(self.tracker.heartbeat_acknowledged(sequence, self.id))

    def compact(self, index: int, data: bytes, trailing: int = 0) -> Snapshot | None:
        """The state machine's image at applied `index` becomes the snapshot served to
        lagging peers; the in-memory log keeps `trailing` entries before `index`.
        Returns the new snapshot for the runtime to persist (None if not newer)."""
        invariant(index <= self.applied, f"node {self.id}: snapshot at {index} beyond applied {self.applied}")
        if self.snapshot is not None and index <= self.snapshot.meta.index:
            return None
        configuration_index, configuration = self.membership.at(index)
        # Past the last snapshot and applied, so still in the log (or its base).
        term = present(self.term_at(index), f"node {self.id}: no term for index {index} to snapshot")
        meta = SnapshotMeta(index=index, term=term, configuration=configuration,
                            configuration_index=configuration_index)
        self.snapshot = Snapshot(meta, bytes(data))
        new_base = index - trailing
        if new_base > self.log_base_index:
            new_base_term = present(self.term_at(new_base), f"node {self.id}: no term for new log base {new_base}")
            self.entries = self.entries[new_base - self.log_base_index :]
            self.log_base_index, self.log_base_term = new_base, new_base_term
        return self.snapshot

    # ------------------------------------------------------------------------------------
    # Ready / advance

    def _send(self, dst: int, message: Any) -> None:
        """Queue a message. One that carries a term this node has not yet made durable
        waits for that persist (pre-vote requests and grants excepted: they carry a
        future term by design and promise nothing): nothing a peer learns from it may
        outlive a crash that forgets the term."""
        if (message.term > self.durable_hard_state.term and not _carries_future_term(message)
                and not self.settings.unsafe.self_vote_before_persist):
            self.messages_after_persist.append((dst, message))
        else:
            self.messages.append((dst, message))

    def has_ready(self) -> bool:
        return bool(
            self.messages or self.messages_after_persist or self.read_states
            or self.last_index > self.persist_requested_index or self.truncate_after is not None
            or self.snapshot_to_persist is not None
            or self.term != self.persisted_hard_state.term or self.vote != self.persisted_hard_state.vote
            or min(self.commit, self.stable_index) > self.apply_requested_index
            or (self.settings.unsafe.apply_past_commit and self.stable_index > self.apply_requested_index)
        )

    def ready(self) -> Ready:
        """Hand out everything to persist, send and apply since the previous Ready.
        Several Readys may be in flight; the runtime completes them in order."""
        hard_state = HardState(self.term, self.vote)
        apply_to = min(self.commit, self.stable_index)
        if self.settings.unsafe.apply_past_commit:
            apply_to = self.stable_index   # a deliberate bug for tests: uncommitted entries applied
        committed: tuple[Entry, ...] = ()
        if apply_to > self.apply_requested_index:
            committed = tuple(self._entries_between(self.apply_requested_index + 1, apply_to))
            self.apply_requested_index = apply_to
        entries: tuple[Entry, ...] = ()
        if self.last_index > self.persist_requested_index:
            entries = tuple(self._entries_between(self.persist_requested_index + 1, self.last_index))
            self.persist_requested_index = self.last_index
        ready = Ready(
            hard_state=hard_state if hard_state != self.persisted_hard_state else None,
            truncate_after=self.truncate_after,
            entries=entries,
            snapshot=self.snapshot_to_persist,
            messages=tuple(self.messages),
            messages_after_persist=tuple(self.messages_after_persist),
            committed_entries=committed,
            read_states=tuple(self.read_states),
        )
        if ready.hard_state is not None:
            self.persisted_hard_state = hard_state  # requested; a newer change makes a new Ready
        self.messages.clear()
        self.messages_after_persist.clear()
        self.read_states.clear()
        self.truncate_after = None
        self.snapshot_to_persist = None
        return ready

    def advance(self, ready: Ready) -> None:
        """`ready` (and every Ready handed out before it) is persisted and applied."""
        if ready.hard_state is not None and ready.hard_state.term >= self.durable_hard_state.term:
            self.durable_hard_state = ready.hard_state
        stable = self.stable_index
        if ready.truncate_after is not None:
            # Entries up to the truncation point were handed out earlier and are durable
            # now (Readys complete in order), unless a newer truncation cut deeper.
            limit = self.persist_requested_index if self.truncate_after is None else min(self.persist_requested_index, self.truncate_after)
            stable = max(stable, min(ready.truncate_after, limit))
        if ready.snapshot is not None:
            stable = max(stable, min(ready.snapshot.meta.index, self.last_index))
        if ready.entries:
            last = ready.entries[-1]
            if self.term_at(last.index) == last.term:
                stable = max(stable, last.index)
        self.stable_index = stable
        if ready.committed_entries:
            self.applied = max(self.applied, ready.committed_entries[-1].index)
        if self.state == State.LEADER:
            self._maybe_commit()

    # ------------------------------------------------------------------------------------
    # Introspection (for the node actor, checkers and scenario output)

    def status(self) -> dict[str, Any]:
        return {
            "role": self.state.value,
            "term": self.term,
            "leader": self.leader,
            "commit": self.commit,
            "applied": self.applied,
            "last": self.last_index,
        }
