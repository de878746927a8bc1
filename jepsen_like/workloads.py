"""Jepsen-style workloads driven through SQL against a simulated raftlite cluster.

Theory of operation
-------------------
A workload is a set of concurrent client *processes*, each running one operation at a
time, as in Jepsen. Each operation is recorded in the history as an ``invoke`` event
when it starts and an ``ok`` / ``fail`` / ``info`` event when its outcome is known,
with the simulated time in nanoseconds. The outcome follows what the database said:

    the SQL succeeded                                  ok
    an SQL error, or 10250 "not leader"                fail   (certainly not applied)
    10506 "leadership lost", or no answer in time      info   (may or may not be applied)

A process that got ``info`` is gone (its operation may still take effect at any later
moment), so a new process number replaces it (``process + concurrency``), as Jepsen does.

Each operation is a *plan*: a generator that yields SQL requests (`Execute` / `Query`)
and receives their answers; it returns the completion's type and value. The driver
(`Worker`) sends every request of one operation on one client session (so BEGIN ...
COMMIT is one interactive transaction), to the node it believes leads. Like a driver
with a cached leader, it keeps talking to that node until it answers 10250 or times out,
then asks again which node leads; so a client can be talking to a deposed leader, which
is exactly where stale reads would show. Answers arrive through `ReplyRouter`, which
hands each reply to the waiting operation one client latency after the node sent it.

The four workloads (each with the checker that judges it):

    register  read / write / cas on a few keys, Jepsen independent values [k v];
              one row per key; cas is an UPDATE ... WHERE v = ? judged by rows affected.
              Checked for linearizability per key (cas-register model).
    bank      transfers between accounts inside BEGIN IMMEDIATE ... COMMIT; reads of all
              balances. Checked for totals and negative balances.
    set       unique inserts, periodic reads and a final read after the heal. Checked
              for lost, unexpected and duplicated elements.
    append    Elle list-append: transactions of 1-4 appends/reads over a dozen keys,
              each one interactive transaction; an append concatenates to a text list.
              Checked for dependency cycles (strict serializability).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence

from ..actors.contract import Client
from ..actors.database import (
    LEADERSHIP_LOST, NOT_LEADER, Execute, ExecuteResult, Query, QueryResult, SessionClosed, SqlError,
)
from .bank import check_bank
from .history import Event, Keyword, Verdict
from .linearizability import LinearizabilityLimits, check_linearizability
from .list_append import check_list_append
from .models import make_model
from .set_checker import check_set
from ..sim.rng import derive_rng
from ..sim.simulation import NodeState, Simulation

__all__ = [
    "AppendWorkload",
    "BankWorkload",
    "Completion",
    "HistoryRecorder",
    "RegisterWorkload",
    "ReplyRouter",
    "SetWorkload",
    "WORKLOADS",
    "Workload",
    "WorkloadDriver",
    "WorkloadOptions",
    "make_workload",
]

DATABASE = "jepsen"
NANOSECONDS_PER_MS = 1_000_000

# What a plan yields (a request) and returns (type, value).
Plan = Generator[Any, Any, tuple[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    type: str      # ok, fail or info
    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadOptions:
    concurrency: int = 5                  # client processes at a time
    rate_per_s: float = 100.0             # operations per simulated second, all processes
    operation_timeout_ms: float = 3000.0  # no answer by then: info
    final_attempts_max: int = 20          # final reads retried at most this often
    final_retry_ms: float = 250.0


class HistoryRecorder:
    """Events in the order clients saw them, stamped with simulated time."""

    def __init__(self, sim: Simulation, *, time_origin_ms: float = 0.0) -> None:
        self.sim = sim
        self.time_origin_ms = time_origin_ms
        self.events: list[Event] = []

    def _time(self) -> int:
        return int(round((self.sim.now_ms - self.time_origin_ms) * NANOSECONDS_PER_MS))

    def record(self, kind: str, process: Any, f: str, value: Any, *, error: str | None = None) -> None:
        extra = ((Keyword("error"), error),) if error else ()
        self.events.append(Event(type=kind, f=Keyword(f), value=value, process=process, index=len(self.events),
                                 time=self._time(), extra=extra))

    def nemesis(self, kind: str, f: str, value: Any) -> None:
        self.events.append(Event(type="info", f=Keyword(f), value=value, process=Keyword("nemesis"),
                                 index=len(self.events), time=self._time(), extra=((Keyword("kind"), kind),)))


class ReplyRouter:
    """Routes a node's replies to the operation waiting for them.

    The simulator collects replies in `sim.replies`; workloads need to be woken instead.
    The router wraps the simulation's `deliver_reply` (keeping what it does) and calls
    the waiting callback one client latency later (the reply's trip back)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.waiting: dict[Client, Callable[[Any], None]] = {}
        original = sim.deliver_reply

        def deliver(node_id: int, client: Client, response: Any) -> None:
            original(node_id, client, response)
            callback = self.waiting.pop(client, None)
            if callback is not None:
                sim.call_later(sim.client_latency_ms, callback, response)

        sim.deliver_reply = deliver

    def send(self, node: int, request: Any, callback: Callable[[Any], None], client: Client | None = None) -> Client:
        client = self.sim.submit(node, request, client=client)
        self.waiting[client] = callback
        return client

    def forget(self, client: Client) -> None:
        self.waiting.pop(client, None)
        self.sim.replies.pop(client, None)


# --------------------------------------------------------------------------------------
# The workloads
# --------------------------------------------------------------------------------------

class Workload:
    """Base of the workloads: schema, operation generator, final operations, checker."""

    name = "workload"
    schema: tuple[str, ...] = ()

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def next_operation(self) -> tuple[str, Any, Plan]:
        """(f, invocation value, plan) of the next operation."""
        raise NotImplementedError

    def final_operations(self) -> list[tuple[str, Any, Callable[[], Plan]]]:
        """Operations run once after the final heal, each retried until it is ok."""
        return []

    def check(self, events: Sequence[Event], *, time_limit_s: float) -> Verdict:
        raise NotImplementedError


def _execute(sql: str, params: tuple = ()) -> Execute:
    return Execute(database=DATABASE, sql=sql, params=params)


def _query(sql: str, params: tuple = ()) -> Query:
    return Query(database=DATABASE, sql=sql, params=params)


class RegisterWorkload(Workload):
    """Read / write / cas on a few keys at a time; a key retires after some operations
    (Jepsen's independent generator) so that each key's history stays searchable."""

    name = "register"
    schema = ("CREATE TABLE IF NOT EXISTS registers (k INTEGER PRIMARY KEY, v INTEGER)",)
    keys_active = 3
    operations_per_key_max = 60
    values = 5

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.active = list(range(self.keys_active))
        self.next_key = self.keys_active
        self.used: dict[int, int] = {}

    def _key(self) -> int:
        slot = self.rng.randrange(len(self.active))
        key = self.active[slot]
        self.used[key] = self.used.get(key, 0) + 1
        if self.used[key] >= self.operations_per_key_max:
            self.active[slot] = self.next_key
            self.next_key += 1
        return key

    def next_operation(self) -> tuple[str, Any, Plan]:
        key = self._key()
        roll = self.rng.random()
        if roll < 0.4:
            return "read", (key, None), self._read(key)
        if roll < 0.7:
            value = self.rng.randrange(self.values)
            return "write", (key, value), self._write(key, value)
        old, new = self.rng.randrange(self.values), self.rng.randrange(self.values)
        return "cas", (key, (old, new)), self._cas(key, old, new)

    @staticmethod
    def _read(key: int) -> Plan:
        answer = yield _query("SELECT v FROM registers WHERE k = ?", (key,))
        return "ok", (key, answer.rows[0][0] if answer.rows else None)

    @staticmethod
    def _write(key: int, value: int) -> Plan:
        yield _execute("INSERT INTO registers (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                       (key, value))
        return "ok", (key, value)

    @staticmethod
    def _cas(key: int, old: int, new: int) -> Plan:
        answer = yield _execute("UPDATE registers SET v = ? WHERE k = ? AND v = ?", (new, key, old))
        return ("ok" if answer.rows_affected == 1 else "fail"), (key, (old, new))

    def check(self, events: Sequence[Event], *, time_limit_s: float) -> Verdict:
        return check_linearizability(events, make_model("cas-register"), independent=True,
                                     limits=LinearizabilityLimits(time_limit_s=time_limit_s))


class BankWorkload(Workload):
    """Transfers between accounts in interactive transactions; reads of every balance."""

    name = "bank"
    accounts = 5
    initial_balance = 20
    amount_max = 5

    @property
    def schema(self) -> tuple[str, ...]:
        rows = ", ".join(f"({account}, {self.initial_balance})" for account in range(self.accounts))
        return ("CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
                f"INSERT OR IGNORE INTO accounts (id, balance) VALUES {rows}")

    @property
    def total(self) -> int:
        return self.accounts * self.initial_balance

    def next_operation(self) -> tuple[str, Any, Plan]:
        if self.rng.random() < 0.3:
            return "read", None, self._read()
        source, target = self.rng.sample(range(self.accounts), 2)
        amount = self.rng.randint(1, self.amount_max)
        value = {Keyword("from"): source, Keyword("to"): target, Keyword("amount"): amount}
        return "transfer", value, self._transfer(source, target, amount, value)

    @staticmethod
    def _read() -> Plan:
        answer = yield _query("SELECT id, balance FROM accounts ORDER BY id")
        return "ok", {account: balance for account, balance in answer.rows}

    @staticmethod
    def _transfer(source: int, target: int, amount: int, value: dict) -> Plan:
        yield _execute("BEGIN IMMEDIATE")
        answer = yield _query("SELECT balance FROM accounts WHERE id = ?", (source,))
        if not answer.rows or answer.rows[0][0] < amount:
            yield _execute("ROLLBACK")
            return "fail", value
        yield _execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, source))
        yield _execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, target))
        yield _execute("COMMIT")
        return "ok", value

    def final_operations(self) -> list[tuple[str, Any, Callable[[], Plan]]]:
        return [("read", None, self._read)]

    def check(self, events: Sequence[Event], *, time_limit_s: float) -> Verdict:
        return check_bank(events, total=self.total, accounts=range(self.accounts))


class SetWorkload(Workload):
    """Unique inserts; a read now and then, and a final read after the heal."""

    name = "set"
    schema = ("CREATE TABLE IF NOT EXISTS elements (e INTEGER PRIMARY KEY)",)

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.next_element = 0

    def next_operation(self) -> tuple[str, Any, Plan]:
        if self.rng.random() < 0.1:
            return "read", None, self._read()
        element = self.next_element
        self.next_element += 1
        return "add", element, self._add(element)

    @staticmethod
    def _add(element: int) -> Plan:
        yield _execute("INSERT INTO elements (e) VALUES (?)", (element,))
        return "ok", element

    @staticmethod
    def _read() -> Plan:
        answer = yield _query("SELECT e FROM elements ORDER BY e")
        return "ok", tuple(row[0] for row in answer.rows)

    def final_operations(self) -> list[tuple[str, Any, Callable[[], Plan]]]:
        return [("read", None, self._read)]

    def check(self, events: Sequence[Event], *, time_limit_s: float) -> Verdict:
        return check_set(events)


class AppendWorkload(Workload):
    """Elle list-append: 1-4 micro-operations per transaction over ~12 active keys; a key
    retires after some appends so that lists (and reads) stay short."""

    name = "append"
    schema = ("CREATE TABLE IF NOT EXISTS lists (k INTEGER PRIMARY KEY, v TEXT NOT NULL)",)
    keys_active = 12
    appends_per_key_max = 32
    micro_operations_max = 4

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.active = list(range(self.keys_active))
        self.next_key = self.keys_active
        self.appended: dict[int, int] = {}   # key -> last value appended (values are unique per key)

    def next_operation(self) -> tuple[str, Any, Plan]:
        micro = []
        for _ in range(self.rng.randint(1, self.micro_operations_max)):
            slot = self.rng.randrange(len(self.active))
            key = self.active[slot]
            if self.rng.random() < 0.5:
                micro.append((Keyword("r"), key, None))
                continue
            value = self.appended.get(key, 0) + 1
            self.appended[key] = value
            micro.append((Keyword("append"), key, value))
            if value >= self.appends_per_key_max:
                self.active[slot] = self.next_key
                self.next_key += 1
        value = tuple(micro)
        return "txn", value, self._transaction(value)

    @staticmethod
    def _transaction(micro_operations: tuple) -> Plan:
        yield _execute("BEGIN IMMEDIATE")
        results = []
        for function, key, value in micro_operations:
            if function == "r":
                answer = yield _query("SELECT v FROM lists WHERE k = ?", (key,))
                text = answer.rows[0][0] if answer.rows else ""
                results.append((function, key, tuple(int(item) for item in text.split())))
            else:
                yield _execute("INSERT INTO lists (k, v) VALUES (?, ?) "
                               "ON CONFLICT (k) DO UPDATE SET v = v || ' ' || excluded.v", (key, str(value)))
                results.append((function, key, value))
        yield _execute("COMMIT")
        return "ok", tuple(results)

    def final_operations(self) -> list[tuple[str, Any, Callable[[], Plan]]]:
        keys = sorted(set(self.appended) | set(self.active))
        value = tuple((Keyword("r"), key, None) for key in keys)
        return [("txn", value, lambda: self._transaction(value))]

    def check(self, events: Sequence[Event], *, time_limit_s: float) -> Verdict:
        return check_list_append(events, consistency="strict-serializable")


WORKLOADS: dict[str, type[Workload]] = {
    "register": RegisterWorkload,
    "bank": BankWorkload,
    "set": SetWorkload,
    "append": AppendWorkload,
}


def make_workload(name: str, seed: int) -> Workload:
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    return WORKLOADS[name](derive_rng(seed, f"jepsen-workload/{name}"))


# --------------------------------------------------------------------------------------
# Driving the processes
# --------------------------------------------------------------------------------------

@dataclass
class _Running:
    """One operation under way."""

    process: int
    f: str
    value: Any
    plan: Plan
    deadline_ms: float
    node: int
    session: Client | None = None
    in_transaction: bool = False
    on_done: Callable[[Completion], None] | None = None
    serial: int = 0


@dataclass
class WorkloadDriver:
    """Runs a workload's processes against a simulation and records the history."""

    sim: Simulation
    workload: Workload
    recorder: HistoryRecorder
    options: WorkloadOptions = field(default_factory=WorkloadOptions)

    def __post_init__(self) -> None:
        self.router = ReplyRouter(self.sim)
        self.rng = derive_rng(self.sim.seed, "jepsen-clients")
        self.stop_at_ms = 0.0
        self.processes = list(range(self.options.concurrency))
        self.believed_leader: dict[int, int | None] = {}   # worker slot -> node
        self.running: dict[int, _Running] = {}             # worker slot -> operation
        self.serial = 0
        self.counts: dict[str, int] = {"invoke": 0, "ok": 0, "fail": 0, "info": 0}

    # -- the generator phase -------------------------------------------------------------

    def start(self, stop_at_ms: float) -> None:
        self.stop_at_ms = stop_at_ms
        for slot in range(self.options.concurrency):
            self.sim.call_later(self.rng.uniform(0.0, self._think_ms()), self._next, slot)

    def _think_ms(self) -> float:
        mean = 1000.0 * self.options.concurrency / self.options.rate_per_s
        return self.rng.uniform(0.0, 2.0 * mean)

    def _next(self, slot: int) -> None:
        if self.sim.now_ms >= self.stop_at_ms:
            return
        node = self._target(slot)
        if node is None:
            self.sim.call_later(10.0, self._next, slot)   # nobody leads: ask again shortly
            return
        f, value, plan = self.workload.next_operation()
        self.begin(slot, f, value, plan, node, on_done=lambda _: self._after(slot))

    def _after(self, slot: int) -> None:
        self.sim.call_later(self._think_ms(), self._next, slot)

    @property
    def idle(self) -> bool:
        return not self.running

    def _target(self, slot: int) -> int | None:
        node = self.believed_leader.get(slot)
        if node is not None and self.sim.nodes[node].state == NodeState.UP:
            return node
        found = self.sim.leaders()
        node = self.rng.choice(found) if found else None
        self.believed_leader[slot] = node
        return node

    # -- one operation -------------------------------------------------------------------

    def begin(self, slot: int, f: str, value: Any, plan: Plan, node: int,
              on_done: Callable[[Completion], None] | None = None) -> None:
        process = self.processes[slot]
        self.serial += 1
        running = _Running(process=process, f=f, value=value, plan=plan, node=node, on_done=on_done, serial=self.serial,
                           deadline_ms=self.sim.now_ms + self.options.operation_timeout_ms)
        self.running[slot] = running
        self.recorder.record("invoke", process, f, value)
        self.counts["invoke"] += 1
        self.sim.call_later(self.options.operation_timeout_ms, self._timeout, slot, running.serial)
        self._advance(slot, running, None)

    def _advance(self, slot: int, running: _Running, answer: Any) -> None:
        try:
            request = running.plan.send(answer)
        except StopIteration as finished:
            kind, value = finished.value
            self._finish(slot, running, kind, value)
            return
        if isinstance(request, Execute) and request.sql.upper().startswith("BEGIN"):
            running.in_transaction = True
        running.session = self.router.send(running.node, request, lambda reply: self._answer(slot, running, reply),
                                           client=running.session)

    def _answer(self, slot: int, running: _Running, reply: Any) -> None:
        if self.running.get(slot) is not running:
            return   # timed out meanwhile
        if isinstance(reply, SqlError):
            if reply.code == NOT_LEADER:
                self.believed_leader[slot] = None
            if reply.code == LEADERSHIP_LOST:
                self._finish(slot, running, "info", None, error=f"leadership lost (code {reply.code})")
            else:
                self._finish(slot, running, "fail", None, error=f"{reply.message} (code {reply.code})")
            return
        if not isinstance(reply, (ExecuteResult, QueryResult)):
            self._finish(slot, running, "info", None, error=f"unexpected answer {type(reply).__name__}")
            return
        self._advance(slot, running, reply)

    def _timeout(self, slot: int, serial: int) -> None:
        running = self.running.get(slot)
        if running is None or running.serial != serial:
            return
        self.believed_leader[slot] = None
        self._finish(slot, running, "info", None, error="timed out")

    def _finish(self, slot: int, running: _Running, kind: str, value: Any, *, error: str | None = None) -> None:
        del self.running[slot]
        running.plan.close()
        if value is None:
            # A failed or unknown operation completes with what it was asked to do.
            value = running.value
        self.recorder.record(kind, running.process, running.f, value, error=error)
        self.counts[kind] += 1
        if running.session is not None:
            self.router.forget(running.session)
            if kind != "ok" or running.in_transaction:
                # Leave no transaction (and no write lock) behind on the node.
                if self.sim.nodes[running.node].state == NodeState.UP:
                    self.sim.submit(running.node, SessionClosed(), client=running.session)
                    self.sim.replies.pop(running.session, None)
        if kind == "info":
            self.processes[slot] += self.options.concurrency   # the process is gone; a new one takes its place
        if running.on_done is not None:
            running.on_done(Completion(type=kind, value=value))

    # -- after the final heal ------------------------------------------------------------

    def run_final_operations(self, limit_ms: float) -> list[str]:
        """Run the workload's final operations (one process, retried until ok) by driving
        the simulation; returns problems (a final read that never succeeded)."""
        problems = []
        slot = 0
        for f, value, make_plan in self.workload.final_operations():
            done: list[Completion] = []
            deadline = self.sim.now_ms + limit_ms
            attempts = 0
            while attempts < self.options.final_attempts_max and self.sim.now_ms < deadline:
                node = self._target(slot)
                if node is None:
                    self.sim.run_for(self.options.final_retry_ms)
                    continue
                attempts += 1
                done.clear()
                self.begin(slot, f, value, make_plan(), node, on_done=done.append)
                while not done and self.sim.now_ms < deadline + self.options.operation_timeout_ms:
                    self.sim.run_for(5.0)
                if done and done[0].type == "ok":
                    break
                self.sim.run_for(self.options.final_retry_ms)
            if not done or done[0].type != "ok":
                why = f"in {attempts} attempts" if attempts else "(no node led)"
                problems.append(f"liveness: the final {f} did not succeed {why} within {limit_ms:.0f} ms of the heal")
        return problems

    def drain(self, limit_ms: float) -> None:
        """Let the operations under way finish (or time out)."""
        deadline = self.sim.now_ms + limit_ms
        while self.running and self.sim.now_ms < deadline:
            self.sim.run_for(10.0)
