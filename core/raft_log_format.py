"""The on-disk format of raft's durable storage, and recovery from it (docs/architecture.md §3).

Theory of operation
-------------------
Every file is a sequence of checksummed records (`raftlite.core.records`):

    segment-{first_index:020d}   a header record [format version, first index], then batch
                                 records, each a msgpack array of consecutive entries
                                 [term, index, kind, data]
    metadata1 / metadata2        one fixed-size record: format version, version counter,
                                 term, vote. Version n lives in metadata1 when n is odd and
                                 in metadata2 when it is even, so writing version n never
                                 touches version n - 1: a crash in the middle of a write
                                 loses at most the newest version, which nobody was told of
    snapshot-{index:020d}        one record: format version, index, term, configuration
                                 index, configuration (`Configuration.encode`), data
    snapshot-tmp, segment-tmp    scratch names: written durably, then renamed into place,
                                 so a final name only ever holds complete content

`recover(files)` reads the durable files of a node back into a `Recovered` value. It
follows docs/architecture.md §3's line between a torn tail and corruption: a checksum failure in the
last segment with no valid record anywhere after it is the tail of a write that never
became durable and is cut off (`Recovered.repairs`); any other damage (a bad record with a
valid one after it, a bad closed segment, a bad newest snapshot, no readable metadata
although some exists, entries that are not contiguous) raises `StorageCorruption`, naming
the file and offset, and the node must not start. Files made obsolete by a newer snapshot,
and scratch files, are listed in `Recovered.stale_files` for the writer to delete.

A segment is stale ("entirely covered by the snapshot") when its successor starts at or
before snapshot index + 1; stale segments are not decoded at all, because nothing in them
is needed. This is what lets the writer replace a segment by one with a later first index
(rename first, delete the old one after) without a crash in between ever looking like an
overlap.
"""

import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import msgpack

from .raft_types import Configuration, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from .records import RECORD_HEADER_BYTES, encode_record, record_header, scan_records

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILES",
    "SEGMENT_TEMPORARY_FILE",
    "SNAPSHOT_TEMPORARY_FILE",
    "COMMIT_HINT_FILE",
    "BatchLayout",
    "EncodedBatch",
    "Recovered",
    "SegmentLayout",
    "StorageCorruption",
    "StorageError",
    "UnsupportedFormatVersion",
    "decode_commit_hint",
    "decode_metadata",
    "decode_snapshot",
    "encode_batch",
    "encode_batch_pieces",
    "encode_commit_hint",
    "encode_entry",
    "encoded_entry_bytes",
    "encode_metadata",
    "encode_segment_header",
    "encode_snapshot",
    "encode_snapshot_pieces",
    "msgpack_bin_header",
    "metadata_file_name",
    "recover",
    "segment_file_name",
    "segment_first_index",
    "snapshot_file_name",
    "snapshot_index_of",
]

FORMAT_VERSION = 1
METADATA_FILES = ("metadata1", "metadata2")
SEGMENT_PREFIX = "segment-"
SNAPSHOT_PREFIX = "snapshot-"
SEGMENT_TEMPORARY_FILE = "segment-tmp"
SNAPSHOT_TEMPORARY_FILE = "snapshot-tmp"
# The last commit index this node knew of, written without fsync (as etcd keeps `commit`
# in its hard state), so that a restarted node can apply what is committed before it
# hears from a leader. Only a hint: a missing, stale or damaged one just means waiting.
COMMIT_HINT_FILE = "commit-hint"
_COMMIT_HINT = struct.Struct("<IQ")   # format version, commit index
_INDEX_DIGITS = 20

# Fixed size, so that a new version always overwrites all of the previous one and no
# leftover bytes of an older, longer record can follow it.
_METADATA = struct.Struct("<IQQBQ")  # format version, version counter, term, has vote, vote
_FORMAT_VERSION_FIELD = struct.Struct("<I")


# --- errors -----------------------------------------------------------------------------


class StorageError(Exception):
    """Durable raft state cannot be used; the node must not start on it."""


class StorageCorruption(StorageError):
    """Damage that is not a torn tail: a checksum failure or inconsistency at rest."""

    def __init__(self, file: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt raft storage: {file} at offset {offset}: {reason}")
        self.file = file
        self.offset = offset
        self.reason = reason


class UnsupportedFormatVersion(StorageError):
    """A file written by another (newer, or unknown) version of the storage format."""

    def __init__(self, file: str, version: object) -> None:
        super().__init__(
            f"raft storage file {file} has format version {version!r}; this build reads version {FORMAT_VERSION}"
        )
        self.file = file
        self.version = version


# --- names ------------------------------------------------------------------------------


def segment_file_name(first_index: int) -> str:
    return f"{SEGMENT_PREFIX}{first_index:0{_INDEX_DIGITS}d}"


def snapshot_file_name(index: int) -> str:
    return f"{SNAPSHOT_PREFIX}{index:0{_INDEX_DIGITS}d}"


def metadata_file_name(version: int) -> str:
    return METADATA_FILES[0] if version % 2 else METADATA_FILES[1]


def _index_in_name(name: str, prefix: str) -> int | None:
    digits = name[len(prefix):]
    if not name.startswith(prefix) or len(digits) != _INDEX_DIGITS or not digits.isdigit():
        return None
    return int(digits)


def segment_first_index(name: str) -> int | None:
    """The first index a segment file name promises, or None for any other name."""
    return _index_in_name(name, SEGMENT_PREFIX)


def snapshot_index_of(name: str) -> int | None:
    return _index_in_name(name, SNAPSHOT_PREFIX)


# --- layouts: where things are inside a segment -------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchLayout:
    """One batch record of a segment: its entries and byte range (absolute file offsets)."""

    first_index: int
    last_index: int
    start: int
    end: int
    entry_offsets: tuple[int, ...]  # where each entry's encoding starts, in index order

    def entry_at(self, offset: int) -> int | None:
        """The entry whose bytes hold `offset`; the framing bytes count as the first entry."""
        if not self.start <= offset < self.end:
            return None
        position = _bisect_right(self.entry_offsets, offset) - 1
        return self.first_index + max(position, 0)


@dataclass(frozen=True, slots=True)
class SegmentLayout:
    file: str
    first_index: int
    header_end: int                    # offset just past the header record
    batches: tuple[BatchLayout, ...]
    size: int                          # end of the last valid record: where appends go

    @property
    def last_index(self) -> int:
        return self.batches[-1].last_index if self.batches else self.first_index - 1


def _bisect_right(values: tuple[int, ...], value: int) -> int:
    low, high = 0, len(values)
    while low < high:
        middle = (low + high) // 2
        if value < values[middle]:
            high = middle
        else:
            low = middle + 1
    return low


# --- encoding -----------------------------------------------------------------------------


def encode_segment_header(first_index: int) -> bytes:
    return encode_record(msgpack.packb([FORMAT_VERSION, first_index]))


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    record: bytes
    entry_offsets: tuple[int, ...]  # relative to the start of the record

    def layout(self, start: int, first_index: int, *, record_bytes: int | None = None) -> BatchLayout:
        return BatchLayout(
            first_index=first_index,
            last_index=first_index + len(self.entry_offsets) - 1,
            start=start,
            end=start + (len(self.record) if record_bytes is None else record_bytes),
            entry_offsets=tuple(start + offset for offset in self.entry_offsets),
        )


def encode_entry(entry: Entry) -> bytes:
    return msgpack.packb([entry.term, entry.index, int(entry.kind), bytes(entry.data)], use_bin_type=True)


def _entry_prefix(entry: Entry) -> bytes:
    """encode_entry's bytes before the entry's data."""
    packer = msgpack.Packer()
    return (packer.pack_array_header(4) + packer.pack(entry.term) + packer.pack(entry.index)
            + packer.pack(int(entry.kind)) + msgpack_bin_header(len(entry.data)))


def encoded_entry_bytes(entry: Entry) -> int:
    """len(encode_entry(entry)), without encoding it."""
    return len(_entry_prefix(entry)) + len(entry.data)


@dataclass(frozen=True, slots=True)
class BatchPieces:
    """One batch record (encode_batch's bytes) as pieces to write one after the other:
    an entry's data is not copied, and no piece is above the size asked for, unless
    every piece is small (then there is one, the whole record)."""

    pieces: tuple[bytes | memoryview, ...]
    record_bytes: int
    entry_offsets: tuple[int, ...]  # relative to the start of the record

    def layout(self, start: int, first_index: int) -> BatchLayout:
        return EncodedBatch(b"", self.entry_offsets).layout(start, first_index, record_bytes=self.record_bytes)


def encode_batch_pieces(entries: Iterable[Entry], piece_bytes_max: int) -> BatchPieces:
    """encode_batch(entries).record as pieces of at most `piece_bytes_max` bytes (views
    of the entries' data where they are big). Writing a 63 MB entry's batch as one
    record cost three copies and one write of it on the node's event loop (~0.5 s, and
    the write's copy into the page cache inside io_submit another 0.1-0.3 s); in pieces,
    the data is not copied here and each piece is its own bounded write."""
    entries = list(entries)
    array_header = msgpack.Packer().pack_array_header(len(entries))
    parts: list[bytes | memoryview] = [array_header]
    offsets, position = [], RECORD_HEADER_BYTES + len(array_header)
    for entry in entries:
        prefix = _entry_prefix(entry)
        offsets.append(position)
        position += len(prefix) + len(entry.data)
        parts.append(prefix)
        parts.append(entry.data)
    length = position - RECORD_HEADER_BYTES
    checksum = zlib.crc32(length.to_bytes(4, "little"))
    for part in parts:
        checksum = zlib.crc32(part, checksum)
    pieces: list[bytes | memoryview] = []
    small: list[bytes | memoryview] = [record_header(length, checksum)]
    small_bytes = RECORD_HEADER_BYTES
    for part in parts:
        if small_bytes + len(part) <= piece_bytes_max:
            small.append(part)
            small_bytes += len(part)
            continue
        if small:
            pieces.append(b"".join(small))
            small, small_bytes = [], 0
        if len(part) <= piece_bytes_max:
            small, small_bytes = [part], len(part)
            continue
        view = memoryview(part)
        pieces.extend(view[start:start + piece_bytes_max] for start in range(0, len(view), piece_bytes_max))
    if small:
        pieces.append(b"".join(small))
    return BatchPieces(tuple(pieces), position, tuple(offsets))


def encode_batch(entries: Iterable[Entry], encoded: Iterable[bytes] | None = None) -> EncodedBatch:
    """One batch record. `encoded` may carry `encode_entry` results the caller already has."""
    entries = list(entries)
    blobs = list(encoded) if encoded is not None else [encode_entry(entry) for entry in entries]
    # The array is assembled by hand (header + each entry's own encoding) so that each
    # entry's position in the file is known; `locate` needs it for the corruption guard.
    array_header = msgpack.Packer().pack_array_header(len(blobs))
    offsets, position = [], RECORD_HEADER_BYTES + len(array_header)
    for blob in blobs:
        offsets.append(position)
        position += len(blob)
    # encode_record's bytes, built with one copy of the blobs, not three: a 63 MB entry's
    # batch took ~390 ms on the leader's loop, in copies.
    length = position - RECORD_HEADER_BYTES
    checksum = zlib.crc32(array_header, zlib.crc32(length.to_bytes(4, "little")))
    for blob in blobs:
        checksum = zlib.crc32(blob, checksum)
    return EncodedBatch(b"".join((record_header(length, checksum), array_header, *blobs)), tuple(offsets))


def encode_metadata(version: int, hard_state: HardState) -> bytes:
    vote = hard_state.vote
    return encode_record(_METADATA.pack(FORMAT_VERSION, version, hard_state.term, vote is not None, vote or 0))


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return b"".join(encode_snapshot_pieces(snapshot, len(snapshot.data) + 1))


def msgpack_bin_header(length: int) -> bytes:
    """msgpack's header for a bin of this length (the Packer has none for bin)."""
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def encode_snapshot_pieces(snapshot: Snapshot, piece_bytes_max: int) -> list[bytes | memoryview]:
    """The snapshot file's bytes (one record holding the msgpack array [version, index,
    term, configuration index, configuration, data]) as pieces of at most
    `piece_bytes_max` bytes after the first, which holds the headers. The data is not
    copied: the pieces are views of it, and the checksum is computed over them in turn."""
    meta = snapshot.meta
    packer = msgpack.Packer(use_bin_type=True)
    data = memoryview(snapshot.data).cast("B")
    prefix = (
        packer.pack_array_header(6)
        + packer.pack(FORMAT_VERSION) + packer.pack(meta.index) + packer.pack(meta.term)
        + packer.pack(meta.configuration_index) + packer.pack(meta.configuration.encode())
        + msgpack_bin_header(len(data))
    )
    length = len(prefix) + len(data)
    checksum = zlib.crc32(data, zlib.crc32(prefix, zlib.crc32(length.to_bytes(4, "little"))))
    pieces: list[bytes | memoryview] = [record_header(length, checksum) + prefix]
    pieces.extend(data[start : start + piece_bytes_max] for start in range(0, len(data), piece_bytes_max))
    return pieces


# --- decoding -----------------------------------------------------------------------------


def _unpack(file: str, offset: int, payload: bytes) -> object:
    try:
        return msgpack.unpackb(payload, raw=False)
    except Exception as error:  # msgpack raises several types; all mean the same here
        raise StorageCorruption(file, offset, f"undecodable record ({error})") from error


def _check_version(file: str, decoded: object, offset: int) -> list:
    if not isinstance(decoded, list) or not decoded:
        raise StorageCorruption(file, offset, "record is not a versioned array")
    if decoded[0] != FORMAT_VERSION:
        raise UnsupportedFormatVersion(file, decoded[0])
    return decoded


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decode_header(file: str, payload: bytes) -> int:
    decoded = _check_version(file, _unpack(file, 0, payload), 0)
    if len(decoded) != 2 or not _is_index(decoded[1]):
        raise StorageCorruption(file, 0, "malformed segment header")
    return decoded[1]


def _decode_batch(file: str, offset: int, payload: bytes, expected_first: int) -> tuple[BatchLayout, list[Entry]]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload)
    entries, offsets = [], []
    try:
        count = unpacker.read_array_header()
        for position in range(count):
            offsets.append(offset + RECORD_HEADER_BYTES + unpacker.tell())
            item = unpacker.unpack()
            if not (isinstance(item, list) and len(item) == 4 and _is_index(item[0]) and _is_index(item[1])
                    and isinstance(item[3], bytes)):
                raise StorageCorruption(file, offset, f"malformed entry {position} in batch")
            term, index, kind, data = item
            if index != expected_first + position:
                raise StorageCorruption(file, offset, f"entry index {index} where {expected_first + position} belongs")
            entries.append(Entry(term=term, index=index, kind=EntryKind(kind), data=data))
        if unpacker.tell() != len(payload):
            raise StorageCorruption(file, offset, "trailing bytes in batch")
    except StorageCorruption:
        raise
    except Exception as error:  # undecodable msgpack or an unknown entry kind
        raise StorageCorruption(file, offset, f"undecodable batch ({error})") from error
    if not entries:
        raise StorageCorruption(file, offset, "empty batch")
    layout = BatchLayout(
        first_index=expected_first,
        last_index=expected_first + len(entries) - 1,
        start=offset,
        end=offset + RECORD_HEADER_BYTES + len(payload),
        entry_offsets=tuple(offsets),
    )
    return layout, entries


def decode_metadata(file: str, data: bytes) -> tuple[int, HardState] | None:
    """(version counter, hard state) of a metadata file, or None when its record is bad."""
    scan = scan_records(data)
    if not scan.records or scan.records[0][0] != 0:
        return None
    payload = scan.records[0][1]
    if len(payload) < _FORMAT_VERSION_FIELD.size:
        raise StorageCorruption(file, 0, "metadata record too short")
    (format_version,) = _FORMAT_VERSION_FIELD.unpack_from(payload)
    if format_version != FORMAT_VERSION:
        raise UnsupportedFormatVersion(file, format_version)
    if len(payload) != _METADATA.size:
        raise StorageCorruption(file, 0, f"metadata record of {len(payload)} bytes")
    _, version, term, has_vote, vote = _METADATA.unpack(payload)
    return version, HardState(term=term, vote=vote if has_vote else None)


def decode_snapshot(file: str, data: bytes) -> Snapshot:
    scan = scan_records(data)
    if scan.corrupt_offset is not None:
        raise StorageCorruption(file, scan.corrupt_offset, "bad record in snapshot")
    if scan.torn_tail or len(scan.records) != 1:
        raise StorageCorruption(file, scan.valid_end, "snapshot is not exactly one valid record")
    decoded = _check_version(file, _unpack(file, 0, scan.records[0][1]), 0)
    if len(decoded) != 6:
        raise StorageCorruption(file, 0, "malformed snapshot record")
    _, index, term, configuration_index, configuration, payload = decoded
    try:
        meta = SnapshotMeta(
            index=index, term=term, configuration=Configuration.decode(configuration),
            configuration_index=configuration_index,
        )
    except (TypeError, ValueError) as error:
        raise StorageCorruption(file, 0, f"malformed snapshot metadata ({error})") from error
    if not isinstance(payload, bytes):
        raise StorageCorruption(file, 0, "snapshot data is not bytes")
    return Snapshot(meta=meta, data=payload)


# --- recovery -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovered:
    """A node's durable raft state as read back at start."""

    hard_state: HardState = HardState()
    metadata_version: int = 0
    snapshot: Snapshot | None = None
    # Contiguous; they start right after the snapshot's index when there is a snapshot.
    entries: list[Entry] = field(default_factory=list)
    # (file, size): cut a torn tail off before writing to the file again.
    repairs: list[tuple[str, int]] = field(default_factory=list)
    # Obsolete snapshots, segments covered by the snapshot, scratch files: delete them.
    stale_files: list[str] = field(default_factory=list)
    # The live segments, as they are once the repairs are done; the writer's starting point.
    segments: tuple[SegmentLayout, ...] = ()
    snapshot_file: str | None = None
    # The commit index hint, never beyond the recovered log (see COMMIT_HINT_FILE).
    commit_hint: int = 0

    @property
    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.meta.index if self.snapshot is not None else 0


def _recover_metadata(files: Mapping[str, bytes]) -> tuple[HardState, int]:
    best: tuple[int, HardState] | None = None
    unreadable: list[str] = []
    for name in METADATA_FILES:
        data = files.get(name)
        if data is None or not data.strip(b"\0"):
            continue  # never written (all zeros: created, nothing reached the platter)
        decoded = decode_metadata(name, data)
        if decoded is None:
            unreadable.append(name)
            continue
        version, hard_state = decoded
        if metadata_file_name(version) != name:
            raise StorageCorruption(name, 0, f"metadata version {version} does not belong in {name}")
        if best is None or version > best[0]:
            best = (version, hard_state)
    if best is None:
        if unreadable:
            # One bad copy is the newest version torn in flight; with no good copy beside
            # it the vote and term are lost, and a node that forgets its vote can vote twice.
            raise StorageCorruption(unreadable[0], 0, "no readable metadata in metadata1 or metadata2")
        return HardState(), 0
    return best[1], best[0]


def _recover_snapshot(files: Mapping[str, bytes]) -> tuple[Snapshot | None, str | None, list[str]]:
    named = sorted((index, name) for name in files if (index := snapshot_index_of(name)) is not None)
    if not named:
        return None, None, []
    index, newest = named[-1]
    snapshot = decode_snapshot(newest, files[newest])
    if snapshot.meta.index != index:
        raise StorageCorruption(newest, 0, f"snapshot holds index {snapshot.meta.index}")
    return snapshot, newest, [name for _, name in named[:-1]]


def _read_segment(
    name: str, data: bytes, first_index: int, is_last: bool,
) -> tuple[SegmentLayout | None, list[Entry], tuple[str, int] | None]:
    scan = scan_records(data)
    if scan.corrupt_offset is not None:
        raise StorageCorruption(name, scan.corrupt_offset, "bad record followed by a valid one")
    repair = None
    if scan.torn_tail:
        if not is_last:
            raise StorageCorruption(name, scan.valid_end, "bad record in a closed segment")
        repair = (name, scan.valid_end)
    if not scan.records:
        if not is_last:
            raise StorageCorruption(name, 0, "closed segment without a header")
        return None, [], repair  # created, but its header never became durable
    header_first = _decode_header(name, scan.records[0][1])
    if header_first != first_index:
        raise StorageCorruption(name, 0, f"header says first index {header_first}")
    batches, entries = [], []
    expected = first_index
    for offset, payload in scan.records[1:]:
        layout, batch_entries = _decode_batch(name, offset, payload, expected)
        batches.append(layout)
        entries.extend(batch_entries)
        expected = layout.last_index + 1
    header_end = scan.records[0][0] + RECORD_HEADER_BYTES + len(scan.records[0][1])
    return SegmentLayout(name, first_index, header_end, tuple(batches), scan.valid_end), entries, repair


def encode_commit_hint(index: int) -> bytes:
    return encode_record(_COMMIT_HINT.pack(FORMAT_VERSION, index))


def decode_commit_hint(data: bytes | None) -> int:
    """The hinted commit index, or 0 when the hint is missing or damaged (never an error:
    it is written without fsync, so a crash may tear it)."""
    if not data:
        return 0
    scan = scan_records(data)
    if not scan.records or scan.records[0][0] != 0 or len(scan.records[0][1]) != _COMMIT_HINT.size:
        return 0
    version, index = _COMMIT_HINT.unpack(scan.records[0][1])
    return index if version == FORMAT_VERSION else 0


def recover(files: Mapping[str, bytes]) -> Recovered:
    """Read durable raft state back; raises StorageCorruption or UnsupportedFormatVersion."""
    hard_state, metadata_version = _recover_metadata(files)
    snapshot, snapshot_file, stale = _recover_snapshot(files)
    stale += [name for name in (SNAPSHOT_TEMPORARY_FILE, SEGMENT_TEMPORARY_FILE) if name in files]
    snapshot_index = snapshot.meta.index if snapshot is not None else 0

    named = sorted((first, name) for name in files if (first := segment_first_index(name)) is not None)
    repairs: list[tuple[str, int]] = []
    live: list[tuple[SegmentLayout, list[Entry]]] = []
    for position, (first, name) in enumerate(named):
        is_last = position == len(named) - 1
        if snapshot is not None and not is_last and named[position + 1][0] <= snapshot_index + 1:
            stale.append(name)
            continue
        layout, entries, repair = _read_segment(name, files[name], first, is_last)
        covered = layout is not None and snapshot is not None and layout.last_index <= snapshot_index \
            and first <= snapshot_index
        if layout is None or covered:
            if repair is not None and layout is None:
                repairs.append(repair)
            stale.append(name)
            continue
        if repair is not None:
            repairs.append(repair)
        live.append((layout, entries))

    expected = None
    for layout, _ in live:
        if expected is None:
            # With no snapshot the log must start at entry 1: anything later means the
            # snapshot that covered the missing entries is gone (e.g. deleted by hand).
            if layout.first_index > snapshot_index + 1:
                covered_by = f"the snapshot at {snapshot_index}" if snapshot is not None else "no snapshot"
                raise StorageCorruption(layout.file, 0, f"log starts at {layout.first_index}, after {covered_by}")
        elif layout.first_index != expected:
            relation = "gap" if layout.first_index > expected else "overlap"
            raise StorageCorruption(
                layout.file, 0, f"{relation}: segment starts at {layout.first_index}, previous ends at {expected - 1}",
            )
        expected = layout.last_index + 1

    entries = [entry for _, segment_entries in live for entry in segment_entries if entry.index > snapshot_index]
    last_index = entries[-1].index if entries else snapshot_index
    return Recovered(
        commit_hint=min(decode_commit_hint(files.get(COMMIT_HINT_FILE)), last_index),
        hard_state=hard_state,
        metadata_version=metadata_version,
        snapshot=snapshot,
        entries=entries,
        repairs=repairs,
        stale_files=sorted(stale),
        segments=tuple(layout for layout, _ in live),
        snapshot_file=snapshot_file,
    )
