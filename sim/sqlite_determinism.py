"""SQLite's randomness under the simulator: drawn from the run's seed (docs/architecture.md §4).

SQLite's PRNG (behind `random()`, `randomblob()` and the WAL salts) is process-wide and
seeds itself from the *default* VFS's xRandomness. For a run to depend only on
(seed, code), the simulator registers a default VFS whose xRandomness draws from a
stream derived from the seed, and makes SQLite reseed from it at the start of each run
(`apsw.randomness(0)`). Time functions are per node: the database actor's own VFS
answers xCurrentTimeInt64 from the node's (simulated, skewable) clock.
"""

import apsw

from .rng import derive_rng

__all__ = ["seed_sqlite"]


class _SeededDefaultVfs(apsw.VFS):
    def __init__(self, seed: int) -> None:
        super().__init__("raftlite-sim-default", base="unix", makedefault=True)
        self.rng = derive_rng(seed, "sqlite-randomness")

    def xRandomness(self, numbytes: int) -> bytes:
        return self.rng.randbytes(numbytes)


_current: _SeededDefaultVfs | None = None


def seed_sqlite(seed: int) -> None:
    """Make SQLite's randomness in this process follow `seed` from now on."""
    global _current
    if _current is not None:
        _current.unregister()
    _current = _SeededDefaultVfs(seed)
    apsw.randomness(0)
