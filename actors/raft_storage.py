"""Durable raft storage, actor side: persist requests become ordered disk commands.

Theory of operation
-------------------
`RaftStorage` owns a node's raft files (format: `raftlite.core.raft_log_format`). The
raft node hands it *persist groups* (a hard state, entries to append, a truncation point,
a snapshot) and learns, through `on_io_done`, which groups are durable. It never performs
I/O itself: each group becomes a list of operations, emitted as disk commands on the
`Context` with tokens ("storage", n).

Ordering. The runtime may complete commands in any order, so the order that matters for
crash safety is enforced here, by holding operations back until what they depend on has
completed:

- operations on the same file run one at a time, in issue order; the two metadata files
  count as one file (version n + 1 must not be written before version n is durable, or a
  torn n + 1 next to an old n - 1 would lose an acknowledged version);
- Truncate, Rename, Delete and a new segment's header are *fences*: they wait for every
  earlier operation (but an own snapshot's, see `persist_own_snapshot`, unless on the
  same files) and every later one waits for them. Rare, and they are exactly where
  cross-file order matters (a segment is deleted before an earlier one is cut; a snapshot
  is durable under its final name before the segments it covers go; a segment is synced
  before the next one gets its first byte).

Because a write to a segment waits for the previous Sync of that segment, a segment never
holds more than one record that is not yet durable. A crash therefore damages at most its
last record, which is what lets recovery call a bad record with nothing valid after it a
torn tail (docs/architecture.md §3) and everything else corruption.

Truncation never makes an entry that stays in the log non-durable, even for a moment: at a
batch boundary the segment is cut (atomic); inside a batch the segment's kept entries are
written to `segment-tmp` durably and renamed over it (as C raft does). That rewrite needs
the kept entries, so the writer keeps references to the log's `Entry` values (shared with
the raft core, so no bytes are copied).

Failures. A group completes when all its operations succeeded and every earlier group
has completed; completions are reported in issue order. On any error (EIO, ENOSPC) nothing
is dropped or reordered: `failed` becomes true, nothing new is issued, and `retry()`
re-issues the failed group and every group after it, in order, from the first operation
that is not yet durable: the same bytes at the same offsets (the bytes were fixed when the
group was made), never new content at an index a failed write may have reached. Writes
that completed but were not covered by a successful Sync are written again (after a
failed fsync the kernel may have dropped their pages); what is already durable (a synced
write, a durable write, a truncate, rename or delete) is not redone, so a retry never
turns durable bytes back into volatile ones.
"""

from dataclasses import dataclass, field, replace
from typing import Any, Hashable, Sequence

from .contract import Context, Delete, IoResult, Rename, Sync, Truncate, Write
from ..core.invariant import invariant, present
from ..core.raft_log_format import (
    SEGMENT_TEMPORARY_FILE,
    SNAPSHOT_TEMPORARY_FILE,
    BatchLayout,
    Recovered,
    encode_batch,
    encode_batch_pieces,
    encoded_entry_bytes,
    encode_metadata,
    encode_segment_header,
    encode_snapshot_pieces,
    metadata_file_name,
    segment_file_name,
    snapshot_file_name,
)
from ..core.raft_types import Entry, HardState, Snapshot

__all__ = ["RaftStorage", "SEGMENT_BYTES_MAX_DEFAULT", "TOKEN_TAG"]

TOKEN_TAG = "storage"
SEGMENT_BYTES_MAX_DEFAULT = 8 << 20
_METADATA_RESOURCE = "metadata"  # both metadata files: their writes are strictly ordered
_SNAPSHOT_RESOURCE = "snapshots"  # the scratch and final snapshot files: strictly ordered
SNAPSHOT_WRITE_BYTES_MAX = 1 << 20
# A batch record above this is written in pieces of this size, one write after the
# other: each write's copy into the page cache happens inside io_submit, on the node's
# event loop, so one 63 MB write held it for 0.1-0.3 s. Smaller batches (almost all) are
# one write, as before.
BATCH_WRITE_BYTES_MAX = 4 << 20

# An operation's life. DONE is a completed write not yet covered by a Sync: it must be
# written again if the group is retried (after a failed fsync the kernel may have dropped
# the dirty pages). DURABLE is everything else that completed: it is never re-issued, so a
# retry never puts durable bytes back into the volatile state a crash can garble.
_WAITING, _IN_FLIGHT, _DONE, _DURABLE = 0, 1, 2, 3


class _InternalGroup:
    """Group id of work the caller did not ask for (start-up repairs, compaction)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


@dataclass(slots=True, eq=False)
class _Operation:
    command: Write | Sync | Truncate | Rename | Delete  # token filled in at each issue
    group: "_Group"
    resources: frozenset[str]
    fence: bool
    state: int = _WAITING


@dataclass(slots=True, eq=False)
class _Group:
    group_id: Hashable
    internal: bool
    independent: bool = False   # reported when done, not in line (an own snapshot)
    operations: list[_Operation] = field(default_factory=list)
    remaining: int = 0


@dataclass(slots=True, eq=False)
class _Segment:
    file: str
    first_index: int
    header_end: int
    batches: list[BatchLayout]
    size: int

    @property
    def last_index(self) -> int:
        return self.batches[-1].last_index if self.batches else self.first_index - 1


class RaftStorage:
    """Turns persist groups into disk commands; reports durable groups in issue order."""

    # A deliberate bug for tests (UnsafeSwitches.skip_fsync): no Sync is issued, so a
    # group counts as done once its writes complete, durable or not.
    skip_fsync = False

    def __init__(self, ctx: Context, recovered: Recovered, segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT) -> None:
        invariant(segment_bytes_max > 0, "segment_bytes_max must be positive")
        self._ctx = ctx
        self.segment_bytes_max = segment_bytes_max
        self._token_serial = 0
        self._groups: list[_Group] = []            # incomplete groups, in issue order
        self._pending: list[_Operation] = []       # operations not yet done, in issue order
        self._in_flight: dict[Hashable, _Operation] = {}
        self._retry_requested = False
        self.failed = False
        self.error: str | None = None              # the errno name of the latest failure
        # `failed` clears at every retry; `failing` stays set from a failure until the
        # operation that failed succeeds on a retry: what the node reports and acts on.
        self.failing = False
        self._failed_operation: _Operation | None = None

        self._metadata_version = recovered.metadata_version
        self._hard_state = recovered.hard_state
        snapshot = recovered.snapshot
        self._snapshot_index = snapshot.meta.index if snapshot is not None else 0
        self._snapshot_term = snapshot.meta.term if snapshot is not None else 0
        self._snapshot_file = recovered.snapshot_file
        self._segments = [
            _Segment(layout.file, layout.first_index, layout.header_end, list(layout.batches), layout.size)
            for layout in recovered.segments
        ]
        # References to the log's entries, for rewriting a batch cut by a truncation.
        self._entries: list[Entry] = list(recovered.entries)
        self._last_index = recovered.last_index
        self._entries_first = self._entries[0].index if self._entries else self._last_index + 1

        # Cut torn tails and delete obsolete files before anything else touches them.
        # Tracked as a group like any other so a failure here is retried like any other.
        group = _Group(_InternalGroup("recovery repairs"), internal=True)
        for name, size in recovered.repairs:
            self._add(group, Truncate(token=None, file=name, size=size), fence=True)
        for name in recovered.stale_files:
            self._add(group, Delete(token=None, file=name), fence=True)
        self._submit(group)

    # -- what the raft node reads ------------------------------------------------------------

    @property
    def last_index(self) -> int:
        """Index of the last entry requested (durable or not); the snapshot's when the log is empty."""
        return self._last_index

    @property
    def first_index(self) -> int:
        """Index of the first entry held in the log (last_index + 1 when it holds none)."""
        return self._entries_first

    @property
    def snapshot_index(self) -> int:
        return self._snapshot_index

    @property
    def snapshot_term(self) -> int:
        return self._snapshot_term

    @property
    def metadata_version(self) -> int:
        """Version counter of the newest hard state requested."""
        return self._metadata_version

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def segment_files(self) -> list[str]:
        return [segment.file for segment in self._segments]

    @property
    def log_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    @property
    def groups_in_flight(self) -> int:
        return sum(1 for group in self._groups if not group.internal)

    def entry(self, index: int) -> Entry | None:
        position = index - self._entries_first
        return self._entries[position] if 0 <= position < len(self._entries) else None

    def locate(self, file: str, offset: int) -> int | None:
        """The entry index stored at that byte of a segment; None for headers and other files.

        A flipped bit anywhere in a batch loses the whole batch (one checksum covers it);
        `batch_at` gives that range.
        """
        batch = self._batch_at(file, offset)
        return batch.entry_at(offset) if batch is not None else None

    def batch_at(self, file: str, offset: int) -> tuple[int, int] | None:
        """(first, last) index of the batch whose record holds that byte, or None."""
        batch = self._batch_at(file, offset)
        return (batch.first_index, batch.last_index) if batch is not None else None

    def _batch_at(self, file: str, offset: int) -> BatchLayout | None:
        for segment in self._segments:
            if segment.file != file:
                continue
            low, high = 0, len(segment.batches)
            while low < high:  # the last batch starting at or before offset
                middle = (low + high) // 2
                if segment.batches[middle].start <= offset:
                    low = middle + 1
                else:
                    high = middle
            if low and offset < segment.batches[low - 1].end:
                return segment.batches[low - 1]
            return None
        return None

    # -- requests ------------------------------------------------------------------------------

    def persist(
        self,
        group_id: Hashable,
        *,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        truncate_after: int | None = None,
        snapshot: Snapshot | None = None,
    ) -> list[Hashable]:
        """Make all of these durable as one group, applied in this order: discard entries
        after `truncate_after`, install `snapshot`, append `entries`, write `hard_state`.

        Returns [group_id] when the group has nothing to write and nothing is in flight
        before it (it is durable already); otherwise [] and the id comes from on_io_done.
        """
        group = _Group(group_id, internal=False)
        if truncate_after is not None:
            self._truncate_after(group, truncate_after)
        if snapshot is not None:
            self._install_snapshot(group, snapshot)
        if entries:
            self._append(group, entries)
        if hard_state is not None:
            self._metadata_version += 1
            self._hard_state = hard_state
            version = self._metadata_version
            self._add(
                group,
                Write(token=None, file=metadata_file_name(version), offset=0,
                      data=encode_metadata(version, hard_state), durable=True),
                resources=frozenset({_METADATA_RESOURCE}),
            )
        return self._submit(group)

    def persist_own_snapshot(self, group_id: Hashable, snapshot: Snapshot) -> list[Hashable]:
        """Make a snapshot this node took itself durable *beside* the log.

        Unlike `persist(snapshot=...)` (a leader's snapshot, which replaces the log and
        so must be in line with it), nothing else waits for this group: its operations
        are not fences, they only wait for one another, and its completion is reported
        when it happens, not in issue order. Appends go on meanwhile; the log still holds
        every entry the snapshot covers until `compact` is called after it is durable,
        so a crash at any point leaves a valid older state (the scratch file is removed
        at recovery). Measured before this: a 15 MB snapshot held every append for
        tens of milliseconds. When the snapshot covers the whole log it is persisted in
        line after all, as `persist` does (the log is then replaced)."""
        if snapshot.meta.index <= self._snapshot_index:
            return [group_id]   # a newer snapshot (a leader's) is already in place
        if snapshot.meta.index >= self._last_index:
            return self.persist(group_id, snapshot=snapshot)
        group = _Group(group_id, internal=False, independent=True)
        self._write_snapshot_file(group, snapshot, fence=False)
        return self._submit(group)

    def compact(self, index: int) -> None:
        """Delete closed segments whose entries are all <= index (covered by a snapshot)."""
        invariant(index <= self._snapshot_index,
                  f"compaction to {index} beyond the snapshot at {self._snapshot_index}")
        group = _Group(_InternalGroup(f"compact to {index}"), internal=True)
        while len(self._segments) > 1 and self._segments[0].last_index <= index:
            # Oldest first: what remains is always a suffix, still covered by the snapshot.
            doomed = self._segments.pop(0)
            self._add(group, Delete(token=None, file=doomed.file), fence=True)
            self._forget_entries_through(doomed.last_index)
        self._submit(group)

    def retry(self) -> None:
        """After a failure: re-issue, in order, every operation of the incomplete groups
        that is not yet durable (same bytes, same offsets). Deferred until nothing is in flight."""
        if not self.failed:
            return
        if self._in_flight:
            # Wait for what is still in flight, so no old operation can land after a new one.
            self._retry_requested = True
            return
        self._reissue()

    def on_io_done(self, token: Hashable, result: IoResult) -> list[Hashable]:
        """Record a completion; returns the ids of the groups now complete, in issue order."""
        operation = self._in_flight.pop(token, None)
        if operation is None:
            return []
        command = operation.command
        idempotent_miss = isinstance(command, Delete) and result.error == "ENOENT"
        if result.ok or idempotent_miss:
            if operation is self._failed_operation:
                self.failing, self._failed_operation = False, None
            volatile = isinstance(command, Write) and not command.durable
            operation.state = _DONE if volatile else _DURABLE
            operation.group.remaining -= 1
            if isinstance(command, Sync) or (isinstance(command, Write) and command.durable):
                self._mark_synced(command.file)
        else:
            operation.state = _WAITING
            self.failed = True
            self.error = result.error
            if not self.failing:
                self.failing, self._failed_operation = True, operation
        if self._retry_requested and not self._in_flight:
            self._reissue()
        else:
            self._pump()
        return self._collect_completed()

    def status(self) -> dict[str, Any]:
        return {
            "last_index": self._last_index,
            "snapshot_index": self._snapshot_index,
            "segments": len(self._segments),
            "groups_in_flight": self.groups_in_flight,
            "failed": self.failed,
            "failing": self.failing,
        }

    # -- turning requests into operations -------------------------------------------------------

    def _truncate_after(self, group: _Group, index: int) -> None:
        invariant(index >= self._snapshot_index,
                  f"truncation after {index} reaches below the snapshot at {self._snapshot_index}")
        if index >= self._last_index:
            return
        target = index + 1  # the first entry to discard
        # Later segments go first, newest first, so a crash leaves a prefix of the old log.
        while self._segments and self._segments[-1].first_index > target:
            self._add(group, Delete(token=None, file=self._segments.pop().file), fence=True)
        invariant(self._segments, f"no segment holds entry {target}")
        segment = self._segments[-1]
        position = next(i for i, batch in enumerate(segment.batches) if batch.last_index >= target)
        batch = segment.batches[position]
        if batch.first_index == target:
            # A batch boundary: cutting the file drops whole records and keeps every other byte.
            self._add(group, Truncate(token=None, file=segment.file, size=batch.start), fence=True)
            del segment.batches[position:]
            segment.size = batch.start
        else:
            self._rewrite_segment(group, segment, target)
        self._forget_entries_from(target)
        self._last_index = index

    def _rewrite_segment(self, group: _Group, segment: _Segment, target: int) -> None:
        """Replace `segment` by one holding its entries before `target`, atomically."""
        # Entries at or below the snapshot are not needed (and after a restart not held).
        first = max(segment.first_index, self._snapshot_index + 1)
        held = [self.entry(index) for index in range(first, target)]
        kept = [entry for entry in held if entry is not None]
        invariant(len(kept) == len(held), f"entries {first}..{target - 1} are not held")
        header = encode_segment_header(first)
        batch = encode_batch(kept) if kept else None
        content = header + (batch.record if batch is not None else b"")
        batches = [batch.layout(len(header), first)] if batch is not None else []
        name = segment_file_name(first)
        self._add(group, Delete(token=None, file=SEGMENT_TEMPORARY_FILE), fence=True)
        self._add(group, Write(token=None, file=SEGMENT_TEMPORARY_FILE, offset=0, data=content, durable=True),
                  resources=frozenset({SEGMENT_TEMPORARY_FILE}))
        self._add(group, Rename(token=None, source=SEGMENT_TEMPORARY_FILE, target=name), fence=True)
        if name != segment.file:
            # Starts later than the segment it replaces: the old one (and any before it) is
            # covered by the snapshot, which recovery treats as stale even before it is gone.
            for older in self._segments:
                self._add(group, Delete(token=None, file=older.file), fence=True)
            self._segments.clear()
            self._forget_entries_through(first - 1)
        else:
            self._segments.pop()
        self._segments.append(_Segment(name, first, len(header), batches, len(content)))

    def _install_snapshot(self, group: _Group, snapshot: Snapshot) -> None:
        index = snapshot.meta.index
        invariant(index > self._snapshot_index,
                  f"snapshot at {index} is not newer than the one at {self._snapshot_index}")
        self._write_snapshot_file(group, snapshot, fence=True)
        if index >= self._last_index:
            # The snapshot replaces the whole log; the next entry opens segment index + 1.
            while self._segments:
                self._add(group, Delete(token=None, file=self._segments.pop().file), fence=True)
            self._entries.clear()
            self._entries_first = index + 1
            self._last_index = index
        # Otherwise the log's entries after (and the trailing ones up to) the snapshot stay
        # until `compact`, so that slow followers can still be sent entries.

    def _write_snapshot_file(self, group: _Group, snapshot: Snapshot, *, fence: bool) -> None:
        """Write the snapshot to the scratch name in bounded pieces, sync it, rename it
        into place and delete the one it replaces. The pieces are views of the snapshot's
        bytes (no copy of a database-sized buffer) and each write is at most
        SNAPSHOT_WRITE_BYTES_MAX, so no single disk operation copies tens of MB at once."""
        index = snapshot.meta.index
        name = snapshot_file_name(index)
        resources = frozenset({_SNAPSHOT_RESOURCE})
        self._add(group, Delete(token=None, file=SNAPSHOT_TEMPORARY_FILE), fence=fence, resources=resources)
        offset = 0
        for piece in encode_snapshot_pieces(snapshot, SNAPSHOT_WRITE_BYTES_MAX):
            self._add(group, Write(token=None, file=SNAPSHOT_TEMPORARY_FILE, offset=offset, data=piece),
                      resources=resources)
            offset += len(piece)
        self._add(group, Sync(token=None, file=SNAPSHOT_TEMPORARY_FILE), resources=resources)
        self._add(group, Rename(token=None, source=SNAPSHOT_TEMPORARY_FILE, target=name), fence=fence, resources=resources)
        if self._snapshot_file is not None:
            self._add(group, Delete(token=None, file=self._snapshot_file), fence=fence, resources=resources)
        self._snapshot_index = index
        self._snapshot_term = snapshot.meta.term
        self._snapshot_file = name

    def _append(self, group: _Group, entries: Sequence[Entry]) -> None:
        for offset, entry in enumerate(entries):
            invariant(entry.index == self._last_index + 1 + offset,
                      f"entry {entry.index} does not follow {self._last_index + offset}")
        segment = self._segments[-1] if self._segments else None
        chunk: list[Entry] = []
        chunk_bytes = 0
        for entry in entries:
            entry_bytes = encoded_entry_bytes(entry)   # encoded (and copied) once, in _write_batch
            if segment is None:
                segment = self._open_segment(group, entry.index)
            elif (segment.batches or chunk) and segment.size + chunk_bytes + entry_bytes + 16 > self.segment_bytes_max:
                # Full: finish it (durable before the next segment's first byte).
                self._write_batch(group, segment, chunk)
                chunk, chunk_bytes = [], 0
                segment = self._open_segment(group, entry.index)
            chunk.append(entry)
            chunk_bytes += entry_bytes
        # `entries` is never empty (see persist), so the loop opened a segment if none was.
        self._write_batch(group, present(segment, "no segment to append to"), chunk)
        self._entries.extend(entries)
        if len(self._entries) == len(entries):
            self._entries_first = entries[0].index
        self._last_index = entries[-1].index

    def _open_segment(self, group: _Group, first_index: int) -> _Segment:
        header = encode_segment_header(first_index)
        segment = _Segment(segment_file_name(first_index), first_index, len(header), [], len(header))
        # A fence: the previous segment is synced before this one exists, so a closed
        # segment is always whole and only the newest can have a torn tail.
        self._add(group, Write(token=None, file=segment.file, offset=0, data=header, durable=True), fence=True)
        self._segments.append(segment)
        return segment

    def _write_batch(self, group: _Group, segment: _Segment, chunk: list[Entry]) -> None:
        if not chunk:
            return
        batch = encode_batch_pieces(chunk, BATCH_WRITE_BYTES_MAX)
        # One durable write (the runtime submits the write and its fsync together), not a
        # Write and then a Sync: one disk round trip and one completion per group. A big
        # batch's pieces before the last are plain writes; the last one's fsync covers them.
        offset = segment.size
        for number, piece in enumerate(batch.pieces, 1):
            last = number == len(batch.pieces)
            self._add(group, Write(token=None, file=segment.file, offset=offset, data=piece,
                                   durable=last and not self.skip_fsync))
            offset += len(piece)
        segment.batches.append(batch.layout(segment.size, chunk[0].index))
        segment.size += batch.record_bytes

    def _forget_entries_from(self, index: int) -> None:
        del self._entries[max(index - self._entries_first, 0):]

    def _forget_entries_through(self, index: int) -> None:
        drop = index + 1 - self._entries_first
        if drop > 0:
            del self._entries[:drop]
            self._entries_first = index + 1

    # -- issuing and completing -----------------------------------------------------------------

    def _add(self, group: _Group, command, *, resources: frozenset[str] | None = None, fence: bool = False) -> None:
        if self.skip_fsync and isinstance(command, Sync):
            return
        if resources is None:
            resources = frozenset(
                {command.source, command.target} if isinstance(command, Rename) else {command.file}
            )
        group.operations.append(_Operation(command, group, resources, fence))

    def _submit(self, group: _Group) -> list[Hashable]:
        group.remaining = len(group.operations)
        if not group.operations and all(earlier.independent for earlier in self._groups):
            # Nothing to write and nothing before it to wait for: durable already.
            return [] if group.internal else [group.group_id]
        self._groups.append(group)
        self._pending.extend(group.operations)
        self._pump()
        return []

    def _pump(self) -> None:
        """Issue every waiting operation whose predecessors allow it."""
        if self.failed:
            return
        self._pending = [operation for operation in self._pending if operation.state in (_WAITING, _IN_FLIGHT)]
        busy: set[str] = set()
        earlier_incomplete = False   # an earlier operation of the log (not of an own snapshot)
        for operation in self._pending:
            if operation.state == _IN_FLIGHT:
                if operation.fence:
                    return
                busy |= operation.resources
                earlier_incomplete = earlier_incomplete or not operation.group.independent
                continue
            if operation.fence:
                # Waits for everything earlier, except an own snapshot's work on files
                # the fence does not touch.
                if not earlier_incomplete and not operation.resources & busy:
                    self._issue(operation)
                return
            if not operation.resources & busy:
                self._issue(operation)
            busy |= operation.resources
            earlier_incomplete = earlier_incomplete or not operation.group.independent

    def _issue(self, operation: _Operation) -> None:
        self._token_serial += 1
        token = (TOKEN_TAG, self._token_serial)
        operation.state = _IN_FLIGHT
        self._in_flight[token] = operation
        self._ctx.out.append(replace(operation.command, token=token))

    def _mark_synced(self, file: str) -> None:
        # Writes to a file are issued only after its earlier operations completed, so
        # every completed write to it is older than this Sync and now durable. (Only a
        # Write that was not durable is ever _DONE: every other command completes _DURABLE.)
        for group in self._groups:
            for operation in group.operations:
                command = operation.command
                if operation.state == _DONE and isinstance(command, Write) and command.file == file:
                    operation.state = _DURABLE

    def _reissue(self) -> None:
        self.failed = False
        self._retry_requested = False
        self._pending = []
        for group in self._groups:
            for operation in group.operations:
                if operation.state == _DURABLE:
                    continue
                if operation.state == _DONE:
                    group.remaining += 1
                operation.state = _WAITING
                self._pending.append(operation)
        self._pump()

    def _collect_completed(self) -> list[Hashable]:
        """Groups done, in issue order, except that an independent group neither waits
        for the ones before it nor holds back the ones after it."""
        completed = []
        kept = []
        blocked = False
        for group in self._groups:
            if group.remaining == 0 and (group.independent or not blocked):
                if not group.internal:
                    completed.append(group.group_id)
            else:
                kept.append(group)
                blocked = blocked or not group.independent
        self._groups = kept
        return completed
