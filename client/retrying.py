"""Which errors are safe to retry, and a transaction-retry loop (as CockroachDB's
clients have) shared by the blocking and the asyncio connection.

Theory of operation
-------------------
An error is retryable when it proves that nothing of the attempt was applied:
- TransactionLostError: the leader changed before COMMIT went out (raftlite.client.cluster);
- SQLITE_BUSY and its extended codes (5, 517 SQLITE_BUSY_SNAPSHOT, ...): SQLite refused
  the statement, so the transaction it belonged to applies nothing once rolled back;
- NoLeaderError: no leader took the request before the deadline (the policy only
  retries, and so only reaches this error, after failures that applied nothing; with
  `retry_unknown_writes=True` an earlier attempt of an autocommit write may have been
  applied, which is what that option accepts).
OutcomeUnknownError is not: the COMMIT (or write) may have been applied, and running
the transaction again would apply it twice, unless the caller says it is idempotent.

`run_transaction_steps` is the loop, written once as a generator of steps (the same
protocol as the session's, carried out by run_blocking or run_awaited): BEGIN (in the
connection's begin mode), fn(connection), COMMIT; on a retryable error ROLLBACK, back
off as the connection's retry policy does, and start again.
"""

import random
from collections.abc import Callable
from typing import Any

from .errors import Error, NoLeaderError, OutcomeUnknownError, TransactionLostError

__all__ = ["is_retryable", "run_transaction_steps"]

_SQLITE_BUSY = 5
ATTEMPTS_DEFAULT = 5


def is_retryable(error: BaseException, *, idempotent: bool = False) -> bool:
    """Whether running the failed transaction again is safe: nothing of it was applied
    (or, with `idempotent=True`, applying it twice does no harm)."""
    if isinstance(error, OutcomeUnknownError):
        return idempotent
    if isinstance(error, (TransactionLostError, NoLeaderError)):
        return True
    code = getattr(error, "sqlite_errorcode", None) if isinstance(error, Error) else None
    return code is not None and code & 0xFF == _SQLITE_BUSY


def run_transaction_steps(connection: Any, fn: Callable[[Any], Any], *, attempts: int, idempotent: bool,
                          random_source: random.Random):
    """The retry loop as steps; `connection` is a DB-API or asyncio connection (its
    begin / commit / rollback return a value or an awaitable, and so does fn)."""
    if not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be a positive integer, got {attempts!r}")
    policy = connection.session.policy
    for attempt in range(attempts):
        try:
            yield connection.begin
            result = yield lambda: fn(connection)
            yield connection.commit
            return result
        except Exception as error:
            if connection.in_transaction:
                try:
                    yield connection.rollback
                except Error:
                    pass   # the transaction is gone with its connection either way
            if attempt + 1 >= attempts or not is_retryable(error, idempotent=idempotent):
                raise
        pause = policy.backoff_s(attempt, random_source.random())
        yield lambda: connection.session._sleep(pause)
    raise AssertionError("unreachable")
