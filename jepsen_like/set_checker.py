"""Set checking: every acknowledged add is in the final read, and nothing else is.

Theory of operation
-------------------
A set workload adds unique elements (``:f :add, :value e``) and finally reads the whole
set (``:f :read``, an ``ok`` whose value is the collection). Judged against the last
``ok`` read (the *final read*):

- ``lost``: an add acknowledged ``ok`` before the final read was invoked, missing from
  it. An add acknowledged later may legitimately be absent (it ran concurrently with the
  read), so it is never called lost;
- ``unexpected``: an element in the final read that no add ever attempted;
- ``duplicated``: an element the final read holds more than once (when it returns a
  list rather than a set).

``info`` adds may be present or absent (reported as ``recovered`` when present, for
information only); ``fail`` adds must be absent, otherwise the element is reported as
``unexpected`` too, because a failed add certainly did not happen. With no ok read the
verdict is ``unknown``: nothing was observed.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from .history import Anomaly, Event, HistoryError, Operation, Verdict, pair_operations

__all__ = ["check_set"]


def check_set(history: Iterable[Event] | Sequence[Operation], *, elements_shown_max: int = 20) -> Verdict:
    items = list(history)
    operations = items if items and isinstance(items[0], Operation) else pair_operations(items)
    operations = [operation for operation in operations if isinstance(operation.process, int)]
    adds = [operation for operation in operations if operation.f == "add"]
    reads = [operation for operation in operations if operation.f == "read" and operation.type == "ok"]
    if not reads:
        return Verdict(valid="unknown", details={"reason": "no read completed, nothing to judge", "adds": len(adds)})
    final = max(reads, key=lambda operation: operation.complete.index)
    if final.value is None or isinstance(final.value, (str, int, float, dict)):
        raise HistoryError(f"event {final.complete.index}: a set read must return a collection, not {final.value!r}")
    observed = list(final.value)
    present = set(observed)

    attempted: dict[Any, Operation] = {}
    for add in adds:
        attempted.setdefault(add.invoke_value, add)
    acknowledged = [add for add in adds if add.type == "ok" and add.complete.index < final.invoke_index]
    failed = {add.invoke_value for add in adds if add.type == "fail"}
    failed -= {add.invoke_value for add in adds if add.type != "fail"}   # retried: another attempt may have won

    lost = [add for add in acknowledged if add.invoke_value not in present]
    unexpected = sorted({element for element in observed if element not in attempted or element in failed}, key=repr)
    duplicated = sorted({element for element in observed if observed.count(element) > 1}, key=repr) \
        if len(observed) != len(present) else []
    recovered = sorted({add.invoke_value for add in adds if add.type == "info" and add.invoke_value in present},
                       key=repr)

    anomalies = []
    if lost:
        shown = [add.invoke_value for add in lost[:elements_shown_max]]
        anomalies.append(Anomaly(
            kind="lost",
            description=f"{len(lost)} acknowledged add(s) missing from the final read: {shown!r}",
            operations=(*lost[:elements_shown_max], final),
            details={"elements": [add.invoke_value for add in lost]},
        ))
    if unexpected:
        anomalies.append(Anomaly(
            kind="unexpected",
            description=(f"the final read holds {len(unexpected)} element(s) never added, or whose add failed: "
                         f"{unexpected[:elements_shown_max]!r}"),
            operations=(final,),
            details={"elements": unexpected},
        ))
    if duplicated:
        anomalies.append(Anomaly(
            kind="duplicated",
            description=f"the final read holds element(s) more than once: {duplicated[:elements_shown_max]!r}",
            operations=(final,),
            details={"elements": duplicated},
        ))
    excerpt: tuple[Event, ...] = ()
    if anomalies:
        excerpt = tuple(sorted((event for operation in anomalies[0].operations for event in operation.events()),
                               key=lambda event: event.index))
    return Verdict(
        valid=not anomalies,
        anomalies=tuple(anomalies),
        excerpt=excerpt,
        details={
            "attempted": len(attempted),
            "acknowledged": len(acknowledged),
            "final_read_size": len(observed),
            "lost": len(lost),
            "unexpected": len(unexpected),
            "duplicated": len(duplicated),
            "recovered": recovered,
        },
    )
