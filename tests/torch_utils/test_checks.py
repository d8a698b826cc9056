"""torch_utils.checks: the finite-number test behind every float option and API value."""

from __future__ import annotations

import math

import click
import pytest
from click.testing import CliRunner

from torch_utils.checks import FiniteFloat, check_number, number_problem
from torch_utils.errors import UserError


@pytest.mark.parametrize("value, problem", [
    (float("nan"), "nan is not a finite number"), (float("inf"), "inf is not a finite number"),
    (-math.inf, "-inf is not a finite number"), (1e30, "1e+30 is outside [-2, 2]"), ("x", "'x' is not a number"),
    (True, "'True' is not a number"), (0.5, None), (-2, None),
])  # fmt: skip
def test_number_problem(value, problem):
    assert number_problem(value, -2, 2) == problem


def test_open_lower_bound_and_check_number():
    assert number_problem(0.0, 0, None, lo_open=True) == "0 is outside (0, inf]"
    assert check_number(3, "z seed", 0, 10) == 3.0
    with pytest.raises(UserError, match="^truncation psi: nan is not a finite number$"):
        check_number(float("nan"), "truncation psi")


def test_click_type_names_the_option():
    @click.command()
    @click.option("--trunc", type=FiniteFloat(-2, 2))
    def cmd(trunc):
        click.echo(repr(trunc))

    assert CliRunner().invoke(cmd, ["--trunc", "0.7"]).output == "0.7\n"
    for text in ("nan", "inf", "-inf", "5", "abc"):
        result = CliRunner().invoke(cmd, ["--trunc", text])
        assert result.exit_code == 2 and "Invalid value for '--trunc'" in result.output, result.output
