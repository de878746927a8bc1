"""argparse value types shared by every `raftlite` subcommand: a bad value becomes one
clear line from argparse (exit status 2), never a traceback."""

import argparse
from typing import Callable

__all__ = ["int_at_least", "non_negative_int", "positive_float", "positive_int", "positive_seconds"]


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            what = "a positive number" if minimum == 1 else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def _positive_number(unit: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number{unit}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number{unit}, got {text}")
        return value
    return parse


positive_float = _positive_number("")
positive_seconds = _positive_number(" of seconds")
