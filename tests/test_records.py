"""Checksummed records: torn tails are told apart from corruption (docs/architecture.md §3)."""

from hypothesis import assume, given, strategies as st

from raftlite.core.records import RECORD_HEADER_BYTES, encode_record, scan_records

payloads = st.lists(st.binary(min_size=0, max_size=64), min_size=1, max_size=8)


@given(payloads)
def test_valid_records_round_trip(items):
    data = b"".join(encode_record(p) for p in items)
    scan = scan_records(data + bytes(100))  # zero padding after the end is not damage
    assert [p for _, p in scan.records] == items
    assert scan.valid_end == len(data)
    assert not scan.torn_tail and scan.corrupt_offset is None


@given(payloads, st.data())
def test_a_cut_or_garbled_last_record_is_a_torn_tail(items, data):
    encoded = [encode_record(p) for p in items]
    prefix = b"".join(encoded[:-1])
    last = encoded[-1]
    cut = data.draw(st.integers(1, len(last) - 1))
    garbage = data.draw(st.binary(min_size=1, max_size=32).filter(lambda g: g.strip(b"\0")))
    assume(not (last[:cut] + garbage).startswith(last))  # the "garbage" rebuilt the record
    scan = scan_records(prefix + last[:cut] + garbage)
    assert [p for _, p in scan.records] == items[:-1]
    assert scan.valid_end == len(prefix)
    assert scan.torn_tail and scan.corrupt_offset is None


@given(payloads.filter(lambda items: len(items) >= 2), st.data())
def test_a_bad_record_followed_by_a_valid_one_is_corruption(items, data):
    encoded = [encode_record(p) for p in items]
    victim = data.draw(st.integers(0, len(encoded) - 2))
    start = sum(len(e) for e in encoded[:victim])
    flip_at = start + data.draw(st.integers(0, len(encoded[victim]) - 1))
    blob = bytearray(b"".join(encoded))
    blob[flip_at] ^= 1 << data.draw(st.integers(0, 7))
    scan = scan_records(bytes(blob))
    assert scan.corrupt_offset == start
    assert not scan.torn_tail
    assert len(scan.records) == victim


def test_header_size_is_fixed():
    assert len(encode_record(b"")) == RECORD_HEADER_BYTES
