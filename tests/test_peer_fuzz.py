"""Fuzzing the peer protocol of a real node process (issue 14, item 3), as
tests/test_wire_fuzz.py fuzzes the client protocol.

Two sets, each against a fresh one-node cluster with a cluster key (one voter: its term
moves only when a message moves it, so a term change is never a spurious election):

- without the key: random bytes after rlPEER02, hellos with random ids, counts and key
  ids (the real key id too: it is not secret), wrong proofs, replayed transcripts, a
  wrong key, rlPEER01 forgeries, each followed by frames carrying high-term messages.
  The node must close every such connection, step nothing (its term never moves) and
  keep serving;
- with the key: the real handshake, then fuzzed frames (bad kinds, oversized headers,
  fragments) carrying fuzzed payloads (random bytes, other codec versions, mutated
  encodings of every registered class, records with random values, bare msgpack values,
  extreme integers), so that io/transport.py's framing and core/peer_codec.py's decoder
  are reached. The node must stay up, answer status and commit a write afterwards, and
  its RSS must stay within 64 MiB of its baseline.

What the authenticated set does not send. Raft trusts an authenticated peer: a message
that claims leadership (AppendRequest, HeartbeatRequest, SnapshotChunk) from another
node in the leader's own term is two leaders in one term, which core/raft.py stops on
as a broken invariant, and one of a later term makes the sender the leader, whose
entries (a CONFIG of garbage, say) the node would append and apply. Neither is a
decoder's business, so the fuzzer sends every such message decoded with term 0 (stale:
answered and dropped), and a `Removed` (an instruction to stop) of configuration -1
(older than any this node holds: ignored). The payload is decoded with the node's own
codec first, so this holds for mutated bytes too; and since a cut frame makes the node
read the next frame's bytes as its body, the whole stream is also framed as the node
frames it (`delivered`), and a stream that would still deliver such a message is not
sent. Everything else may move the term: it is authenticated.
"""

import dataclasses
import socket
import struct
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cluster_helpers import TABLE_SQL, ProcessCluster, send_and_read_to_end
from raftlite.core.peer_codec import CODEC_VERSION, EXT_RECORD_HEADER, RAFT_CODEC, CodecError
from raftlite.core.raft_messages import (
    AppendRequest, AppendResponse, HeartbeatRequest, HeartbeatResponse, Removed, SnapshotChunk, SnapshotResponse,
    TimeoutNow, VoteRequest, VoteResponse,
)
from raftlite.core.raft_types import Configuration, Entry, EntryKind, HardState, Role, Snapshot, SnapshotMeta
from raftlite.io.admin import parse_address
from raftlite.io.peer_auth import (
    ANSWER_BYTES, ClusterKeys, PeerAuthError, dialler_finish, dialler_hello, key_id, load_cluster_key_file,
)
from raftlite.io.transport import PEER_AUTH_MAGIC, PEER_MAGIC

pytestmark = [pytest.mark.real_cluster, pytest.mark.timeout(120)]

EXAMPLES = 1000
RSS_GROWTH_MAX_BYTES = 64 << 20
NODE = 1
# The id the fuzzer authenticates as: not a member, so nothing it says counts in a
# quorum (its votes and acknowledgements are not the node's own).
DIALLER = 77
EXCHANGE_TIMEOUT_S = 10.0
LIMIT_CHECK_EVERY = 25
FRAME_HEADER = struct.Struct(">IB")
WHOLE, FRAGMENT, LAST = 1, 2, 3
INT64_MIN, UINT64_MAX = -(1 << 63), (1 << 64) - 1
LEADER_CLAIMS = (AppendRequest, HeartbeatRequest, SnapshotChunk)
# Above any peer message limit a node has (Config.message_bytes_max, or what one
# transaction's entry needs), within the frame header's 32 bits.
OVERSIZED = 1 << 31


@pytest.fixture
def node(tmp_path):
    """A one-node keyed cluster, serving: (cluster, its keys)."""
    cluster = ProcessCluster(tmp_path / "cluster", 1)
    try:
        cluster.start()
        cluster.execute(TABLE_SQL)
        yield cluster, load_cluster_key_file(str(cluster.cluster_key_file))
    finally:
        cluster.close()


# -- talking to the node -------------------------------------------------------------------------

def _connect(address: str) -> socket.socket:
    return socket.create_connection(parse_address(address), timeout=EXCHANGE_TIMEOUT_S)


def _receive_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        part = sock.recv(count - len(data))
        if not part:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += part
    return data


def _authenticate(sock: socket.socket, keys: ClusterKeys, dialler: int = DIALLER) -> None:
    hello, state = dialler_hello(keys, dialler)
    sock.sendall(PEER_AUTH_MAGIC + hello)
    sock.sendall(dialler_finish(state, _receive_exactly(sock, ANSWER_BYTES), NODE))


def _term(cluster: ProcessCluster) -> int:
    status = cluster.nodes[NODE].status()
    assert status is not None, cluster.logs()
    return status["term"]


def _assert_serving(cluster: ProcessCluster, marker: str) -> None:
    node = cluster.nodes[NODE]
    assert node.alive, node.log_tail(40)
    cluster.wait_leader(timeout_s=30)
    cluster.execute("INSERT OR REPLACE INTO kv VALUES (?, 'x')", (marker,))
    log = node.log_text()
    assert "raised; stopping the node" not in log and "Traceback" not in log, log[-4000:]


def _frame(kind: int, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload), kind) + payload


# -- strategies -------------------------------------------------------------------------------------

terms = st.one_of(st.integers(0, 5), st.integers(0, UINT64_MAX), st.sampled_from([(1 << 63) - 1, 1 << 63, UINT64_MAX]))
integers = st.one_of(st.integers(-3, 5), st.integers(INT64_MIN, UINT64_MAX))
node_ids = st.one_of(st.sampled_from([0, 1, 2, DIALLER]), st.integers(0, UINT64_MAX))
small_bytes = st.binary(max_size=64)

configurations = st.builds(
    Configuration,
    members=st.lists(st.tuples(st.integers(1, 9), st.sampled_from(list(Role))), max_size=3, unique_by=lambda m: m[0])
    .map(lambda members: tuple(sorted(members))),
    addresses=st.just(()),
)
entries = st.builds(Entry, term=terms, index=integers, kind=st.sampled_from(list(EntryKind)), data=small_bytes)
snapshot_metas = st.builds(SnapshotMeta, index=integers, term=terms, configuration=configurations,
                           configuration_index=integers)

# Every class the node's codec knows, with fields of the right types and any values.
registered_values = st.one_of(
    st.builds(VoteRequest, term=terms, last_log_index=integers, last_log_term=terms, pre_vote=st.booleans(),
              transfer=st.booleans()),
    st.builds(VoteResponse, term=terms, granted=st.booleans(), pre_vote=st.booleans()),
    st.builds(AppendRequest, term=terms, prev_index=integers, prev_term=terms,
              entries=st.lists(entries, max_size=3).map(tuple), commit=integers),
    st.builds(AppendResponse, term=terms, success=st.booleans(), index=integers),
    st.builds(HeartbeatRequest, term=terms, commit=integers, sequence=integers),
    st.builds(HeartbeatResponse, term=terms, sequence=integers, last_index=integers),
    st.builds(SnapshotChunk, term=terms, meta=snapshot_metas, offset=integers, data=small_bytes, total_bytes=integers),
    st.builds(SnapshotResponse, term=terms, index=integers, next_offset=integers, done=st.booleans()),
    st.builds(TimeoutNow, term=terms),
    st.builds(Removed, term=terms, configuration_index=integers),
    entries,
    st.builds(HardState, term=terms, vote=st.one_of(st.none(), node_ids)),
    configurations,
    snapshot_metas,
    st.builds(Snapshot, meta=snapshot_metas, data=small_bytes),
)

# Anything msgpack carries (ints within its 64 bits), nested a little.
msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), integers, st.floats(), st.text(max_size=16), small_bytes),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.integers(-5, 5), st.text(max_size=4)), children, max_size=3),
    ),
    max_leaves=12,
)


@st.composite
def records_of_random_values(draw) -> bytes:
    """A record header (a registered tag, or any) followed by values of any type."""
    tag = draw(st.one_of(st.sampled_from(sorted(RAFT_CODEC.registered())), st.integers(0, 0xFFFF)))
    header = msgpack.ExtType(EXT_RECORD_HEADER, tag.to_bytes(2, "big"))
    values = draw(st.lists(msgpack_values, max_size=7))
    return bytes((CODEC_VERSION,)) + msgpack.packb([header, *values], use_bin_type=True)


@st.composite
def mutated(draw, payloads) -> bytes:
    payload = bytearray(draw(payloads))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["replace", "truncate", "append", "insert"]))
        if how == "replace" and payload:
            payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
        elif how == "truncate" and payload:
            del payload[draw(st.integers(0, len(payload) - 1)):]
        elif how == "append":
            payload += draw(st.binary(min_size=1, max_size=16))
        else:
            position = draw(st.integers(0, len(payload)))
            payload[position:position] = draw(st.binary(min_size=1, max_size=4))
    return bytes(payload)


encoded_values = registered_values.map(RAFT_CODEC.encode)
raw_payloads = st.one_of(
    encoded_values,
    mutated(encoded_values),
    records_of_random_values(),
    mutated(records_of_random_values()),
    msgpack_values.map(lambda value: bytes((CODEC_VERSION,)) + msgpack.packb(value, use_bin_type=True)),
    st.tuples(st.integers(0, 255), encoded_values).map(lambda pair: bytes((pair[0],)) + pair[1][1:]),
    st.binary(max_size=256),
)


def _forbidden(message: object) -> bool:
    return (isinstance(message, LEADER_CLAIMS) and message.term != 0) or \
        (isinstance(message, Removed) and message.configuration_index != -1)


def delivered(stream: bytes, limit: int = OVERSIZED - 1) -> list[bytes]:
    """The payloads the node's transport delivers from `stream` (io/transport.py's
    framing: whole frames, fragments up to a LAST; a bad kind or size ends the stream)."""
    payloads, partial, position = [], None, 0
    while len(stream) - position >= FRAME_HEADER.size:
        length, kind = FRAME_HEADER.unpack_from(stream, position)
        body_start = position + FRAME_HEADER.size
        if kind not in (WHOLE, FRAGMENT, LAST) or length > limit or len(stream) - body_start < length:
            break
        body, position = stream[body_start:body_start + length], body_start + length
        if kind == WHOLE:
            payloads.append(body)
        else:
            partial = (partial or b"") + body
            if kind == LAST:
                payloads.append(partial)
                partial = None
    return payloads


def delivers_nothing_forbidden(stream: bytes) -> bool:
    for payload in delivered(stream):
        try:
            message = RAFT_CODEC.decode(payload)
        except CodecError:
            continue
        if _forbidden(message):
            return False
    return True


def trusted_only(payload: bytes) -> bytes:
    """The payload, unless the node would decode it as a leader's or a removal message:
    then that message made harmless (see the module docstring)."""
    try:
        message = RAFT_CODEC.decode(payload)
    except CodecError:
        return payload
    if isinstance(message, LEADER_CLAIMS) and message.term != 0:
        return RAFT_CODEC.encode(dataclasses.replace(message, term=0))
    if isinstance(message, Removed) and message.configuration_index != -1:
        return RAFT_CODEC.encode(dataclasses.replace(message, configuration_index=-1))
    return payload


payloads = raw_payloads.map(trusted_only)


@st.composite
def frames(draw) -> bytes:
    """One or more frames: whole, fragmented, of a bad kind, oversized, or cut short."""
    payload = draw(payloads)
    shape = draw(st.sampled_from(["whole", "whole", "fragments", "bad kind", "oversized", "cut", "raw"]))
    if shape == "whole":
        return _frame(WHOLE, payload)
    if shape == "fragments":
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[start:end] for start, end in zip([0, *cuts], [*cuts, len(payload)])]
        kinds = [FRAGMENT] * (len(pieces) - 1) + [draw(st.sampled_from([LAST, LAST, FRAGMENT, WHOLE]))]
        return b"".join(_frame(kind, piece) for kind, piece in zip(kinds, pieces))
    if shape == "bad kind":
        return _frame(draw(st.integers(0, 255).filter(lambda kind: kind not in (WHOLE, FRAGMENT, LAST))), payload)
    if shape == "oversized":   # a length above the node's peer message limit, body never sent
        return FRAME_HEADER.pack(draw(st.integers(OVERSIZED, (1 << 32) - 1)), draw(st.sampled_from([WHOLE, FRAGMENT, LAST]))) + payload[:16]
    if shape == "cut":
        frame = _frame(draw(st.sampled_from([WHOLE, LAST])), payload)
        return frame[:draw(st.integers(0, len(frame) - 1))] if frame else frame
    return payload


forged_messages = st.one_of(
    st.builds(HeartbeatResponse, term=st.integers(1000, 1 << 40), sequence=st.integers(0, 9), last_index=st.integers(0, 9)),
    st.builds(VoteRequest, term=st.integers(1000, 1 << 40), last_log_index=st.integers(0, 1 << 20),
              last_log_term=st.integers(0, 1 << 20), pre_vote=st.booleans(), transfer=st.booleans()),
    st.builds(TimeoutNow, term=st.integers(1000, 1 << 40)),
    st.builds(AppendRequest, term=st.integers(1000, 1 << 40), prev_index=st.just(0), prev_term=st.just(0),
              entries=st.just(()), commit=st.just(0)),
    st.builds(Removed, term=st.integers(1000, 1 << 40), configuration_index=st.integers(0, 1 << 20)),
)


@st.composite
def unauthenticated_attempts(draw, keys: ClusterKeys, recorded: bytes) -> bytes:
    """What a process without the key can send to a keyed node: the word, then junk, a
    hello and a proof it cannot make, or a replay; then forged frames the node must
    never step."""
    forged = b"".join(_frame(WHOLE, RAFT_CODEC.encode(message)) for message in draw(st.lists(forged_messages, max_size=3)))
    kind = draw(st.sampled_from(["junk", "hello", "hello", "wrong key", "replay", "unauthenticated word"]))
    if kind == "junk":
        return PEER_AUTH_MAGIC + draw(st.binary(max_size=200)) + forged
    if kind == "unauthenticated word":   # rlPEER01: refused by a node with a key
        return PEER_MAGIC + struct.pack("<Q", draw(node_ids)) + forged
    if kind == "wrong key":   # a genuine handshake with another key: no key in common
        hello, _ = dialler_hello(ClusterKeys((draw(st.binary(min_size=32, max_size=32)),)), draw(node_ids))
        return PEER_AUTH_MAGIC + hello + draw(st.binary(min_size=32, max_size=32)) + forged
    if kind == "replay":   # a transcript recorded from a real dialler: the node's nonce differs now
        return PEER_AUTH_MAGIC + recorded + forged
    # A hand-made hello: any id and nonce, any count of key ids (the real one among them:
    # a key id names the key without revealing it), then a proof made without the key.
    count = draw(st.one_of(st.integers(1, 2), st.integers(0, 255)))
    real_id = key_id(keys.keys[0])
    key_ids = b"".join(draw(st.sampled_from([real_id, real_id, bytes(8)])) for _ in range(min(count, 3)))
    hello = struct.pack("<Q", draw(node_ids)) + draw(st.binary(min_size=32, max_size=32)) + bytes((count,)) + key_ids
    hello = hello[:draw(st.integers(0, len(hello)))] if draw(st.booleans()) else hello
    proof = draw(st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)))
    return PEER_AUTH_MAGIC + hello + proof + forged


def _recorded_transcript(address: str, keys: ClusterKeys) -> bytes:
    """A real dialler's hello and proof, as an eavesdropper would record them."""
    with _connect(address) as sock:
        hello, state = dialler_hello(keys, DIALLER)
        sock.sendall(PEER_AUTH_MAGIC + hello)
        proof = dialler_finish(state, _receive_exactly(sock, ANSWER_BYTES), NODE)
        sock.sendall(proof)
    return hello + proof


# -- the tests --------------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_without_the_key_nothing_is_stepped_and_the_node_keeps_serving(node):
    cluster, keys = node
    address = cluster.address(NODE)
    term = _term(cluster)
    recorded = _recorded_transcript(address, keys)
    attempts = 0

    @settings(max_examples=EXAMPLES, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(unauthenticated_attempts(keys, recorded))
    def one_attempt(data: bytes) -> None:
        nonlocal attempts
        attempts += 1
        with _connect(address) as sock:
            answer = send_and_read_to_end(sock, data)
        # At most the handshake's answer comes back (a refusal, or a challenge the
        # sender cannot meet); never a frame.
        assert len(answer) in (0, ANSWER_BYTES), answer.hex()
        if attempts % LIMIT_CHECK_EVERY == 0:
            assert cluster.nodes[NODE].alive, cluster.nodes[NODE].log_tail(40)
            assert _term(cluster) == term

    one_attempt()
    assert attempts >= EXAMPLES // 2
    assert _term(cluster) == term, cluster.nodes[NODE].log_tail(40)
    _assert_serving(cluster, "after-unauthenticated-fuzz")
    assert _term(cluster) == term


@pytest.mark.timeout(110)
def test_with_the_key_fuzzed_frames_reach_the_decoder_and_the_node_stays_up_and_bounded(node):
    cluster, keys = node
    address = cluster.address(NODE)
    process = cluster.nodes[NODE]
    for _ in range(50):   # warm up: the first connections, handshakes and decodes
        with _connect(address) as sock:
            _authenticate(sock, keys)
            send_and_read_to_end(sock, _frame(WHOLE, RAFT_CODEC.encode(HeartbeatResponse(term=0, sequence=0, last_index=0))))
    baseline = process.rss_bytes()
    cases = 0
    decoded: dict[str, int] = {}   # what the node's decoder made of the delivered payloads

    # The filter rejects few streams; the decoded-class assertions below say whether the
    # cases sent still reach every part of the decoder.
    @settings(max_examples=EXAMPLES, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(st.lists(frames(), min_size=1, max_size=4).map(b"".join).filter(delivers_nothing_forbidden))
    def one_connection(stream: bytes) -> None:
        nonlocal cases
        cases += 1
        for payload in delivered(stream):
            try:
                kind = type(RAFT_CODEC.decode(payload)).__name__
            except CodecError as error:
                kind = type(error).__name__
            decoded[kind] = decoded.get(kind, 0) + 1
        with _connect(address) as sock:
            try:
                _authenticate(sock, keys)
            except (ConnectionError, PeerAuthError) as error:   # the node must always let the key in
                raise AssertionError(f"handshake failed: {error}\n{process.log_tail(40)}") from None
            send_and_read_to_end(sock, stream)
        if cases % LIMIT_CHECK_EVERY == 0:
            assert process.alive, process.log_tail(40)
            assert process.status() is not None, process.log_tail(40)
            assert process.rss_bytes() < baseline + RSS_GROWTH_MAX_BYTES

    one_connection()
    assert cases >= EXAMPLES // 2
    print(f"{cases} connections; delivered payloads, as decoded: {dict(sorted(decoded.items()))}")
    # Both sides of the decoder were reached: refusals of each kind, and messages of most classes.
    assert {"MalformedMessage", "UnsupportedVersion", "UnknownTag"} <= decoded.keys(), decoded
    assert len(decoded.keys() & {cls.__name__ for cls in RAFT_CODEC.registered().values()}) >= 8, decoded
    grown = process.rss_bytes() - baseline
    print(f"RSS baseline {baseline >> 20} MiB, grown by {grown / (1 << 20):.1f} MiB")
    assert grown < RSS_GROWTH_MAX_BYTES, grown
    _assert_serving(cluster, "after-authenticated-fuzz")
    log = process.log_text()
    assert "dropping an undecodable message from peer 77" in log   # the decoder was reached


@pytest.mark.timeout(60)
def test_a_malformed_frame_closes_the_connection_with_a_log_line(node):
    """The node closes an authenticated connection whose framing breaks (it cannot find
    the next frame), logging why; an undecodable message in a good frame is dropped and
    logged, and the connection goes on."""
    cluster, keys = node
    address = cluster.address(NODE)
    process = cluster.nodes[NODE]
    for bad, logged in (
        (_frame(9, b"\x01\x02"), "sent a frame of unknown kind 9; closing"),
        (FRAME_HEADER.pack((1 << 32) - 1, WHOLE), "sent a 4294967295-byte message (limit "),
    ):
        with _connect(address) as sock:
            _authenticate(sock, keys)
            sock.sendall(bad)
            sock.settimeout(5)
            assert sock.recv(1) == b""   # closed by the node, our side still open
        assert logged in process.log_text()
    with _connect(address) as sock:
        _authenticate(sock, keys)
        sock.sendall(_frame(WHOLE, b"\x01\xc1"))   # version 1, then a byte msgpack never uses
        sock.settimeout(1)
        with pytest.raises(TimeoutError):   # still open: only that message was dropped
            sock.recv(1)
    deadline = time.monotonic() + 5
    while "dropping an undecodable message from peer 77" not in process.log_text():
        assert time.monotonic() < deadline, process.log_tail(20)
        time.sleep(0.05)
    _assert_serving(cluster, "after-malformed-frames")
