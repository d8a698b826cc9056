"""Checks for the numbers a user types or a file supplies: finite and within a stated range, one line each.

`FiniteFloat(lo, hi)` is the click type of every float option (NaN, inf and out-of-range values are refused by
click with a line naming the option); `number_problem` / `check_number` are the same test for values that arrive
another way (the studio's HTTP API, config files).
"""

from __future__ import annotations

import math
from typing import Any

import click

from torch_utils.errors import UserError


def number_problem(value: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> str | None:
    """Why `value` is not a finite number in [lo, hi] (lo excluded if lo_open), or None if it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{str(value)[:40]!r} is not a number"
    if not math.isfinite(value):
        return f"{value} is not a finite number"
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        low, high = "-inf" if lo is None else f"{lo:g}", "inf" if hi is None else f"{hi:g}"
        return f"{value:g} is outside {'(' if lo_open else '['}{low}, {high}]"
    return None


def check_number(value: Any, name: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> float:  # fmt: skip
    """float(value) if it is a finite number in range; UserError naming `name` otherwise."""
    problem = number_problem(value, lo, hi, lo_open)
    if problem is not None:
        raise UserError(f"{name}: {problem}")
    return float(value)


class FiniteFloat(click.ParamType):
    """Click type: a finite float within [lo, hi] (lo excluded if lo_open)."""

    name = "FLOAT"

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{str(value)[:40]!r} is not a number", param, ctx)
        problem = number_problem(number, self.lo, self.hi, self.lo_open)
        if problem is not None:
            self.fail(problem, param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self.lo}, {self.hi})"
