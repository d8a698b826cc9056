"""train.py on non-finite numbers and on flags --resume would ignore: one line before any run directory exists."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from tests.conftest import write_image_dataset
from train import main


@pytest.mark.parametrize("flag, value, message", [
    ("--kimg", "nan", "--kimg = nan is not a finite number"), ("--kimg", "inf", "--kimg = inf is not a finite number"),
    ("--glr", "nan", "--glr = nan is not a finite number"), ("--gamma", "inf", "--gamma = inf is not a finite number"),
    ("--tick", "nan", "--tick = nan is not a finite number"),
    ("--blend-kimg", "-inf", "--blend-kimg = -inf is not a finite number"),
])  # fmt: skip
def test_non_finite_numbers_are_one_line_and_make_no_run_directory(tmp_path, flag, value, message):
    data = str(tmp_path / "d.zip")
    write_image_dataset(data, num=4, resolution=8)
    outdir = tmp_path / "runs"
    result = CliRunner().invoke(main, ["--cfg", "paper256", "--data", data, "--no-cond", "--outdir", str(outdir),
                                       flag, value])  # fmt: skip
    assert result.exit_code == 1 and result.output.strip() == f"Error: {message} (given on the command line or in " \
        "the preset)", result.output
    assert not outdir.exists() or not os.listdir(outdir)


@pytest.mark.parametrize("args, ignored", [
    (["--resume", "run/training-state-000001.000.pt", "--cfg", "paper256", "--outdir", "X"], "--cfg and --outdir"),
    (["--resume", "run", "--outdir", "X"], "--outdir"), (["--resume", "latest", "--cfg", "smoke"], "--cfg"),
])  # fmt: skip
def test_resume_refuses_cfg_and_outdir_it_would_ignore(tmp_path, args, ignored):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output == (f"Error: --resume continues the saved config in the run's own directory; {ignored} "
                             "would be ignored: leave them out (only --resume latest uses --outdir, to find the "
                             "run)\n")  # fmt: skip


def test_resume_latest_may_name_the_folder_it_searches(tmp_path):
    result = CliRunner().invoke(main, ["--resume", "latest", "--outdir", str(tmp_path)])
    assert result.exit_code == 1 and "no run in" in result.output  # got past the flag check to the search
