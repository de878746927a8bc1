"""Capture what each SQLite transaction commits, as page images (docs/architecture.md §4).

Theory of operation
-------------------
`CaptureVfs` is an apsw VFS that inherits the default VFS: every file it opens is the
default VFS's file, so locking and the WAL's shared memory pass straight through and
several connections on one database work as usual. For a database registered with
`open_leader_connection`, the file object of its `-wal` file also reports each write to
the database's `Capture`. One `Capture` per database, shared by every connection to it:
SQLite's WAL write lock serializes writers, so the writes the capture sees are one
ordered stream whichever connection made them.

The WAL is a 32-byte header followed by frames; frame n (1-based) sits at
`32 + (n - 1) * (24 + page_size)` and is a 24-byte header (page number, database size
after commit, salt-1, salt-2, checksum-1, checksum-2, big-endian u32s) followed by the
page image. SQLite writes a new frame as two writes (header, then image). The capture
keeps, for every frame of the transaction in progress, the latest header and image
written there (the bytes objects apsw hands over, not copies). It does not interpret
them until the commit frame's image arrives (a header whose "size after commit" is not
zero, then its image): then, and only then, it resolves frames `first..commit` into
{page number: image of the LAST frame for that page} and the size after commit. Waiting
for the commit matters because a transaction that spills its cache rewrites the images
of frames it wrote earlier, in place (a write of the image alone), and a transaction
that is rolled back simply never writes a commit frame.

What moves the "first frame of the transaction in progress":
- a commit: the next transaction starts right after the commit frame;
- a write at offset 0 (the WAL header, new salts): the WAL restarted after a
  checkpoint; frames start again at 1;
- truncating the WAL below its header (`wal_checkpoint(TRUNCATE)`): unknown until the
  next header write.
A rolled-back transaction leaves frames behind that the next transaction overwrites
from the same first frame (SQLite restarts at the last commit's frame + 1), header
first; whatever lies beyond the next commit frame is dropped when it resolves. Right
after a commit SQLite may rewrite the headers of that transaction's frames (new
checksums after in-place rewrites); such writes land before the first frame of the
transaction in progress and are ignored. Frame salts are checked against the WAL header
(or are zero: after an in-place rewrite SQLite leaves salts and checksums of the later
frames zero until that post-commit pass).

Anything that does not fit this model (a write of an unexpected shape, a gap in the
frames of a committing transaction, a salt mismatch) is a broken invariant: the capture
stores it and `take_committed` raises it, because a replica fed a misread transaction
would diverge silently. The writes themselves always go to the file first, unchanged.

One limit of resolving at the commit frame: SQLite publishes a commit (in the WAL index,
in shared memory this VFS does not see) just after that frame is written. If a step in
between fails (an I/O error rewriting checksums, say), the statement fails but the
capture already holds the transaction. The caller must treat an I/O error while
committing as fatal for this leader connection (step down and rebuild from raft), never
as "not committed, carry on". `Capture.wal_write_attempts` counts the writes SQLite
*tried* (a failed one included), so the caller can tell an error that hit the WAL from
one that did not (a SELECT's failed read, `PRAGMA max_page_count` running out).

Failure injection, for tests of exactly that path: `CaptureVfs.wal_write_fault`, when
set to a `WalWriteFault`, makes one WAL write fail with a chosen SQLite error, either
before the bytes reach the file or after (the bytes land and the capture sees them,
then SQLite is told the write failed: the window described above). It goes through
the real VFS object and SQLite's real error handling; nothing in production sets it.

Assumptions, guaranteed by `open_leader_connection` (and the authorizer that refuses
PRAGMA synchronous/journal_mode on client connections): WAL mode, `synchronous=OFF` (no
sector padding frames, no writes split at a sync point), `wal_autocheckpoint=0` and
SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE (checkpoints happen only when the owner asks).

Creating a database: SQLite writes the first page straight into the main file when an
empty database enters WAL mode; that write never passes through the WAL, so
`open_leader_connection` reads the main file back (through the VFS file object) and
offers it as `Capture.creation`, a `CreateDatabase` entry.
"""

import struct
from dataclasses import dataclass, field

import apsw

from ..core.frames import CommittedTransaction, CreateDatabase, is_valid_page_size
from ..core.invariant import InvariantViolation, present

__all__ = ["Capture", "CaptureVfs", "WalWriteFault", "open_another_connection", "open_leader_connection"]

WAL_HEADER_BYTES = 32
FRAME_HEADER_BYTES = 24
_WAL_HEADER = struct.Struct(">IIIIII")      # magic, version, page size, checkpoint seq, salt-1, salt-2
_FRAME_HEADER = struct.Struct(">IIII")      # page number, size after commit, salt-1, salt-2
_WAL_MAGICS = (0x377F0682, 0x377F0683)
# Once a transaction has rewritten a frame in place, SQLite writes its later frames with
# zero salts and checksums and fills them in right after the commit frame.
_NO_SALTS = bytes(8)


@dataclass(slots=True)
class _Frame:
    header: bytes
    image: bytes | None = None   # None until its page image is written


@dataclass(slots=True, eq=False)
class Capture:
    """The committed transactions of one database, in commit order, awaiting the caller."""

    database: str
    path: str                   # full pathname, as the VFS sees it
    page_size: int
    # The entry that creates this database, when `open_leader_connection` created it.
    creation: CreateDatabase | None = None
    _committed: list[CommittedTransaction] = field(default_factory=list)
    _salts: bytes | None = None            # salt-1 | salt-2 of the current WAL header
    _first_frame: int | None = None        # first frame of the transaction in progress
    _frames: dict[int, _Frame] = field(default_factory=dict)
    _failure: str | None = None
    # Page images rewritten in place by a spilling transaction (a diagnostic count).
    in_place_rewrites: int = 0
    # Writes SQLite asked for on the WAL, failed ones included.
    wal_write_attempts: int = 0
    _main_files: list["_MainDatabaseFile"] = field(default_factory=list)

    def take_committed(self) -> list[CommittedTransaction]:
        """Hand over the transactions committed since the last call, oldest first."""
        if self._failure is not None:
            raise InvariantViolation(f"capture of {self.database!r} broke: {self._failure}")
        committed, self._committed = self._committed, []
        return committed

    def discard(self) -> None:
        """Forget the transactions not taken yet and the frames in progress (the caller
        is dropping this WAL: the leader steps down)."""
        self._committed = []
        self._frames.clear()

    def uncommitted_frame_count(self) -> int:
        """Frames written by a transaction still in progress (or rolled back, not yet reused)."""
        return len(self._frames)

    def forget_uncommitted(self) -> None:
        """Drop frames of rolled-back transactions (their memory). Only between transactions."""
        self._frames.clear()

    def completes_commit(self, data: bytes, offset: int) -> bool:
        """Whether writing `data` at `offset` completes a commit frame (its image, or a
        whole frame at once, whose header carries a size after commit)."""
        frame_bytes = FRAME_HEADER_BYTES + self.page_size
        if offset < WAL_HEADER_BYTES:
            return False
        frame_number, within = divmod(offset - WAL_HEADER_BYTES, frame_bytes)
        header: bytes | None
        if within == 0 and len(data) == frame_bytes:
            header = data
        elif within == FRAME_HEADER_BYTES and len(data) == self.page_size:
            frame = self._frames.get(frame_number + 1)
            header = frame.header if frame is not None else None
        else:
            return False
        return header is not None and _FRAME_HEADER.unpack_from(header)[1] != 0

    # --- the WAL file reports here -----------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason

    def _on_wal_write(self, data: bytes, offset: int) -> None:
        if offset == 0:
            self._on_wal_header(data)
            return
        if offset < WAL_HEADER_BYTES:
            self._fail(f"write of {len(data)} bytes inside the WAL header at {offset}")
            return
        frame_bytes = FRAME_HEADER_BYTES + self.page_size
        frame_number, within = divmod(offset - WAL_HEADER_BYTES, frame_bytes)
        frame_number += 1
        if self._first_frame is None:
            # Attached to a WAL that already held frames: the first write of a
            # transaction is always its first frame's header.
            self._first_frame = frame_number
        if frame_number < self._first_frame:
            # Checksums rewritten after a commit, in frames already resolved.
            if not (within == 0 and len(data) == FRAME_HEADER_BYTES):
                self._fail(f"write of {len(data)} bytes into committed frame {frame_number}")
            return
        if within == 0 and len(data) == FRAME_HEADER_BYTES:
            # A new frame: whatever an abandoned transaction left here is obsolete.
            self._frames[frame_number] = _Frame(header=data)
        elif within == FRAME_HEADER_BYTES and len(data) == self.page_size:
            frame = self._frames.get(frame_number)
            if frame is None:
                self._fail(f"page image for frame {frame_number} before its header")
                return
            if frame.image is not None:
                self.in_place_rewrites += 1
            frame.image = data
            if _FRAME_HEADER.unpack_from(frame.header)[1] != 0:
                self._resolve(frame_number)
        elif within == 0 and len(data) == frame_bytes:
            self._frames[frame_number] = _Frame(header=data[:FRAME_HEADER_BYTES], image=data[FRAME_HEADER_BYTES:])
            if _FRAME_HEADER.unpack_from(data)[1] != 0:
                self._resolve(frame_number)
        else:
            self._fail(f"WAL write of {len(data)} bytes at offset {offset} (frame {frame_number} + {within})")

    def _on_wal_header(self, data: bytes) -> None:
        if len(data) != WAL_HEADER_BYTES:
            self._fail(f"WAL header write of {len(data)} bytes")
            return
        if self._adopt_wal_header(data):
            # A new WAL generation: frames start again at 1, under new salts.
            self._first_frame = 1
            self._frames.clear()

    def _adopt_wal_header(self, data: bytes) -> bool:
        if len(data) != WAL_HEADER_BYTES:
            self._fail(f"WAL header of {len(data)} bytes")
            return False
        magic, _, page_size, _, _, _ = _WAL_HEADER.unpack_from(data)
        if magic not in _WAL_MAGICS or page_size != self.page_size:
            self._fail(f"WAL header with magic {magic:#x} and page size {page_size} (expected {self.page_size})")
            return False
        self._salts = bytes(data[16:24])
        return True

    def _on_wal_truncate(self, size: int) -> None:
        if size < WAL_HEADER_BYTES:
            self._salts = None
            self._first_frame = None
            self._frames.clear()
            return
        frame_bytes = FRAME_HEADER_BYTES + self.page_size
        whole_frames = (size - WAL_HEADER_BYTES) // frame_bytes
        for frame_number in [number for number in self._frames if number > whole_frames]:
            del self._frames[frame_number]

    def _resolve(self, commit_frame: int) -> None:
        # Set by the first frame write of the transaction, which comes before its commit.
        first = present(self._first_frame, f"commit frame {commit_frame} of {self.database!r} with no first frame")
        pages: dict[int, bytes] = {}
        size_after_commit = 0
        for frame_number in range(first, commit_frame + 1):
            frame = self._frames.get(frame_number)
            if frame is None or frame.image is None:
                self._fail(f"frame {frame_number} missing from transaction {first}..{commit_frame}")
                return
            page_number, size_after_commit, _, _ = _FRAME_HEADER.unpack_from(frame.header)
            salts = frame.header[8:16]
            if self._salts is not None and salts != self._salts and salts != _NO_SALTS:
                self._fail(f"frame {frame_number} carries salts of another WAL generation")
                return
            pages[page_number] = frame.image  # later frames win: the final image
        # Pages beyond the new end were spilled before the database shrank: cut away.
        final = {number: pages[number] for number in sorted(pages) if number <= size_after_commit}
        self._committed.append(CommittedTransaction(
            database=self.database, page_size=self.page_size,
            size_after_commit_pages=size_after_commit, pages=final,
        ))
        self._first_frame = commit_frame + 1
        self._frames.clear()


@dataclass(frozen=True, slots=True, kw_only=True)
class WalWriteFault:
    """A one-shot WAL write failure, for tests (see the module docstring).

    `code` is the SQLite result code the write fails with (SQLITE_IOERR_WRITE,
    SQLITE_FULL, ...). `landed`: the bytes reach the file and the capture before the
    failure is reported. `commit_only`: only the write that completes a commit frame
    fails (else the next WAL write of any kind)."""

    code: int
    landed: bool = False
    commit_only: bool = True


class _WalFile(apsw.VFSFile):
    """The default VFS's `-wal` file, reporting writes and truncations to its Capture."""

    def __init__(self, vfs: str, name, flags: list[int], capture: Capture, owner: "CaptureVfs") -> None:
        super().__init__(vfs, name, flags)
        self._capture = capture
        self._owner = owner

    def xWrite(self, data: bytes, offset: int) -> None:
        capture = self._capture
        capture.wal_write_attempts += 1
        fault = self._owner.wal_write_fault
        if fault is not None and (not fault.commit_only or capture.completes_commit(data, offset)):
            self._owner.wal_write_fault = None
            if fault.landed:
                self._write(data, offset)
            raise apsw.exception_for(fault.code)
        self._write(data, offset)

    def _write(self, data: bytes, offset: int) -> None:
        super().xWrite(data, offset)  # the file first: a failed write records nothing
        capture = self._capture
        if capture._salts is None and offset != 0:
            # Appending to a WAL this capture has not seen start: learn its salts once.
            capture._adopt_wal_header(self.xRead(WAL_HEADER_BYTES, 0))
        capture._on_wal_write(data, offset)

    def xTruncate(self, newsize: int) -> None:
        super().xTruncate(newsize)
        self._capture._on_wal_truncate(newsize)


class _MainDatabaseFile(apsw.VFSFile):
    """The default VFS's main database file, kept reachable to read a new database back."""

    def __init__(self, vfs: str, name, flags: list[int], capture: Capture) -> None:
        super().__init__(vfs, name, flags)
        self._capture = capture
        capture._main_files.append(self)

    def xClose(self) -> None:
        try:
            self._capture._main_files.remove(self)
        except ValueError:
            pass
        super().xClose()


class CaptureVfs(apsw.VFS):
    """An apsw VFS over the default one that captures registered databases' transactions.

    Registered under `name` (not as the default VFS); open connections with
    `open_leader_connection(path, vfs, database=...)`. Files of databases that were not
    registered are the default VFS's files, untouched.
    """

    def __init__(self, name: str = "raftlite-capture") -> None:
        super().__init__(name, base="", makedefault=False)
        self.name = name
        self._captures: dict[str, Capture] = {}  # full pathname of the main file -> capture
        self.wal_write_fault: WalWriteFault | None = None   # tests only: see WalWriteFault

    def capture_of(self, path: str) -> Capture | None:
        return self._captures.get(self.xFullPathname(path))

    def stop_capturing(self, path: str) -> None:
        """Forget the database's capture; call after closing its last connection."""
        self._captures.pop(self.xFullPathname(path), None)

    def _register(self, path: str, database: str, page_size: int) -> Capture:
        full_path = self.xFullPathname(path)
        capture = self._captures.get(full_path)
        if capture is None:
            capture = self._captures[full_path] = Capture(database=database, path=full_path, page_size=page_size)
        elif capture.database != database:
            raise ValueError(f"{full_path} is already captured as database {capture.database!r}")
        return capture

    def xOpen(self, name, flags: list[int]):
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        open_flags = flags[0]
        if filename is not None:
            if open_flags & apsw.SQLITE_OPEN_WAL and filename.endswith("-wal"):
                capture = self._captures.get(filename[: -len("-wal")])
                if capture is not None:
                    return _WalFile("", name, flags, capture, self)
            elif open_flags & apsw.SQLITE_OPEN_MAIN_DB:
                capture = self._captures.get(filename)
                if capture is not None:
                    return _MainDatabaseFile("", name, flags, capture)
        return apsw.VFSFile("", name, flags)


def _read_main_file(capture: Capture) -> bytes:
    if not capture._main_files:
        raise InvariantViolation(f"no open main file for {capture.path}")
    main_file = capture._main_files[-1]
    size = main_file.xFileSize()
    return main_file.xRead(size, 0) if size else b""


def open_another_connection(path: str, vfs: CaptureVfs) -> apsw.Connection:
    """One more leader connection to a database `open_leader_connection` already opened
    (and so registered, created and put in WAL mode, which is persistent): only the
    per-connection settings are made. About a third of the cost of the full opening,
    which matters with one connection per client."""
    capture = vfs.capture_of(path)
    if capture is None:
        raise ValueError(f"{path} has no capture: open it with open_leader_connection first")
    connection = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE, vfs=vfs.name)
    try:
        connection.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        connection.wal_autocheckpoint(0)
        connection.execute("PRAGMA synchronous=0").fetchall()
    except BaseException:
        connection.close()
        raise
    return connection


def open_leader_connection(
    path: str, vfs: CaptureVfs, *, database: str, page_size: int = 4096,
) -> tuple[apsw.Connection, Capture]:
    """Open `path` for the leader: WAL mode, `wal_autocheckpoint=0`, `synchronous=OFF`,
    no checkpoint on close, every committed transaction captured.

    If the database was empty, this creates it with `page_size` and `Capture.creation`
    is the entry that creates it on every replica. Several connections to one database
    share one Capture. Take committed transactions with `capture.take_committed()`.
    """
    if not is_valid_page_size(page_size):
        raise ValueError(f"page size {page_size} is not a power of two in [512, 65536]")
    capture = vfs._register(path, database, page_size)
    connection = apsw.Connection(
        path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE, vfs=vfs.name,
    )
    try:
        connection.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        is_new = connection.execute("PRAGMA page_count").get == 0
        if is_new:
            connection.execute(f"PRAGMA page_size={page_size:d}")
        mode = connection.execute("PRAGMA journal_mode=WAL").get
        if mode != "wal":
            raise apsw.CantOpenError(f"{path}: journal_mode is {mode!r}, not 'wal'")
        actual_page_size = connection.execute("PRAGMA page_size").get
        if actual_page_size != capture.page_size:
            if len(capture._main_files) == 1 and not capture._frames and not capture._committed:
                capture.page_size = actual_page_size  # an existing database decides
            else:
                raise ValueError(f"{path}: page size {actual_page_size}, capture expects {capture.page_size}")
        # One statement per execute, each read to its end: apsw runs a multi-statement
        # string lazily, and stops at the first row (wal_autocheckpoint returns one), so
        # a following pragma would silently never run.
        for pragma, expected in (("wal_autocheckpoint", 0), ("synchronous", 0)):
            connection.execute(f"PRAGMA {pragma}={expected}").fetchall()
            actual = connection.execute(f"PRAGMA {pragma}").get
            if actual != expected:
                raise apsw.CantOpenError(f"{path}: PRAGMA {pragma} is {actual}, not {expected}")
        if is_new:
            image = _read_main_file(capture)
            capture.creation = CreateDatabase(
                database=database, page_size=capture.page_size,
                pages=tuple(image[start : start + capture.page_size] for start in range(0, len(image), capture.page_size)),
            )
    except BaseException:
        connection.close()
        raise
    return connection, capture
