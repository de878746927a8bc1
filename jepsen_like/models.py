"""Sequential models: what a single correct copy of the data would answer.

Theory of operation
-------------------
A linearizability checker asks one question of a model, many times: "from this state,
can this operation, with the result the client saw, happen next, and if so, what is the
state after it?" (`Model.step`). States are hashable values, so the checker can
remember which (set of operations done, state) configurations it already explored.

Before the search, each `Operation` of a history becomes a `Call` through
`Model.prepare`, which is where the meaning of ``fail`` and ``info`` lives:

- ``ok``: the result is known and must match;
- ``fail``: it did not happen, so the call is dropped (Knossos' convention). The
  ``etcd-register`` model is the exception: there, a ``fail`` compare-and-set is a cas
  that *returned false* (Porcupine's convention for Jepsen's etcd logs), so it stays,
  and says "the register did not hold the expected value at that moment";
- ``info``: it may or may not have happened; it is marked ``unknown`` and the checker
  may leave it out. A read whose result is unknown constrains nothing and is dropped.

Models here: ``register`` (read, write), ``cas-register`` (read, write, cas), the
``etcd-register`` variant above, and ``set`` (add, read of the whole set).

`generate_register_history` runs a real sequential register under random concurrency
(operations overlap, take effect at a random moment inside their interval, some fail,
some crash as ``info``): every history it makes is linearizable by construction, which
tests and the benchmark rely on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from .history import Event, HistoryError, Keyword, Operation

__all__ = [
    "INCONSISTENT",
    "MODELS",
    "Call",
    "CasRegisterModel",
    "Model",
    "RegisterModel",
    "SetModel",
    "generate_register_history",
    "make_model",
]

INCONSISTENT: Any = type("Inconsistent", (), {"__repr__": lambda self: "INCONSISTENT"})()


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One operation as the search sees it: function, argument, observed result."""

    id: int                     # dense, per partition (its bit in the linearized set)
    f: str
    argument: Any
    result: Any
    unknown: bool               # info: may be left out; if placed, its result is free
    operation: Operation
    key: Any = None             # the independent key, when the history has keys


class Model:
    """Base of the sequential models. Subclasses set `name` and `functions`."""

    name = "model"
    functions: tuple[str, ...] = ()

    def __init__(self, initial: Hashable = None) -> None:
        self.initial = initial

    def initial_state(self) -> Hashable:
        return self.initial

    def prepare(self, f: str, kind: str, argument: Any, result: Any) -> tuple[Any, Any, bool] | None:
        """(argument, result, unknown) for the search, or None to leave the operation out."""
        raise NotImplementedError

    def step(self, state: Hashable, call: Call) -> Hashable:
        """The state after `call`, or INCONSISTENT when it cannot happen from `state`."""
        raise NotImplementedError

    def describe(self, call: Call) -> str:
        if call.f == "read":
            return f"read -> {_show(call.result)}" if not call.unknown else "read -> ?"
        if call.f == "cas":
            old, new = call.argument
            outcome = "?" if call.unknown else ("false" if call.result is False else "true")
            return f"cas {_show(old)}->{_show(new)} {outcome}"
        suffix = " ?" if call.unknown else ""
        return f"{call.f} {_show(call.argument)}{suffix}"

    def impossible_calls(self, calls: list[Call]) -> list[tuple[Call, str]]:
        """Calls no order could ever explain (a read of a value nothing wrote), each with
        the reason. A quick pass before the search: refuting such a history by search
        alone can take exponential time when many ``info`` operations are pending."""
        return []

    def _unknown_function(self, f: str) -> HistoryError:
        return HistoryError(f"the {self.name} model has no operation {f!r} (it knows {', '.join(self.functions)})")


def _register_impossible_calls(model: Model, calls: list[Call]) -> list[tuple[Call, str]]:
    written = _ValueSet([model.initial])
    for call in calls:
        if call.f == "write":
            written.add(call.argument)
        elif call.f == "cas":
            written.add(call.argument[1])
    found = []
    for call in calls:
        if call.unknown:
            continue
        if call.f == "read" and call.result not in written:
            found.append((call, f"it read {_show(call.result)}, a value no operation wrote and not the initial value"))
        elif call.f == "cas" and call.result is True and call.argument[0] not in written:
            found.append((call, f"it succeeded comparing with {_show(call.argument[0])}, a value the register never held"))
    return found


class _ValueSet:
    """Membership for values that may not be hashable (EDN maps)."""

    def __init__(self, values: list[Any]) -> None:
        self.hashable: set[Any] = set()
        self.other: list[Any] = []
        for value in values:
            self.add(value)

    def add(self, value: Any) -> None:
        try:
            self.hashable.add(value)
        except TypeError:
            self.other.append(value)

    def __contains__(self, value: Any) -> bool:
        try:
            if value in self.hashable:
                return True
        except TypeError:
            pass
        return value in self.other


class RegisterModel(Model):
    """A read/write register."""

    name = "register"
    functions = ("read", "write")

    def prepare(self, f: str, kind: str, argument: Any, result: Any) -> tuple[Any, Any, bool] | None:
        if kind == "fail":
            return None
        match f:
            case "read":
                return None if kind == "info" else (None, result, False)
            case "write":
                return (argument, None, kind == "info")
        raise self._unknown_function(f)

    def step(self, state: Hashable, call: Call) -> Hashable:
        if call.f == "read":
            return state if call.result == state else INCONSISTENT
        return call.argument

    def impossible_calls(self, calls: list[Call]) -> list[tuple[Call, str]]:
        return _register_impossible_calls(self, calls)


class CasRegisterModel(Model):
    """A register with compare-and-set. ``failed_cas_is_observation`` selects the etcd
    reading of ``fail`` (the cas returned false) instead of Knossos' (it did not happen)."""

    name = "cas-register"
    functions = ("read", "write", "cas")

    def __init__(self, initial: Hashable = None, *, failed_cas_is_observation: bool = False) -> None:
        super().__init__(initial)
        self.failed_cas_is_observation = failed_cas_is_observation
        if failed_cas_is_observation:
            self.name = "etcd-register"

    def prepare(self, f: str, kind: str, argument: Any, result: Any) -> tuple[Any, Any, bool] | None:
        match f:
            case "read":
                return (None, result, False) if kind == "ok" else None
            case "write":
                return None if kind == "fail" else (argument, None, kind == "info")
            case "cas":
                if not (isinstance(argument, tuple) and len(argument) == 2):
                    raise HistoryError(f"a cas value must be [old new], not {_show(argument)}")
                if kind == "fail":
                    return (argument, False, False) if self.failed_cas_is_observation else None
                return (argument, True, kind == "info")
        raise self._unknown_function(f)

    def step(self, state: Hashable, call: Call) -> Hashable:
        f = call.f
        if f == "read":
            return state if call.result == state else INCONSISTENT
        if f == "write":
            return call.argument
        old, new = call.argument
        if call.result is False:                 # etcd: a cas that returned false
            return state if state != old else INCONSISTENT
        return new if state == old else INCONSISTENT

    def impossible_calls(self, calls: list[Call]) -> list[tuple[Call, str]]:
        return _register_impossible_calls(self, calls)


class SetModel(Model):
    """A set: ``add`` an element, ``read`` the whole set (any collection)."""

    name = "set"
    functions = ("add", "read")

    def __init__(self, initial: Hashable = frozenset()) -> None:
        super().__init__(frozenset(initial or ()))

    def prepare(self, f: str, kind: str, argument: Any, result: Any) -> tuple[Any, Any, bool] | None:
        if kind == "fail":
            return None
        match f:
            case "add":
                return (argument, None, kind == "info")
            case "read":
                if kind == "info":
                    return None
                if result is None or isinstance(result, (str, int)):
                    raise HistoryError(f"a set read must return a collection, not {_show(result)}")
                return (None, frozenset(result), False)
        raise self._unknown_function(f)

    def step(self, state: Hashable, call: Call) -> Hashable:
        if call.f == "read":
            return state if call.result == state else INCONSISTENT
        return state | {call.argument}

    def impossible_calls(self, calls: list[Call]) -> list[tuple[Call, str]]:
        added = _ValueSet(list(self.initial))
        for call in calls:
            if call.f == "add":
                added.add(call.argument)
        found = []
        for call in calls:
            if call.f == "read":
                never = [element for element in call.result if element not in added]
                if never:
                    found.append((call, f"it read {_show(tuple(never))}, never added"))
        return found


MODELS: dict[str, Callable[..., Model]] = {
    "register": RegisterModel,
    "cas-register": CasRegisterModel,
    "etcd-register": lambda initial=None: CasRegisterModel(initial, failed_cas_is_observation=True),
    "set": SetModel,
}


def make_model(name: str, initial: Hashable = None) -> Model:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](initial) if name != "set" else SetModel(initial or frozenset())


def _show(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, Keyword):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + " ".join(_show(item) for item in value) + "]"
    return str(value)


# --------------------------------------------------------------------------------------
# Histories generated from a real register (tests, benchmark)
# --------------------------------------------------------------------------------------

def generate_register_history(
    rng: random.Random,
    *,
    operations: int,
    processes: int = 5,
    keys: int | None = None,
    values: int = 5,
    with_cas: bool = True,
    info_probability: float = 0.0,
    fail_probability: float = 0.0,
    initial: Any = None,
) -> list[Event]:
    """A history of a correct (linearizable) register under random concurrency.

    Each step picks a random process: an idle one invokes a new operation; a pending one
    either takes effect now (on the real register: its linearization point), fails
    (writes and cas only, and only before taking effect), or, once it took effect or
    not, completes as ``ok``, or as ``info`` (then the process is gone and a fresh
    process number replaces it, as Jepsen does). A cas whose comparison fails completes
    as ``fail`` (Knossos' convention). With ``keys``, values are Jepsen independent
    pairs ``[key value]`` over keys ``0..keys-1``; without, one register.
    """
    registers: dict[Any, Any] = {}
    events: list[Event] = []
    live = list(range(processes))
    next_process = processes
    # Per process: None when idle, else [f, key, argument, applied, result, fail_now]
    pending: dict[int, list[Any] | None] = {process: None for process in live}
    started = 0

    def emit(kind: str, process: int, f: str, value: Any) -> None:
        events.append(Event(type=kind, f=Keyword(f), value=value, process=process, index=len(events),
                            time=len(events) * 1000))

    def wrap(key: Any, value: Any) -> Any:
        return value if keys is None else (key, value)

    while started < operations or any(slot is not None for slot in pending.values()):
        process = rng.choice(live)
        slot = pending[process]
        if slot is None:
            if started >= operations:
                continue
            started += 1
            key = rng.randrange(keys) if keys is not None else None
            roll = rng.random()
            if roll < 0.5:
                f, argument = "read", None
            elif roll < 0.8 or not with_cas:
                f, argument = "write", rng.randrange(values)
            else:
                f, argument = "cas", (rng.randrange(values), rng.randrange(values))
            pending[process] = [f, key, argument, False, None]
            emit("invoke", process, f, wrap(key, argument))
            continue
        f, key, argument, applied, result = slot
        if not applied and rng.random() < 0.6:
            if f != "read" and rng.random() < fail_probability:
                emit("fail", process, f, wrap(key, argument))
                pending[process] = None
                continue
            current = registers.get(key, initial)
            if f == "read":
                slot[4] = current
            elif f == "write":
                registers[key] = argument
            else:
                slot[4] = current == argument[0]
                if slot[4]:
                    registers[key] = argument[1]
            slot[3] = True
            continue
        if rng.random() < info_probability:
            # A crash: the outcome is unknown to the client whether or not it took effect.
            emit("info", process, f, wrap(key, argument))
            pending.pop(process)
            live.remove(process)
            live.append(next_process)
            pending[next_process] = None
            next_process += 1
            continue
        if not applied:
            continue
        if f == "read":
            emit("ok", process, f, wrap(key, result))
        elif f == "cas" and not result:
            emit("fail", process, f, wrap(key, argument))
        else:
            emit("ok", process, f, wrap(key, argument))
        pending[process] = None
    return events
