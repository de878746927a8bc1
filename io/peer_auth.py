"""Peer authentication: the cluster key, its file, and the handshake that proves it.

Theory of operation
-------------------
Every node of a cluster holds the same secret, the cluster key (32 random bytes). A
connection between two nodes carries raft messages only after both ends have proved
they hold a key of the cluster, with a mutual challenge–response (HMAC-SHA256); the
key itself never crosses the network.

The dialler D speaks first, after the 8-byte `PEER_AUTH_MAGIC` word (io/transport.py):

    D -> S  hello   D's node id (8, little-endian) | D's nonce (32)
                    | the number of D's keys (1) | their key ids (8 each, current first)
    S -> D  answer  status (1: 0 ok, 1 no key in common) | S's node id (8) | S's nonce (32)
                    | the chosen key id (8) | S's proof (32)
    D -> S  proof   D's proof (32)

A key id is the first 8 bytes of HMAC(key, "raftlite key id"): it names a key without
revealing it. S chooses the key both hold, its current one when D has it, else its
previous one; with no key in common it answers status 1 and closes. Each proof is

    HMAC-SHA256(key, label | direction | key id | D's id | S's id | D's nonce | S's nonce)

with direction "server" or "dialler", so:
- neither proof can be made without the key;
- both nonces are fresh per connection, so a recorded transcript replayed to S (or to
  D) fails: the other side's nonce differs;
- the direction label keeps S's proof from being reflected back to S as D's proof;
- both node ids are bound, so the dialler's id is authenticated (the transport then
  attributes every message on the connection to it) and D checks that the node it
  reached is the one it meant to dial;
- the key id stands for the cluster: one key per cluster (a key-derived cluster tag).

Proofs are compared with `hmac.compare_digest` (constant time). The functions below are
pure except for the nonces (drawn from `secrets` unless given, for tests); the
transport does the reading, writing, timeout and logging.

Rotation. A key file holds the current key and optionally a previous one, one hex key
per line (64 hex digits = 32 bytes), current first; `#` comments and blank lines are
ignored. A node proves itself with the current key whenever the other end has it and
accepts the previous one meanwhile, so nodes can be restarted one at a time with
"new, old", then with "new" alone (README, "Peer authentication").
"""

import hashlib
import hmac
import os
import secrets
import stat
import struct
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "ANSWER_BYTES", "KEY_BYTES", "NONCE_BYTES", "PROOF_BYTES", "ClusterKeys", "DiallerHandshake", "PeerAuthError",
    "ServerHandshake", "create_cluster_key_file", "dialler_hello", "dialler_finish", "hello_bytes", "key_id",
    "load_cluster_key_file", "server_answer", "server_finish",
]

KEY_BYTES = 32
KEY_BYTES_MIN = 16
KEYS_MAX = 2          # current and previous
NONCE_BYTES = 32
KEY_ID_BYTES = 8
PROOF_BYTES = 32
_NODE_ID = struct.Struct("<Q")
HELLO_FIXED_BYTES = _NODE_ID.size + NONCE_BYTES + 1
ANSWER_BYTES = 1 + _NODE_ID.size + NONCE_BYTES + KEY_ID_BYTES + PROOF_BYTES
_LABEL = b"raftlite peer auth v1|"
_KEY_ID_LABEL = b"raftlite key id"
STATUS_OK, STATUS_NO_COMMON_KEY = 0, 1


class PeerAuthError(Exception):
    """The other end did not prove it holds a key of this cluster (the message says how)."""


def key_id(key: bytes) -> bytes:
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_BYTES]


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """The keys a node accepts, its current key first (then, during a rotation, the
    previous one)."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.keys) <= KEYS_MAX:
            raise ValueError(f"a cluster key file holds 1 or {KEYS_MAX} keys (current, then previous), not {len(self.keys)}")
        for key in self.keys:
            if not isinstance(key, bytes) or len(key) < KEY_BYTES_MIN:
                raise ValueError(f"a cluster key must be at least {KEY_BYTES_MIN} bytes")

    @classmethod
    def of(cls, key: "bytes | Sequence[bytes] | ClusterKeys") -> "ClusterKeys":
        """From one key, a sequence (current first) or ClusterKeys; ValueError when unusable."""
        if isinstance(key, ClusterKeys):
            return key
        if isinstance(key, (bytes, bytearray)):
            return cls((bytes(key),))
        return cls(tuple(bytes(part) for part in key))

    @property
    def ids(self) -> tuple[bytes, ...]:
        return tuple(key_id(key) for key in self.keys)

    def by_id(self, wanted: bytes) -> bytes | None:
        for key in self.keys:
            if hmac.compare_digest(key_id(key), wanted):
                return key
        return None


# -- the key file ----------------------------------------------------------------------

def load_cluster_key_file(path: str) -> ClusterKeys:
    """The keys in `path`; ValueError with a one-line message when it is missing or bad."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read(64 << 10)
    except FileNotFoundError:
        raise ValueError(f"cluster key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read cluster key file {path}: {getattr(error, 'strerror', None) or error}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            keys.append(bytes.fromhex(line))
        except ValueError:
            raise ValueError(f"cluster key file {path}, line {number}: not a hex key") from None
    if not keys:
        raise ValueError(f"cluster key file {path} holds no key")
    try:
        return ClusterKeys(tuple(keys))
    except ValueError as error:
        raise ValueError(f"cluster key file {path}: {error}") from None


def key_file_too_open(path: str) -> bool:
    """Whether group or others may read the file (the caller warns: the key is a secret)."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def create_cluster_key_file(path: str) -> ClusterKeys:
    """Write a new key (32 bytes from `secrets`, as one hex line) to `path`, created with
    mode 0600 and never overwriting a file that exists (FileExistsError)."""
    key = secrets.token_bytes(KEY_BYTES)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, key.hex().encode() + b"\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return ClusterKeys((key,))


# -- the handshake ---------------------------------------------------------------------

def _proof(key: bytes, direction: bytes, chosen_id: bytes, dialler_id: int, server_id: int,
           dialler_nonce: bytes, server_nonce: bytes) -> bytes:
    transcript = b"".join((
        _LABEL, direction, b"|", chosen_id, _NODE_ID.pack(dialler_id), _NODE_ID.pack(server_id),
        dialler_nonce, server_nonce,
    ))
    return hmac.new(key, transcript, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class DiallerHandshake:
    keys: ClusterKeys
    dialler_id: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class ServerHandshake:
    key: bytes
    chosen_id: bytes
    dialler_id: int
    server_id: int
    dialler_nonce: bytes
    server_nonce: bytes


def dialler_hello(keys: ClusterKeys, dialler_id: int, nonce: bytes | None = None) -> tuple[bytes, DiallerHandshake]:
    """The hello the dialler sends after the magic, and its state for `dialler_finish`."""
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    ids = keys.ids
    hello = _NODE_ID.pack(dialler_id) + nonce + bytes([len(ids)]) + b"".join(ids)
    return hello, DiallerHandshake(keys, dialler_id, nonce)


def hello_bytes(fixed_part: bytes) -> int:
    """How many more bytes the hello holds after its first HELLO_FIXED_BYTES (the key ids);
    PeerAuthError when the count is out of bounds."""
    count = fixed_part[HELLO_FIXED_BYTES - 1]
    if not 1 <= count <= KEYS_MAX:
        raise PeerAuthError(f"a hello with {count} key ids")
    return count * KEY_ID_BYTES


def server_answer(keys: ClusterKeys, server_id: int, hello: bytes,
                  nonce: bytes | None = None) -> tuple[bytes, ServerHandshake | None]:
    """The answer to a whole hello, and the state for `server_finish`; the state is None
    when the answer refuses (no key in common: send it, then close)."""
    if len(hello) < HELLO_FIXED_BYTES or len(hello) != HELLO_FIXED_BYTES + hello_bytes(hello[:HELLO_FIXED_BYTES]):
        raise PeerAuthError("a truncated hello")
    (dialler_id,) = _NODE_ID.unpack_from(hello)
    dialler_nonce = hello[_NODE_ID.size:_NODE_ID.size + NONCE_BYTES]
    offered = [hello[start:start + KEY_ID_BYTES] for start in range(HELLO_FIXED_BYTES, len(hello), KEY_ID_BYTES)]
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    for key, own_id in zip(keys.keys, keys.ids):   # the current key first
        if any(hmac.compare_digest(own_id, candidate) for candidate in offered):
            proof = _proof(key, b"server", own_id, dialler_id, server_id, dialler_nonce, nonce)
            answer = bytes([STATUS_OK]) + _NODE_ID.pack(server_id) + nonce + own_id + proof
            return answer, ServerHandshake(key, own_id, dialler_id, server_id, dialler_nonce, nonce)
    refusal = bytes([STATUS_NO_COMMON_KEY]) + bytes(ANSWER_BYTES - 1)
    return refusal, None


def dialler_finish(state: DiallerHandshake, answer: bytes, expected_server_id: int) -> bytes:
    """Check the server's answer; the dialler's proof to send. PeerAuthError when the
    server refused, is not `expected_server_id`, or did not prove the key."""
    if len(answer) != ANSWER_BYTES:
        raise PeerAuthError("a truncated answer")
    if answer[0] == STATUS_NO_COMMON_KEY:
        raise PeerAuthError("the peer holds none of this node's cluster keys (a wrong --cluster-key-file?)")
    if answer[0] != STATUS_OK:
        raise PeerAuthError(f"an answer with status {answer[0]}")
    position = 1
    (server_id,) = _NODE_ID.unpack_from(answer, position)
    position += _NODE_ID.size
    server_nonce = answer[position:position + NONCE_BYTES]
    position += NONCE_BYTES
    chosen_id = answer[position:position + KEY_ID_BYTES]
    position += KEY_ID_BYTES
    server_proof = answer[position:]
    key = state.keys.by_id(chosen_id)
    if key is None:
        raise PeerAuthError("the peer chose a key this node does not hold")
    expected = _proof(key, b"server", chosen_id, state.dialler_id, server_id, state.nonce, server_nonce)
    if not hmac.compare_digest(expected, server_proof):
        raise PeerAuthError("the peer's proof of the cluster key is wrong")
    if server_id != expected_server_id:
        raise PeerAuthError(f"the peer at that address is node {server_id}, not node {expected_server_id}")
    return _proof(key, b"dialler", chosen_id, state.dialler_id, server_id, state.nonce, server_nonce)


def server_finish(state: ServerHandshake, proof: bytes) -> int:
    """Check the dialler's proof; the dialler's (now authenticated) node id."""
    if len(proof) != PROOF_BYTES:
        raise PeerAuthError("a truncated proof")
    expected = _proof(state.key, b"dialler", state.chosen_id, state.dialler_id, state.server_id,
                      state.dialler_nonce, state.server_nonce)
    if not hmac.compare_digest(expected, proof):
        raise PeerAuthError("the dialler's proof of the cluster key is wrong")
    return state.dialler_id
