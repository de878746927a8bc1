"""Invariant checks that survive `python -O`.

A broken invariant means the node's state can no longer be trusted: it stops loudly
(docs/architecture.md §6). Bare `assert` would vanish under -O, so use `invariant()`.
"""

__all__ = ["InvariantViolation", "invariant"]


class InvariantViolation(Exception):
    """An internal invariant failed; the process (or simulated node) must stop."""


def invariant(condition: object, message: str) -> None:
    if not condition:
        raise InvariantViolation(message)
