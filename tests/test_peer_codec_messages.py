"""The peer codec's receiving rules (issue 14, item 3; found by tests/test_peer_fuzz.py
against a real node): RAFT_CODEC decodes only raft messages, never a value that only
travels inside one (a node stopped on `'Configuration' object has no attribute 'term'`),
and only terms up to TERM_MAX (a term of 2**64 - 1 overflowed the node's metadata file at
its next election: `struct.error`, the node stopped)."""

import msgpack
import pytest

from raftlite.core.peer_codec import CODEC_VERSION, RAFT_CODEC, TERM_MAX, Codec, MalformedMessage
from raftlite.core.raft_messages import AppendRequest, HeartbeatResponse, TimeoutNow, VoteRequest
from raftlite.core.raft_types import Configuration, Entry, EntryKind, HardState, Role, Snapshot, SnapshotMeta
from raftlite.io.admin import ADMIN_CODEC

CONFIGURATION = Configuration.of({1: Role.VOTER})
VALUES = [
    Entry(1, 1, EntryKind.NORMAL, b"x"),
    HardState(term=3, vote=1),
    CONFIGURATION,
    SnapshotMeta(index=1, term=1, configuration=CONFIGURATION),
    Snapshot(meta=SnapshotMeta(index=1, term=1, configuration=CONFIGURATION), data=b""),
]


@pytest.mark.parametrize("value", VALUES, ids=[type(value).__name__ for value in VALUES])
def test_a_value_class_alone_is_not_a_message(value):
    with pytest.raises(MalformedMessage, match=f"a {type(value).__name__} is not a message"):
        RAFT_CODEC.decode(RAFT_CODEC.encode(value))
    assert ADMIN_CODEC.decode(ADMIN_CODEC.encode(value)) == value   # an extension states its own rules


@pytest.mark.parametrize("value", [7, None, (1, 2), {"term": 5}, b"bytes", "text"])
def test_a_bare_msgpack_value_is_not_a_message(value):
    with pytest.raises(MalformedMessage, match="is not a message"):
        RAFT_CODEC.decode(bytes([CODEC_VERSION]) + msgpack.packb(value, use_bin_type=True))


def test_a_message_still_carries_its_values():
    message = AppendRequest(term=2, prev_index=0, prev_term=0, entries=(Entry(2, 1, EntryKind.CONFIG, b"c"),), commit=0)
    assert RAFT_CODEC.decode(RAFT_CODEC.encode(message)) == message


@pytest.mark.parametrize("term", [TERM_MAX + 1, (1 << 64) - 1, -1])
def test_a_term_the_node_could_not_count_from_is_refused(term):
    for message in (TimeoutNow(term=term), HeartbeatResponse(term=term, sequence=0, last_index=0),
                    VoteRequest(term=term, last_log_index=0, last_log_term=0)):
        with pytest.raises(MalformedMessage, match=r"term: .* is outside 0\.\.9223372036854775807"):
            RAFT_CODEC.decode(RAFT_CODEC.encode(message))


def test_terms_up_to_term_max_decode_and_leave_room_for_elections():
    assert RAFT_CODEC.decode(RAFT_CODEC.encode(TimeoutNow(term=TERM_MAX))) == TimeoutNow(term=TERM_MAX)
    assert TERM_MAX + 1 < 1 << 64   # the next election's term still fits the metadata file's u64
    # Other int fields keep msgpack's whole range.
    response = HeartbeatResponse(term=1, sequence=(1 << 64) - 1, last_index=-5)
    assert RAFT_CODEC.decode(RAFT_CODEC.encode(response)) == response


def test_messages_must_be_registered():
    with pytest.raises(ValueError, match="TimeoutNow"):
        Codec([(1, VoteRequest)], messages=[VoteRequest, TimeoutNow])
    codec = Codec([(1, VoteRequest), (2, TimeoutNow)], messages=[VoteRequest])
    with pytest.raises(MalformedMessage, match="a TimeoutNow is not a message"):
        codec.decode(codec.encode(TimeoutNow(term=1)))
