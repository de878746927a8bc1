"""The raft node actor: the raft core, its durable storage and a state machine, behind
the actor contract.

Theory of operation
-------------------
Every input (a peer's message, a client request, the `tick` timer, a disk completion)
is handed to the pure `Raft` core; then `_process` drains the core's Ready batches and
turns each into commands, honouring the ordering contract of core/raft.py:

1. `ready.messages` are sent at once (the leader's appends may go before it persists);
2. what must be durable (hard state, entries, a received snapshot) becomes one storage
   *persist group* of disk commands;
3. when that group — and every group before it — has completed, the batch's
   `messages_after_persist` (votes, append acknowledgements) are sent, its committed
   entries are applied to the state machine, client requests are answered, and
   `advance` is called. Batches with nothing to persist wait their turn too, so
   acknowledgements and applies stay in order.

A storage failure (EIO, ENOSPC) stalls persistence: the node retries the same group
every tick and never acknowledges anything that is not durable; it never reuses a log
index (the raft core assigns indexes, and a failed group is rewritten byte for byte).
Corrupt durable state makes the node refuse to start (`Halt`, naming file and offset).

Client requests are the small message set below; the wire protocol (a later layer)
maps onto them. A proposal is answered only once its entry is committed and applied;
if leadership is lost while it is in the log, it fails with `LeadershipLost` (outcome
unknown); if it never entered the log, with `NotLeader`.
"""

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Protocol

from raftlite.actors.contract import Client, Context, IoResult, NodeId, StatusRequest, StatusResponse
from raftlite.actors.raft_storage import RaftStorage
from raftlite.core.errors import LeadershipLost, NotLeader, ProposalDropped, RaftError
from raftlite.core.raft import Raft, RaftSettings, Ready, State
from raftlite.core.raft_log_format import COMMIT_HINT_FILE, StorageCorruption, encode_commit_hint, recover
from raftlite.core.raft_types import Configuration, Entry, EntryKind, Role, Snapshot

__all__ = [
    "AllowVoting", "ChangeMembership", "ClientError", "ClusterDescription", "DescribeCluster", "DigestStateMachine", "Propose", "ProposeResult", "RaftNode", "Read",
    "ReadResult", "StateMachine", "StatusRequest", "StatusResponse", "TransferLeadership", "settings_from_config",
]


# -- client requests and answers ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Propose:
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Read:
    """A linearizable read of the state machine (ReadIndex)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeMembership:
    node: NodeId
    role: Role | None  # None removes the node
    address: str | None = None   # where the node is reached ("host:port"); kept if None
    must_be_new: bool = False    # refuse if the node is already a member (dqlite's ADD)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferLeadership:
    target: NodeId


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowVoting:
    """The node's own join completed: from now on it may vote and campaign (see
    `RaftNode.start_voting_blocked`). Answered with a ProposeResult."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeCluster:
    """Who leads and who is a member, as this node knows it (not linearizable: any node
    answers at once, as dqlite's LEADER and CLUSTER requests do)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterDescription:
    node_id: NodeId
    leader: NodeId | None
    term: int
    members: tuple[tuple[NodeId, Role, str | None], ...]   # (node, role, address)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeResult:
    index: int
    term: int
    result: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadResult:
    index: int
    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientError:
    """A refusal: `kind` is "not-leader" (certainly not applied), "leadership-lost"
    (outcome unknown) or "dropped" (refused before entering the log)."""

    kind: str
    message: str
    leader: NodeId | None = None


def _client_error(error: RaftError) -> ClientError:
    if isinstance(error, NotLeader):
        return ClientError(kind="not-leader", message=str(error), leader=error.leader_hint)
    if isinstance(error, LeadershipLost):
        return ClientError(kind="leadership-lost", message=str(error))
    return ClientError(kind="dropped", message=str(error))


# -- the state machine interface -------------------------------------------------------------


class StateMachine(Protocol):
    def apply(self, entry: Entry) -> Any: ...

    def read(self) -> Any: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class DigestStateMachine:
    """A minimal real state machine for raft tests: a running digest of applied commands.

    Two replicas that applied the same commands in the same order hold the same digest;
    its `read` returns (count, digest)."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = 0

    def apply(self, entry: Entry) -> Any:
        if entry.kind != EntryKind.NORMAL:
            return None
        self.count += 1
        # FNV-1a over the previous digest and the command: order-sensitive and cheap.
        value = self.digest ^ 0xCBF29CE484222325
        for byte in entry.data:
            value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        self.digest = value
        return self.count

    def read(self) -> Any:
        return (self.count, self.digest)

    def snapshot(self) -> bytes:
        return self.count.to_bytes(8, "little") + self.digest.to_bytes(8, "little")

    def restore(self, data: bytes) -> None:
        self.count = int.from_bytes(data[:8], "little")
        self.digest = int.from_bytes(data[8:16], "little")


def settings_from_config(config) -> RaftSettings:
    """Raft counts time in ticks; one tick is one heartbeat interval."""
    tick_ms = config.heartbeat_interval_ms
    return RaftSettings(
        election_ticks=max(2, round(config.election_timeout_ms / tick_ms)),
        heartbeat_ticks=1,
        append_entries_max=config.append_entries_max,
        append_batch_bytes_max=config.append_batch_bytes_max,
        inflight_appends_max=config.inflight_appends_max,
        inflight_bytes_max=config.inflight_bytes_max,
        snapshot_chunk_bytes=config.snapshot_chunk_bytes,
        promotion_timeout_ticks=max(1, round(config.promotion_timeout_ms / tick_ms)),
    )


@dataclass(slots=True)
class _Batch:
    ready: Ready
    group: int | None = None   # storage persist group, once submitted
    durable: bool = False      # persisted (or nothing to persist)


@dataclass(slots=True)
class _PendingProposal:
    client: Client
    term: int
    response: Any = None   # sent once committed; None: a ProposeResult


class RaftNode:
    """An actor. `bootstrap` is the initial configuration of a new cluster: a founding
    node whose storage is empty writes it as log entry 1. A node joining an existing
    cluster gets None and learns its configuration from the leader."""

    TICK = "tick"
    # Set (before start) for a node that starts with empty storage to join a cluster:
    # it neither votes nor campaigns until AllowVoting (its own join completed). A node
    # emptied by accident and started under its old id thus never votes with a log that
    # forgot what its earlier votes vouched for.
    start_voting_blocked = False
    RETRY_STORAGE = "retry-storage"
    APPLY = "apply"
    COMMIT_HINT_WRITTEN = "commit-hint-written"   # token of the hint's (unsynced) write
    # Work applied per handler before yielding to other inputs.
    APPLY_STEP_BYTES = 1 << 20

    def __init__(
        self,
        *,
        bootstrap: Configuration | None,
        state_machine_factory: Callable[[], StateMachine] = DigestStateMachine,
        settings: RaftSettings | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.state_machine_factory = state_machine_factory
        self.settings_override = settings
        self.raft: Raft | None = None
        # Observers for the simulator's checkers (None outside tests).
        self.on_apply: Callable[[NodeId, Entry], None] | None = None
        self.on_acknowledge: Callable[[NodeId, Entry], None] | None = None

    # -- handlers ------------------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.batches: deque[_Batch] = deque()
        self.unsubmitted: list[_Batch] = []   # batches waiting for the next persist group
        self.group_in_flight: int | None = None
        self.next_group = 0
        # Snapshots this node took itself are persisted beside the log, not in line with
        # it (see RaftStorage.persist_own_snapshot): one at a time, the newest waiting.
        self.own_snapshot_in_flight: tuple[Hashable, Snapshot] | None = None
        self.own_snapshot_waiting: Snapshot | None = None
        self.proposals: dict[int, _PendingProposal] = {}   # log index -> waiting client
        self.pending_membership: dict[int, Client] = {}     # CONFIG index -> client
        # Linearizable reads waiting: client -> [read index once known, minimum applied
        # index, prepared response or None (then the state machine is read)].
        self.reads: dict[Client, list] = {}
        self.read_contexts = 0
        self.applied_since_snapshot = 0
        self.applied_bytes_since_snapshot = 0
        self.last_snapshot_bytes = 0
        self.apply_queue: deque = deque()          # committed entries (and snapshots) to apply
        # A big entry, snapshot or restore under way: (step generator, what to do
        # with its result when it ends).
        self.step_in_progress: tuple[Any, Callable[[Any], None]] | None = None
        self.snapshot_in_progress: int | None = None   # its index, while one is taken
        self.storage_errors = 0
        self.leading = False
        self.promotion_client: tuple[Client, NodeId] | None = None
        self.commit_hint_written = 0
        self.commit_hint_in_flight = False
        try:
            recovered = recover(ctx.files)
        except StorageCorruption as error:
            ctx.halt(f"refusing to start: {error}")
            return
        self.storage = RaftStorage(ctx, recovered, segment_bytes_max=ctx.config.segment_bytes_max)
        self.state_machine = self.state_machine_factory()
        self.applied_index = 0
        if recovered.snapshot is not None:
            self.state_machine.restore(recovered.snapshot.data)
            self.applied_index = recovered.snapshot.meta.index
            self.last_snapshot_bytes = len(recovered.snapshot.data)
        self.raft = Raft(
            ctx.node_id,
            settings=self.settings_override or settings_from_config(ctx.config),
            rng=ctx.rng,
            configuration=Configuration(),
            hard_state=recovered.hard_state,
            snapshot=recovered.snapshot,
            entries=recovered.entries,
            commit=recovered.commit_hint,
        )
        self.storage.skip_fsync = self.raft.settings.unsafe.skip_fsync
        self.commit_hint_written = recovered.commit_hint
        never_initialized = recovered.snapshot is None and not recovered.entries and recovered.hard_state.term == 0
        if never_initialized and self.bootstrap is not None:
            self.raft.bootstrap(self.bootstrap)
        self.raft.voting_blocked = self.start_voting_blocked
        ctx.set_timer(self.TICK, ctx.config.heartbeat_interval_ms)
        self._process()

    def on_message(self, src: NodeId | Client, message: Any) -> None:
        if self.raft is None:
            return
        self.raft.storage_failing = self.storage.failed
        if isinstance(src, Client):
            self._handle_client(src, message)
        else:
            self.raft.step(src, message)
        self._process()

    def on_timer(self, timer: Hashable) -> None:
        if timer == self.APPLY:
            self._complete_batches()
            self._process()
            return
        if timer == self.TICK:
            self.raft.storage_failing = self.storage.failed
            self.raft.tick()
            self._check_promotion()
            self.ctx.set_timer(self.TICK, self.ctx.config.heartbeat_interval_ms)
            if self.storage.failed:
                self.storage.retry()
            self._process()
            self._write_commit_hint()   # once a tick at most: it is only a hint

    def on_io_done(self, token: Hashable, result: IoResult) -> None:
        if token == self.COMMIT_HINT_WRITTEN:
            self.commit_hint_in_flight = False   # a failed hint write is simply retried later
            return
        completed = self.storage.on_io_done(token, result)
        if not result.ok and self.storage.failed:
            self.storage_errors += 1   # (an expected ENOENT, e.g. deleting a leftover, is not one)
        self._groups_completed(completed)
        self._submit_persist()
        self._complete_batches()
        self._process()

    def _groups_completed(self, groups) -> None:
        for group in groups:
            if self.own_snapshot_in_flight is not None and group == self.own_snapshot_in_flight[0]:
                self._own_snapshot_durable()
                continue
            if group == self.group_in_flight:
                self.group_in_flight = None
            for batch in self.batches:
                if batch.group == group:
                    batch.durable = True

    def _submit_persist(self) -> None:
        """Group commit: one persist group (one fsync per file) in flight at a time;
        everything that became due meanwhile goes into the next group together."""
        if self.group_in_flight is not None or not self.unsubmitted:
            return
        first = self.unsubmitted[0]
        if first.ready.snapshot is not None:
            merged = [first]   # snapshots go alone
        else:
            merged = []
            for batch in self.unsubmitted:
                if batch.ready.snapshot is not None:
                    break
                if merged and batch.ready.truncate_after is not None:
                    # A truncation (a new term's leader replacing entries) starts a group
                    # of its own: merged with earlier Readys it could cut entries they
                    # acknowledge, and their acknowledgements, sent after the merged
                    # persist, would vouch for entries that never became durable.
                    break
                merged.append(batch)
        del self.unsubmitted[: len(merged)]
        group = self.next_group
        self.next_group += 1
        for batch in merged:
            batch.group = group
        self.group_in_flight = group
        snapshot = merged[0].ready.snapshot
        hard_state, truncate_after, entries = _merge_persistence([batch.ready for batch in merged])
        done = self.storage.persist(
            group, hard_state=hard_state, entries=entries, truncate_after=truncate_after, snapshot=snapshot,
        )
        if snapshot is not None:
            # Segments the snapshot covers, beyond the trailing entries the core keeps for
            # slow followers, go once the snapshot is durable (the deletes queue behind it).
            self.storage.compact(min(self.raft.log_base_index, snapshot.meta.index))
        self._groups_completed(done)

    # -- clients -------------------------------------------------------------------------

    def _handle_client(self, client: Client, message: Any) -> None:
        raft = self.raft
        try:
            match message:
                case Propose(data=data):
                    index = raft.propose(data)
                    self.proposals[index] = _PendingProposal(client, raft.term)
                case Read():
                    self._start_read(client)
                case ChangeMembership(node=node, role=role, address=address, must_be_new=must_be_new):
                    if must_be_new and raft.configuration.role(node) is not None:
                        raise ProposalDropped(f"node {node} is already a member")
                    index = raft.change_membership(node, role, address)
                    if raft.pending_promotion is not None:
                        # Answered when the node finally becomes a voter (or gives up).
                        self.promotion_client = (client, node)
                    elif index is not None:
                        self.pending_membership[index] = client
                case TransferLeadership(target=target):
                    raft.transfer_leadership(target)
                    self.ctx.reply(client, ProposeResult(index=0, term=raft.term, result="transfer started"))
                case StatusRequest():
                    self.ctx.reply(client, StatusResponse(node_id=self.ctx.node_id, status=self._full_status()))
                case AllowVoting():
                    raft.voting_blocked = False
                    self.ctx.reply(client, ProposeResult(index=0, term=raft.term, result="voting allowed"))
                case DescribeCluster():
                    configuration = raft.configuration
                    self.ctx.reply(client, ClusterDescription(
                        node_id=self.ctx.node_id, leader=raft.leader, term=raft.term,
                        members=tuple((node, role, configuration.address(node)) for node, role in configuration.members),
                    ))
                case _:
                    self.ctx.reply(client, ClientError(kind="bad-request", message=f"unknown request {type(message).__name__}"))
        except RaftError as error:
            self.reads.pop(client, None)
            self.ctx.reply(client, self._refusal(error))

    def _start_read(self, client: Client, *, response: Any = None, min_index: int = 0) -> None:
        """Answer `client` once a ReadIndex round that starts now confirms leadership and
        the state machine has applied up to the read index (and `min_index`). The
        response is given, or computed then by calling it, or (None) a ReadResult."""
        if self.raft.settings.unsafe.read_without_read_index:
            # A deliberate bug for tests: answered at once from the node's own state, with
            # no round confirming leadership and no wait for what it ran but has not
            # committed (a deposed leader serves stale or never-committed data).
            self.reads[client] = [0, 0, response]
            self._answer_reads()
            return
        self.read_contexts += 1
        self.reads[client] = [None, min_index, response]
        self.raft.read_index((client, self.read_contexts))

    def _refusal(self, error: RaftError) -> Any:
        """The answer a client gets for a refusal (the database node answers in SQL terms)."""
        return _client_error(error)

    # -- the Ready loop ------------------------------------------------------------------

    def _process(self) -> None:
        raft = self.raft
        if raft is None:
            return
        while raft.has_ready():
            ready = raft.ready()
            for dst, message in ready.messages:
                self.ctx.send(dst, message)
            batch = _Batch(ready, durable=not ready.needs_persist())
            self.batches.append(batch)
            if not batch.durable:
                self.unsubmitted.append(batch)
            self._submit_persist()
            self._complete_batches()
        leading = raft.state == State.LEADER
        if self.leading and not leading:
            self._fail_pending(LeadershipLost("leadership lost: the outcome is unknown"))
            self._on_leadership_lost()
        self.leading = leading

    def _on_leadership_lost(self) -> None:
        """Subclasses drop leader-only state here (pending work has been failed)."""

    def _complete_batches(self) -> None:
        while self.batches and self.batches[0].durable:
            ready = self.batches.popleft().ready
            own_id = self.ctx.node_id
            for dst, message in ready.messages_after_persist:
                if dst == own_id:
                    self.raft.step(own_id, message)   # a candidate's own vote, now durable
                else:
                    self.ctx.send(dst, message)
            if ready.snapshot is not None:
                self.apply_queue.append(ready.snapshot)
            self.apply_queue.extend(ready.committed_entries)
            self.raft.advance(ready)
            for read_state in ready.read_states:
                self._read_index_known(read_state.context, read_state.index)
        self._apply_some()
        self._answer_reads()
        self._maybe_snapshot()

    def _write_commit_hint(self) -> None:
        """Record the commit index for the next start (one write in flight, no fsync).
        The applied index is the one to record: an entry is applied only once it is
        committed and durable here (a snapshot only once persisted), so after a crash
        the log still holds every entry the hint names. `raft.commit` can run ahead of
        what this node's disk holds, e.g. while a received snapshot is being written."""
        known = self.applied_index
        if self.commit_hint_in_flight or known <= self.commit_hint_written:
            return
        self.commit_hint_in_flight = True
        self.commit_hint_written = known
        self.ctx.write(self.COMMIT_HINT_WRITTEN, COMMIT_HINT_FILE, 0, encode_commit_hint(known))

    def _apply_some(self) -> None:
        """Apply committed work in bounded steps: at most about APPLY_STEP_BYTES per
        handler, a big entry, snapshot or restore in several (if the state machine can),
        then yield to the other inputs (heartbeats keep flowing) and go on from a
        zero-delay timer. While a snapshot is being taken nothing is applied: the
        snapshot must show the state at exactly its index."""
        budget = self.APPLY_STEP_BYTES
        applies_during_snapshot = getattr(self.state_machine, "applies_during_snapshot", None)
        while budget > 0 and (self.step_in_progress is not None or (self.apply_queue and self.snapshot_in_progress is None)):
            if (self.snapshot_in_progress is not None and self.apply_queue and applies_during_snapshot is not None
                    and isinstance(self.apply_queue[0], Entry) and applies_during_snapshot(self.apply_queue[0])):
                # An entry that leaves what the snapshot reads untouched need not wait
                # for it (on a leader: its own transactions, already in its WAL).
                item = self.apply_queue.popleft()
                result = self.state_machine.apply(item)
                budget -= max(1, len(item.data))
                self._applied(item, result)
                continue
            if self.step_in_progress is not None:
                steps, finish = self.step_in_progress
                try:
                    budget -= next(steps)
                except StopIteration as finished:
                    self.step_in_progress = None
                    finish(finished.value)
                continue
            item = self.apply_queue.popleft()
            if isinstance(item, Snapshot):
                restore_steps = getattr(self.state_machine, "restore_steps", None)
                if restore_steps is not None and len(item.data) > self.APPLY_STEP_BYTES:
                    self.step_in_progress = (restore_steps(item.data, self.APPLY_STEP_BYTES),
                                             lambda _, snapshot=item: self._restored(snapshot))
                    continue
                self.state_machine.restore(item.data)
                self._restored(item)
                budget -= len(item.data)
                continue
            apply_steps = getattr(self.state_machine, "apply_steps", None)
            if apply_steps is not None and len(item.data) > self.APPLY_STEP_BYTES:
                self.step_in_progress = (apply_steps(item, self.APPLY_STEP_BYTES),
                                         lambda result, entry=item: self._applied(entry, result))
                continue
            result = self.state_machine.apply(item)
            budget -= max(1, len(item.data))
            self._applied(item, result)
        flush = getattr(self.state_machine, "flush", None)
        if flush is not None:
            flush()   # a state machine may batch the writes of one step (the database does)
        if self.step_in_progress is not None or (self.apply_queue and self.snapshot_in_progress is None):
            self.ctx.set_timer(self.APPLY, 0.0)

    def _restored(self, snapshot: Snapshot) -> None:
        self.applied_index = snapshot.meta.index
        self.last_snapshot_bytes = len(snapshot.data)
        self._fail_proposals_up_to(snapshot.meta.index)

    def _applied(self, entry: Entry, result: Any) -> None:
        self.applied_index = entry.index
        self.applied_since_snapshot += 1
        self.applied_bytes_since_snapshot += len(entry.data)
        if self.on_apply is not None:
            self.on_apply(self.ctx.node_id, entry)
        proposal = self.proposals.pop(entry.index, None)
        if proposal is not None:
            if proposal.term == entry.term:
                if self.on_acknowledge is not None:
                    self.on_acknowledge(self.ctx.node_id, entry)
                response = proposal.response
                if response is None:
                    response = ProposeResult(index=entry.index, term=entry.term, result=result)
                self.ctx.reply(proposal.client, response)
            else:
                # Another leader's entry took the index: ours was certainly not applied.
                self.ctx.reply(proposal.client, self._refusal(NotLeader(self.raft.leader)))
        client = self.pending_membership.pop(entry.index, None)
        if client is not None:
            self.ctx.reply(client, ProposeResult(index=entry.index, term=entry.term, result="membership changed"))
        if entry.kind == EntryKind.CONFIG and self.promotion_client is not None:
            client, node = self.promotion_client
            if Configuration.decode(entry.data).role(node) == Role.VOTER:
                self.promotion_client = None
                self.ctx.reply(client, ProposeResult(index=entry.index, term=entry.term, result="membership changed"))

    def _check_promotion(self) -> None:
        if self.promotion_client is not None and self.raft.pending_promotion is None:
            client, node = self.promotion_client
            if self.raft.configuration.role(node) != Role.VOTER:
                # The core gave up (or leadership moved): the node never caught up in time.
                self.promotion_client = None
                self.ctx.reply(client, ClientError(kind="dropped", message=f"node {node} did not catch up in time"))

    def _fail_proposals_up_to(self, index: int) -> None:
        for proposal_index in [i for i in self.proposals if i <= index]:
            self.ctx.reply(self.proposals.pop(proposal_index).client, self._refusal(LeadershipLost("outcome unknown")))

    def _fail_pending(self, error: RaftError) -> None:
        for index in sorted(self.proposals):
            self.ctx.reply(self.proposals[index].client, self._refusal(error))
        self.proposals.clear()
        for index in sorted(self.pending_membership):
            self.ctx.reply(self.pending_membership[index], self._refusal(error))
        self.pending_membership.clear()
        for client in self.reads:
            self.ctx.reply(client, self._refusal(NotLeader(self.raft.leader)))
        self.reads.clear()
        if self.promotion_client is not None:
            self.ctx.reply(self.promotion_client[0], self._refusal(error))
            self.promotion_client = None

    def _read_index_known(self, context: Any, index: int) -> None:
        client, _ = context
        waiting = self.reads.get(client)
        if waiting is not None and waiting[0] is None:
            waiting[0] = index

    def _answer_reads(self) -> None:
        if not self.reads:
            return
        applied = self.applied_index
        for client in [c for c, (index, minimum, _) in self.reads.items() if index is not None and applied >= max(index, minimum)]:
            response = self.reads[client][2]
            if callable(response):
                # Computed now, from the state machine as applied: not while an entry
                # or a restore is half written.
                if self.step_in_progress is not None and self.snapshot_in_progress is None:
                    continue
                response = response()
            del self.reads[client]
            if response is None:
                response = ReadResult(index=applied, value=self.state_machine.read())
            self.ctx.reply(client, response)

    def _maybe_snapshot(self) -> None:
        if not self._snapshot_due() or self.snapshot_in_progress is not None:
            return
        can_snapshot = getattr(self.state_machine, "can_snapshot", None)
        if can_snapshot is not None and not can_snapshot():
            return  # e.g. a leader whose WAL holds transactions not yet committed
        if self.apply_queue or self.step_in_progress is not None:
            return  # the state machine is between entries only when nothing is pending
        index = self.applied_index
        snapshot_steps = getattr(self.state_machine, "snapshot_steps", None)
        if snapshot_steps is None:
            self._snapshot_taken(index, self.state_machine.snapshot())
            return
        self.snapshot_in_progress = index
        self.step_in_progress = (snapshot_steps(self.APPLY_STEP_BYTES), lambda data: self._snapshot_taken(index, data))
        self._apply_some()

    def _snapshot_due(self) -> bool:
        """Enough entries, and a log since the last snapshot at least
        `snapshot_log_ratio` times as big as that snapshot (or `snapshot_log_bytes_max`,
        whichever is smaller): taking a snapshot reads and writes the whole state, so
        its cost stays a fixed fraction of what was written since, however big the
        database grows, while the log held in memory stays bounded."""
        config = self.ctx.config
        wanted = min(config.snapshot_log_ratio * self.last_snapshot_bytes, config.snapshot_log_bytes_max)
        return self.applied_since_snapshot >= config.snapshot_threshold_entries and self.applied_bytes_since_snapshot >= wanted

    def _snapshot_taken(self, index: int, data: bytes) -> None:
        self.snapshot_in_progress = None
        self.applied_since_snapshot = 0
        self.applied_bytes_since_snapshot = 0
        self.last_snapshot_bytes = len(data)
        snapshot = self.raft.compact(index, data, self.ctx.config.snapshot_trailing_entries)
        if snapshot is not None:
            self.own_snapshot_waiting = snapshot   # replaces an older one still waiting
            self._persist_own_snapshot()

    def _persist_own_snapshot(self) -> None:
        if self.own_snapshot_in_flight is not None or self.own_snapshot_waiting is None:
            return
        snapshot, self.own_snapshot_waiting = self.own_snapshot_waiting, None
        group = self.next_group
        self.next_group += 1
        self.own_snapshot_in_flight = (group, snapshot)
        self._groups_completed(self.storage.persist_own_snapshot(group, snapshot))

    def _own_snapshot_durable(self) -> None:
        """The snapshot is durable under its final name: the segments it covers (beyond
        the trailing entries the core keeps for slow followers) may go."""
        _, snapshot = self.own_snapshot_in_flight
        self.own_snapshot_in_flight = None
        self.storage.compact(min(self.raft.log_base_index, snapshot.meta.index))
        self._persist_own_snapshot()

    def _abandon_snapshot(self) -> None:
        """Drop a snapshot being taken (its files are about to change under it)."""
        if self.snapshot_in_progress is not None:
            self.step_in_progress[0].close()
            self.step_in_progress = None
            self.snapshot_in_progress = None

    # -- introspection -------------------------------------------------------------------

    def _full_status(self) -> dict[str, Any]:
        """`status()` and what an operator asks for: the members and, on a leader, how
        far each follower lags (in entries)."""
        status = dict(self.status())
        raft = self.raft
        if raft is None:
            return status
        status["applied_index"] = self.applied_index
        status["members"] = [
            {"id": node, "role": Role(role).name.lower(), "address": raft.configuration.address(node)}
            for node, role in raft.configuration.members
        ]
        if raft.state == State.LEADER:
            status["followers"] = {
                str(node): {"match": progress.match, "lag": raft.last_index - progress.match}
                for node, progress in sorted(raft.progress.items()) if node != self.ctx.node_id
            }
        return status

    def status(self) -> Mapping[str, Any]:
        if self.raft is None:
            return {}
        status = self.raft.status()
        status["storage_errors"] = self.storage_errors
        return status


def _merge_persistence(readys: list[Ready]) -> tuple[Any, int | None, tuple[Entry, ...]]:
    """What several Readys, in order, ask to persist, as one write: the newest hard
    state, the deepest truncation of what is already on disk, and the entries that
    survive later truncations."""
    hard_state = None
    truncate_after: int | None = None
    entries: list[Entry] = []
    for ready in readys:
        if ready.hard_state is not None:
            hard_state = ready.hard_state
        if ready.truncate_after is not None:
            cut = ready.truncate_after
            if entries and cut >= entries[0].index - 1:
                entries = [entry for entry in entries if entry.index <= cut]   # cut what is not on disk yet
            else:
                entries = []
                truncate_after = cut if truncate_after is None else min(truncate_after, cut)
        entries.extend(ready.entries)
    return hard_state, truncate_after, tuple(entries)
