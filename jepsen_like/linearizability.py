"""Linearizability checking: the Wing–Gong/Lowe search, per independent key.

Theory of operation
-------------------
A history is linearizable when every operation can be given a moment inside its own
interval (after its invocation, before its completion) such that, taken in that order,
the operations are what a single sequential copy (a `Model`) would answer. ``info``
operations have no completion: each may be placed anywhere after its invocation, or
left out altogether.

The search (Wing & Gong, with Lowe's memoization, as in Porcupine) walks a doubly linked
list of invocation and completion entries in history order. At any point the
candidates for "the next operation to take effect" are the invocations that come before
the first remaining completion: an operation cannot take effect after an operation that
completed before it was invoked. Taking one candidate (the model accepts it) unlinks
its two entries and pushes it on a stack; reaching a completion entry whose operation
was not taken means the current order is a dead end, so the last choice is popped,
relinked, and the next candidate after it is tried. When no determinate operation is
left, the history is linearizable; when the stack is empty at a dead end, it is not.

Memoization makes this practical: the configuration (set of operations taken, model
state) determines the future completely, so a configuration seen once is never
explored again. The set is a Python int used as a bitset. ``info`` operations have no
completion entry (they are never forced), and they are tried only after the determinate
candidates, because most crashed operations either took effect early or never.

Independent keys (Jepsen's ``independent`` values ``[key value]``) are checked
separately, as Knossos and Porcupine partition histories: linearizability is local, so a
history is linearizable exactly when each key's sub-history is. A wall-clock budget
(`time_limit_s`) and a cap on remembered configurations bound the work; exceeding either
answers ``"unknown"`` rather than a guess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .history import Anomaly, Event, HistoryError, Operation, Verdict, pair_operations
from .models import INCONSISTENT, Call, Model

__all__ = ["LinearizabilityLimits", "check_linearizability", "is_independent_history", "partition_calls"]

_NIL = -1
_TIME_CHECK_EVERY = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearizabilityLimits:
    time_limit_s: float | None = None           # wall-clock budget for the whole history
    configurations_max: int = 20_000_000        # remembered (taken-set, state) pairs, all keys
    excerpt_operations_max: int = 12


@dataclass(slots=True)
class _KeyResult:
    outcome: Any                    # True, False or "unknown"
    configurations: int
    taken: list[int]                # deepest linearized prefix (call ids, in order), when False
    stuck: int | None               # the call that could not be placed there
    pending: list[int]              # other candidates at that point
    state: Any


def is_independent_history(operations: Sequence[Operation]) -> bool:
    """True when every operation's value is a Jepsen independent pair ``[key value]``.

    A plain register's read is invoked with ``nil`` and its cas with ``[old new]`` of
    scalars, so the two forms cannot be confused unless the register holds pairs (then
    say so explicitly with ``independent=``).
    """
    if not operations:
        return False
    for operation in operations:
        value = operation.invoke_value
        if not (isinstance(value, tuple) and len(value) == 2):
            return False
        if operation.f == "cas" and not (isinstance(value[1], tuple) and len(value[1]) == 2):
            return False
    return True


def partition_calls(model: Model, operations: Sequence[Operation], *, independent: bool) -> dict[Any, list[Call]]:
    """Calls per key (one key, None, when not independent), dropped operations left out."""
    partitions: dict[Any, list[Call]] = {}
    for operation in operations:
        argument = operation.invoke_value
        result = operation.complete.value if operation.complete is not None else None
        key = None
        if independent:
            if not (isinstance(argument, tuple) and len(argument) == 2):
                raise HistoryError(f"event {operation.invoke_index}: expected an independent [key value] pair, "
                                   f"got {argument!r}")
            key, argument = argument
            if operation.type == "ok":
                if not (isinstance(result, tuple) and len(result) == 2 and result[0] == key):
                    raise HistoryError(f"event {operation.complete.index}: expected [key value] with key {key!r}, "
                                       f"got {result!r}")
                result = result[1]
        elif operation.type != "ok":
            result = None
        prepared = model.prepare(str(operation.f), operation.type, argument, result)
        if prepared is None:
            continue
        calls = partitions.setdefault(key, [])
        argument, result, unknown = prepared
        calls.append(Call(id=len(calls), f=str(operation.f), argument=argument, result=result, unknown=unknown,
                          operation=operation, key=key))
    return partitions


def check_linearizability(
    history: Iterable[Event] | Sequence[Operation],
    model: Model,
    *,
    independent: bool | None = None,
    limits: LinearizabilityLimits = LinearizabilityLimits(),
) -> Verdict:
    """Judge a history against `model`. ``independent=None`` detects Jepsen's per-key form."""
    items = list(history)
    operations = items if items and isinstance(items[0], Operation) else pair_operations(items)
    operations = [operation for operation in operations if isinstance(operation.process, int)]
    if independent is None:
        independent = is_independent_history(operations)
    partitions = partition_calls(model, operations, independent=independent)
    deadline = None if limits.time_limit_s is None else time.monotonic() + limits.time_limit_s
    configurations_left = limits.configurations_max
    anomalies: list[Anomaly] = []
    excerpt: list[Event] = []
    unknown_keys: list[Any] = []
    configurations = 0
    # Small partitions first: a budget spent on one hard key should not hide easy failures.
    for key, calls in sorted(partitions.items(), key=lambda item: len(item[1])):
        impossible = model.impossible_calls(calls)
        if impossible:
            anomaly = _describe_impossible(model, key, independent, impossible)
            anomalies.append(anomaly)
            if not excerpt:
                excerpt = sorted((event for operation in anomaly.operations for event in operation.events()),
                                 key=lambda event: event.index)
            continue
        result = _search(model, calls, deadline, configurations_left)
        configurations += result.configurations
        configurations_left -= result.configurations
        if result.outcome == "unknown":
            unknown_keys.append(key)
        elif result.outcome is False:
            anomaly, events = _describe_failure(model, calls, key, independent, result, limits.excerpt_operations_max)
            anomalies.append(anomaly)
            if not excerpt:
                excerpt = events
    valid: Any = False if anomalies else ("unknown" if unknown_keys else True)
    details: dict[str, Any] = {
        "model": model.name,
        "operations": len(operations),
        "keys": len(partitions) if independent else None,
        "configurations": configurations,
    }
    if unknown_keys:
        details["unknown_keys"] = unknown_keys if independent else ["(the register)"]
        details["reason"] = "time limit or configuration limit reached before a verdict"
    return Verdict(valid=valid, anomalies=tuple(anomalies), excerpt=tuple(excerpt), details=details)


def _search(model: Model, calls: list[Call], deadline: float | None, configurations_max: int) -> _KeyResult:
    n = len(calls)
    determinate = sum(1 for call in calls if not call.unknown)
    if determinate == 0:
        return _KeyResult(True, 0, [], None, [], None)

    # Entry ids: 0 is the head; 1+i is call i's invocation; 1+n+i its completion.
    order: list[tuple[float, int]] = []
    for call in calls:
        order.append((call.operation.invoke_index, 1 + call.id))
        if not call.unknown:
            order.append((call.operation.complete_index, 1 + n + call.id))
    order.sort()
    size = 2 * n + 1
    following = [_NIL] * size
    preceding = [_NIL] * size
    previous_entry = 0
    for _, entry in order:
        following[previous_entry] = entry
        preceding[entry] = previous_entry
        previous_entry = entry

    step = model.step
    unknown = [call.unknown for call in calls]
    bits = [1 << i for i in range(n)]
    # Symmetry: two info calls with the same function and argument, both invoked, are
    # interchangeable (neither ever has to complete). Only the earliest untaken one of
    # each kind is a candidate, so equivalent choices are explored once.
    earlier_twin_bit = [0] * n
    last_of_kind: dict[tuple[str, Any], int] = {}
    for call in sorted(calls, key=lambda item: item.operation.invoke_index):
        if call.unknown:
            kind = (call.f, _hashable(call.argument))
            if kind in last_of_kind:
                earlier_twin_bit[call.id] = bits[last_of_kind[kind]]
            last_of_kind[kind] = call.id
    state: Any = model.initial_state()
    taken = 0
    remaining = determinate
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any, bool]] = []     # (call entry, state before it, pass)
    best_depth = -1
    best: tuple[list[int], int | None, list[int], Any] = ([], None, [], None)
    # Two passes over the candidates: determinate ones first, then info ones.
    info_pass = False
    entry = following[0]
    iterations = 0

    while True:
        iterations += 1
        if iterations % _TIME_CHECK_EVERY == 0:
            if (deadline is not None and time.monotonic() > deadline) or len(seen) > configurations_max:
                return _KeyResult("unknown", len(seen), [], None, [], None)
        if entry != _NIL and entry <= n:
            call_id = entry - 1
            if unknown[call_id] == info_pass and (taken & earlier_twin_bit[call_id]) == earlier_twin_bit[call_id]:
                new_state = step(state, calls[call_id])
                if new_state is not INCONSISTENT:
                    new_taken = taken | bits[call_id]
                    configuration = (new_taken, new_state)
                    if configuration not in seen:
                        seen.add(configuration)
                        stack.append((entry, state, info_pass))
                        state = new_state
                        taken = new_taken
                        # Unlink the invocation and, for a determinate call, its completion.
                        before, after = preceding[entry], following[entry]
                        following[before] = after
                        if after != _NIL:
                            preceding[after] = before
                        if not unknown[call_id]:
                            remaining -= 1
                            if remaining == 0:
                                return _KeyResult(True, len(seen), [], None, [], None)
                            completion = entry + n
                            before, after = preceding[completion], following[completion]
                            following[before] = after
                            if after != _NIL:
                                preceding[after] = before
                        info_pass = False
                        entry = following[0]
                        continue
            entry = following[entry]
            continue
        # A completion (or the end of the list): every candidate before it was tried.
        if not info_pass:
            info_pass = True
            entry = following[0]
            continue
        if len(stack) > best_depth:
            best_depth = len(stack)
            stuck = entry - 1 - n if entry != _NIL else None
            pending = []
            cursor = following[0]
            while cursor != _NIL and cursor <= n:
                pending.append(cursor - 1)
                cursor = following[cursor]
            best = ([item[0] - 1 for item in stack], stuck, pending, state)
        if not stack:
            taken_ids, stuck, pending, best_state = best
            return _KeyResult(False, len(seen), taken_ids, stuck, pending, best_state)
        entry, state, info_pass = stack.pop()
        call_id = entry - 1
        taken ^= bits[call_id]
        if not unknown[call_id]:
            remaining += 1
            completion = entry + n
            following[preceding[completion]] = completion
            if following[completion] != _NIL:
                preceding[following[completion]] = completion
        following[preceding[entry]] = entry
        if following[entry] != _NIL:
            preceding[following[entry]] = entry
        entry = following[entry]


def _describe_impossible(model: Model, key: Any, independent: bool,
                         impossible: list[tuple[Call, str]]) -> Anomaly:
    where = f"key {key!r}" if independent else "the register"
    call, reason = impossible[0]
    more = f" ({len(impossible) - 1} more like it)" if len(impossible) > 1 else ""
    return Anomaly(
        kind="nonlinearizable",
        description=(f"{where}: '{model.describe(call)}' (process {call.operation.process}, "
                     f"event {call.operation.invoke_index}) cannot be linearized: {reason}{more}"),
        operations=tuple(item[0].operation for item in impossible[:8]),
        details={"key": key if independent else None, "impossible_operations": len(impossible)},
    )


def _describe_failure(model: Model, calls: list[Call], key: Any, independent: bool, result: _KeyResult,
                      excerpt_max: int) -> tuple[Anomaly, list[Event]]:
    where = f"key {key!r}" if independent else "the register"
    tail = result.taken[-4:]
    if result.stuck is not None:
        stuck = calls[result.stuck]
        description = (
            f"{where}: after {len(result.taken)} operations in linearization order (state {_state_text(result.state)}), "
            f"no remaining operation can take effect before '{model.describe(stuck)}' "
            f"(process {stuck.operation.process}, event {stuck.operation.invoke_index}) completes"
        )
    else:
        stuck = None
        description = f"{where}: no linearization of its {len(calls)} operations exists"
    chosen_ids: list[int] = list(tail)
    if result.stuck is not None:
        chosen_ids.append(result.stuck)
    for call_id in result.pending:
        if len(chosen_ids) >= excerpt_max:
            break
        if call_id not in chosen_ids:
            chosen_ids.append(call_id)
    operations = tuple(calls[call_id].operation for call_id in chosen_ids)
    events = sorted((event for operation in operations for event in operation.events()), key=lambda e: e.index)
    anomaly = Anomaly(
        kind="nonlinearizable",
        description=description,
        operations=operations,
        details={
            "key": key if independent else None,
            "linearized_prefix": len(result.taken),
            "state": result.state,
            "last_linearized": [model.describe(calls[call_id]) for call_id in tail],
            "stuck_operation": model.describe(stuck) if stuck is not None else None,
        },
    )
    return anomaly, events


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _state_text(state: Any) -> str:
    return "nil" if state is None else repr(state)
