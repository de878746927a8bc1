"""Big messages without big copies (issue 14, item 5): the peer codec's out-of-line
attachments, a raft log batch written in pieces, and the transport's fragments as views
of the codec's parts. Fast, no processes: the real-cluster side is test_big_requests.py."""

import asyncio
import random
import socket

import pytest

from raftlite.actors.config import Config
from raftlite.core.peer_codec import (
    ATTACHMENT_BYTES_MIN, CODEC_VERSION, CODEC_VERSION_ATTACHED, RAFT_CODEC, MalformedMessage,
)
from raftlite.core.raft_log_format import encode_batch, encode_batch_pieces, encode_entry, encoded_entry_bytes
from raftlite.core.raft_messages import AppendRequest, HeartbeatRequest, SnapshotChunk
from raftlite.core.raft_progress import Progress, ProgressState
from raftlite.core.raft_types import Configuration, Entry, EntryKind, Role, SnapshotMeta
from raftlite.io.transport import Transport, TransportSettings, _LargeMessage

pytestmark = pytest.mark.timeout(60)


def append_of(*sizes: int) -> AppendRequest:
    entries = tuple(Entry(3, index, EntryKind.NORMAL, bytes([index]) * size) for index, size in enumerate(sizes, 1))
    return AppendRequest(term=3, prev_index=0, prev_term=0, entries=entries, commit=0)


def test_big_values_travel_after_the_body_uncopied_and_decode_to_the_same_message():
    message = append_of(ATTACHMENT_BYTES_MIN, 10, 3 * ATTACHMENT_BYTES_MIN)
    parts = RAFT_CODEC.encode_parts(message)
    assert parts[0][0] == CODEC_VERSION_ATTACHED and len(parts[0]) < 200
    # The attachments are the entries' own bytes objects: nothing was copied.
    assert parts[1] is message.entries[0].data and parts[2] is message.entries[2].data
    assert RAFT_CODEC.decode(b"".join(parts)) == message
    meta = SnapshotMeta(index=9, term=3, configuration=Configuration.of({1: Role.VOTER}), configuration_index=1)
    chunk = SnapshotChunk(term=3, meta=meta, offset=0, data=b"s" * ATTACHMENT_BYTES_MIN, total_bytes=ATTACHMENT_BYTES_MIN)
    assert RAFT_CODEC.decode(b"".join(RAFT_CODEC.encode_parts(chunk))) == chunk


def test_a_message_without_big_values_is_encoded_as_before():
    for message in (append_of(ATTACHMENT_BYTES_MIN - 1, 5), HeartbeatRequest(term=1, commit=0, sequence=7)):
        (part,) = RAFT_CODEC.encode_parts(message)
        assert part == RAFT_CODEC.encode(message) and part[0] == CODEC_VERSION


@pytest.mark.parametrize("damage", ["cut", "extra", "body length", "attachment length"])
def test_damaged_attachments_are_a_malformed_message(damage):
    data = bytearray(b"".join(RAFT_CODEC.encode_parts(append_of(ATTACHMENT_BYTES_MIN, ATTACHMENT_BYTES_MIN))))
    if damage == "cut":
        del data[-1]
    elif damage == "extra":
        data += b"\0"
    elif damage == "body length":
        data[1:5] = (len(data)).to_bytes(4, "big")
    else:   # the first placeholder's length (ext 2 with 8 bytes: d7 02 then the u64)
        position = data.index(b"\xd7\x02")
        data[position + 2:position + 10] = (len(data)).to_bytes(8, "big")
    with pytest.raises(MalformedMessage):
        RAFT_CODEC.decode(bytes(data))


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_in_pieces_is_the_same_record_and_no_piece_is_above_the_bound(seed):
    rng = random.Random(seed)
    for _ in range(50):
        entries = [Entry(rng.randrange(1, 1 << 40), index, rng.choice(list(EntryKind)),
                         rng.randbytes(rng.choice([0, 1, 200, 5000, 70_000, 300_000])))
                   for index in range(1, rng.randrange(2, 7))]
        piece_bytes_max = rng.choice([64, 4096, 65536, 1 << 20])
        batch, pieces = encode_batch(entries), encode_batch_pieces(entries, piece_bytes_max)
        assert b"".join(pieces.pieces) == batch.record and pieces.record_bytes == len(batch.record)
        assert pieces.layout(4096, 7) == batch.layout(4096, 7)
        assert max(len(piece) for piece in pieces.pieces) <= piece_bytes_max
        assert [encoded_entry_bytes(entry) for entry in entries] == [len(encode_entry(entry)) for entry in entries]


def test_a_big_entry_is_written_as_views_of_its_own_data():
    data = bytes(range(256)) * 40_000   # ~10 MB
    pieces = encode_batch_pieces([Entry(2, 5, EntryKind.NORMAL, data)], 4 << 20).pieces
    assert len(pieces) == 4 and all(isinstance(piece, memoryview) and piece.obj is data for piece in pieces[1:])


def test_the_transport_fragments_a_large_message_as_views_of_its_parts():
    parts = RAFT_CODEC.encode_parts(append_of(100_000, 70_000))
    message = _LargeMessage(parts, sum(len(part) for part in parts))
    fragments, last = [], False
    while not last:
        fragment, last = message.next_fragment(65536)
        assert len(fragment) <= 65536
        fragments.append(fragment)
    assert b"".join(fragments) == b"".join(parts)
    assert all(fragment.obj is parts[1] for fragment in fragments[1:3])


def test_a_queued_big_append_never_makes_the_heartbeats_behind_it_be_dropped():
    """One byte budget for both dropped every heartbeat queued behind a 105 MB append
    while it was sent (1.3 s), and the leader lost its quorum."""

    async def scenario():
        reserved = socket.socket()   # a peer that is not listening: everything stays queued
        reserved.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{reserved.getsockname()[1]}"
        reserved.close()
        sender = Transport(node_id=1, address="127.0.0.1:0", config=Config(), on_peer_message=lambda *_: None,
                           settings=TransportSettings(outbound_queue_bytes_max=1 << 20, reconnect_delay_ms=1000))
        sender.set_peers({2: address})
        try:
            assert sender.send(2, append_of(3 << 20))          # above the budget: alone, accepted
            assert all(sender.send(2, HeartbeatRequest(term=3, commit=0, sequence=n)) for n in range(100))
            assert not sender.send(2, append_of(1 << 20))      # a second large one waits its turn: dropped
            assert sender.stats["dropped_queue_full"] == 1
        finally:
            await sender.close()

    asyncio.run(scenario())


def test_a_big_message_received_is_followed_by_one_malloc_trim(monkeypatch):
    import raftlite.io.transport as transport_module
    if transport_module._MALLOC_TRIM is None:
        pytest.skip("not glibc: no malloc_trim")
    monkeypatch.setattr(transport_module, "MEMORY_TRIM_DELAY_S", 0.05)

    async def scenario():
        received = []
        receiver = Transport(node_id=2, address="127.0.0.1:0", config=Config(), on_peer_message=lambda *m: received.append(m))
        payload = b"".join(RAFT_CODEC.encode_parts(append_of(transport_module.MEMORY_TRIM_AFTER_BYTES)))
        receiver._deliver(1, payload)
        receiver._deliver(1, payload)   # a second one within the delay: still one trim, later
        await asyncio.sleep(0.3)
        assert len(received) == 2 and receiver.stats["memory_trims"] == 1
        await receiver.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("append_bytes, heartbeats_before_presumed_lost", [(1000, 3), (105 << 20, 3 + 26)])
def test_a_big_append_in_flight_is_given_heartbeats_in_proportion_before_being_presumed_lost(
        append_bytes, heartbeats_before_presumed_lost):
    """With 3 heartbeats for any append, a 105 MB append (over a second on loopback) was
    presumed lost and sent again every time."""
    progress = Progress(match=9, next=10)
    progress.become_replicate()
    progress.sent_append(10, append_bytes)
    for _ in range(heartbeats_before_presumed_lost):
        progress.heartbeat_behind_window(9)
        assert progress.state == ProgressState.REPLICATE
    progress.heartbeat_behind_window(9)
    assert progress.state == ProgressState.PROBE and progress.next == 10
