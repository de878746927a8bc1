"""raftlite.core.peer_codec: every registered message round-trips; bad bytes give a
typed error, never another exception."""

import collections.abc
import dataclasses
import enum
import types
import typing

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from raftlite.actors.database import QueryResult
from raftlite.actors.raft_node import Read as ReadRequest
from raftlite.core.peer_codec import (
    CODEC_VERSION, CODEC_VERSION_ATTACHED, RAFT_CODEC, Codec, CodecError, MalformedMessage, UnknownTag, UnregisteredType,
    UnsupportedVersion,
)
from raftlite.core.raft_messages import AppendRequest, HeartbeatRequest, SnapshotChunk, VoteRequest
from raftlite.core.raft_types import Configuration, Entry, EntryKind, Role, SnapshotMeta
from raftlite.io.admin import ADMIN_CODEC

INT64 = st.integers(-(2**63), 2**64 - 1)
# What a field typed Any may carry: msgpack's values, as they come back (tuples, not lists).
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4).map(tuple) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def strategy_for(hint):
    """A hypothesis strategy for a type hint, mirroring what the codec accepts."""
    if hint in (typing.Any, object, typing.Hashable):
        return ANY_VALUE
    simple = {int: INT64, bool: st.booleans(), str: st.text(max_size=30), bytes: st.binary(max_size=200),
              float: st.floats(allow_nan=False), type(None): st.none()}
    if hint in simple:
        return simple[hint]
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(argument) for argument in arguments))
    if hint is tuple:
        return st.lists(ANY_VALUE, max_size=4).map(tuple)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return st.lists(strategy_for(arguments[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy_for(argument) for argument in arguments))
    if hint is dict or origin in (dict, collections.abc.Mapping):
        key, value = arguments or (typing.Any, typing.Any)
        return st.dictionaries(strategy_for(key) if key is not typing.Any else st.text(max_size=8), strategy_for(value), max_size=4)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return message_strategy(hint)
    raise AssertionError(f"no strategy for {hint!r}")


def message_strategy(cls):
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{field.name: strategy_for(hints[field.name]) for field in dataclasses.fields(cls) if field.init})


ADMIN_CLASSES = sorted(ADMIN_CODEC.registered().items())


@pytest.mark.parametrize("tag, cls", ADMIN_CLASSES, ids=[cls.__name__ for _, cls in ADMIN_CLASSES])
@settings(max_examples=60)
@given(data=st.data())
def test_every_registered_class_round_trips(tag, cls, data):
    message = data.draw(message_strategy(cls))
    encoded = ADMIN_CODEC.encode(message)
    assert encoded[0] == CODEC_VERSION
    assert ADMIN_CODEC.decode(encoded) == message
    assert type(ADMIN_CODEC.decode(encoded)) is cls


def test_the_raft_codec_covers_every_raft_message_and_the_admin_codec_extends_it():
    from raftlite.core import raft_messages

    raft_classes = {getattr(raft_messages, name) for name in raft_messages.__all__ if name != "RaftMessage"}
    assert raft_classes <= set(RAFT_CODEC.registered().values())
    assert RAFT_CODEC.registered().items() <= ADMIN_CODEC.registered().items()
    with pytest.raises(UnregisteredType):
        RAFT_CODEC.encode(QueryResult(columns=(), rows=()))


def test_enums_and_nested_values_come_back_typed():
    meta = SnapshotMeta(index=9, term=2, configuration=Configuration.of({1: Role.VOTER, 4: Role.STANDBY}))
    chunk = RAFT_CODEC.decode(RAFT_CODEC.encode(SnapshotChunk(term=2, meta=meta, offset=0, data=b"xyz", total_bytes=3)))
    assert chunk.meta.configuration.members[1][1] is Role.STANDBY
    append = RAFT_CODEC.decode(RAFT_CODEC.encode(AppendRequest(
        term=3, prev_index=0, prev_term=0, entries=(Entry(3, 1, EntryKind.CONFIG, b"c"),), commit=0,
    )))
    assert append.entries[0].kind is EntryKind.CONFIG


def test_a_large_append_round_trips():
    entries = tuple(Entry(7, index, EntryKind.NORMAL, bytes([index % 256]) * 100_000) for index in range(1, 201))
    message = AppendRequest(term=7, prev_index=0, prev_term=0, entries=entries, commit=0)
    assert RAFT_CODEC.decode(RAFT_CODEC.encode(message)) == message


def _record(tag, *values):
    return bytes([CODEC_VERSION]) + msgpack.packb([msgpack.ExtType(1, tag.to_bytes(2, "big")), *values])


@pytest.mark.parametrize("payload, error", [
    (b"", MalformedMessage),
    (b"\x01", MalformedMessage),
    (bytes([CODEC_VERSION_ATTACHED + 1]) + msgpack.packb(1), UnsupportedVersion),
    (_record(999, 1), UnknownTag),
    (_record(1, "not an int", 1, 1), MalformedMessage),          # VoteRequest.term
    (_record(1, True, 1, 1), MalformedMessage),                  # a bool is not an int
    (_record(1, 1), MalformedMessage),                           # required fields missing
    (_record(9, 1, 2), MalformedMessage),                        # TimeoutNow: a value too many
    (_record(3, 1, 0, 0, "entries", 0), MalformedMessage),       # AppendRequest.entries not an array
    (_record(3, 1, 0, 0, (1, 2), 0), MalformedMessage),          # ... of the wrong things
    (_record(66, ((1, 7),)), MalformedMessage),                  # Role 7 does not exist
    (bytes([CODEC_VERSION]) + msgpack.packb([1, msgpack.ExtType(1, (9).to_bytes(2, "big"))]), MalformedMessage),
    (bytes([CODEC_VERSION]) + msgpack.packb(msgpack.ExtType(1, (9).to_bytes(2, "big"))), MalformedMessage),
    (bytes([CODEC_VERSION]) + msgpack.packb(msgpack.ExtType(5, b"")), MalformedMessage),
    (_record(5, 1, 2, 3)[:-1], MalformedMessage),                # truncated
    (_record(5, 1, 2, 3) + b"\x00", MalformedMessage),           # trailing bytes
    (bytes([CODEC_VERSION]) + b"\xc1", MalformedMessage),        # a reserved msgpack byte
])
def test_bad_bytes_raise_a_typed_error(payload, error):
    with pytest.raises(error):
        RAFT_CODEC.decode(payload)


@settings(max_examples=500)
@given(payload=st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_codec_errors(payload):
    try:
        ADMIN_CODEC.decode(bytes([CODEC_VERSION]) + payload)
    except CodecError:
        pass


@settings(max_examples=300)
@given(message=message_strategy(AppendRequest), position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_corrupted_messages_never_raise_anything_but_codec_errors(message, position, byte):
    encoded = bytearray(RAFT_CODEC.encode(message))
    encoded[position % len(encoded)] = byte
    try:
        RAFT_CODEC.decode(bytes(encoded))
    except CodecError:
        pass


def test_a_shorter_record_gets_the_defaults_of_missing_trailing_fields():
    # VoteRequest gained pre_vote and transfer with defaults: an older, shorter record reads.
    assert RAFT_CODEC.decode(_record(1, 5, 10, 4)) == VoteRequest(term=5, last_log_index=10, last_log_term=4)


def test_registration_rules():
    codec = Codec()
    codec.register(1, HeartbeatRequest)
    with pytest.raises(ValueError):
        codec.register(1, VoteRequest)       # tag taken
    with pytest.raises(ValueError):
        codec.register(2, HeartbeatRequest)  # class taken
    with pytest.raises(ValueError):
        codec.register(0, VoteRequest)
    with pytest.raises(TypeError):
        codec.register(3, int)
    extended = codec.extended([(2, ReadRequest)])
    assert ReadRequest not in codec.registered().values()
    assert extended.decode(extended.encode(ReadRequest())) == ReadRequest()
    with pytest.raises(UnregisteredType):
        codec.encode(ReadRequest())
    with pytest.raises(UnregisteredType):
        codec.encode(HeartbeatRequest(term=2**70, commit=0, sequence=0))
