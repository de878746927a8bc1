"""A versioned msgpack codec for frozen message dataclasses, driven by a registry.

Theory of operation
-------------------
A `Codec` holds a registry of (tag -> dataclass). Registering a class is one line,
`codec.register(12, VoteRequest)`: the class's fields and type hints are read once and
compiled into a *converter* per field, so nothing is written by hand per class.

Encoding. An encoded message is one version byte (`CODEC_VERSION`) followed by msgpack.
A registered dataclass becomes a msgpack array whose first element is a small ext value
(`EXT_RECORD_HEADER`, carrying the tag) followed by the field values in declaration
order. Nested dataclasses (the `Entry` values of an `AppendRequest`, the `SnapshotMeta`
of a chunk) are encoded the same way, inline: no nested `packb`, so a 20 MB entry is
copied once. Enums that are `int` or `str` subclasses (`EntryKind`, `Role`, raft's
`State`) travel as their plain value; tuples and lists both travel as arrays.

Big values out of line. A `bytes` field value of at least `ATTACHMENT_BYTES_MIN` (the
page images of a 100 MB transaction in an `Entry`, a snapshot chunk) is not copied into
the msgpack body: `encode_parts` returns the body with a small placeholder in its place
(ext `EXT_ATTACHMENT`, its length) followed by the value itself, untouched, as a part of
its own. Such a message starts with `CODEC_VERSION_ATTACHED` and the body's length:

    2 | body length: u32 big-endian | msgpack body | attachment 1 | attachment 2 | ...

so the sender hands the transport the original bytes (an AppendRequest per follower
costs no copy of its entries), and the receiver copies each attachment once, out of the
reassembled message. Measured on a 63 MB entry (2 cores): encode() took 170-195 ms per
follower, encode_parts a few microseconds. A message without a big value is encoded
exactly as before (version 1); a node from before version 2 drops a message carrying
one as undecodable.

Decoding runs msgpack with `use_list=False` (every array becomes a tuple), an ext hook
that turns a record header into a marker object, and a list hook that turns an array
starting with a marker into the registered dataclass. Each field value goes through its
converter, which checks it against the field's type hint and rebuilds what msgpack
flattened (an `int` back into `Role`, arrays into tuples). Whatever is wrong — a
version, an unknown tag, a field of the wrong type, a missing required field, a marker
anywhere but at the head of an array, truncated bytes — raises a `CodecError`
subclass, never anything else: a peer's bad message is dropped, never crashes a node
(docs/architecture.md §6).

Messages and values. A codec may name its *messages* (`messages=`): the classes a whole
encoded message may decode to, what a receiver hands on (raft steps them). Then anything
else at the top — a registered value class that only travels inside a message (an
`Entry`, a `Configuration`), or a bare msgpack value — is a `MalformedMessage` too: a
receiver never sees a value it has no handler for. Without `messages`, any value decodes
(the admin codec's extension, tests).

Ranges. msgpack carries any 64-bit integer, but a field may need less: `int_ranges`
maps a field name to the (least, greatest) value an `int` field of that name accepts in
every class the codec registers. RAFT_CODEC bounds `term` to 0..TERM_MAX: a node adopts
a peer's term and then counts elections up from it, in the 64 unsigned bits its metadata
file stores it in; a term of 2**64 - 1 would overflow that at the next election (the
node would stop).

Compatibility. Fields are positional, so a later version may append fields with
defaults: a decoder fills in the defaults of fields a shorter record lacks. Removing or
reordering fields, or reusing a tag, needs a new `CODEC_VERSION`.

Fields typed `Any` (a proposal's result, a status mapping's values) accept any value
msgpack can carry: None, bool, int (64-bit), float, str, bytes, tuples, maps and
registered dataclasses. An enum in such a position arrives as its plain value.

`RAFT_CODEC` registers every raft message and the values they carry; the runtime
(raftlite.io) extends a copy with the client messages of the actors, so this module
stays pure.
"""

import collections.abc
import dataclasses
import enum
import struct
import types
import typing
from typing import Any, Callable, Iterable, Mapping

import msgpack

from .raft_messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    Removed,
    SnapshotChunk,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from .raft_types import Configuration, Entry, HardState, Snapshot, SnapshotMeta

__all__ = [
    "ATTACHMENT_BYTES_MIN",
    "CODEC_VERSION",
    "CODEC_VERSION_ATTACHED",
    "Codec",
    "CodecError",
    "EXT_RECORD_HEADER",
    "MalformedMessage",
    "RAFT_CODEC",
    "TERM_MAX",
    "UnknownTag",
    "UnregisteredType",
    "UnsupportedVersion",
]

CODEC_VERSION = 1
CODEC_VERSION_ATTACHED = 2     # a body with big bytes values after it (see above)
EXT_RECORD_HEADER = 1
# The greatest term a peer may send: leaves 2**63 elections before the 64 unsigned bits
# a term is stored in run out.
TERM_MAX = (1 << 63) - 1
EXT_ATTACHMENT = 2             # in the body: the next attachment, its length as u64
ATTACHMENT_BYTES_MIN = 64 << 10
TAG_MAX = 0xFFFF
_BODY_LENGTH = struct.Struct(">I")
_ATTACHMENT_LENGTH = struct.Struct(">Q")


class CodecError(Exception):
    """Base of every error the codec raises."""


class UnsupportedVersion(CodecError):
    """The bytes were written by a codec version this one cannot read."""


class UnknownTag(CodecError):
    """A record carries a tag nobody registered (a newer peer, or garbage)."""


class MalformedMessage(CodecError):
    """The bytes are not a well-formed message of a registered class."""


class UnregisteredType(CodecError):
    """Encoding met a value the codec cannot carry (an unregistered class, an int
    beyond 64 bits, ...): a programming error on the sending side."""


Converter = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    convert: Converter
    required: bool


@dataclasses.dataclass(frozen=True, slots=True)
class _RecordSpec:
    tag: int
    cls: type
    header: msgpack.ExtType
    fields: tuple[_FieldSpec, ...]


class _Marker:
    """What a record header decodes to, until the list hook consumes it."""

    __slots__ = ("spec",)

    def __init__(self, spec: _RecordSpec) -> None:
        self.spec = spec


def _accept_anything(value: Any) -> Any:
    return value


def _scalar(kind: type, name: str) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is bool and kind is not bool:
            raise MalformedMessage(f"expected {name}, got a bool")
        if not isinstance(value, kind):
            raise MalformedMessage(f"expected {name}, got {type(value).__name__}")
        return value

    return convert


def _bounded_int(least: int, greatest: int) -> Converter:
    def convert(value: Any) -> Any:
        value = _SCALAR_INT(value)
        if not least <= value <= greatest:
            raise MalformedMessage(f"{value} is outside {least}..{greatest}")
        return value

    return convert


def _number(value: Any) -> Any:
    if type(value) is bool or not isinstance(value, (int, float)):
        raise MalformedMessage(f"expected a number, got {type(value).__name__}")
    return value


def _none(value: Any) -> Any:
    if value is not None:
        raise MalformedMessage(f"expected None, got {type(value).__name__}")
    return value


def _enum(enum_class: type) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, enum_class):
            return value
        if type(value) is bool:
            raise MalformedMessage(f"expected {enum_class.__name__}, got a bool")
        try:
            return enum_class(value)
        except (ValueError, TypeError):
            raise MalformedMessage(f"{value!r} is not a {enum_class.__name__}") from None

    return convert


def _instance(record_class: type) -> Converter:
    def convert(value: Any) -> Any:
        if type(value) is not record_class:
            raise MalformedMessage(f"expected {record_class.__name__}, got {type(value).__name__}")
        return value

    return convert


def _union(options: tuple[Converter, ...]) -> Converter:
    def convert(value: Any) -> Any:
        for option in options:
            try:
                return option(value)
            except MalformedMessage:
                continue
        raise MalformedMessage(f"{type(value).__name__} matches none of the allowed types")

    return convert


def _sequence(item: Converter) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, (tuple, list)):
            raise MalformedMessage(f"expected an array, got {type(value).__name__}")
        if item is _accept_anything:
            return tuple(value)
        return tuple(item(element) for element in value)

    return convert


def _fixed_tuple(items: tuple[Converter, ...]) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, (tuple, list)) or len(value) != len(items):
            raise MalformedMessage(f"expected an array of {len(items)} values")
        return tuple(item(element) for item, element in zip(items, value))

    return convert


def _mapping(key: Converter, value_converter: Converter) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise MalformedMessage(f"expected a map, got {type(value).__name__}")
        return {key(k): value_converter(v) for k, v in value.items()}

    return convert


_SCALAR_INT = _scalar(int, "an int")
_SCALARS: dict[Any, Converter] = {
    int: _SCALAR_INT,
    bool: _scalar(bool, "a bool"),
    str: _scalar(str, "a str"),
    bytes: _scalar(bytes, "bytes"),
    float: _number,
    type(None): _none,
    Any: _accept_anything,
    object: _accept_anything,
    typing.Hashable: _accept_anything,
    collections.abc.Hashable: _accept_anything,
}


def _compile(hint: Any) -> Converter:
    """A converter from a type hint; unknown hints accept anything (documented above)."""
    known = _SCALARS.get(hint)
    if known is not None:
        return known
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = tuple(_compile(argument) for argument in arguments)
        if _accept_anything in options:
            return _accept_anything
        return _union(options)
    if hint is tuple or hint is list or origin in (list, collections.abc.Sequence):
        return _sequence(_compile(arguments[0]) if arguments else _accept_anything)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return _sequence(_compile(arguments[0]))
        if arguments == ((),):
            return _fixed_tuple(())
        return _fixed_tuple(tuple(_compile(argument) for argument in arguments))
    if hint is dict or origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        if arguments:
            return _mapping(_compile(arguments[0]), _compile(arguments[1]))
        return _mapping(_accept_anything, _accept_anything)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _instance(hint)
    return _accept_anything


class _Decoding:
    """Hooks for one decode call; counts markers so a stray one is caught, and hands out
    the message's attachments in order."""

    __slots__ = ("attachments", "attachments_used", "codec", "markers_made", "markers_used")

    def __init__(self, codec: "Codec", attachments: memoryview | None = None) -> None:
        self.codec = codec
        self.markers_made = 0
        self.markers_used = 0
        self.attachments = attachments
        self.attachments_used = 0   # bytes of `attachments` handed out so far

    def ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_ATTACHMENT and self.attachments is not None and len(data) == _ATTACHMENT_LENGTH.size:
            (length,) = _ATTACHMENT_LENGTH.unpack(data)
            start = self.attachments_used
            if length > len(self.attachments) - start:
                raise MalformedMessage(f"an attachment of {length} bytes runs past the message's end")
            self.attachments_used = start + length
            return bytes(self.attachments[start:start + length])   # the one copy on this side
        if code != EXT_RECORD_HEADER or len(data) != 2:
            raise MalformedMessage(f"unknown ext type {code} ({len(data)} bytes)")
        tag = int.from_bytes(data, "big")
        spec = self.codec._by_tag.get(tag)
        if spec is None:
            raise UnknownTag(f"unknown message tag {tag}")
        self.markers_made += 1
        return _Marker(spec)

    def list_hook(self, items: tuple) -> Any:
        if not items or type(items[0]) is not _Marker:
            return items
        self.markers_used += 1
        spec = items[0].spec
        values = items[1:]
        if len(values) > len(spec.fields):
            raise MalformedMessage(f"{spec.cls.__name__}: {len(values)} values for {len(spec.fields)} fields")
        arguments = {}
        for field_spec, value in zip(spec.fields, values):
            try:
                arguments[field_spec.name] = field_spec.convert(value)
            except MalformedMessage as error:
                raise MalformedMessage(f"{spec.cls.__name__}.{field_spec.name}: {error}") from None
        for field_spec in spec.fields[len(values):]:
            if field_spec.required:
                raise MalformedMessage(f"{spec.cls.__name__}: missing field {field_spec.name}")
        try:
            return spec.cls(**arguments)
        except Exception as error:  # a class's own checks (__post_init__) refused it
            raise MalformedMessage(f"{spec.cls.__name__}: {error}") from None


class Codec:
    """A registry of message classes and the encode / decode functions over it."""

    def __init__(self, registrations: Iterable[tuple[int, type]] = (), *, messages: Iterable[type] | None = None,
                 int_ranges: Mapping[str, tuple[int, int]] | None = None) -> None:
        self._by_tag: dict[int, _RecordSpec] = {}
        self._by_type: dict[type, _RecordSpec] = {}
        # {field name: (least, greatest)} for the `int` fields of that name; see the module docstring.
        self._int_ranges: dict[str, tuple[int, int]] = dict(int_ranges or {})
        for tag, cls in registrations:
            self.register(tag, cls)
        # What `decode` may return (None: any value); see the module docstring.
        self._messages: frozenset[type] | None = None
        if messages is not None:
            self._set_messages(messages)

    def _set_messages(self, messages: Iterable[type]) -> None:
        messages = frozenset(messages)
        unregistered = [cls.__name__ for cls in messages if cls not in self._by_type]
        if unregistered:
            raise ValueError(f"messages must be registered classes: {', '.join(sorted(unregistered))}")
        self._messages = messages

    def register(self, tag: int, cls: type) -> type:
        """Register a dataclass under `tag` (1..65535); returns the class (usable as a decorator)."""
        if not isinstance(tag, int) or not 1 <= tag <= TAG_MAX:
            raise ValueError(f"tag must be an int in 1..{TAG_MAX}, got {tag!r}")
        if tag in self._by_tag:
            raise ValueError(f"tag {tag} is already taken by {self._by_tag[tag].cls.__name__}")
        if cls in self._by_type:
            raise ValueError(f"{cls.__name__} is already registered with tag {self._by_type[cls].tag}")
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"only dataclasses can be registered, not {cls!r}")
        hints = typing.get_type_hints(cls)
        fields = tuple(
            _FieldSpec(
                name=field.name,
                convert=self._converter(field.name, hints.get(field.name, Any)),
                required=field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING,
            )
            for field in dataclasses.fields(cls)
            if field.init
        )
        spec = _RecordSpec(tag, cls, msgpack.ExtType(EXT_RECORD_HEADER, tag.to_bytes(2, "big")), fields)
        self._by_tag[tag] = spec
        self._by_type[cls] = spec
        return cls

    def _converter(self, name: str, hint: Any) -> Converter:
        if hint is int and name in self._int_ranges:
            return _bounded_int(*self._int_ranges[name])
        return _compile(hint)

    def extended(self, registrations: Iterable[tuple[int, type]], *, messages: Iterable[type] | None = None,
                 int_ranges: Mapping[str, tuple[int, int]] | None = None) -> "Codec":
        """A new codec with this one's registrations plus `registrations`. It states its
        own receiving rules, `messages` and `int_ranges` (None: none), as they are about
        who sends to it: this codec's are not inherited."""
        return Codec([*self.registered().items(), *registrations], messages=messages, int_ranges=int_ranges)

    def registered(self) -> dict[int, type]:
        return {tag: spec.cls for tag, spec in sorted(self._by_tag.items())}

    def _record(self, value: Any, attachments: list[bytes] | None) -> Any:
        """msgpack's `default`: a registered dataclass as [header, field values...], its
        big bytes values moved to `attachments` (when given) with a placeholder."""
        spec = self._by_type.get(type(value))
        if spec is None:
            raise UnregisteredType(f"cannot encode {type(value).__name__}: not a registered message class")
        values = [spec.header]
        for field_spec in spec.fields:
            field_value = getattr(value, field_spec.name)
            if attachments is not None and type(field_value) is bytes and len(field_value) >= ATTACHMENT_BYTES_MIN:
                attachments.append(field_value)
                field_value = msgpack.ExtType(EXT_ATTACHMENT, _ATTACHMENT_LENGTH.pack(len(field_value)))
            values.append(field_value)
        return values

    def _pack(self, message: Any, attachments: list[bytes] | None) -> bytes:
        try:
            return msgpack.packb(message, default=lambda value: self._record(value, attachments),
                                 use_bin_type=True, datetime=False)
        except CodecError:
            raise
        except Exception as error:  # OverflowError, ValueError (nesting too deep), TypeError
            raise UnregisteredType(f"cannot encode {type(message).__name__}: {error}") from None

    def encode(self, message: Any) -> bytes:
        """`message` as bytes: the version byte, then msgpack (every value inline)."""
        return bytes((CODEC_VERSION,)) + self._pack(message, None)

    def encode_parts(self, message: Any) -> list[bytes]:
        """`message` as parts whose concatenation `decode` reads: one part when it holds
        no big bytes value (exactly `encode`'s bytes), else the head (version, body
        length, body) and then each big value itself, not copied (see the module
        docstring)."""
        attachments: list[bytes] = []
        body = self._pack(message, attachments)
        if not attachments:
            return [bytes((CODEC_VERSION,)) + body]
        if len(body) > 0xFFFFFFFF:
            raise UnregisteredType(f"cannot encode {type(message).__name__}: its body is above 4 GiB")
        return [bytes((CODEC_VERSION_ATTACHED,)) + _BODY_LENGTH.pack(len(body)) + body, *attachments]

    def decode(self, data: bytes | bytearray | memoryview) -> Any:
        """The message `data` holds; raises a CodecError subclass, never anything else."""
        if len(data) < 2:
            raise MalformedMessage(f"{len(data)} bytes is too short for a message")
        version = data[0]
        view = memoryview(data)
        if version == CODEC_VERSION:
            body, attachments = view[1:], None
        elif version == CODEC_VERSION_ATTACHED:
            if len(view) < 1 + _BODY_LENGTH.size:
                raise MalformedMessage(f"{len(data)} bytes is too short for a message")
            (body_length,) = _BODY_LENGTH.unpack_from(view, 1)
            body_start = 1 + _BODY_LENGTH.size
            if body_length > len(view) - body_start:
                raise MalformedMessage(f"a body of {body_length} bytes runs past the message's end")
            body, attachments = view[body_start:body_start + body_length], view[body_start + body_length:]
        else:
            raise UnsupportedVersion(
                f"codec version {version} (this node reads versions {CODEC_VERSION} and {CODEC_VERSION_ATTACHED})")
        decoding = _Decoding(self, attachments)
        try:
            value = msgpack.unpackb(
                body,
                use_list=False,
                raw=False,
                strict_map_key=False,
                ext_hook=decoding.ext_hook,
                list_hook=decoding.list_hook,
            )
        except CodecError:
            raise
        except Exception as error:  # truncated, extra bytes, bad UTF-8, unhashable key, ...
            raise MalformedMessage(f"undecodable message: {type(error).__name__}: {error}") from None
        if decoding.markers_made != decoding.markers_used:
            raise MalformedMessage("a record header outside the head of an array")
        if attachments is not None and decoding.attachments_used != len(attachments):
            raise MalformedMessage(f"{len(attachments) - decoding.attachments_used} bytes after the last attachment")
        if self._messages is not None and type(value) not in self._messages:
            raise MalformedMessage(f"a {type(value).__name__} is not a message")
        return value


# Tags 1..63: raft messages; 64..127: values they carry. raftlite.io adds the client
# messages from 128 on. Never reuse a tag within a codec version. Only the raft messages
# decode as a whole message: a peer's `Entry` or bare int never reaches raft's step.
_RAFT_MESSAGES = (
    VoteRequest, VoteResponse, AppendRequest, AppendResponse, HeartbeatRequest, HeartbeatResponse, SnapshotChunk,
    SnapshotResponse, TimeoutNow, Removed,
)
RAFT_CODEC = Codec([
    (1, VoteRequest),
    (2, VoteResponse),
    (3, AppendRequest),
    (4, AppendResponse),
    (5, HeartbeatRequest),
    (6, HeartbeatResponse),
    (7, SnapshotChunk),
    (8, SnapshotResponse),
    (9, TimeoutNow),
    (10, Removed),
    (64, Entry),
    (65, HardState),
    (66, Configuration),
    (67, SnapshotMeta),
    (68, Snapshot),
], messages=_RAFT_MESSAGES, int_ranges={"term": (0, TERM_MAX)})
