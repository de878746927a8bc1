"""The simulated network: per-link latency, loss, duplication, reordering, bandwidth,
partitions (symmetric and one-way), and clogging.

A message sent from `src` to `dst` is judged at send time by the link's profile: it may be
dropped (loss, a full link queue), duplicated, or delayed (base latency + jitter, extra
delay when reordered, serialisation at the link's bandwidth behind earlier messages).
Partitions are checked at *delivery* time, like a firewall rule dropping packets: a
message in flight when a partition starts is lost; one sent during a partition is lost
even if the partition heals before it would have arrived. A clogged node's messages (in
either direction) are held until the clog ends, then delivered (FoundationDB's clogging).

Partition shapes follow Jepsen's nemeses: isolate one node, random halves, majorities
ring, bridge, and one-way cuts. A partition is a set of blocked directed (src, dst) pairs.
"""

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

__all__ = [
    "LinkProfile",
    "Network",
    "bridge",
    "halves",
    "isolate",
    "majorities_ring",
    "one_way",
    "symmetric_cut",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkProfile:
    latency_ms: float = 0.5            # one-way base latency
    jitter_ms: float = 0.3             # exponential jitter with this mean
    loss_probability: float = 0.0
    duplicate_probability: float = 0.0
    reorder_probability: float = 0.0   # extra delay of up to reorder_delay_ms
    reorder_delay_ms: float = 5.0
    bandwidth_bytes_per_ms: float = 125_000.0  # 1 Gbit/s
    # Tail drop beyond this many bytes awaiting the wire; above the largest message
    # (Config.message_bytes_max) so that one big transaction can always get through.
    queue_bytes_max: int = 128 << 20


Pair = tuple[int, int]


def symmetric_cut(side_a: Iterable[int], side_b: Iterable[int]) -> frozenset[Pair]:
    side_a, side_b = list(side_a), list(side_b)
    return frozenset((a, b) for a in side_a for b in side_b) | frozenset((b, a) for a in side_a for b in side_b)


def isolate(node: int, nodes: Sequence[int]) -> frozenset[Pair]:
    return symmetric_cut([node], [n for n in nodes if n != node])


def one_way(sources: Iterable[int], targets: Iterable[int]) -> frozenset[Pair]:
    """Messages from `sources` to `targets` are lost; the reverse direction still works."""
    return frozenset((s, t) for s in sources for t in targets if s != t)


def halves(nodes: Sequence[int], rng) -> frozenset[Pair]:
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    cut = len(shuffled) // 2
    return symmetric_cut(shuffled[:cut], shuffled[cut:])


def majorities_ring(nodes: Sequence[int], rng) -> frozenset[Pair]:
    """Every node hears from a majority (itself and the next ones on a shuffled ring), and
    no two nodes hear from the same majority (Jepsen's majorities-ring)."""
    ring = list(nodes)
    rng.shuffle(ring)
    size = len(ring)
    majority = size // 2 + 1
    blocked = set()
    for index, node in enumerate(ring):
        heard = {ring[(index + step) % size] for step in range(majority)}
        blocked.update((src, node) for src in ring if src not in heard)
    return frozenset(blocked)


def bridge(nodes: Sequence[int], rng) -> frozenset[Pair]:
    """Two halves that cannot talk, and one node in the middle that talks to both."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    middle = shuffled[0]
    rest = shuffled[1:]
    cut = len(rest) // 2
    del middle  # the bridge node is simply absent from both sides of the cut
    return symmetric_cut(rest[:cut], rest[cut:])


class Network:
    def __init__(self, rng, profile: LinkProfile = LinkProfile()) -> None:
        self.rng = rng
        self.default_profile = profile
        self.link_profiles: dict[Pair, LinkProfile] = {}
        self.blocked: frozenset[Pair] = frozenset()
        self.clogged_until_ms: dict[int, float] = {}
        self._link_busy_until_ms: dict[Pair, float] = {}
        self.sent = self.dropped = self.duplicated = 0

    def profile(self, src: int, dst: int) -> LinkProfile:
        return self.link_profiles.get((src, dst), self.default_profile)

    def set_profile(self, profile: LinkProfile, links: Iterable[Pair] | None = None) -> None:
        if links is None:
            self.default_profile = profile
            self.link_profiles.clear()
        else:
            for link in links:
                self.link_profiles[link] = profile

    def adjust(self, **changes) -> None:
        """Change fields of the default profile (and of every per-link profile)."""
        self.default_profile = replace(self.default_profile, **changes)
        self.link_profiles = {link: replace(p, **changes) for link, p in self.link_profiles.items()}

    # -- partitions and clogs ------------------------------------------------------------

    def partition(self, blocked: frozenset[Pair]) -> None:
        self.blocked = self.blocked | blocked

    def heal(self) -> None:
        self.blocked = frozenset()

    def can_deliver(self, src: int, dst: int) -> bool:
        return (src, dst) not in self.blocked

    def clog(self, node: int, until_ms: float) -> None:
        self.clogged_until_ms[node] = max(until_ms, self.clogged_until_ms.get(node, 0.0))

    # -- transmission --------------------------------------------------------------------

    def plan(self, src: int, dst: int, size_bytes: int, now_ms: float) -> tuple[list[float], str | None]:
        """Arrival times for one send (two if duplicated), or ([], why it was dropped)."""
        self.sent += 1
        profile = self.profile(src, dst)
        rng = self.rng
        if profile.loss_probability and rng.random() < profile.loss_probability:
            self.dropped += 1
            return [], "loss"
        link = (src, dst)
        busy_until = max(now_ms, self._link_busy_until_ms.get(link, 0.0))
        backlog_bytes = (busy_until - now_ms) * profile.bandwidth_bytes_per_ms
        if backlog_bytes + size_bytes > profile.queue_bytes_max:
            self.dropped += 1
            return [], "queue-full"
        departed = busy_until + size_bytes / profile.bandwidth_bytes_per_ms
        self._link_busy_until_ms[link] = departed
        copies = 1
        if profile.duplicate_probability and rng.random() < profile.duplicate_probability:
            copies = 2
            self.duplicated += 1
        arrivals = []
        for _ in range(copies):
            arrival = departed + profile.latency_ms + rng.expovariate(1.0 / profile.jitter_ms) if profile.jitter_ms else departed + profile.latency_ms
            if profile.reorder_probability and rng.random() < profile.reorder_probability:
                arrival += rng.uniform(0.0, profile.reorder_delay_ms)
            clogged_until = max(self.clogged_until_ms.get(src, 0.0), self.clogged_until_ms.get(dst, 0.0))
            arrivals.append(max(arrival, clogged_until))
        return arrivals, None
