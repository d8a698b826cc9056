"""generate.py and the studio on careless input: huge seed ranges and grids, NaN/inf numbers, implausible p, a zero-byte
or huge photo, a full disk, an exposed studio. Each is one line (or the right result), never a traceback or a
garbage image; nothing is left half written."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from generate import cli
from generation import real_edit
from generation import studio_state as st
from tests.deep3drecon.test_photo import huge_png
from tests.full_disk import full_disk, no_space  # noqa: F401 (fixture)
from tests.generation.test_studio import _studio, env  # noqa: F401 (fixture)
from torch_utils.errors import UserError
from training.dataset_checks import check_coeffs


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result, exit_code: int = 1) -> str:
    """The one error line (exit 1: the whole output; exit 2, a bad option: click's usage hint, then the line)."""
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert len(lines) == (1 if exit_code == 1 else 3), result.output
    return errors[0]


def test_huge_seed_ranges_and_non_finite_numbers_are_refused_before_any_work(tmp_path):
    base = ["images", "--network", tmp_path / "never-read.pt", "--outdir", tmp_path / "out"]
    message = _one_line_error(run(*base, "--seeds", "0-1000000000"), exit_code=2)
    assert "'0-1000000000' names 1000000001 seeds; at most 100000 per list" in message
    for value in ("nan", "inf", "-inf", "1e30"):
        message = _one_line_error(run(*base, "--trunc", value), exit_code=2)
        assert "Invalid value for '--trunc'" in message and ("not a finite number" in message or "outside" in message)
    message = _one_line_error(run("feature-derivatives", "--network", "x.pt", "--outdir", tmp_path, "--eps", "nan"),
                              exit_code=2)  # fmt: skip
    assert "Invalid value for '--eps': nan is not a finite number" in message
    assert not (tmp_path / "out").exists()


def test_a_grid_larger_than_memory_is_refused_with_its_size(env, tmp_path):  # noqa: F811
    message = _one_line_error(run("resample-z", "--network", env["cond"], "--outdir", tmp_path, "--seeds", "0-999",
                                  "--z-seeds", "0-999", "--quiet"))  # fmt: skip
    assert "the grid would hold 1000000 images of 32x32 px (1024 Mpx" in message and "use fewer seeds" in message


def test_reference_with_a_zero_byte_image_is_one_line(env, tmp_path):  # noqa: F811
    refs = tmp_path / "refs"
    refs.mkdir()
    PIL.Image.new("RGB", (32, 32), (120, 90, 80)).save(refs / "a.png")
    (refs / "empty.png").write_bytes(b"")
    message = _one_line_error(run("reference", "--network", env["cond"], "--outdir", tmp_path / "out", "--images",
                                  refs, "--seeds", "0", "--quiet"))  # fmt: skip
    assert message == "Error: cannot read empty.png: the file is empty (0 bytes)"


def test_a_huge_photo_is_refused_by_invert_and_the_studio(env, tmp_path):  # noqa: F811
    huge = tmp_path / "huge.png"
    huge_png(huge)
    message = _one_line_error(run("invert", "--network", env["cond"], "--outdir", tmp_path / "inv", "--images", huge,
                                  "--steps", "1", "--quiet"))  # fmt: skip
    assert "huge.png: 10000x10000 px (100 megapixels) is above the photo budget of 40 megapixels" in message
    from generation.studio import Handlers

    handlers = Handlers(_studio(env, tmp_path), keep=None)
    status = handlers._guard(handlers.photo, 4)(str(huge))
    assert "huge.png: 10000x10000 px (100 megapixels) is above the photo budget" in status[-1]


def test_a_full_disk_is_one_line_and_leaves_no_file(env, tmp_path, full_disk, monkeypatch):  # noqa: F811
    outdir = full_disk or tmp_path / "out"
    if full_disk is None:
        import torch_utils.outputs

        monkeypatch.setattr(torch_utils.outputs.os, "fsync", no_space)
    message = _one_line_error(run("images", "--network", env["cond"], "--outdir", outdir, "--seeds", "0-1",
                                  "--quiet"))  # fmt: skip
    assert message.startswith(f"Error: cannot write {outdir}/grid-seeds0-1.png: No space left on device")
    assert sorted(os.listdir(outdir)) == (["filler"] if full_disk else [])


def test_implausible_p_and_non_finite_values_in_the_studio(env, tmp_path):  # noqa: F811
    np.save(tmp_path / "huge-p.npy", np.full([1, 257], 1e30, np.float32))
    with pytest.raises(UserError, match="huge-p.npy: id coefficients reach 1e\\+30, outside the plausible \\+-100"):
        st.read_p_file(str(tmp_path / "huge-p.npy"))
    studio = _studio(env, tmp_path)
    face = studio.face_from_bank("seed", 0)
    for psi, message in [(float("nan"), "truncation psi: nan is not a finite number"),
                         (1e30, "truncation psi: 1e+30 is outside [-2, 2]")]:  # fmt: skip
        with pytest.raises(UserError, match=message.replace("+", "\\+").replace("[", "\\[").replace("]", "\\]")):
            studio.render(face, None, 0, psi, "const")
    for bad in (np.nan, 1e30):  # a p that reached the studio some other way (API, a future loader): never rendered
        p = face.p.copy()
        p[230] = bad
        with pytest.raises(UserError, match="the p of seed 0"):
            studio.render(st.Face(p, face.label), None, 0, 1.0, "const")
    assert not os.listdir(tmp_path) or not any(n.startswith("studio-") for n in os.listdir(tmp_path))


def test_edit_values_are_finite_and_plausible():
    p = torch.zeros(257)
    for spec in ("nan", "1,inf"):
        with pytest.raises(UserError, match="holds NaN or inf"):
            real_edit.parse_floats(spec, "--yaw")
    edits, _ = real_edit.angle_edits(p, [1e30])
    with pytest.raises(UserError, match="--attr angle edits: angle coefficients reach 1.75e\\+28"):
        check_coeffs(edits, "--attr angle edits")


def test_studio_on_every_interface_says_so(env, tmp_path, monkeypatch):  # noqa: F811
    import generation.studio

    served = []
    monkeypatch.setattr(generation.studio, "serve", lambda *args, **kwargs: served.append(args[1]))
    result = run("studio", "--network", env["cond"], "--outdir", tmp_path, "--host", "0.0.0.0", "--quiet")
    assert result.exit_code == 0 and served == ["0.0.0.0"], result.output
    assert "warning: --host 0.0.0.0 serves the studio to every machine that can reach this one, without any login" \
        in result.output
    result = run("studio", "--network", env["cond"], "--outdir", tmp_path, "--quiet")
    assert result.exit_code == 0 and "warning" not in result.output
    assert "--overwrite does nothing in the studio" in _one_line_error(run("studio", "--network", env["cond"],
                                                                           "--outdir", tmp_path, "--overwrite"))


@pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None, reason="face detector not installed")
def test_the_studio_says_which_of_several_faces_it_used(env, tmp_path):  # noqa: F811
    from training.resolve import build_renderer
    from training.run.snapshot import load_network

    data = pytest.importorskip("skimage.data")
    head = PIL.Image.fromarray(data.astronaut()).crop((150, 30, 300, 190))
    canvas = PIL.Image.new("RGB", (260, 170), (200, 200, 200))
    canvas.paste(head, (0, 5))
    canvas.paste(head.resize((75, 80), PIL.Image.Resampling.BICUBIC), (170, 40))
    canvas.save(tmp_path / "two.png")
    studio = _studio(env, tmp_path)
    G = load_network(env["cond"])
    inverter = st.inversion_inverter(G, studio.reconstructor, build_renderer(env["bfm"], "torch", torch.device("cpu")),
                                     torch.device("cpu"), steps=1)  # fmt: skip
    studio = st.Studio(G, studio.renderer, studio.bank, torch.device("cpu"), env["cond"], str(tmp_path),
                       reconstructor=studio.reconstructor, inverter=inverter)  # fmt: skip
    face = studio.face_from_photo(str(tmp_path / "two.png"))
    assert "two.png (2 faces found, used the largest, centred at x=" in face.label
    x = float(face.label.split("x=")[1].split(",")[0])
    assert x < 160  # the big face is on the left of the canvas
