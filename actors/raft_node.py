"""The raft node actor: the raft core, its durable storage, and the state machine it
drives, behind the actor contract.

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
The state machine's storage failing (SQLite's WAL, a follower writing pages: ENOSPC,
EIO) stalls applying instead: the entry is applied again, from the start, once a probe
write to the disk succeeds. Either way the node is *storage-failing*, one state: it
neither campaigns nor votes, a leader hands leadership to its most caught-up voter
(at once for the state machine's failure, after `storage_failure_step_down_ms` for the
log's), and `status` and an `Event` say so.
Corrupt durable state makes the node refuse to start (`Halt`, naming file and offset).

The application is a component, not a subclass: a `StateMachine` (actors/state_machine.py)
made at every start by `state_machine_factory`. The node calls it through that one
interface — apply (in bounded steps for big entries), snapshot, restore, leadership
gained and lost, the client requests and timers the node does not know, the answer to a
refusal — and gives it a `_Host` handle for what it may ask back (propose and be
answered once applied, ReadIndex reads, snapshots, stepping down). The replicated SQLite
of actors/database.py is such a component; so is `DigestStateMachine`, the default.

Client requests are the small message set of actors/raft_requests.py; the wire protocol
(a later layer) maps onto them. A proposal is answered only once its entry is committed
and applied; if leadership is lost while it is in the log, it fails with
`LeadershipLost` (outcome unknown); if it never entered the log, with `NotLeader`.
"""

import errno
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

from ..core.errors import LeadershipLost, NotLeader, ProposalDropped, RaftError
from ..core.invariant import present
from ..core.raft import REMOVED_FROM_CLUSTER, Raft, RaftSettings, Ready, State, UnsafeSwitches
from ..core.raft_log_format import COMMIT_HINT_FILE, StorageCorruption, encode_commit_hint, recover
from ..core.raft_types import Configuration, Entry, EntryKind, Role, Snapshot
from .contract import Client, Context, IoResult, NodeId, StatusRequest, StatusResponse
from .raft_requests import (
    AllowVoting, ChangeMembership, ClientError, ClusterDescription, DescribeCluster, Propose, ProposeResult, Read,
    ReadResult, TransferLeadership,
)
from .raft_storage import RaftStorage
from .state_machine import DigestStateMachine, StateMachine, StateMachineHost

# The request and answer types (actors/raft_requests.py) and the state machine interface
# (actors/state_machine.py) are named here too: callers import them from this module.
__all__ = [
    "AllowVoting", "ChangeMembership", "ClientError", "ClusterDescription", "DescribeCluster", "DigestStateMachine", "Propose", "ProposeResult", "RaftNode", "Read",
    "ReadResult", "StateMachine", "StatusRequest", "StatusResponse", "TransferLeadership", "settings_from_config",
]


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
        storage_failure_step_down_ticks=max(1, round(config.storage_failure_step_down_ms / tick_ms)),
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


@dataclass(slots=True)
class _WaitingRead:
    """A linearizable read waiting for its ReadIndex round and for the state machine to
    catch up; `response` is its prepared answer, a callable computing it, or None (then
    the state machine is read)."""

    index: int | None      # the read index, once the round confirmed leadership
    min_index: int         # what the answer may depend on must be applied too
    response: Any


class RaftNode:
    """An actor driving a `StateMachine` component (actors/state_machine.py).
    `bootstrap` is the initial configuration of a new cluster: a founding node whose
    storage is empty writes it as log entry 1. A node joining an existing cluster gets
    None and learns its configuration from the leader. `state_machine_factory` makes the
    component at every start."""

    TICK = "tick"
    # Set (before start) for a node that starts with empty storage to join a cluster:
    # it neither votes nor campaigns until AllowVoting (its own join completed). A node
    # emptied by accident and started under its old id thus never votes with a log that
    # forgot what its earlier votes vouched for.
    start_voting_blocked = False
    RETRY_STORAGE = "retry-storage"
    APPLY = "apply"
    # A write that tells whether the disk takes data again after the state machine's
    # storage failed (its file is deleted once written).
    STORAGE_PROBE = "storage-probe"
    STORAGE_PROBE_DELETED = "storage-probe-deleted"
    STORAGE_PROBE_FILE = "storage-probe"
    STORAGE_PROBE_BYTES = 1 << 20
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
        self.state_machine: StateMachine | None = None
        self.halted = False   # stopped because it is no longer a member (see _halt_if_removed)
        # Observers for the simulator's checkers (None outside tests).
        self.on_apply: Callable[[NodeId, Entry], None] | None = None
        self.on_acknowledge: Callable[[NodeId, Entry], None] | None = None

    # `raft` and `state_machine` stay None until `on_start` makes them (and `raft` for
    # good if the storage is corrupt: the node halts). `on_message` and the status calls
    # check; every other handler runs only after they exist, and reaches them through these.

    @property
    def _core(self) -> Raft:
        return present(self.raft, "raft node handler ran before on_start made the raft core")

    @property
    def _machine(self) -> StateMachine:
        return present(self.state_machine, "raft node handler ran before on_start made the state machine")

    # -- handlers ------------------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        self.ctx = ctx
        # The component starts first: it may prepare what its restore needs (the
        # database clears its scratch directory, whose files are derived state).
        machine = self.state_machine = self.state_machine_factory()
        machine.start(_Host(self), ctx)
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
        self.reads: dict[Client, _WaitingRead] = {}   # linearizable reads waiting
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
        self.storage_failing_since_ms: float | None = None   # reported as failing since (an Event)
        # The errno name while the state machine's storage is failing (cleared by a probe).
        self.machine_storage_error: str | None = None
        self.storage_probe_in_flight = False
        self.step_item: Entry | Snapshot | None = None   # the entry or snapshot `step_in_progress` applies
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
        self.applied_index = 0
        if recovered.snapshot is not None:
            machine.restore(recovered.snapshot.data)
            self.applied_index = recovered.snapshot.meta.index
            self.last_snapshot_bytes = len(recovered.snapshot.data)
        raft = self.raft = Raft(
            ctx.node_id,
            settings=self.settings_override or settings_from_config(ctx.config),
            rng=ctx.rng,
            configuration=Configuration(),
            hard_state=recovered.hard_state,
            snapshot=recovered.snapshot,
            entries=recovered.entries,
            commit=recovered.commit_hint,
        )
        self.storage.skip_fsync = raft.settings.unsafe.skip_fsync
        self.commit_hint_written = recovered.commit_hint
        never_initialized = recovered.snapshot is None and not recovered.entries and recovered.hard_state.term == 0
        if never_initialized and self.bootstrap is not None:
            raft.bootstrap(self.bootstrap)
        raft.voting_blocked = self.start_voting_blocked
        ctx.set_timer(self.TICK, ctx.config.heartbeat_interval_ms)
        self._process()

    def on_message(self, src: NodeId | Client, message: Any) -> None:
        raft = self.raft
        if raft is None:
            return
        raft.storage_failing = self._storage_failing()
        if self.halted:
            return
        if isinstance(src, Client):
            self._handle_client(src, message)
        else:
            raft.step(src, message)
            if self._halt_if_removed():
                return
        self._process()
        self._halt_if_removed()

    def _halt_if_removed(self) -> bool:
        """Stop the node (once) when it is no longer a member: the leader said so, or it
        led the commit of its own removal and has applied it (so the client that asked
        has its answer). Nothing it could do would be heard; the runtime reports why."""
        raft = self.raft
        if raft is None or self.halted:
            return self.halted
        reason = raft.removed
        removal = raft.removed_self_at
        if reason is None and removal is not None and self.applied_index >= removal:
            reason = (f"{REMOVED_FROM_CLUSTER}: this node, as leader in term {raft.term}, committed its "
                      f"own removal (entry {removal})")
        if reason is None:
            return False
        self.halted = True
        self.ctx.halt(reason)
        return True

    def on_timer(self, timer: Hashable) -> None:
        if self.halted:
            return
        if timer == self.APPLY:
            self._complete_batches()
            self._process()
            self._halt_if_removed()
            return
        if timer == self.TICK:
            raft = self._core
            raft.storage_failing = self._storage_failing()
            raft.tick()
            if raft.stepped_aside:
                self._report_step_aside(f"the raft log's storage has been failing ({self.storage.error}) for "
                                        f"{self.ctx.config.storage_failure_step_down_ms / 1000:g} s")
            self._check_promotion()
            self.ctx.set_timer(self.TICK, self.ctx.config.heartbeat_interval_ms)
            if self.storage.failed:
                self.storage.retry()
            self._probe_storage()
            self._process()
            self._write_commit_hint()   # once a tick at most: it is only a hint
            self._halt_if_removed()
            return
        if self._machine.on_timer(timer):
            self._process()

    def on_io_done(self, token: Hashable, result: IoResult) -> None:
        if self.halted:
            return
        if token == self.COMMIT_HINT_WRITTEN:
            self.commit_hint_in_flight = False   # a failed hint write is simply retried later
            return
        if token in (self.STORAGE_PROBE, self.STORAGE_PROBE_DELETED):
            self._storage_probe_done(token, result)
            return
        completed = self.storage.on_io_done(token, result)
        if not result.ok and self.storage.failed:
            self.storage_errors += 1   # (an expected ENOENT, e.g. deleting a leftover, is not one)
        self._report_storage()
        self._groups_completed(completed)
        self._submit_persist()
        self._complete_batches()
        self._process()
        self._halt_if_removed()

    def _storage_failing(self) -> bool:
        return self.storage.failing or self.machine_storage_error is not None

    def _machine_storage_failed(self, errno_name: str, what: str) -> None:
        """The state machine's storage failed (`what` says where): stop applying and, as
        leader, hand leadership over now: this node cannot run or apply writes until a
        probe shows the disk takes data again (`_probe_storage`)."""
        self.storage_errors += 1
        raft = self._core
        first = self.machine_storage_error is None
        self.machine_storage_error = errno_name
        if self.storage_failing_since_ms is None:
            self.storage_failing_since_ms = self.ctx.now_ms()
        raft.storage_failing = True
        if first:
            disk_full = errno_name == "ENOSPC"
            self.ctx.event(
                "disk-full" if disk_full else "storage-failing",
                f"storage failing: {what} failed with {errno_name}" + (" (the disk is full)" if disk_full else "")
                + "; applying stalls, and this node neither campaigns nor votes, until a test write succeeds",
                level="error", errno=errno_name)
        if raft.state == State.LEADER:
            raft.step_aside()
            self._report_step_aside(f"{what} failed with {errno_name}")

    def _probe_storage(self) -> None:
        """Once the state machine's storage has failed for `storage_failure_step_down_ms`
        (a hold-down, so a node whose disk is still nearly full does not take leadership
        back at once), write STORAGE_PROBE_BYTES each tick until a write succeeds."""
        if self.machine_storage_error is None or self.storage_probe_in_flight:
            return
        since = present(self.storage_failing_since_ms, "machine storage failing with no start time")
        if self.ctx.now_ms() - since < self.ctx.config.storage_failure_step_down_ms:
            return
        self.storage_probe_in_flight = True
        self.ctx.write(self.STORAGE_PROBE, self.STORAGE_PROBE_FILE, 0, bytes(self.STORAGE_PROBE_BYTES), durable=True)

    def _storage_probe_done(self, token: Hashable, result: IoResult) -> None:
        if token == self.STORAGE_PROBE_DELETED:
            return   # a failed delete leaves a file the next probe overwrites
        self.storage_probe_in_flight = False
        if not result.ok or self.machine_storage_error is None:
            return   # still failing: the next tick probes again
        self.ctx.delete(self.STORAGE_PROBE_DELETED, self.STORAGE_PROBE_FILE)
        self.machine_storage_error = None
        self._report_storage()
        self._core.storage_failing = self._storage_failing()
        self.ctx.set_timer(self.APPLY, 0.0)   # resume applying where it stalled

    def _report_storage(self) -> None:
        """One event when the log's storage starts failing, one when it recovers (not one
        per retry: `RaftStorage.failing` stays set across retries)."""
        storage = self.storage
        if self.machine_storage_error is not None:
            return   # reported by _machine_storage_failed; recovery is reported once both are healthy
        if storage.failing and self.storage_failing_since_ms is None:
            self.storage_failing_since_ms = self.ctx.now_ms()
            disk_full = storage.error == "ENOSPC"
            self.ctx.event(
                "disk-full" if disk_full else "storage-failing",
                f"storage failing: writing the raft log failed with {storage.error}"
                + (" (the disk is full)" if disk_full else "")
                + "; retrying every heartbeat; this node neither campaigns nor votes until a retry succeeds"
                + (", and as leader it steps down" if self.raft is not None and self.raft.state == State.LEADER else ""),
                level="error", errno=storage.error)
        elif not self._storage_failing() and self.storage_failing_since_ms is not None:
            failed_for_ms = self.ctx.now_ms() - self.storage_failing_since_ms
            self.storage_failing_since_ms = None
            self.ctx.event("storage-recovered",
                           f"storage recovered: writes succeed again, after {failed_for_ms / 1000:.1f} s of failures",
                           level="info", failed_for_ms=round(failed_for_ms))

    def _report_step_aside(self, why: str) -> None:
        raft = self._core
        raft.stepped_aside = False
        target = raft.stepped_aside_to
        self.ctx.event(
            "leader-stepped-down",
            f"stepped down as leader of term {raft.term}: {why}; "
            + (f"asked node {target}, the most caught-up voter, to campaign now" if target is not None
               else "no other voter to hand leadership to"),
            level="error", term=raft.term, target=target)

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
            self.storage.compact(min(self._core.log_base_index, snapshot.meta.index))
        self._groups_completed(done)

    # -- clients -------------------------------------------------------------------------

    def _handle_client(self, client: Client, message: Any) -> None:
        """Raft's own requests (actors/raft_requests.py); the rest go to the state machine."""
        try:
            handled = self._handle_raft_request(client, message)
        except RaftError as error:
            self.reads.pop(client, None)
            self.ctx.reply(client, self._refusal(error))
            return
        if not handled and not self._machine.handle_request(client, message):
            self.ctx.reply(client, ClientError(kind="bad-request", message=f"unknown request {type(message).__name__}"))

    def _handle_raft_request(self, client: Client, message: Any) -> bool:
        """Handle one of raft's requests; False if `message` is none of them."""
        raft = self._core
        match message:
            case Propose(data=data):
                index = raft.propose(data)
                self.proposals[index] = _PendingProposal(client, raft.term)
            case Read():
                self._start_read(client)
            case ChangeMembership(node=node, role=role, address=address, must_be_new=must_be_new):
                configuration = raft.configuration
                current = configuration.role(node)
                if must_be_new and current is not None:
                    where = configuration.address(node)
                    raise ProposalDropped(f"node {node} is already a member ({Role(current).name.lower()}"
                                          + (f" at {where})" if where else ")"))
                pending = raft.pending_promotion
                if (pending is not None and pending[0] == node and role == current and address is None
                        and raft.cancel_promotion(node)):
                    # Assigning the node the role it has: the explicit cancel of its promotion.
                    self._answer_promotion_ended()
                    self.ctx.reply(client, ProposeResult(
                        index=0, term=raft.term, result=f"promotion of node {node} to voter cancelled"))
                    return True
                change_index = raft.change_membership(node, role, address)
                self._answer_promotion_ended()   # a waiting promotion this change took the place of
                if raft.pending_promotion is not None:
                    # Answered when the node finally becomes a voter (or gives up).
                    self.promotion_client = (client, node)
                elif change_index is not None:
                    self.pending_membership[change_index] = client
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
                return False
        return True

    def _start_read(self, client: Client, *, response: Any = None, min_index: int = 0) -> None:
        """Answer `client` once a ReadIndex round that starts now confirms leadership and
        the state machine has applied up to the read index (and `min_index`). The
        response is given, or computed then by calling it, or (None) a ReadResult."""
        if self._core.settings.unsafe.read_without_read_index:
            # A deliberate bug for tests: answered at once from the node's own state, with
            # no round confirming leadership and no wait for what it ran but has not
            # committed (a deposed leader serves stale or never-committed data).
            self._answer_from_applied_state(client, response)
            return
        self.read_contexts += 1
        self.reads[client] = _WaitingRead(None, min_index, response)
        self._core.read_index((client, self.read_contexts))

    def _answer_from_applied_state(self, client: Client, response: Any) -> None:
        """Answer `client` from what is applied, with no ReadIndex round (see `_start_read`)."""
        self.reads[client] = _WaitingRead(0, 0, response)
        self._answer_reads()

    def _refusal(self, error: RaftError) -> Any:
        """The answer a client gets for a refusal (the state machine's: the database
        answers in SQL terms)."""
        return self._machine.refusal(error)

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
            self.leading = False
            try:
                self._machine.leadership_lost()
            except OSError as error:
                self._apply_failed(error, "writing the committed pages of the dropped WAL")
        elif leading and not self.leading:
            self.leading = True
            self._machine.leadership_gained()

    def _complete_batches(self) -> None:
        while self.batches and self.batches[0].durable:
            ready = self.batches.popleft().ready
            own_id = self.ctx.node_id
            for dst, message in ready.messages_after_persist:
                if dst == own_id:
                    self._core.step(own_id, message)   # a candidate's own vote, now durable
                else:
                    self.ctx.send(dst, message)
            if ready.snapshot is not None:
                self.apply_queue.append(ready.snapshot)
            self.apply_queue.extend(ready.committed_entries)
            self._core.advance(ready)
            for read_state in ready.read_states:
                self._read_index_known(read_state.context, read_state.index)
        self._apply_some()
        self._answer_reads()
        self._maybe_snapshot()
        self._machine.progressed()

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
        snapshot must show the state at exactly its index.

        The state machine's storage failing (an OSError such as ENOSPC or EIO) stalls
        applying: the entry is put back, to be applied again from its start (applying
        is idempotent) once a probe write succeeds."""
        if self.machine_storage_error is not None:
            return
        try:
            self._apply_within_budget()
        except OSError as error:
            self._apply_failed(error, "applying committed entries")

    def _apply_failed(self, error: OSError, what: str) -> None:
        """The state machine's files refused a write: stall (see `_apply_some`)."""
        if error.errno is None or error.errno == errno.ENOENT:
            raise error   # not the disk refusing data: a missing file is a broken invariant
        if self.step_item is not None:
            self.apply_queue.appendleft(self.step_item)
            self.step_in_progress, self.step_item = None, None
        elif self.snapshot_in_progress is not None:
            self.step_in_progress = None
            self.snapshot_in_progress = None   # taken again once due and healthy
        self._machine_storage_failed(errno.errorcode.get(error.errno, str(error.errno)), f"{what} ({error.strerror})")

    def _apply_within_budget(self) -> None:
        budget = self.APPLY_STEP_BYTES
        machine = self._machine
        while budget > 0 and (self.step_in_progress is not None or (self.apply_queue and self.snapshot_in_progress is None)):
            if (self.snapshot_in_progress is not None and self.apply_queue
                    and isinstance(self.apply_queue[0], Entry) and machine.applies_during_snapshot(self.apply_queue[0])):
                # An entry that leaves what the snapshot reads untouched need not wait
                # for it (on a leader: its own transactions, already in its WAL).
                item = self.apply_queue[0]
                result = machine.apply(item)
                self.apply_queue.popleft()   # only once applied: a failed apply is retried
                budget -= max(1, len(item.data))
                self._applied(item, result)
                continue
            if self.step_in_progress is not None:
                steps, finish = self.step_in_progress
                try:
                    budget -= next(steps)
                except StopIteration as finished:
                    self.step_in_progress, self.step_item = None, None
                    finish(finished.value)
                continue
            item = self.apply_queue[0]
            big = machine.works_in_steps and len(item.data) > self.APPLY_STEP_BYTES
            if isinstance(item, Snapshot):
                if big:
                    self.step_item = self.apply_queue.popleft()
                    self.step_in_progress = (machine.restore_steps(item.data, self.APPLY_STEP_BYTES),
                                             lambda _, snapshot=item: self._restored(snapshot))
                    continue
                machine.restore(item.data)
                self.apply_queue.popleft()
                self._restored(item)
                budget -= len(item.data)
                continue
            if big:
                self.step_item = self.apply_queue.popleft()
                self.step_in_progress = (machine.apply_steps(item, self.APPLY_STEP_BYTES),
                                         lambda result, entry=item: self._applied(entry, result))
                continue
            result = machine.apply(item)
            self.apply_queue.popleft()
            budget -= max(1, len(item.data))
            self._applied(item, result)
        machine.flush()   # a state machine may batch the writes of one step (the database does)
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
                self.ctx.reply(proposal.client, self._refusal(NotLeader(self._core.leader)))
        client = self.pending_membership.pop(entry.index, None)
        if client is not None:
            self.ctx.reply(client, ProposeResult(index=entry.index, term=entry.term, result="membership changed"))
        if entry.kind == EntryKind.CONFIG and self.promotion_client is not None:
            client, node = self.promotion_client
            if Configuration.decode(entry.data).role(node) == Role.VOTER:
                self.promotion_client = None
                self.ctx.reply(client, ProposeResult(index=entry.index, term=entry.term, result="membership changed"))

    def _check_promotion(self) -> None:
        self._answer_promotion_ended()
        if self.promotion_client is not None and self._core.pending_promotion is None:
            client, node = self.promotion_client
            if self._core.configuration.role(node) is None:
                # The node left the cluster while its promotion waited.
                self.promotion_client = None
                self.ctx.reply(client, ClientError(
                    kind="dropped", message=f"node {node} is no longer a member: it was not promoted"))

    def _answer_promotion_ended(self) -> None:
        """Tell the client waiting for a promotion that the core gave it up, and why."""
        raft = self._core
        ended, raft.promotion_ended = raft.promotion_ended, None
        if ended is None or self.promotion_client is None or self.promotion_client[1] != ended[0]:
            return
        node, match, last, why = ended
        client, _ = self.promotion_client
        self.promotion_client = None
        lag = f"its match index {match}, the leader's last index {last}"
        if why == "timeout":
            timeout_ms = raft.settings.promotion_timeout_ticks * self.ctx.config.heartbeat_interval_ms
            message = f"node {node} did not catch up within {timeout_ms:g} ms: {lag}"
        else:
            message = f"promotion of node {node} to voter {why} ({lag})"
        self.ctx.reply(client, ClientError(kind="dropped", message=message))

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
            self.ctx.reply(client, self._refusal(NotLeader(self._core.leader)))
        self.reads.clear()
        if self.promotion_client is not None:
            self.ctx.reply(self.promotion_client[0], self._refusal(error))
            self.promotion_client = None

    def _read_index_known(self, context: Any, index: int) -> None:
        client, _ = context
        waiting = self.reads.get(client)
        if waiting is not None and waiting.index is None:
            waiting.index = index

    def _answer_reads(self) -> None:
        if not self.reads:
            return
        applied = self.applied_index
        for client in [c for c, waiting in self.reads.items()
                       if waiting.index is not None and applied >= max(waiting.index, waiting.min_index)]:
            response = self.reads[client].response
            if callable(response):
                # Computed now, from the state machine as applied: not while an entry
                # or a restore is half written.
                if self.step_in_progress is not None and self.snapshot_in_progress is None:
                    continue
                response = response()
            del self.reads[client]
            if response is None:
                response = ReadResult(index=applied, value=self._machine.read())
            self.ctx.reply(client, response)

    def _maybe_snapshot(self) -> None:
        if not self._snapshot_due() or self.snapshot_in_progress is not None:
            return
        if not self._machine.can_snapshot():
            return  # e.g. a leader whose WAL holds transactions not yet committed
        if self.apply_queue or self.step_in_progress is not None:
            return  # the state machine is between entries only when nothing is pending
        index = self.applied_index
        if not self._machine.works_in_steps:
            self._snapshot_taken(index, self._machine.snapshot())
            return
        self.snapshot_in_progress = index
        self.step_in_progress = (self._machine.snapshot_steps(self.APPLY_STEP_BYTES),
                                 lambda data: self._snapshot_taken(index, data))
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
        snapshot = self._core.compact(index, data, self.ctx.config.snapshot_trailing_entries)
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
        _, snapshot = present(self.own_snapshot_in_flight, "own snapshot durable with none in flight")
        self.own_snapshot_in_flight = None
        self.storage.compact(min(self._core.log_base_index, snapshot.meta.index))
        self._persist_own_snapshot()

    def _abandon_snapshot(self) -> None:
        """Drop a snapshot being taken (its files are about to change under it)."""
        if self.snapshot_in_progress is not None:
            # The steps in progress are the snapshot's: nothing else runs while it is taken.
            steps, _ = present(self.step_in_progress, "snapshot in progress without its steps")
            steps.close()
            self.step_in_progress = None
            self.snapshot_in_progress = None

    def release_resources(self) -> None:
        """The process is going away: the state machine lets go of its open files."""
        if self.state_machine is not None:
            self.state_machine.close()

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
        raft = self.raft
        if raft is None:
            return {}
        status = raft.status()
        status["storage_errors"] = self.storage_errors
        status["storage_failing"] = self._storage_failing()
        status["disk_full"] = (self.machine_storage_error == "ENOSPC"
                               or (self.storage.failing and self.storage.error == "ENOSPC"))
        status.update(self._machine.status())
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


class _Host(StateMachineHost):
    """What the raft node lets its state machine ask of it (see StateMachineHost in
    actors/state_machine.py): a small handle, so the component never touches the node's
    own bookkeeping."""

    __slots__ = ("_node",)

    def __init__(self, node: RaftNode) -> None:
        self._node = node

    @property
    def applied_index(self) -> int:
        return self._node.applied_index

    @property
    def term(self) -> int:
        return self._node._core.term

    @property
    def unsafe(self) -> UnsafeSwitches:
        return self._node._core.settings.unsafe

    def is_leader(self) -> bool:
        return self._node._core.state == State.LEADER

    def leader_caught_up(self) -> bool:
        raft = self._node._core
        return raft.state == State.LEADER and raft.term_at(raft.commit) == raft.term and self._node.applied_index >= raft.commit

    def transferring_leadership(self) -> bool:
        return self._node._core.transfer_target is not None

    def propose(self, data: bytes) -> int:
        return self._node._core.propose(data)

    def answer_when_applied(self, index: int, client: Client, response: Any) -> None:
        node = self._node
        node.proposals[index] = _PendingProposal(client, node._core.term, response)

    def start_read(self, client: Client, *, response: Any = None, min_index: int = 0) -> None:
        self._node._start_read(client, response=response, min_index=min_index)

    def answer_from_applied_state(self, client: Client, response: Any) -> None:
        self._node._answer_from_applied_state(client, response)

    def cancel_read(self, client: Client, answer_is: type) -> bool:
        reads = self._node.reads
        waiting = reads.get(client)
        if waiting is None or not isinstance(waiting.response, answer_is):
            return False
        del reads[client]
        return True

    def storage_failed(self, errno_name: str, what: str) -> None:
        self._node._machine_storage_failed(errno_name, what)

    @property
    def snapshot_in_progress(self) -> int | None:
        return self._node.snapshot_in_progress

    def snapshot_due(self) -> bool:
        return self._node._snapshot_due()

    def take_snapshot_if_due(self) -> None:
        self._node._maybe_snapshot()

    def abandon_snapshot(self) -> None:
        self._node._abandon_snapshot()

    def process(self) -> None:
        self._node._process()
