"""A database replica's files: committed entries written into SQLite's main files, and
the snapshots of those files.

Theory of operation
-------------------
The raft log is the truth; the SQLite files in the node's scratch directory are derived
state, rebuilt from the latest snapshot plus the committed log after any restart.
Followers write each committed entry's pages straight into their main files, with no
connection open (actors/database_files.py). The leader's own transactions are already in
its WAL when they commit (it ran them: actors/sql_service.py): they are not written
again, but counted as `only_in_wal` until a checkpoint moves them into the main files,
or until a lost leadership drops the WAL and `rewrite_wal_only_entries` writes them from
the log.

A snapshot is every database's main file, as a msgpack map {name: [page size, image]};
taking one, restoring one and applying a big entry all work in bounded steps (see
actors/state_machine.py). This is the state-machine half of the database component
(`DatabaseStateMachine`, actors/database.py).
"""

from typing import Any

import msgpack

from ..core.frames import CommittedTransaction, CreateDatabase, creates_database, decode_database_entry
from ..core.raft_log_format import msgpack_bin_header
from ..core.raft_types import Entry, EntryKind
from . import database_files
from .state_machine import Steps

__all__ = ["DatabaseReplica"]


class DatabaseReplica:
    """Applies committed database entries to the files of one node; takes and restores
    their snapshots."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.databases: dict[str, int] = {}     # name -> page size
        # Entries this node ran as leader and holds in its WAL: index -> term.
        self.executed_here: dict[int, int] = {}
        # Committed entries that are only in the WAL (not in the main files).
        self.only_in_wal: list[Entry] = []
        # The WAL was dropped (leadership lost) and `only_in_wal` is still to be written
        # into the main files: `flush` finishes it (a full disk may interrupt it).
        self.wal_dropped = False
        # Transactions applied but not yet written, per database: written together by
        # `flush` (the raft node calls it at the end of each apply step), before
        # anything else touches the files.
        self.unwritten: dict[str, list[CommittedTransaction]] = {}

    def path(self, database: str) -> str:
        return f"{self.directory}/{database}.sqlite"

    def apply(self, entry: Entry) -> Any:
        if entry.kind != EntryKind.NORMAL:
            return None
        if self.executed_here.pop(entry.index, None) == entry.term:
            self.only_in_wal.append(entry)   # the leader's own: already in its WAL
            if creates_database(entry.data):
                decoded = decode_database_entry(entry.data)
                self.databases[decoded.database] = decoded.page_size
            return None
        decoded = decode_database_entry(entry.data)
        if isinstance(decoded, CreateDatabase):
            self._write(decoded)
        else:
            self.unwritten.setdefault(decoded.database, []).append(decoded)
        return None

    def applies_during_snapshot(self, entry: Entry) -> bool:
        """The leader's own transactions stay in its WAL when applied: a snapshot being
        read from the main files does not see them, so they need not wait for it (the
        checkpoint that would move them there does wait)."""
        return entry.kind != EntryKind.NORMAL or self.executed_here.get(entry.index) == entry.term

    def flush(self) -> None:
        """Write what `apply` held back (see database_files.apply_transactions), then
        what a dropped WAL held. An OSError (ENOSPC, EIO) leaves whatever is not written
        to be written by the next `flush`: the raft node calls it again once the disk
        takes data (writing a page image twice is harmless)."""
        unwritten, self.unwritten = self.unwritten, {}
        for database in list(unwritten):
            try:
                database_files.apply_transactions(self.path(database), unwritten[database])
            except OSError:
                # The disk refused (ENOSPC, EIO): what is not written stays to be written,
                # ahead of anything applied later (the raft node retries after a probe;
                # writing a page image twice is harmless).
                self.unwritten = unwritten
                raise
            del unwritten[database]
        while self.wal_dropped and self.only_in_wal:
            self._write_now(decode_database_entry(self.only_in_wal[0].data))
            self.only_in_wal.pop(0)
        self.wal_dropped = False

    def apply_steps(self, entry: Entry, step_bytes: int) -> Steps:
        """`apply` of a big entry, as a generator yielding the bytes written per step."""
        if entry.kind != EntryKind.NORMAL or self.executed_here.get(entry.index) == entry.term:
            return self.apply(entry)
        self.flush()
        decoded = decode_database_entry(entry.data)
        if isinstance(decoded, CreateDatabase):
            self._write(decoded)
            return None
        pages_per_step = max(1, step_bytes // decoded.page_size)
        yield from database_files.apply_transaction_steps(self.path(decoded.database), decoded, pages_per_step)
        return None

    def _write(self, decoded) -> None:
        self.flush()
        self._write_now(decoded)

    def _write_now(self, decoded) -> None:
        if isinstance(decoded, CreateDatabase):
            database_files.create_database(self.path(decoded.database), decoded)
            self.databases[decoded.database] = decoded.page_size
        else:
            database_files.apply_transaction(self.path(decoded.database), decoded)

    def rewrite_wal_only_entries(self) -> None:
        """After the WAL was dropped: put the committed entries it held into the files.
        What ran here and is not committed is forgotten first: it is in no file now."""
        self.executed_here.clear()
        self.wal_dropped = True
        self.flush()

    def checkpointed(self) -> None:
        self.only_in_wal.clear()

    def read(self) -> Any:
        return sorted(self.databases)

    def main_files_complete(self) -> bool:
        """The main files hold every entry applied, and nothing run here awaits its
        commit: what a snapshot reads from them is exactly the applied state."""
        return not self.only_in_wal and not self.executed_here and not self.unwritten

    def snapshot(self) -> bytes:
        return _drive(self.snapshot_steps(1 << 62))

    def snapshot_steps(self, step_bytes: int) -> Steps:
        """The snapshot (every database's main file) as a generator yielding the bytes
        read per step; the node applies nothing and checkpoints nothing until it ends."""
        # The msgpack map {name: [page size, image]}, framed by hand around the image's
        # pieces so that the database is copied once (a packb of the joined image would
        # copy it twice more).
        self.flush()
        packer = msgpack.Packer(use_bin_type=True)
        parts = [packer.pack_map_header(len(self.databases))]
        for name, page_size in sorted(self.databases.items()):
            pieces = yield from database_files.snapshot_database_steps(self.path(name), step_bytes)
            size = sum(len(piece) for piece in pieces)
            parts += [packer.pack(name), packer.pack_array_header(2), packer.pack(page_size), msgpack_bin_header(size)]
            parts += pieces
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        _drive(self.restore_steps(data, 1 << 62))

    def restore_steps(self, data: bytes, step_bytes: int) -> Steps:
        """Replace every database by the snapshot's images, in bounded steps."""
        self.unwritten = {}   # replaced wholesale: what was held back is covered
        images = msgpack.unpackb(data, raw=False)
        for name in list(self.databases):
            if name not in images:
                database_files.delete_database(self.path(name))
        self.databases = {}
        self.only_in_wal.clear()
        self.executed_here.clear()
        for name, (page_size, image) in sorted(images.items()):
            yield from database_files.restore_database_steps(self.path(name), image, step_bytes)
            self.databases[name] = page_size


def _drive(steps) -> Any:
    """Run a step generator to its end in one go; its return value."""
    try:
        while True:
            next(steps)
    except StopIteration as finished:
        return finished.value
