"""The replication entry format of a database: page images, never statements (docs/architecture.md §4).

Theory of operation
-------------------
The leader executes SQL; a capture VFS (`raftlite.actors.sqlite_capture`) turns each
committed SQLite transaction into a `CommittedTransaction`: for every page the
transaction changed, that page's final image, plus the database size in pages after the
commit. Every node applies the same page images to its own files, so results of
`random()`, `datetime('now')` and friends are the same everywhere, and every replica
holds the same pages. Creating a database is an entry too (`CreateDatabase`): the
initial pages SQLite writes straight into the main file when it enters WAL mode never
pass through the WAL, so they are carried explicitly.

An entry is encoded as a version byte, a kind byte and a fixed header, then the database
name, then (for a transaction) the page numbers and finally the page images, back to
back. Page numbers come in ascending order, so the same transaction always encodes to
the same bytes. Decoding does not copy page images: they are read-only memoryview slices
of the entry's bytes (a 20 MB transaction is not copied again on its way to the file);
use `bytes(image)` to keep one beyond the entry. Unknown versions, unknown kinds and
anything malformed raise `FrameFormatError`; a replica must not apply half-understood
pages.

    transaction:  version:u8=1 kind:u8=1 page_size:u32 size_after_commit_pages:u32
                  page_count:u32 name_length:u16 | name (UTF-8)
                  | page_count x page_number:u32 | page_count x page image (page_size bytes)
    create:       version:u8=1 kind:u8=2 page_size:u32 page_count:u32 name_length:u16
                  | name (UTF-8) | page_count x page image, from page 1

All integers are little-endian.
"""

import struct
from dataclasses import dataclass
from typing import Mapping, Union

__all__ = [
    "creates_database",
    "DATABASE_NAME_BYTES_MAX",
    "FRAME_FORMAT_VERSION",
    "PAGE_SIZE_MAX",
    "PAGE_SIZE_MIN",
    "CommittedTransaction",
    "CreateDatabase",
    "DatabaseEntry",
    "FrameFormatError",
    "PageImage",
    "decode_database_entry",
    "encode_database_entry",
    "is_valid_page_size",
]

FRAME_FORMAT_VERSION = 1
PAGE_SIZE_MIN = 512
PAGE_SIZE_MAX = 65536
DATABASE_NAME_BYTES_MAX = 1024

_KIND_TRANSACTION = 1
_KIND_CREATE = 2

_PREFIX = struct.Struct("<BB")
_TRANSACTION_HEADER = struct.Struct("<BBIIIH")
_CREATE_HEADER = struct.Struct("<BBIIH")
_PAGE_NUMBER = struct.Struct("<I")

# A page image: bytes when produced by the capture, a read-only memoryview slice of the
# entry when decoded. Both compare equal by content and both go straight to os.pwrite.
PageImage = Union[bytes, memoryview]


class FrameFormatError(ValueError):
    """The bytes are not a database entry this version understands."""


def is_valid_page_size(page_size: int) -> bool:
    """SQLite's rule: a power of two from 512 to 65536."""
    return PAGE_SIZE_MIN <= page_size <= PAGE_SIZE_MAX and page_size & (page_size - 1) == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CommittedTransaction:
    """One committed SQLite transaction: the final image of every page it changed.

    Applying it means: write each image at `(page_number - 1) * page_size` of the main
    database file, then cut the file to `size_after_commit_pages * page_size`.
    """

    database: str
    page_size: int
    size_after_commit_pages: int
    pages: Mapping[int, PageImage]  # page number (1-based) -> page image, ascending

    def payload_bytes(self) -> int:
        return len(self.pages) * self.page_size


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateDatabase:
    """A new database: the pages of its main file as SQLite left it on entering WAL mode."""

    database: str
    page_size: int
    pages: tuple[PageImage, ...]  # page 1, page 2, ... (usually just page 1)


DatabaseEntry = CommittedTransaction | CreateDatabase


def _check_common(database: str, page_size: int) -> bytes:
    if not is_valid_page_size(page_size):
        raise FrameFormatError(f"page size {page_size} is not a power of two in [{PAGE_SIZE_MIN}, {PAGE_SIZE_MAX}]")
    name = database.encode("utf-8")
    if not name or len(name) > DATABASE_NAME_BYTES_MAX:
        raise FrameFormatError(f"database name of {len(name)} bytes (must be 1..{DATABASE_NAME_BYTES_MAX})")
    return name


def encode_database_entry(entry: DatabaseEntry) -> bytes:
    """The entry's bytes; raises FrameFormatError if the entry itself is inconsistent."""
    if not isinstance(entry, (CommittedTransaction, CreateDatabase)):
        raise FrameFormatError(f"not a database entry: {type(entry).__name__}")
    name = _check_common(entry.database, entry.page_size)
    match entry:
        case CommittedTransaction():
            if entry.size_after_commit_pages < 1:
                raise FrameFormatError(f"size after commit of {entry.size_after_commit_pages} pages")
            page_numbers = sorted(entry.pages)
            if page_numbers and not 1 <= page_numbers[0] <= page_numbers[-1] <= entry.size_after_commit_pages:
                raise FrameFormatError(
                    f"page numbers {page_numbers[0]}..{page_numbers[-1]} outside "
                    f"1..{entry.size_after_commit_pages}"
                )
            images = [entry.pages[number] for number in page_numbers]
            header = _TRANSACTION_HEADER.pack(
                FRAME_FORMAT_VERSION, _KIND_TRANSACTION, entry.page_size,
                entry.size_after_commit_pages, len(page_numbers), len(name),
            )
            numbers = struct.pack(f"<{len(page_numbers)}I", *page_numbers)
        case CreateDatabase():
            if not entry.pages:
                raise FrameFormatError("a new database has at least one page")
            images = list(entry.pages)
            header = _CREATE_HEADER.pack(
                FRAME_FORMAT_VERSION, _KIND_CREATE, entry.page_size, len(images), len(name),
            )
            numbers = b""
    for image in images:
        if len(image) != entry.page_size:
            raise FrameFormatError(f"page image of {len(image)} bytes with page size {entry.page_size}")
    # One join: the images are copied exactly once, into the entry.
    return b"".join([header, name, numbers, *images])


def _decode_name(view: memoryview, offset: int, length: int) -> str:
    if not 1 <= length <= DATABASE_NAME_BYTES_MAX:
        raise FrameFormatError(f"database name length {length}")
    try:
        return str(view[offset : offset + length], "utf-8")
    except UnicodeDecodeError as error:
        raise FrameFormatError(f"database name is not UTF-8: {error}") from None


def _expect_length(view: memoryview, expected: int, what: str) -> None:
    if len(view) != expected:
        raise FrameFormatError(f"{what} entry of {len(view)} bytes, expected {expected}")


def creates_database(data: bytes | memoryview) -> bool:
    """Whether the entry is a CreateDatabase, from its prefix alone (no decoding): the
    leader asks this of every entry it executed itself."""
    return len(data) >= _PREFIX.size and data[1] == _KIND_CREATE


def decode_database_entry(data: bytes | memoryview) -> DatabaseEntry:
    """Parse an entry; page images are zero-copy slices of `data` (see module docstring)."""
    view = memoryview(data).toreadonly().cast("B")
    if len(view) < _PREFIX.size:
        raise FrameFormatError(f"database entry of {len(view)} bytes is too short")
    version, kind = _PREFIX.unpack_from(view)
    if version != FRAME_FORMAT_VERSION:
        raise FrameFormatError(f"unknown database entry format version {version} (this build reads {FRAME_FORMAT_VERSION})")
    if kind == _KIND_TRANSACTION:
        if len(view) < _TRANSACTION_HEADER.size:
            raise FrameFormatError("truncated transaction header")
        _, _, page_size, size_after_commit, page_count, name_length = _TRANSACTION_HEADER.unpack_from(view)
        if not is_valid_page_size(page_size):
            raise FrameFormatError(f"page size {page_size}")
        if size_after_commit < 1 or page_count > size_after_commit:
            raise FrameFormatError(f"{page_count} pages in a database of {size_after_commit} pages")
        offset = _TRANSACTION_HEADER.size
        numbers_at = offset + name_length
        images_at = numbers_at + 4 * page_count
        _expect_length(view, images_at + page_count * page_size, "transaction")
        database = _decode_name(view, offset, name_length)
        page_numbers = struct.unpack_from(f"<{page_count}I", view, numbers_at)
        if any(not 1 <= number <= size_after_commit for number in page_numbers):
            raise FrameFormatError(f"page number outside 1..{size_after_commit}")
        if any(a >= b for a, b in zip(page_numbers, page_numbers[1:])):
            raise FrameFormatError("page numbers not strictly ascending")
        changed_pages = {
            number: view[images_at + i * page_size : images_at + (i + 1) * page_size]
            for i, number in enumerate(page_numbers)
        }
        return CommittedTransaction(
            database=database, page_size=page_size, size_after_commit_pages=size_after_commit, pages=changed_pages,
        )
    if kind == _KIND_CREATE:
        if len(view) < _CREATE_HEADER.size:
            raise FrameFormatError("truncated create-database header")
        _, _, page_size, page_count, name_length = _CREATE_HEADER.unpack_from(view)
        if not is_valid_page_size(page_size):
            raise FrameFormatError(f"page size {page_size}")
        if page_count < 1:
            raise FrameFormatError("a new database has at least one page")
        offset = _CREATE_HEADER.size
        images_at = offset + name_length
        _expect_length(view, images_at + page_count * page_size, "create-database")
        database = _decode_name(view, offset, name_length)
        pages = tuple(view[images_at + i * page_size : images_at + (i + 1) * page_size] for i in range(page_count))
        return CreateDatabase(database=database, page_size=page_size, pages=pages)
    raise FrameFormatError(f"unknown database entry kind {kind}")
