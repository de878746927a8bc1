"""The peer transport's framing: the receiver's chunk parser (frames cut anywhere, limits)
and the sender's write path when the connection's write buffer is full."""

import asyncio
import random
import socket
import struct

import pytest

from raftlite.actors.config import Config
from raftlite.core.raft_messages import AppendRequest
from raftlite.core.raft_types import Entry, EntryKind
from raftlite.io.transport import PEER_MAGIC, Transport, TransportSettings, _InboundFrames

HEADER = struct.Struct(">IB")
WHOLE, FRAGMENT, LAST = 1, 2, 3


class BytesCodec:
    """Delivers each message's bytes as they arrived."""

    def encode(self, message):
        return bytes(message)

    def decode(self, data):
        return bytes(data)


def receiver(message_bytes_max=1 << 20, codec=None):
    received = []
    transport = Transport(
        node_id=1, address="127.0.0.1:0", on_peer_message=lambda src, message: received.append(message),
        # The peer limit is the larger of message_bytes_max and twice transaction_bytes_max:
        # here message_bytes_max.
        config=Config(message_bytes_max=message_bytes_max, append_batch_bytes_max=min(1 << 20, message_bytes_max // 2),
                      transaction_bytes_max=message_bytes_max // 2),
        **({"codec": codec} if codec is not None else {"codec": BytesCodec()}),
    )
    return _InboundFrames(transport, peer=2), received


def frame(kind, payload):
    return HEADER.pack(len(payload), kind) + payload


def random_stream(rng):
    """A sender's bytes: small messages, and large ones in fragments with small messages
    between the fragments. Returns the stream and the messages in delivery order."""
    stream, expected = [], []
    for _ in range(300):
        if rng.random() < 0.1:
            large = rng.randbytes(rng.randrange(1, 300_000))
            pieces = [large[start:start + 65536] for start in range(0, len(large), 65536)]
            for n, piece in enumerate(pieces):
                stream.append(frame(LAST if n == len(pieces) - 1 else FRAGMENT, piece))
                for _ in range(rng.randrange(3) if n < len(pieces) - 1 else 0):
                    small = rng.randbytes(rng.randrange(2, 300))
                    stream.append(frame(WHOLE, small))
                    expected.append(small)
            expected.append(large)
        else:
            small = rng.randbytes(rng.randrange(2, 70_000))
            stream.append(frame(WHOLE, small))
            expected.append(small)
    starts, offset = [], 0
    for piece in stream:
        starts.append(offset)
        offset += len(piece)
    return b"".join(stream), expected, starts


@pytest.mark.parametrize("seed", range(6))
def test_frames_cut_anywhere_arrive_whole_and_in_order(seed):
    rng = random.Random(seed)
    stream, expected, starts = random_stream(rng)
    # Cuts inside headers, at frame boundaries, inside bodies; chunks of 1 byte to 256 KiB.
    cuts = {start + rng.randrange(6) for start in starts if rng.random() < 0.5}
    cuts |= {rng.randrange(len(stream)) for _ in range(len(stream) // 20_000)}
    cuts = sorted(cuts | {0, len(stream)})
    frames, received = receiver()
    for start, end in zip(cuts, cuts[1:]):
        for position in range(start, end, 256 << 10):
            assert frames.feed(stream[position:min(end, position + (256 << 10))])
    assert received == expected
    assert frames.body is None and not frames.header_start and frames.partial is None


def test_a_whole_frame_above_the_limit_closes_from_its_header():
    frames, received = receiver(message_bytes_max=1000)
    assert frames.feed(frame(WHOLE, b"a" * 1000) + frame(WHOLE, b"b" * 3)[:3])
    assert received == [b"a" * 1000]
    assert not frames.feed(frame(WHOLE, b"b" * 3)[3:] + b"bbb" + HEADER.pack(1001, WHOLE))   # no body sent


def test_fragments_above_the_limit_close_at_the_first_fragment_too_many():
    frames, received = receiver(message_bytes_max=1000)
    assert frames.feed(frame(FRAGMENT, b"a" * 600) + frame(WHOLE, b"small"))
    assert frames.feed(frame(LAST, b"a" * 400))
    assert received == [b"small", b"a" * 1000]
    assert frames.feed(frame(FRAGMENT, b"a" * 600))
    assert not frames.feed(HEADER.pack(401, LAST))


def test_an_unknown_kind_closes_after_the_frames_before_it():
    frames, received = receiver()
    assert not frames.feed(frame(WHOLE, b"one") + frame(9, b"two") + frame(WHOLE, b"three"))
    assert received == [b"one"]


@pytest.mark.timeout(60)
def test_a_peer_that_stops_reading_gets_every_message_in_order_once_it_reads():
    """The sender's write buffer fills: small messages wait in the bounded queue for
    the link's task (drain), and all of them arrive in order."""

    async def scenario():
        accepted = asyncio.get_running_loop().create_future()

        async def on_connection(reader, writer):
            accepted.set_result((reader, writer))

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(on_connection, sock=listener)
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        sender = Transport(node_id=1, address="127.0.0.1:0", config=Config(), on_peer_message=lambda *_: None,
                           settings=TransportSettings(idle_check_interval_ms=50.0))
        sender.set_peers({2: address})
        try:
            reader, writer = await asyncio.wait_for(accepted, 10)
            link = sender.links[2]
            while link.writer is None:
                await asyncio.sleep(0.01)
            link.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            messages = [AppendRequest(term=1, prev_index=n, prev_term=1, entries=(Entry(1, n + 1, EntryKind.NORMAL, b"x" * 1000),), commit=n)
                        for n in range(3000)]
            for n, message in enumerate(messages):
                assert sender.send(2, message)
                if n % 100 == 99:
                    await asyncio.sleep(0)   # several flushes, and the task's turns
            for _ in range(20):
                await asyncio.sleep(0.01)
            high_water = link.writer.transport.get_write_buffer_limits()[1]
            assert link.queued_messages > 0, "the peer reads nothing, so messages wait"
            assert link.writer.transport.get_write_buffer_size() < high_water + TransportSettings().fragment_bytes
            assert sender.stats["messages_sent"] + link.queued_messages == len(messages)

            frames, received = receiver(codec=sender.codec)
            assert await reader.readexactly(16) == PEER_MAGIC + (1).to_bytes(8, "little")
            while len(received) < len(messages):
                chunk = await asyncio.wait_for(reader.read(1 << 16), 10)
                assert chunk and frames.feed(chunk)
            assert received == messages
            assert link.queued_messages == 0 and link.queued_bytes == 0
            assert sender.stats["messages_sent"] == len(messages)
            writer.close()
        finally:
            await sender.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
