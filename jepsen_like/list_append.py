"""Elle-style list-append checking: dependency cycles between transactions.

Theory of operation
-------------------
Each transaction (``:f :txn``) is a list of micro-operations on keys whose values are
lists: ``[:append k v]`` adds ``v`` at the end of ``k``'s list, ``[:r k [v1 v2 ...]]``
reads the whole list. Appended values are unique per key, so a read names exactly
which appends it saw, in which order: reads recover the *version order* of every key.
This is what makes the workload checkable without a model search (Kingsbury & Alvaro,
"Elle", VLDB 2021).

1. Per key, the longest read is the version order; every other read must be a prefix
   of it, or the database showed two orders (``incompatible-order``).
2. Cheap single-transaction checks: a read with an element twice
   (``duplicate-elements``); a read of an append whose transaction failed (``G1a``,
   aborted read); a read ending at an append its transaction later followed with
   another append to the same key (``G1b``, intermediate read); a transaction whose
   read disagrees with its own earlier reads and appends (``internal``); a read of an
   element nobody appended (``unwritten-read``).
3. Dependency edges between committed transactions (``ok``, and ``info`` ones whose
   appends someone read): ``ww`` (T1 appended the version right before T2's),
   ``wr`` (T2 read a list ending with T1's append), ``rw`` (T1 read a list that T2's
   append later extended: T1 must come before T2). For strict serializability also
   ``rt``: T1 completed before T2 was invoked.
4. Cycles: strongly connected components (Tarjan, iterative), then a shortest cycle
   through an edge of the wanted kind inside each one (breadth-first search). Named by
   the edges they need (Adya's classes): ``G0`` ww only; ``G1c`` ww and wr; ``G-single``
   exactly one rw; ``G2`` two or more rw; ``-realtime`` when an rt edge is needed,
   which is how a stale read shows up (serializable, but not strictly).

Each anomaly names its transactions and, for a cycle, every edge with its kind and key.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from .history import Anomaly, Event, HistoryError, Operation, Verdict, pair_operations

__all__ = ["ListAppendLimits", "check_list_append"]

Consistency = Literal["serializable", "strict-serializable"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ListAppendLimits:
    cycle_searches_max: int = 20_000        # breadth-first searches per class of anomaly
    anomalies_per_kind_max: int = 8         # cycles reported per class (all are counted)


@dataclass(slots=True)
class _Transaction:
    id: int
    operation: Operation
    micro_operations: list[tuple[str, Any, Any]]

    @property
    def type(self) -> str:
        return self.operation.type


@dataclass(slots=True)
class _Graph:
    # node -> list of (neighbour, kind, key)
    out: dict[int, list[tuple[int, str, Any]]] = field(default_factory=dict)
    edge_count: int = 0

    def add(self, source: int, target: int, kind: str, key: Any) -> None:
        if source == target:
            return
        self.out.setdefault(source, []).append((target, kind, key))
        self.out.setdefault(target, [])
        self.edge_count += 1


def check_list_append(
    history: Iterable[Event] | Sequence[Operation],
    *,
    consistency: Consistency = "strict-serializable",
    limits: ListAppendLimits = ListAppendLimits(),
) -> Verdict:
    """Judge a list-append history. Strict serializability adds real-time edges."""
    if consistency not in ("serializable", "strict-serializable"):
        raise ValueError(f"consistency must be serializable or strict-serializable, not {consistency!r}")
    items = list(history)
    operations = items if items and isinstance(items[0], Operation) else pair_operations(items)
    transactions = _transactions(operations)
    anomalies: list[Anomaly] = []

    writer: dict[tuple[Any, Any], _Transaction] = {}
    appends_by_transaction_key: dict[tuple[int, Any], list[Any]] = {}
    for transaction in transactions:
        for function, key, value in transaction.micro_operations:
            if function != "append":
                continue
            _require_hashable(key, value, transaction)
            if (key, value) in writer and writer[(key, value)] is not transaction:
                raise HistoryError(
                    f"value {value!r} is appended to key {key!r} twice (events {writer[(key, value)].operation.invoke_index} "
                    f"and {transaction.operation.invoke_index}); list-append needs unique values per key"
                )
            writer[(key, value)] = transaction
            appends_by_transaction_key.setdefault((transaction.id, key), []).append(value)

    committed = [transaction for transaction in transactions if transaction.type == "ok"]
    reads: list[tuple[_Transaction, Any, tuple]] = []
    for transaction in committed:
        for function, key, value in transaction.micro_operations:
            if function == "r":
                if not isinstance(value, tuple):
                    raise HistoryError(f"event {transaction.operation.complete.index}: a read of key {key!r} must "
                                       f"return a list, not {value!r}")
                reads.append((transaction, key, value))

    anomalies += _duplicates(reads)
    anomalies += _internal(committed)
    anomalies += _aborted_and_intermediate_reads(reads, writer, appends_by_transaction_key)
    anomalies += _unwritten_reads(reads, writer)
    orders, order_anomalies = _version_orders(reads)
    anomalies += order_anomalies

    graph = _dependency_graph(reads, orders, writer)
    if consistency == "strict-serializable":
        _add_realtime_edges(graph, transactions)
    anomalies += _cycles(graph, transactions, consistency == "strict-serializable", limits)

    excerpt: tuple[Event, ...] = ()
    if anomalies:
        first = anomalies[0]
        excerpt = tuple(sorted((event for operation in first.operations for event in operation.events()),
                               key=lambda event: event.index))
    kinds = sorted({anomaly.kind for anomaly in anomalies})
    return Verdict(
        valid=not anomalies,
        anomalies=tuple(anomalies),
        excerpt=excerpt,
        details={
            "consistency": consistency,
            "transactions": len(transactions),
            "committed": len(committed),
            "edges": graph.edge_count,
            "anomaly_kinds": kinds,
        },
    )


# --------------------------------------------------------------------------------------
# Parsing transactions
# --------------------------------------------------------------------------------------

def _transactions(operations: Sequence[Operation]) -> list[_Transaction]:
    transactions = []
    for operation in operations:
        if not isinstance(operation.process, int) or operation.f != "txn":
            continue
        # ok: the completion holds what reads returned; otherwise only the invocation is known.
        value = operation.complete.value if operation.type == "ok" else operation.invoke_value
        if not isinstance(value, tuple):
            raise HistoryError(f"event {operation.invoke_index}: a txn value must be a list of micro-operations, "
                               f"not {value!r}")
        micro_operations = []
        for micro in value:
            if not (isinstance(micro, tuple) and len(micro) == 3 and micro[0] in ("append", "r")):
                raise HistoryError(f"event {operation.invoke_index}: micro-operation {micro!r} is not "
                                   "[:append key value] or [:r key list]")
            function, key, micro_value = str(micro[0]), micro[1], micro[2]
            if function == "r" and micro_value is None and operation.type == "ok":
                micro_value = ()   # Elle's convention: [:r k nil] is a committed read of an empty list
            micro_operations.append((function, key, micro_value))
        transactions.append(_Transaction(id=len(transactions), operation=operation, micro_operations=micro_operations))
    return transactions


def _require_hashable(key: Any, value: Any, transaction: _Transaction) -> None:
    try:
        hash((key, value))
    except TypeError:
        raise HistoryError(f"event {transaction.operation.invoke_index}: keys and appended values must be "
                           f"scalars, not {key!r} / {value!r}") from None


# --------------------------------------------------------------------------------------
# Single-transaction anomalies
# --------------------------------------------------------------------------------------

def _duplicates(reads: list[tuple[_Transaction, Any, tuple]]) -> list[Anomaly]:
    found = []
    for transaction, key, values in reads:
        if len(set(values)) != len(values):
            repeated = sorted({value for value in values if values.count(value) > 1}, key=repr)
            found.append(Anomaly(
                kind="duplicate-elements",
                description=f"a read of key {key!r} holds {repeated!r} more than once: {list(values)!r}",
                operations=(transaction.operation,),
                details={"key": key, "duplicates": repeated},
            ))
    return found


def _internal(committed: list[_Transaction]) -> list[Anomaly]:
    """A transaction must see its own appends, after what it read earlier."""
    found = []
    for transaction in committed:
        # Per key: (whether the whole list is known, the list or the known suffix).
        expected: dict[Any, tuple[bool, list]] = {}
        for function, key, value in transaction.micro_operations:
            whole, known = expected.get(key, (False, []))
            if function == "append":
                expected[key] = (whole, known + [value])
                continue
            observed = list(value)
            consistent = observed == known if whole else (not known or observed[-len(known):] == known)
            if not consistent:
                wanted = known if whole else ["...", *known]
                found.append(Anomaly(
                    kind="internal",
                    description=(f"a transaction read key {key!r} as {observed!r}, but its own earlier reads and "
                                 f"appends imply {wanted!r}"),
                    operations=(transaction.operation,),
                    details={"key": key, "read": observed, "expected": wanted},
                ))
            expected[key] = (True, observed)
    return found


def _aborted_and_intermediate_reads(reads, writer, appends_by_transaction_key) -> list[Anomaly]:
    found = []
    for transaction, key, values in reads:
        for value in values:
            source = writer.get((key, value))
            if source is not None and source.type == "fail":
                found.append(Anomaly(
                    kind="G1a",
                    description=(f"aborted read: key {key!r} was read holding {value!r}, appended by a transaction "
                                 "that failed"),
                    operations=(transaction.operation, source.operation),
                    details={"key": key, "element": value},
                ))
        if not values:
            continue
        last = values[-1]
        source = writer.get((key, last))
        if source is None or source is transaction:
            continue
        own = appends_by_transaction_key.get((source.id, key), [])
        if own and own[-1] != last:
            found.append(Anomaly(
                kind="G1b",
                description=(f"intermediate read: key {key!r} was read ending at {last!r}, but the transaction that "
                             f"appended it went on to append {own[own.index(last) + 1:]!r} to that key"),
                operations=(transaction.operation, source.operation),
                details={"key": key, "element": last},
            ))
    return found


def _unwritten_reads(reads, writer) -> list[Anomaly]:
    found = []
    for transaction, key, values in reads:
        unknown = [value for value in values if (key, value) not in writer]
        if unknown:
            found.append(Anomaly(
                kind="unwritten-read",
                description=f"key {key!r} was read holding {unknown!r}, which no transaction appended",
                operations=(transaction.operation,),
                details={"key": key, "elements": unknown},
            ))
    return found


def _version_orders(reads) -> tuple[dict[Any, tuple], list[Anomaly]]:
    longest: dict[Any, tuple[tuple, _Transaction]] = {}
    for transaction, key, values in reads:
        if key not in longest or len(values) > len(longest[key][0]):
            longest[key] = (values, transaction)
    anomalies = []
    reported: set[Any] = set()
    for transaction, key, values in reads:
        order, holder = longest[key]
        if order[:len(values)] != values and key not in reported:
            reported.add(key)
            anomalies.append(Anomaly(
                kind="incompatible-order",
                description=f"key {key!r} was read as {list(values)!r} and as {list(order)!r}: neither extends the other",
                operations=(transaction.operation, holder.operation),
                details={"key": key, "reads": [list(values), list(order)]},
            ))
    return {key: value[0] for key, value in longest.items()}, anomalies


# --------------------------------------------------------------------------------------
# The dependency graph
# --------------------------------------------------------------------------------------

def _dependency_graph(reads, orders, writer) -> _Graph:
    graph = _Graph()

    def usable(transaction: _Transaction | None) -> bool:
        return transaction is not None and transaction.type != "fail"

    for key, order in orders.items():
        for earlier, later in zip(order, order[1:]):
            first, second = writer.get((key, earlier)), writer.get((key, later))
            if usable(first) and usable(second):
                graph.add(first.id, second.id, "ww", key)
    for transaction, key, values in reads:
        graph.out.setdefault(transaction.id, [])
        order = orders[key]
        if order[:len(values)] != values:
            continue            # reported as incompatible-order; no sound edges from it
        if values:
            source = writer.get((key, values[-1]))
            if usable(source):
                graph.add(source.id, transaction.id, "wr", key)
        if len(values) < len(order):
            overwriter = writer.get((key, order[len(values)]))
            if usable(overwriter):
                graph.add(transaction.id, overwriter.id, "rw", key)
    return graph


def _add_realtime_edges(graph: _Graph, transactions: list[_Transaction]) -> None:
    """T1 -rt-> T2 when T1 completed before T2 was invoked, without transitive edges:
    a completed transaction leaves the frontier once a later one that follows it completes."""
    events: list[tuple[int, int, _Transaction]] = []
    for transaction in transactions:
        if transaction.id not in graph.out:
            continue
        events.append((transaction.operation.invoke_index, 1, transaction))
        if transaction.type == "ok":
            events.append((transaction.operation.complete.index, 0, transaction))
    events.sort(key=lambda item: (item[0], item[1]))
    frontier: set[int] = set()
    predecessors_at_invoke: dict[int, frozenset[int]] = {}
    for _, is_invoke, transaction in events:
        if is_invoke:
            predecessors_at_invoke[transaction.id] = frozenset(frontier)
            for source in frontier:
                graph.add(source, transaction.id, "rt", None)
        else:
            frontier -= predecessors_at_invoke.get(transaction.id, frozenset())
            frontier.add(transaction.id)


# --------------------------------------------------------------------------------------
# Cycles
# --------------------------------------------------------------------------------------

def _strongly_connected_components(graph: _Graph, kinds: frozenset[str]) -> list[set[int]]:
    """Tarjan's algorithm without recursion; components of two or more nodes only."""
    index_of: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    components: list[set[int]] = []
    counter = 0
    for root in graph.out:
        if root in index_of:
            continue
        work: list[tuple[int, int]] = [(root, 0)]
        index_of[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, position = work[-1]
            edges = graph.out[node]
            advanced = False
            while position < len(edges):
                neighbour, kind, _ = edges[position]
                position += 1
                if kind not in kinds:
                    continue
                if neighbour not in index_of:
                    work[-1] = (node, position)
                    index_of[neighbour] = low[neighbour] = counter
                    counter += 1
                    stack.append(neighbour)
                    on_stack.add(neighbour)
                    work.append((neighbour, 0))
                    advanced = True
                    break
                if neighbour in on_stack:
                    low[node] = min(low[node], index_of[neighbour])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def _shortest_path(graph: _Graph, start: int, goal: int, kinds: frozenset[str],
                   within: set[int]) -> list[tuple[int, int, str, Any]] | None:
    """Edges (from, to, kind, key) of a shortest path start -> goal inside `within`."""
    if start == goal:
        return []
    came_from: dict[int, tuple[int, str, Any]] = {start: (start, "", None)}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for neighbour, kind, key in graph.out[node]:
            if kind not in kinds or neighbour not in within or neighbour in came_from:
                continue
            came_from[neighbour] = (node, kind, key)
            if neighbour == goal:
                path = []
                cursor = goal
                while cursor != start:
                    previous, edge_kind, edge_key = came_from[cursor]
                    path.append((previous, cursor, edge_kind, edge_key))
                    cursor = previous
                return path[::-1]
            queue.append(neighbour)
    return None


def _classify(cycle: list[tuple[int, int, str, Any]]) -> str:
    kinds = [edge[2] for edge in cycle]
    anti = kinds.count("rw")
    if anti == 0:
        name = "G1c" if "wr" in kinds else "G0"
    elif anti == 1:
        name = "G-single"
    else:
        name = "G2"
    return name + ("-realtime" if "rt" in kinds else "")


def _cycles(graph: _Graph, transactions: list[_Transaction], realtime: bool,
            limits: ListAppendLimits) -> list[Anomaly]:
    ww, wr, rw, rt = "ww", "wr", "rw", "rt"
    # (edge kind the cycle goes through, kinds allowed for the way back, graph kinds for the components)
    searches: list[tuple[str | None, frozenset[str], frozenset[str]]] = [
        (None, frozenset({ww}), frozenset({ww})),                               # G0
        (wr, frozenset({ww, wr}), frozenset({ww, wr})),                         # G1c
        (rw, frozenset({ww, wr}), frozenset({ww, wr, rw})),                     # G-single
        (rw, frozenset({ww, wr, rw}), frozenset({ww, wr, rw})),                 # G2
    ]
    if realtime:
        searches += [
            (rt, frozenset({ww, wr, rt}), frozenset({ww, wr, rt})),             # G0 / G1c -realtime
            (rw, frozenset({ww, wr, rt}), frozenset({ww, wr, rw, rt})),         # G-single-realtime
            (rw, frozenset({ww, wr, rw, rt}), frozenset({ww, wr, rw, rt})),     # G2-realtime
        ]
    found: list[Anomaly] = []
    seen_cycles: set[frozenset[int]] = set()
    per_kind: dict[str, int] = {}
    for through, back_kinds, component_kinds in searches:
        searches_left = limits.cycle_searches_max
        for component in _strongly_connected_components(graph, component_kinds):
            cycle = None
            if through is None:
                start = min(component)
                for neighbour, kind, key in graph.out[start]:
                    if kind in back_kinds and neighbour in component:
                        rest = _shortest_path(graph, neighbour, start, back_kinds, component)
                        if rest is not None:
                            cycle = [(start, neighbour, kind, key), *rest]
                            break
            else:
                for node in sorted(component):
                    for neighbour, kind, key in graph.out[node]:
                        if kind != through or neighbour not in component or searches_left <= 0:
                            continue
                        searches_left -= 1
                        rest = _shortest_path(graph, neighbour, node, back_kinds, component)
                        if rest is not None:
                            cycle = [(node, neighbour, kind, key), *rest]
                            break
                    if cycle is not None:
                        break
            if cycle is None:
                continue
            name = _classify(cycle)
            members = frozenset(edge[0] for edge in cycle)
            if members in seen_cycles:
                continue
            seen_cycles.add(members)
            per_kind[name] = per_kind.get(name, 0) + 1
            if per_kind[name] <= limits.anomalies_per_kind_max:
                found.append(_cycle_anomaly(name, cycle, transactions))
    return found


def _cycle_anomaly(name: str, cycle: list[tuple[int, int, str, Any]], transactions: list[_Transaction]) -> Anomaly:
    steps = []
    words = {"ww": "appended before", "wr": "was read by", "rw": "read a state overwritten by",
             "rt": "completed before the invocation of"}
    for source, target, kind, key in cycle:
        first, second = transactions[source].operation, transactions[target].operation
        where = f" (key {key!r})" if key is not None else ""
        steps.append(f"T{first.invoke_index} {words[kind]}{where} T{second.invoke_index}")
    return Anomaly(
        kind=name,
        description=f"{name} cycle: " + "; ".join(steps),
        operations=tuple(transactions[edge[0]].operation for edge in cycle),
        details={"cycle": [
            {"from": transactions[source].operation.invoke_index, "to": transactions[target].operation.invoke_index,
             "edge": kind, "key": key}
            for source, target, kind, key in cycle
        ]},
    )
