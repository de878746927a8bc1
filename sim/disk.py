"""The simulated disk: one per node, surviving the node's crashes.

Model (FoundationDB's AsyncFileNonDurable and TigerBeetle's testing storage in spirit):

- Operations complete in submission order after a latency drawn from the profile; the
  effect of an operation happens at its completion. A crash between "submitted" and
  "done" means a truncate, rename or delete never happened, while a write in flight
  meets the same fates as an unsynced one (below).
- Each file has a *volatile* view (what reads see: every completed write) and a *durable*
  image (what survives a crash). A completed `Sync` makes every completed write durable;
  a `durable=True` write is durable when it completes; truncate/rename/delete are durable
  when they complete.
- On a crash each completed-but-unsynced write, and each write still in flight (durable
  or not: the device may have taken any of its sectors; garbage is not among its fates,
  sectors being atomic), independently survives, is lost, is torn
  at 512-byte sector granularity (some of its sectors reach the platter, others do not),
  or is replaced by garbage, with the profile's weights (or one forced mode).
- Faults on demand: EIO on the next N operations or with a probability, a capacity that
  makes writes fail with ENOSPC, and bit flips in durable data at rest that spare each
  file's last durable write (a flipped bit there is indistinguishable from a torn write;
  see docs/architecture.md §3) and whatever else the simulation's guard forbids.
- Hooks for the fault points at persistence boundaries (`raftlite.sim.fault_points`):
  `on_submit` / `on_perform` observe each submission (before its latency is drawn) and
  each completion, `persisting` says
  whether a persist (a durable write or a sync) is in flight, `persist_delay_ms` slows
  every persist, and a command in `doomed` fails with EIO. None of them draws from the
  disk's random stream, so a run without fault points is unchanged.
"""

from dataclasses import dataclass, field, replace
from typing import Callable

from ..actors.contract import Delete, DiskCommand, IoResult, Read, Rename, Sync, Truncate, Write

__all__ = ["CRASH_MODES", "DiskProfile", "SECTOR_BYTES", "SimDisk", "SimFile"]

SECTOR_BYTES = 512
_IN_FLIGHT = "in flight"   # marks a pending write that had not completed at the crash
CRASH_MODES = ("keep", "lose", "tear", "garbage")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskProfile:
    write_latency_ms: tuple[float, float] = (0.02, 0.15)
    sync_latency_ms: tuple[float, float] = (0.2, 1.5)
    read_latency_ms: tuple[float, float] = (0.02, 0.1)
    metadata_latency_ms: tuple[float, float] = (0.1, 0.8)
    capacity_bytes: int | None = None
    eio_probability: float = 0.0
    # Weights of what happens to each unsynced write when the node crashes.
    crash_weights: tuple[float, float, float, float] = (0.25, 0.45, 0.2, 0.1)  # keep, lose, tear, garbage


@dataclass(slots=True)
class SimFile:
    data: bytearray = field(default_factory=bytearray)      # volatile view
    durable: bytearray = field(default_factory=bytearray)   # survives a crash
    # Completed writes not yet made durable by a sync: (offset, bytes, already_durable).
    # Durable writes are kept here too while older unsynced ones exist, so that replaying
    # the list in order after a crash never puts stale bytes over newer durable ones.
    pending: list[tuple[int, bytes, bool | str]] = field(default_factory=list)   # str: _IN_FLIGHT
    last_durable_write: tuple[int, int] = (0, 0)
    # For each observer of the durable image (a durability checker, by token): the lowest
    # offset changed since it last read the file, or None. Lets it re-read only what
    # changed; an observer not listed yet reads the whole file.
    durable_changed_from: dict[object, int | None] = field(default_factory=dict)

    def durable_changed(self, offset: int) -> None:
        changed = self.durable_changed_from
        for observer, low in changed.items():
            if low is None or offset < low:
                changed[observer] = offset

    def take_durable_change(self, observer: object) -> int | None:
        """The lowest offset changed since `observer` last asked (0 the first time), and
        mark the file read up to now for it."""
        low = self.durable_changed_from.get(observer, 0)
        self.durable_changed_from[observer] = None
        return low


def _is_persist(command: DiskCommand) -> bool:
    """A durable write or a sync: what makes data survive a crash."""
    return (type(command) is Write and command.durable) or type(command) is Sync


def _put(buffer: bytearray, offset: int, data: bytes) -> None:
    end = offset + len(data)
    if end > len(buffer):
        buffer.extend(bytes(end - len(buffer)))
    buffer[offset:end] = data


class SimDisk:
    def __init__(self, rng, profile: DiskProfile = DiskProfile()) -> None:
        self.rng = rng
        self.profile = profile
        self.files: dict[str, SimFile] = {}
        self.busy_until_ms = 0.0
        self.in_flight: dict[int, Write] = {}   # id -> submitted write not yet performed, in order
        self.eio_next_ops = 0
        self.operations = 0
        self.syncs = 0
        self.persisting: set[int] = set()    # ids of durable writes and syncs in flight
        self.persist_delay_ms = 0.0          # extra latency of every persist (a slow device)
        self.doomed: set[int] = set()        # ids of submitted commands that will fail with EIO
        self.on_submit: Callable[[DiskCommand], None] | None = None
        self.on_perform: Callable[[DiskCommand, IoResult], None] | None = None

    # -- timing --------------------------------------------------------------------------

    def completion_time(self, command: DiskCommand, now_ms: float) -> float:
        # The runtime asks this once per submission, first: the hook sees the command
        # before its latency is fixed (a slow-persist fault point may lengthen it).
        if self.on_submit is not None:
            self.on_submit(command)
        match command:
            case Write(durable=True):
                low, high = self.profile.sync_latency_ms
            case Write():
                low, high = self.profile.write_latency_ms
            case Sync():
                low, high = self.profile.sync_latency_ms
            case Read():
                low, high = self.profile.read_latency_ms
            case _:
                low, high = self.profile.metadata_latency_ms
        start = max(now_ms, self.busy_until_ms)
        self.busy_until_ms = start + self.rng.uniform(low, high)
        if self.persist_delay_ms and _is_persist(command):
            self.busy_until_ms += self.persist_delay_ms
        return self.busy_until_ms

    # -- effects (at completion) ---------------------------------------------------------

    def used_bytes(self) -> int:
        return sum(len(f.data) for f in self.files.values())

    def submitted(self, command: DiskCommand) -> None:
        """Note a submission: a write in flight is at the crash's mercy until performed."""
        if type(command) is Write:
            self.in_flight[id(command)] = command
        if _is_persist(command):
            self.persisting.add(id(command))

    def forget_in_flight(self) -> None:
        """The process stopped without a crash: its in-flight operations never complete."""
        self.in_flight.clear()
        self.persisting.clear()
        self.doomed.clear()

    def has_unsynced_writes(self) -> bool:
        """Whether a completed write is not yet durable (a crash now would put it at risk)."""
        return any(not already_durable for file in self.files.values() for _, _, already_durable in file.pending)

    def perform(self, command: DiskCommand) -> IoResult:
        result = self._perform(command)
        if self.on_perform is not None:
            self.on_perform(command, result)
        return result

    def _perform(self, command: DiskCommand) -> IoResult:
        self.in_flight.pop(id(command), None)
        self.persisting.discard(id(command))
        self.operations += 1
        if self.doomed and id(command) in self.doomed:
            self.doomed.discard(id(command))
            return IoResult(error="EIO")
        if self.eio_next_ops > 0:
            self.eio_next_ops -= 1
            return IoResult(error="EIO")
        if self.profile.eio_probability and self.rng.random() < self.profile.eio_probability:
            return IoResult(error="EIO")
        match command:
            case Write(file=name, offset=offset, data=data, durable=durable):
                return self._write(name, offset, data, durable)
            case Read(file=name, offset=offset, length=length):
                file = self.files.get(name)
                if file is None:
                    return IoResult(error="ENOENT")
                return IoResult(data=bytes(file.data[offset : offset + length]))
            case Sync(file=name):
                file = self.files.get(name)
                if file is None:
                    return IoResult(error="ENOENT")
                self._make_durable(file)
                self.syncs += 1
                return IoResult()
            case Truncate(file=name, size=size):
                file = self.files.setdefault(name, SimFile())
                self._make_durable(file)
                file.durable_changed(size)
                for buffer in (file.data, file.durable):
                    if size < len(buffer):
                        del buffer[size:]
                    else:
                        buffer.extend(bytes(size - len(buffer)))
                return IoResult()
            case Rename(source=source, target=target):
                if source not in self.files:
                    return IoResult(error="ENOENT")
                self.files[target] = self.files.pop(source)
                return IoResult()
            case Delete(file=name):
                if self.files.pop(name, None) is None:
                    return IoResult(error="ENOENT")
                return IoResult()
        raise TypeError(f"not a disk command: {command!r}")

    def _write(self, name: str, offset: int, data: bytes, durable: bool) -> IoResult:
        file = self.files.setdefault(name, SimFile())
        growth = max(0, offset + len(data) - len(file.data))
        capacity = self.profile.capacity_bytes
        if capacity is not None and growth and self.used_bytes() + growth > capacity:
            return IoResult(error="ENOSPC")
        _put(file.data, offset, data)
        if durable:
            _put(file.durable, offset, data)
            file.durable_changed(offset)
            file.last_durable_write = (offset, offset + len(data))
            if file.pending:
                file.pending.append((offset, data, True))
        else:
            file.pending.append((offset, data, False))
        return IoResult()

    def _make_durable(self, file: SimFile) -> None:
        for offset, data, _ in file.pending:
            _put(file.durable, offset, data)
            file.durable_changed(offset)
            file.last_durable_write = (offset, offset + len(data))
        file.pending.clear()

    # -- crash ---------------------------------------------------------------------------

    def crash(self, mode: str | None = None) -> list[dict]:
        """Lose volatile state. Returns what happened to each unsynced write (for the trace)."""
        effects = []
        for write in self.in_flight.values():
            self.files.setdefault(write.file, SimFile()).pending.append((write.offset, write.data, _IN_FLIGHT))
        self.in_flight.clear()
        self.persisting.clear()
        self.doomed.clear()
        for name in sorted(self.files):
            file = self.files[name]
            for offset, data, _ in file.pending:
                file.durable_changed(offset)
            for offset, data, already_durable in file.pending:
                fate = "keep" if already_durable is True else (mode or self.rng.choices(CRASH_MODES, self.profile.crash_weights)[0])
                if already_durable is _IN_FLIGHT and fate == "garbage":
                    # A write the device was still taking: each sector landed whole or
                    # not at all (sector atomicity); only bytes left unsynced in a
                    # cache are at risk of coming back as garbage.
                    fate = "tear"
                if fate == "keep":
                    _put(file.durable, offset, data)
                elif fate == "tear":
                    first = offset // SECTOR_BYTES
                    last = (offset + len(data) - 1) // SECTOR_BYTES
                    kept = [s for s in range(first, last + 1) if self.rng.random() < 0.5]
                    for sector in kept:
                        start = max(offset, sector * SECTOR_BYTES)
                        end = min(offset + len(data), (sector + 1) * SECTOR_BYTES)
                        _put(file.durable, start, data[start - offset : end - offset])
                    fate = f"tear:{len(kept)}/{last - first + 1}"
                elif fate == "garbage":
                    _put(file.durable, offset, self.rng.randbytes(len(data)))
                effects.append({"file": name, "offset": offset, "bytes": len(data), "fate": fate})
            file.pending.clear()
            file.data = bytearray(file.durable)
        self.busy_until_ms = 0.0
        return effects

    def durable_files(self) -> dict[str, bytes]:
        return {name: bytes(self.files[name].durable) for name in sorted(self.files)}

    # -- faults at rest ------------------------------------------------------------------

    def flip_bit(self, guard: Callable[[str, int], bool] | None = None, attempts: int = 16) -> tuple[str, int, int] | None:
        """Flip one bit of durable data at rest; returns (file, offset, bit) or None."""
        names = [n for n in sorted(self.files) if self.files[n].durable]
        for _ in range(attempts if names else 0):
            name = self.rng.choice(names)
            file = self.files[name]
            offset = self.rng.randrange(len(file.durable))
            spared_start, spared_end = file.last_durable_write
            if spared_start <= offset < spared_end or file.pending:
                continue  # the last durable write, or a file with writes in flight
            if guard is not None and not guard(name, offset):
                continue
            bit = self.rng.randrange(8)
            file.durable[offset] ^= 1 << bit
            file.durable_changed(offset)
            file.data[offset] ^= 1 << bit
            return name, offset, bit
        return None

    def set_capacity(self, capacity_bytes: int | None) -> None:
        self.profile = replace(self.profile, capacity_bytes=capacity_bytes)
