"""torch_utils.misc and torch_utils.errors: the one quantiser, the one device choice, the one CLI error path."""

from __future__ import annotations

import math

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from torch_utils.errors import Command, Group, UserError
from torch_utils.misc import describe_state_dict_mismatch, pick_device, quantize_uint8


def test_quantize_uint8_matches_a_naive_loop_and_stylegan2_rounding():
    x = torch.linspace(-1.3, 1.3, 2001, dtype=torch.float32)
    x = torch.cat([x, torch.tensor([-1.0, 1.0, 0.0, 1 / 255, -1 / 127.5])])
    got = quantize_uint8(x)
    f32 = np.float32
    naive = [min(255, max(0, math.floor(f32(v) * f32(127.5) + f32(128)))) for v in x.tolist()]
    assert got.tolist() == naive
    stylegan2 = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()  # its generate.py's PNG rounding
    assert (got == stylegan2).all()
    assert quantize_uint8(torch.tensor([-1.0, 1.0])).tolist() == [0, 255]


def test_quantize_uint8_other_ranges_and_layouts():
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert (quantize_uint8(u8, drange=(0, 255)) == u8).all()  # uint8 in, same values out
    unit = torch.rand(2, 3, 5, 7)
    got = quantize_uint8(unit, drange=(0, 1))
    assert got.shape == (2, 3, 5, 7) and got.dtype == np.uint8
    assert (got == np.floor(unit.numpy() * 255 + 0.5).astype(np.uint8)).all()


def test_training_grid_and_generate_cells_quantise_identically(tmp_path):
    import PIL.Image

    from generation.controlled import to_uint8
    from training.run.grids import save_image_grid

    img = torch.rand(1, 3, 8, 8) * 2 - 1
    save_image_grid(img, str(tmp_path / "g.png"), grid_w=1, min_cell=8)  # no upsampling
    assert (np.array(PIL.Image.open(tmp_path / "g.png")) == to_uint8(img[0])).all()


def test_pick_device_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA device"):
        pick_device("cuda")
    with pytest.raises(UserError, match="must be auto, cpu, cuda"):
        pick_device("tpu")


def test_pick_device_with_cuda_uses_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(UserError, match="only 2 are visible"):
        pick_device("cuda", local_rank=2)


def test_user_errors_print_one_line_in_commands_and_subcommands():
    @click.command(cls=Command)
    def single() -> None:
        raise UserError("bad input; do this instead")

    @click.group(cls=Group)
    def group() -> None:
        pass

    @group.command()
    def sub() -> None:
        raise UserError("bad sub input")

    @group.command()
    def bug() -> None:
        raise RuntimeError("a bug keeps its traceback")

    for cli, args, message in ((single, [], "bad input; do this instead"), (group, ["sub"], "bad sub input")):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and result.output == f"Error: {message}\n"
    result = CliRunner().invoke(group, ["bug"])
    assert isinstance(result.exception, RuntimeError)


def test_format_time():
    from torch_utils.misc import format_time

    assert [format_time(s) for s in (12.4, 184, 3723, 2 * 86400 + 3 * 3600 + 4 * 60 + 5)] == [
        "12s", "3m 04s", "1h 02m 03s", "2d 03h 04m"]


def test_state_dict_mismatch_names_each_kind_in_one_line():
    expected = {f"w{i}": torch.zeros(2, 3) for i in range(9)}
    assert describe_state_dict_mismatch(expected, dict(expected)) == ""
    state = {k: v for k, v in expected.items() if k not in ("w0", "w1")}
    state.update({f"extra{i}": torch.zeros(1) for i in range(8)}, w2=torch.zeros(3, 2), w3=1.5)
    assert describe_state_dict_mismatch(expected, state) == (
        "missing keys: w0, w1; "
        "unexpected keys: extra0, extra1, extra2, extra3, extra4, extra5, ... (+2 more); "
        "shape mismatch (file != network): w2 (3, 2) != (2, 3), w3 float != (2, 3)")
