"""Checksummed records: the framing every durable file uses.

A record is `MAGIC | length:u32 | crc32(length | payload):u32 | payload`, little-endian.
`scan_records` walks a file's bytes and tells a torn tail from corruption, following
docs/architecture.md §3: a bad record with no valid record anywhere after it is a torn tail (the
rest is zeros or the garbage of unsynced writes) and is safe to cut off; a bad record
followed by a valid one is corruption, reported with its offset.
"""

import struct
import zlib
from dataclasses import dataclass

__all__ = ["RECORD_MAGIC", "RECORD_HEADER_BYTES", "RecordScan", "encode_record", "record_at", "record_header", "scan_records"]

RECORD_MAGIC = b"RLr1"
_HEADER = struct.Struct("<4sII")
RECORD_HEADER_BYTES = _HEADER.size


def _checksum(length: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "little")))


def encode_record(payload: bytes) -> bytes:
    return record_header(len(payload), _checksum(len(payload), payload)) + payload


def record_header(length: int, checksum: int) -> bytes:
    """The header of a record whose payload (written separately) has this length and
    crc32(length | payload)."""
    return _HEADER.pack(RECORD_MAGIC, length, checksum)


@dataclass(frozen=True, slots=True)
class RecordScan:
    records: list[tuple[int, bytes]]  # (offset, payload) of every valid record, in order
    valid_end: int                    # offset just past the last valid record of the prefix
    torn_tail: bool                   # bytes after valid_end are a torn/garbage tail
    corrupt_offset: int | None        # first bad record that has a valid record after it


def record_at(data: bytes, offset: int) -> bytes | None:
    """The payload of the valid record at `offset`, or None (torn, damaged or missing)."""
    if len(data) - offset < RECORD_HEADER_BYTES:
        return None
    magic, length, checksum = _HEADER.unpack_from(data, offset)
    end = offset + RECORD_HEADER_BYTES + length
    if magic != RECORD_MAGIC or end > len(data):
        return None
    payload = bytes(data[offset + RECORD_HEADER_BYTES : end])
    if _checksum(length, payload) != checksum:
        return None
    return payload


def _is_zero(data: bytes, offset: int) -> bool:
    return data.count(0, offset) == len(data) - offset


def scan_records(data: bytes) -> RecordScan:
    records: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        payload = record_at(data, offset)
        if payload is None:
            break
        records.append((offset, payload))
        offset += RECORD_HEADER_BYTES + len(payload)
    valid_end = offset
    if valid_end == len(data) or _is_zero(data, valid_end):
        return RecordScan(records, valid_end, torn_tail=False, corrupt_offset=None)
    # A bad record: torn tail unless some valid record follows it.
    search_from = valid_end + 1
    while True:
        candidate = data.find(RECORD_MAGIC, search_from)
        if candidate < 0:
            return RecordScan(records, valid_end, torn_tail=True, corrupt_offset=None)
        if record_at(data, candidate) is not None:
            return RecordScan(records, valid_end, torn_tail=False, corrupt_offset=valid_end)
        search_from = candidate + 1
