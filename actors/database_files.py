"""A node's SQLite files, written directly from replicated entries (docs/architecture.md §4).

Theory of operation
-------------------
This is the one module of `actors/` that touches the file system through `os`. The
SQLite files are derived state: the durable truth is the raft log and its snapshots,
and after a crash the files are rebuilt from them. So nothing here syncs, and every
operation is idempotent: applying the same entry twice, or again after a failure half
way (ENOSPC, EIO: the caller stalls and retries, never skips), leaves the same file.

Applying a committed transaction follows docs/architecture.md §4's rule: with NO
connection open on the database, write each page image at `(page - 1) * page_size` of
the main file and cut the file to `size_after_commit_pages * page_size`. That is exactly
what a full checkpoint of the leader's WAL would do to the leader's main file, so a
follower's main file holds the same pages as the leader's after a checkpoint. The rule
that no connection is open cannot be checked from the files; what can be checked is
checked: a `-wal` holding frames would shadow the pages written here, so a non-empty
`-wal` is a broken invariant (a connection still open, or a leader that did not
checkpoint before stepping down), never silently ignored.

A new database is created from its `CreateDatabase` entry: its initial pages become the
main file (the page SQLite wrote straight into the main file on entering WAL mode).
A snapshot of a database is its main file's bytes, taken with no WAL content (on a
leader: after a full checkpoint); restoring writes those bytes back and removes any
`-wal`/`-shm` left over, so the first connection opened afterwards starts clean.
"""

import os
from typing import Sequence

from ..core.frames import CommittedTransaction, CreateDatabase, PageImage
from ..core.invariant import InvariantViolation

__all__ = [
    "apply_transaction",
    "apply_transaction_steps",
    "apply_transactions",
    "clear_directory",
    "committed_image",
    "create_database",
    "database_exists",
    "delete_database",
    "discard_wal",
    "restore_database",
    "restore_database_steps",
    "shared_memory_path",
    "snapshot_database",
    "snapshot_database_steps",
    "wal_path",
]


def wal_path(path: str) -> str:
    return path + "-wal"


def shared_memory_path(path: str) -> str:
    return path + "-shm"


def database_exists(path: str) -> bool:
    return os.path.exists(path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _require_no_wal_content(path: str) -> None:
    try:
        size = os.stat(wal_path(path)).st_size
    except FileNotFoundError:
        return
    if size:
        raise InvariantViolation(
            f"{wal_path(path)} holds {size} bytes: a connection is open or the WAL was not "
            "checkpointed; writing pages into the main file now would be shadowed by it"
        )


def _write_all(descriptor: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, offset)
        view = view[written:]
        offset += written


def _write_file(path: str, pages) -> None:
    """Write `pages` (page images, from page 1) as the whole content of `path`."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        offset = 0
        for image in pages:
            _write_all(descriptor, image, offset)
            offset += len(image)
        os.ftruncate(descriptor, offset)
    finally:
        os.close(descriptor)


def create_database(path: str, entry: CreateDatabase) -> None:
    """Make `path` the new database of `entry` (replacing whatever was there)."""
    _remove(wal_path(path))
    _remove(shared_memory_path(path))
    _write_file(path, entry.pages)


def apply_transaction(path: str, transaction: CommittedTransaction) -> None:
    """Write the transaction's pages into the main file; no connection may be open on it."""
    _require_no_wal_content(path)
    # No O_CREAT: a transaction for a database never created is a broken invariant.
    descriptor = os.open(path, os.O_RDWR)
    try:
        page_size = transaction.page_size
        for page_number, image in transaction.pages.items():
            _write_all(descriptor, image, (page_number - 1) * page_size)
        os.ftruncate(descriptor, transaction.size_after_commit_pages * page_size)
    finally:
        os.close(descriptor)


def apply_transactions(path: str, transactions: Sequence[CommittedTransaction]) -> None:
    """`apply_transaction` of several transactions, in order, at once: each page is
    written once (its last image) and the file opened and cut once. A follower applies
    a batch of small transactions per step, and most of them rewrite the same few pages
    (page 1, the root and inner pages of a b-tree): measured on kvwrite, 15 page writes
    become 7 for a batch of 5. A page beyond a later transaction's end is dropped, and the
    file is first cut to the smallest size any of them had, so a shrink followed by a
    growth leaves the zeros it would have left one transaction at a time."""
    if not transactions:
        return
    _require_no_wal_content(path)
    page_size = transactions[0].page_size
    pages: dict[int, PageImage] = {}
    smallest = min(transaction.size_after_commit_pages for transaction in transactions)
    for transaction in transactions:
        size = transaction.size_after_commit_pages
        for page_number in [number for number in pages if number > size]:
            del pages[page_number]   # cut off by this transaction
        pages.update(transaction.pages)
    final_size = transactions[-1].size_after_commit_pages * page_size
    descriptor = os.open(path, os.O_RDWR)   # no O_CREAT: see apply_transaction
    try:
        if smallest * page_size < os.fstat(descriptor).st_size:
            os.ftruncate(descriptor, smallest * page_size)
        for page_number, image in sorted(pages.items()):
            _write_all(descriptor, image, (page_number - 1) * page_size)
        if final_size != os.fstat(descriptor).st_size:
            os.ftruncate(descriptor, final_size)
    finally:
        os.close(descriptor)


def apply_transaction_steps(path: str, transaction: CommittedTransaction, pages_per_step: int):
    """`apply_transaction` in bounded steps: a generator that writes `pages_per_step`
    pages at a time and yields the bytes written, so a big transaction does not hold
    the node's loop. Cutting the file to its new size comes last."""
    _require_no_wal_content(path)
    page_size = transaction.page_size
    items = list(transaction.pages.items())
    for start in range(0, len(items), pages_per_step):
        descriptor = os.open(path, os.O_RDWR)
        try:
            for page_number, image in items[start : start + pages_per_step]:
                _write_all(descriptor, image, (page_number - 1) * page_size)
        finally:
            os.close(descriptor)
        yield min(pages_per_step, len(items) - start) * page_size
    descriptor = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(descriptor, transaction.size_after_commit_pages * page_size)
    finally:
        os.close(descriptor)


def snapshot_database(path: str) -> bytes:
    """The database's bytes: its main file, which must hold everything (no WAL content)."""
    _require_no_wal_content(path)
    with open(path, "rb") as file:
        return file.read()


def committed_image(path: str, entries) -> bytes:
    """The database as of its last committed entry: the main file with `entries` (the
    decoded committed transactions its WAL holds on top of it, oldest first) laid over
    it, in memory. The files are only read; connections may be open."""
    with open(path, "rb") as file:
        image = bytearray(file.read())
    for entry in entries:
        if isinstance(entry, CreateDatabase):
            image = bytearray(b"".join(entry.pages))
            continue
        size = entry.size_after_commit_pages * entry.page_size
        if len(image) < size:
            image.extend(bytes(size - len(image)))
        for page_number, page in entry.pages.items():
            offset = (page_number - 1) * entry.page_size
            image[offset : offset + entry.page_size] = page
        del image[size:]
    return bytes(image)


def snapshot_database_steps(path: str, step_bytes: int):
    """`snapshot_database` in bounded steps: a generator reading `step_bytes` per step
    and yielding the bytes read; returns the image as a list of pieces. Nothing may write the main file
    until it is done (the caller holds applies and checkpoints back)."""
    _require_no_wal_content(path)
    chunks = []
    with open(path, "rb") as file:
        while chunk := file.read(step_bytes):
            chunks.append(chunk)
            yield len(chunk)
    return chunks   # the image in pieces: the caller joins them once, with its own framing


def restore_database_steps(path: str, image: bytes, step_bytes: int):
    """`restore_database` in bounded steps. The image goes to a side file first and
    replaces the database by a rename, so a restore cut short leaves the old database
    whole (and the side file is overwritten by the next attempt)."""
    side = path + "-restore"
    descriptor = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, len(image), step_bytes):
            _write_all(descriptor, image[start : start + step_bytes], start)
            yield min(step_bytes, len(image) - start)
    finally:
        os.close(descriptor)
    _remove(wal_path(path))
    _remove(shared_memory_path(path))
    os.replace(side, path)


def restore_database(path: str, image: bytes) -> None:
    """Replace the database at `path` by a snapshot's bytes; no connection may be open."""
    _remove(wal_path(path))
    _remove(shared_memory_path(path))
    _write_file(path, [image])


def delete_database(path: str) -> None:
    """Remove the database and its companions (for a rebuild from raft storage)."""
    for name in (path, wal_path(path), shared_memory_path(path), path + "-journal"):
        _remove(name)


def discard_wal(path: str) -> None:
    """Drop the database's WAL and shared memory (a deposed leader's uncommitted tail);
    no connection may be open on it."""
    _remove(wal_path(path))
    _remove(shared_memory_path(path))


def clear_directory(directory: str) -> None:
    """Remove every file in `directory` (the SQLite files are rebuilt from raft storage)."""
    for name in os.listdir(directory):
        _remove(os.path.join(directory, name))
