"""Progress display: plain, bounded lines when the stream is not a terminal (a log), a tqdm bar on a terminal, and no
module of the project that writes a bar any other way."""

from __future__ import annotations

import ast
import io
import os
import re

import tqdm
from click.testing import CliRunner

from torch_utils.progress import PlainProgress, progress, trange

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_at_most_one_line_per_10_percent_and_no_carriage_returns() -> None:
    log = io.StringIO()
    seen = list(progress(range(10_000), desc="rendering scenes", unit="img", file=log))
    assert seen == list(range(10_000))  # iterates like tqdm
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 11  # 10% steps at least MIN_GAP_S apart (none in a fast loop), the end once
    assert lines[-1].startswith("rendering scenes: 10000/10000 img (100%)")
    assert [int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines] == sorted(
        int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines
    )


def test_rate_eta_postfix_and_the_time_interval() -> None:
    now = [0.0]
    log = io.StringIO()
    bar = PlainProgress(total=1000, desc="training the synthetic FR", unit="step", file=log, interval_s=30,
                        clock=lambda: now[0])  # fmt: skip
    for step in range(1000):
        now[0] += 0.5  # 2 steps/s: a 10% step takes 50 s, longer than the 30 s interval
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    # 500 s at one line per 30 s or per 10% step: between 500 / 30 and 500 / 30 + 10 lines.
    assert 16 <= len(lines) <= 27
    assert lines[0] == "training the synthetic FR: 60/1000 step (6%), 2.0 step/s, ETA 7m 50s, loss=0.017"
    assert lines[1] == "training the synthetic FR: 100/1000 step (10%), 2.0 step/s, ETA 7m 30s, loss=0.010"
    assert lines[-1] == "training the synthetic FR: 1000/1000 step (100%), 2.0 step/s, done in 8m 20s, loss=0.001"


def test_manual_updates_with_byte_units_and_unknown_total() -> None:
    log = io.StringIO()
    with progress(total=3 * 2**20, desc="epoch_20.pth", unit="B", unit_scale=True, file=log) as bar:
        for _ in range(3):
            bar.update(2**20)
    assert "epoch_20.pth: 3.15MB/3.15MB (100%)" in log.getvalue()
    log = io.StringIO()
    with progress(desc="reading", unit="img", file=log) as bar:  # no total: the interval and the last line only
        bar.update(5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reading: 5 img, ")


def test_a_terminal_gets_the_tqdm_bar_and_disable_is_silent() -> None:
    terminal = FakeTerminal()
    bar = progress(range(3), desc="x", file=terminal)
    assert isinstance(bar, tqdm.tqdm)
    list(bar)
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    assert list(trange(4, file=quiet, disable=True)) == [0, 1, 2, 3] and quiet.getvalue() == ""


def test_train_log_tee_is_not_a_terminal() -> None:
    from train import _Tee

    log = io.StringIO()
    tee = _Tee(FakeTerminal(), log)  # a terminal run still writes log.txt: plain lines, not redrawn bars
    list(progress(range(50), desc="vary exp", file=tee))
    assert "\r" not in log.getvalue() and "vary exp: 50/50" in log.getvalue()


def test_dataset_tool_in_a_log_writes_plain_progress_lines(tmp_path) -> None:
    import dataset_tool
    from deep3drecon.synthetic import write_synthetic_mat

    face_model = write_synthetic_mat(str(tmp_path / "face.mat"), seed=0, grid=33)
    result = CliRunner().invoke(dataset_tool.cli, ["synthetic", "--dest", str(tmp_path / "s.zip"), "--count", "40",
                                                   "--resolution", "16", "--workers", "0", "--face-model",
                                                   face_model])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    steps = [line for line in result.output.splitlines() if line.startswith("synthetic -> s.zip")]
    assert 1 <= len(steps) <= 11 and "40/40 img (100%)" in steps[-1]


def test_no_module_uses_tqdm_directly() -> None:
    """Every bar goes through torch_utils.progress (else a log fills with carriage-return updates again)."""
    offenders = []
    for folder in ("torch_utils", "training", "deep3drecon", "metrics", "dataprep", "generation", "experiments",
                   "benchmarks", "."):  # fmt: skip
        root = os.path.join(REPO, folder)
        names = sorted(os.listdir(root)) if folder == "." else None
        for dirpath, _, files in [(root, None, names)] if names else os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                if not name.endswith(".py") or path == os.path.join(REPO, "torch_utils", "progress.py"):
                    continue
                for node in ast.walk(ast.parse(open(path).read())):
                    modules = []
                    if isinstance(node, ast.Import):
                        modules = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        modules = [node.module or ""]
                    if any(m == "tqdm" or m.startswith("tqdm.") for m in modules):
                        offenders.append(os.path.relpath(path, REPO))
    assert offenders == []
