"""Bank checking: transfers move money between accounts; no read may see money appear or vanish.

Theory of operation
-------------------
A bank workload starts every account with some balance and then runs ``transfer``
operations (``{:from a, :to b, :amount n}``) in transactions, alongside ``read``
operations that return every account's balance (``{a balance, b balance, ...}``). Under
snapshot isolation or anything stronger, each read sees a state between whole
transfers, so:

- every read's balances sum to the initial total (``wrong-total`` otherwise);
- no balance is negative, when the workload forbids overdrafts (``negative-value``);
- every balance is a number (``nil-balance``), and, when the accounts are known, a read
  names no other account (``unexpected-key``) and misses none (``missing-key``).

Only ``ok`` reads are judged: a failed or indeterminate read returned nothing usable.
When the initial total is not given it is taken from the first ok read, and the verdict
says so (a checker that guessed silently could hide a first read that was already wrong).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from .history import Anomaly, Event, HistoryError, Operation, Verdict, pair_operations

__all__ = ["check_bank"]


def check_bank(
    history: Iterable[Event] | Sequence[Operation],
    *,
    total: int | float | None = None,
    accounts: Iterable[Any] | None = None,
    negative_balances_allowed: bool = False,
    anomalies_max: int = 50,
) -> Verdict:
    items = list(history)
    operations = items if items and isinstance(items[0], Operation) else pair_operations(items)
    reads = [operation for operation in operations
             if isinstance(operation.process, int) and operation.f == "read" and operation.type == "ok"]
    known_accounts = None if accounts is None else set(accounts)
    details: dict[str, Any] = {"reads": len(reads)}
    if not reads:
        return Verdict(valid="unknown", details={**details, "reason": "no read completed, nothing to judge"})
    for read in reads:
        if not isinstance(read.value, dict):
            raise HistoryError(f"event {read.complete.index}: a bank read must return a map of account to "
                               f"balance, not {read.value!r}")
    if total is None:
        total = _sum_or_none(reads[0].value)
        details["total_inferred_from_event"] = reads[0].complete.index
    details["total"] = total

    anomalies: list[Anomaly] = []
    counts: dict[str, int] = {}

    def report(kind: str, description: str, read: Operation, **extra: Any) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        if len(anomalies) < anomalies_max:
            anomalies.append(Anomaly(kind=kind, description=description, operations=(read,), details=extra))

    for read in reads:
        balances: dict = read.value
        where = f"the read at event {read.complete.index}"
        missing_values = [account for account, balance in balances.items() if not isinstance(balance, (int, float))]
        if missing_values:
            report("nil-balance", f"{where} has no number for account(s) {missing_values!r}", read,
                   accounts=missing_values)
            continue
        if known_accounts is not None:
            extra_accounts = sorted(set(balances) - known_accounts, key=repr)
            absent_accounts = sorted(known_accounts - set(balances), key=repr)
            if extra_accounts:
                report("unexpected-key", f"{where} names unknown account(s) {extra_accounts!r}", read,
                       accounts=extra_accounts)
            if absent_accounts:
                report("missing-key", f"{where} lacks account(s) {absent_accounts!r}", read,
                       accounts=absent_accounts)
        read_total = sum(balances.values())
        if total is not None and read_total != total:
            report("wrong-total", f"{where} sums to {read_total}, not {total}: {balances!r}", read,
                   total=read_total, expected=total)
        if not negative_balances_allowed:
            negative = {account: balance for account, balance in balances.items() if balance < 0}
            if negative:
                report("negative-value", f"{where} shows negative balance(s) {negative!r}", read, balances=negative)

    details["anomaly_counts"] = counts
    excerpt = tuple(anomalies[0].operations[0].events()) if anomalies else ()
    return Verdict(valid=not anomalies, anomalies=tuple(anomalies), excerpt=excerpt, details=details)


def _sum_or_none(balances: dict) -> int | float | None:
    if all(isinstance(balance, (int, float)) for balance in balances.values()):
        return sum(balances.values())
    return None
