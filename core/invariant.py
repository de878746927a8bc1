"""Invariant checks that survive `python -O`.

A broken invariant means the node's state can no longer be trusted: it stops loudly
(docs/architecture.md §6). Bare `assert` would vanish under -O, so use `invariant()`.
`present()` is the same check for a value that cannot be None where it is used; it also
tells a type checker so (mypy cannot narrow a type through `invariant()`).
"""

from typing import TypeVar

__all__ = ["InvariantViolation", "invariant", "present"]

T = TypeVar("T")


class InvariantViolation(Exception):
    """An internal invariant failed; the process (or simulated node) must stop."""


def invariant(condition: object, message: str) -> None:
    if not condition:
        raise InvariantViolation(message)


def present(value: T | None, message: str) -> T:
    """`value`, which the caller knows is not None here; a broken invariant if it is."""
    if value is None:
        raise InvariantViolation(message)
    return value
