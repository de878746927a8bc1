"""Histories: the operation model, and Jepsen's two text formats (EDN op maps, log lines).

Theory of operation
-------------------
A history is what clients saw, in the order they saw it: a list of `Event`s. A client
process *invokes* an operation (type ``invoke``) and later learns its outcome:

    ok     it took effect, and ``value`` holds its result (a read's value, ...);
    fail   it certainly did not take effect;
    info   the outcome is unknown: it may or may not have taken effect, and if it did,
           at any moment after its invocation (even after the history ends). An
           invocation that never completes counts as ``info``.

A process runs one operation at a time, so `pair_operations` matches each completion
with its process's open invocation and yields `Operation`s, which is what the checkers
judge. Real-time order comes from positions in the history (``index``), exactly as
Knossos and Porcupine use it: operation A precedes B when A's completion comes before
B's invocation. ``time`` (nanoseconds) is carried along for reports only.

Events that belong to no client (Jepsen's nemesis writes ``:info`` lines with no
invocation, under ``:process :nemesis``) are kept in the history but pair with nothing.

A completion without ``:process`` (Elle's histories may hold only completions) is an
operation on its own: it is `timeless` (its invocation, and so its real-time order,
is unknown) and stands as both invocation and completion, under a process number of
its own (negative, so no real process has it). Only checkers that need no real-time
order accept them (`raftlite check`: bank, and list-append with
``--consistency serializable``); an invocation without ``:process`` cannot be paired
and is refused.

Two text formats are read, and the format is detected from the text:

    EDN    one op map per line, or one vector/list of op maps (Knossos' data files):
           ``{:type :invoke, :f :cas, :value [1 2], :process 3, :time 123}``;
    log    Jepsen's ``jepsen.util`` log lines, as in Porcupine's etcd histories:
           ``INFO  jepsen.util - 3<TAB>:invoke<TAB>:cas<TAB>[1 2]``.

EDN values become plain Python values: keywords become `Keyword` (a ``str`` that
remembers it was a keyword, so writing it back gives ``:name``), vectors and lists
become tuples (hashable, so they can be model states), maps dicts, sets frozensets.
Parsing uses the `edn_format` library; writing is done here (a small, total function).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any, Literal

__all__ = [
    "EVENT_TYPES",
    "Anomaly",
    "Event",
    "HistoryError",
    "Keyword",
    "Operation",
    "Verdict",
    "build_history",
    "detect_format",
    "event_to_json",
    "format_edn_event",
    "format_edn_value",
    "invocation",
    "completion",
    "pair_operations",
    "parse_edn_history",
    "parse_edn_value",
    "parse_history",
    "parse_log_history",
    "read_history",
    "to_json_value",
    "write_edn_history",
]

EVENT_TYPES = ("invoke", "ok", "fail", "info")
Validity = bool | Literal["unknown"]


class HistoryError(ValueError):
    """A history that cannot be read or makes no sense (the message names where)."""


class Keyword(str):
    """An EDN keyword such as ``:cas``: compares equal to the plain string ``"cas"``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f":{str.__str__(self)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One line of a history: an invocation or a completion."""

    type: str                      # one of EVENT_TYPES
    f: Any                         # the function: read, write, cas, txn, add, transfer ...
    value: Any
    process: Any                   # an int for clients; anything else (e.g. "nemesis") otherwise
    index: int                     # position in the history; real-time order
    time: int | None = None        # nanoseconds, when the history records it
    extra: tuple[tuple[Any, Any], ...] = ()   # other keys of the op map (e.g. :error), kept verbatim
    timeless: bool = False         # a completion recorded without :process (module docstring)


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """An invocation paired with its completion (absent when it never completed)."""

    process: Any
    f: Any
    type: str                      # ok, fail or info (an unfinished invocation is info)
    invoke: Event
    complete: Event | None

    @property
    def invoke_value(self) -> Any:
        return self.invoke.value

    @property
    def value(self) -> Any:
        """The completion's value (a read's result); the invocation's when none came back."""
        return self.complete.value if self.complete is not None else self.invoke.value

    @property
    def invoke_index(self) -> int:
        return self.invoke.index

    @property
    def complete_index(self) -> float:
        """Where it completed; infinity for ``info``: it may take effect at any later moment."""
        if self.type == "info" or self.complete is None:
            return math.inf
        return self.complete.index

    def events(self) -> tuple[Event, ...]:
        return (self.invoke,) if self.complete is None or self.complete is self.invoke else (self.invoke, self.complete)


@dataclass(frozen=True, slots=True, kw_only=True)
class Anomaly:
    """One thing a checker found wrong, with the operations that show it."""

    kind: str
    description: str
    operations: tuple[Operation, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """A checker's answer: valid true / false / "unknown", what was found, and an excerpt."""

    valid: Validity
    anomalies: tuple[Anomaly, ...] = ()
    excerpt: tuple[Event, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "anomalies": [
                {
                    "kind": anomaly.kind,
                    "description": anomaly.description,
                    **{key: to_json_value(value) for key, value in anomaly.details.items()},
                    "operations": [
                        [event_to_json(event) for event in operation.events()] for operation in anomaly.operations
                    ],
                }
                for anomaly in self.anomalies
            ],
            "excerpt": [event_to_json(event) for event in self.excerpt],
            **{key: to_json_value(value) for key, value in self.details.items()},
        }


def build_history(rows: Iterable[tuple[Any, str, Any, Any]]) -> list[Event]:
    """Events from ``(process, type, f, value)`` rows, indexed in order (tests, workloads).

    Lists in values become tuples, as the EDN reader makes them."""
    return [
        Event(type=kind, f=Keyword(f) if isinstance(f, str) else f, value=_freeze(value), process=process, index=index)
        for index, (process, kind, f, value) in enumerate(rows)
    ]


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, dict):
        return {key: _freeze(item) for key, item in value.items()}
    if isinstance(value, set):
        return frozenset(value)
    return value


def invocation(process: Any, f: Any, value: Any = None, *, index: int = 0, time: int | None = None) -> Event:
    """A convenience for building histories by hand (tests, workloads)."""
    return Event(type="invoke", f=Keyword(f) if isinstance(f, str) else f, value=value, process=process,
                 index=index, time=time)


def completion(kind: str, process: Any, f: Any, value: Any = None, *, index: int = 0,
               time: int | None = None) -> Event:
    if kind not in ("ok", "fail", "info"):
        raise ValueError(f"a completion is ok, fail or info, not {kind!r}")
    return Event(type=kind, f=Keyword(f) if isinstance(f, str) else f, value=value, process=process,
                 index=index, time=time)


# --------------------------------------------------------------------------------------
# Pairing invocations with completions
# --------------------------------------------------------------------------------------

def pair_operations(events: Sequence[Event]) -> list[Operation]:
    """Client operations in invocation order, each with its completion.

    A completion must follow an open invocation by the same process with the same ``f``;
    otherwise the history is malformed (HistoryError), except an ``info`` with no open
    invocation, which is a note (a nemesis' or a log's) and is skipped. A process that
    invokes while its previous operation is still open is malformed too: Jepsen gives a
    crashed process a new number instead.
    """
    open_by_process: dict[Any, int] = {}
    slots: list[list[Any]] = []          # [invoke event, completion event or None]
    for event in events:
        if event.type == "invoke":
            if event.process in open_by_process:
                earlier = slots[open_by_process[event.process]][0]
                raise HistoryError(
                    f"event {event.index}: process {event.process!r} invokes again while its invocation "
                    f"at event {earlier.index} is still open"
                )
            open_by_process[event.process] = len(slots)
            slots.append([event, None])
        elif event.timeless:
            slots.append([event, event])      # its own invocation: no real-time order is known
        elif event.type in ("ok", "fail", "info"):
            slot_index = open_by_process.pop(event.process, None)
            if slot_index is None:
                if event.type == "info":
                    continue
                raise HistoryError(
                    f"event {event.index}: {event.type} completion by process {event.process!r} with no open invocation"
                )
            invoke = slots[slot_index][0]
            if event.f != invoke.f:
                raise HistoryError(
                    f"event {event.index}: completion f {event.f!r} does not match invocation f {invoke.f!r} "
                    f"(event {invoke.index})"
                )
            slots[slot_index][1] = event
        else:
            raise HistoryError(f"event {event.index}: unknown type {event.type!r}")
    return [
        Operation(process=invoke.process, f=invoke.f, type="info" if done is None else done.type,
                  invoke=invoke, complete=done)
        for invoke, done in slots
    ]


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"jepsen\.util\s+-\s+(\S+)\s+(:\S+)\s+(:\S+)(?:\s+(.*?))?\s*$")


def read_history(path: str | Path) -> list[Event]:
    """Read a history file in either format. OSError for an unreadable file; HistoryError
    for one that is not a history."""
    text = Path(path).read_text(encoding="utf-8", errors="strict")
    return parse_history(text, source=str(path))


def detect_format(text: str) -> Literal["edn", "log"]:
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(";"):
            continue
        if stripped[0] in "[({":
            return "edn"
        if _LOG_LINE.search(stripped):
            return "log"
        raise HistoryError(f"line 1 is neither an EDN op map nor a Jepsen log line: {stripped[:60]!r}")
    raise HistoryError("the history is empty")


def parse_history(text: str, *, source: str = "<history>") -> list[Event]:
    """Parse either format, detected from the first non-blank line."""
    try:
        kind = detect_format(text)
    except HistoryError as error:
        raise HistoryError(f"{source}: {error}") from None
    if kind == "edn":
        return parse_edn_history(text, source=source)
    return parse_log_history(text, source=source)


def parse_edn_history(text: str, *, source: str = "<history>") -> list[Event]:
    """One EDN op map per line, a sequence of them, or a single vector/list of them."""
    import edn_format

    try:
        values = edn_format.loads_all(text)
    except (edn_format.EDNDecodeError, ValueError, TypeError, KeyError) as error:
        raise HistoryError(f"{source}: not valid EDN: {_short(error)}") from None
    if len(values) == 1 and isinstance(values[0], (Sequence, list, tuple)) and not isinstance(values[0], str):
        values = values[0]
    events = []
    for position, raw in enumerate(values):
        value = _from_edn(raw)
        if not isinstance(value, dict):
            raise HistoryError(f"{source}: op {position} is not an EDN map: {_short(value)}")
        events.append(_event_from_map(value, position, source))
    if not events:
        raise HistoryError(f"{source}: the history holds no operations")
    return events


def parse_log_history(text: str, *, source: str = "<history>") -> list[Event]:
    """Jepsen ``jepsen.util`` log lines: ``... jepsen.util - PROCESS :TYPE :F VALUE``.

    Lines that are not op lines (other loggers, blank lines) are skipped: a real Jepsen
    log interleaves them. VALUE is parsed as EDN (``nil``, ``3``, ``[1 2]``, ``:timed-out``).
    """
    events = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        match = _LOG_LINE.search(line)
        if match is None:
            continue
        process_text, type_text, f_text, value_text = match.groups()
        type_name = type_text[1:]
        if type_name not in EVENT_TYPES:
            raise HistoryError(f"{source}:{line_number}: unknown op type {type_text}")
        try:
            process = int(process_text)
        except ValueError:
            process = Keyword(process_text[1:]) if process_text.startswith(":") else process_text
        value: Any = None
        if value_text:
            value = _parse_log_value(value_text)
        events.append(Event(type=type_name, f=Keyword(f_text[1:]), value=value, process=process,
                            index=len(events)))
    if not events:
        raise HistoryError(f"{source}: no Jepsen log lines ('... jepsen.util - PROCESS :TYPE :F VALUE') found")
    return events


@functools.lru_cache(maxsize=4096)
def _parse_log_value(text: str) -> Any:
    # Values repeat (nil, small integers, [1 2]) and each edn_format call builds a lexer
    # and a parser (~0.3 ms), so each distinct text is parsed once. Parsed values are
    # immutable (tuples, frozensets) except maps, which checkers never modify.
    import edn_format

    try:
        return _from_edn(edn_format.loads(text))
    except (edn_format.EDNDecodeError, ValueError, TypeError, KeyError):
        return text      # free text (an error message): kept as it is


def parse_edn_value(text: str) -> Any:
    """One EDN value (``nil``, ``3``, ``:a``, ``[1 2]``) as the Python value histories use."""
    import edn_format

    try:
        return _from_edn(edn_format.loads(text))
    except (edn_format.EDNDecodeError, ValueError, TypeError, KeyError) as error:
        raise HistoryError(f"not an EDN value: {text!r} ({_short(error)})") from None


def _event_from_map(op: dict, position: int, source: str) -> Event:
    where = f"{source}: op {position}"
    if "type" not in op:
        raise HistoryError(f"{where} has no :type")
    type_name = op["type"]
    if type_name not in EVENT_TYPES:
        raise HistoryError(f"{where}: :type must be one of :invoke :ok :fail :info, not {_short(type_name)}")
    if "process" not in op and type_name == "invoke":
        raise HistoryError(f"{where}: an invocation needs :process (to pair it with its completion)")
    if "f" not in op:
        raise HistoryError(f"{where} has no :f")
    time = op.get("time")
    if time is not None and not isinstance(time, int):
        raise HistoryError(f"{where}: :time must be an integer (nanoseconds), not {_short(time)}")
    index = op.get("index", position)
    if not isinstance(index, int):
        raise HistoryError(f"{where}: :index must be an integer, not {_short(index)}")
    known = ("type", "f", "value", "process", "time", "index")
    extra = tuple((key, value) for key, value in op.items() if key not in known)
    # Position, not the recorded :index, orders events: files are written in history order.
    if "process" not in op:
        return Event(type=str(type_name), f=op["f"], value=op.get("value"), process=-1 - position,
                     index=position, time=time, extra=extra, timeless=True)
    return Event(type=str(type_name), f=op["f"], value=op.get("value"), process=op["process"],
                 index=position, time=time, extra=extra)


def _from_edn(value: Any) -> Any:
    import edn_format

    if isinstance(value, edn_format.Keyword):
        return Keyword(value.name)
    if isinstance(value, edn_format.Symbol):
        return str(value)
    if isinstance(value, str):
        return str(value)          # EDN strings and characters
    if isinstance(value, Mapping):
        return {_from_edn(key): _from_edn(item) for key, item in value.items()}
    if isinstance(value, (Set, frozenset)):
        return frozenset(_from_edn(item) for item in value)
    if isinstance(value, Sequence):
        return tuple(_from_edn(item) for item in value)
    return value


def _short(value: Any) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def format_edn_value(value: Any) -> str:
    """EDN text for a value built by `parse_edn_history` (or by hand: plain str is a string)."""
    match value:
        case None:
            return "nil"
        case True:
            return "true"
        case False:
            return "false"
        case Keyword():
            return f":{str.__str__(value)}"
        case str():
            escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
            return f'"{escaped}"'
        case int():
            return str(value)
        case float():
            if math.isnan(value):
                return "##NaN"
            if math.isinf(value):
                return "##Inf" if value > 0 else "##-Inf"
            return repr(value)
        case tuple() | list():
            return "[" + " ".join(format_edn_value(item) for item in value) + "]"
        case dict():
            return "{" + ", ".join(f"{format_edn_value(key)} {format_edn_value(item)}"
                                   for key, item in value.items()) + "}"
        case set() | frozenset():
            return "#{" + " ".join(sorted(format_edn_value(item) for item in value)) + "}"
    raise TypeError(f"no EDN form for {type(value).__name__}: {value!r}")


def format_edn_event(event: Event) -> str:
    """One op map, in Jepsen's key order."""
    parts = [
        f":type {format_edn_value(Keyword(event.type))}",
        f":f {format_edn_value(_as_keyword(event.f))}",
        f":value {format_edn_value(event.value)}",
    ]
    if not event.timeless:
        parts.append(f":process {format_edn_value(_as_keyword(event.process))}")
    if event.time is not None:
        parts.append(f":time {event.time}")
    parts.append(f":index {event.index}")
    parts.extend(f"{format_edn_value(key)} {format_edn_value(value)}" for key, value in event.extra)
    return "{" + ", ".join(parts) + "}"


def write_edn_history(events: Iterable[Event]) -> str:
    """One op map per line (the form Jepsen writes to history.edn)."""
    return "".join(format_edn_event(event) + "\n" for event in events)


def _as_keyword(value: Any) -> Any:
    # f and a non-numeric process are keywords in Jepsen; a plain str given by hand means one too.
    return Keyword(value) if isinstance(value, str) and not isinstance(value, Keyword) else value


# --------------------------------------------------------------------------------------
# JSON (verdicts)
# --------------------------------------------------------------------------------------

def to_json_value(value: Any) -> Any:
    """A JSON-ready form: tuples and sets become lists, map keys strings, keywords names."""
    match value:
        case None | bool() | int() | str():
            return str(value) if isinstance(value, Keyword) else value
        case float():
            return value if math.isfinite(value) else str(value)
        case tuple() | list():
            return [to_json_value(item) for item in value]
        case set() | frozenset():
            return sorted((to_json_value(item) for item in value), key=repr)
        case dict():
            return {str(key): to_json_value(item)
                    for key, item in value.items()}
        case Event():
            return event_to_json(value)
    return repr(value)


def event_to_json(event: Event) -> dict[str, Any]:
    result = {
        "index": event.index,
        "type": event.type,
        "process": to_json_value(event.process),
        "f": to_json_value(event.f),
        "value": to_json_value(event.value),
    }
    if event.time is not None:
        result["time"] = event.time
    return result
