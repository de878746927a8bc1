"""Every random choice of a run derives from its one seed.

Each consumer (the network, one node's disk, the nemesis, ...) gets its own stream,
derived from (seed, name) through random.Random's string seeding, which hashes with
SHA-512 and so does not depend on PYTHONHASHSEED. Named streams keep one consumer's
draws from shifting another's when code changes in only one place.
"""

import random

__all__ = ["derive_rng"]


def derive_rng(seed: int, name: str) -> random.Random:
    return random.Random(f"raftlite/{seed}/{name}")
