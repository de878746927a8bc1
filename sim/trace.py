"""The run's trace: every event as a JSON line, a stable hash, and a plain-text timeline.

Each event is `{"t": sim_ms, "n": node or null, "ev": kind, ...fields}` with fields in
a fixed order; values are ints, floats, strings, lists or the repr of frozen messages,
all deterministic for a given (seed, code). The hash is SHA-256 over a canonical text
form of the same events (their repr), so two runs agree exactly when their traces do.
"""

import hashlib
import json
from typing import Any, Iterable, TextIO

__all__ = ["Trace", "format_timeline_line"]

# Events shown in the human timeline (the full trace has every send and delivery too).
TIMELINE_EVENTS = frozenset({
    "start", "crash", "restart", "halt", "pause", "resume", "partition", "heal", "clog",
    "unclog", "network", "skew", "drift", "disk-fault", "disk-full", "corrupt", "nemesis",
    "note", "invariant", "leader", "event",
})

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=repr)


class Trace:
    def __init__(self, *, keep: bool = False, sink: TextIO | None = None) -> None:
        self._hash = hashlib.sha256()
        self._unhashed: list[str] = []
        self.keep = keep
        self.lines: list[str] = []
        self.sink = sink
        self.count = 0

    def record(self, time_ms: float, node: int | None, kind: str, fields: dict[str, Any] | None = None) -> None:
        # The hash reads repr() of the event (C-fast, deterministic for these values),
        # fed to SHA-256 in blocks; JSON is produced only when someone keeps or writes
        # the lines.
        self._unhashed.append(repr((time_ms, node, kind, fields)))
        if len(self._unhashed) >= 4096:
            self._flush_hash()
        self.count += 1
        if self.keep or self.sink is not None:
            event = {"t": time_ms, "n": node, "ev": kind}
            if fields:
                event.update(fields)
            line = _encoder.encode(event)
            if self.keep:
                self.lines.append(line)
            if self.sink is not None:
                self.sink.write(line + "\n")

    def _flush_hash(self) -> None:
        self._hash.update("\n".join(self._unhashed).encode())
        self._unhashed.clear()

    def hexdigest(self) -> str:
        self._flush_hash()
        return self._hash.hexdigest()

    def events(self) -> Iterable[dict[str, Any]]:
        return (json.loads(line) for line in self.lines)

    def timeline(self, *, everything: bool = False) -> str:
        return "\n".join(
            format_timeline_line(event)
            for event in self.events()
            if everything or event["ev"] in TIMELINE_EVENTS
        )


def format_timeline_line(event: dict[str, Any]) -> str:
    node = f"n{event['n']}" if event["n"] is not None else "--"
    details = " ".join(f"{key}={value}" for key, value in event.items() if key not in ("t", "n", "ev"))
    return f"{event['t']:>12.3f}ms  {node:<4} {event['ev']:<11} {details}".rstrip()
