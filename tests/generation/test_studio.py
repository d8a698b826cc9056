"""The studio: slider <-> p conventions against the face model's own formulas, pixel equality with generate.py,
saving, bad input, and (with gradio / chromium installed) the served page through gradio_client and a browser."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from deep3drecon.coeffs import COEFF_SLICES
from deep3drecon.face_model import INIT_LIT, SH_CONSTANTS, FaceModel
from deep3drecon.recon_net import ReconNet, save_recon_net
from deep3drecon.synthetic import write_synthetic_mat
from generate import cli
from generation import controlled as cg
from generation import studio_state as st
from tests.conftest import write_image_dataset
from torch_utils.errors import UserError
from training.networks import Generator, SynthesisLayer
from training.resolve import build_reconstructor, build_renderer
from training.run.snapshot import load_network, save_network_snapshot

RES = 32
NUM_LABELS = 10
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _snapshot(folder: str, conditional: bool, assets: dict) -> str:
    encoder = dict(channel_base=32, channel_max=8, feat_channels=3) if conditional else None
    kwargs = dict(z_dim=8, w_dim=16, img_resolution=RES, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=0), encoder_kwargs=encoder)
    torch.manual_seed(1)
    G = Generator(**kwargs)
    with torch.no_grad():  # non-zero noise strengths and w_avg: noise mode and truncation change the image
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.fill_(0.5)
        G.mapping.w_avg.normal_()
        for layer in G.modules():  # injected-feature weights start at zero; random ones make the image follow p
            if isinstance(layer, SynthesisLayer):
                layer.weight.normal_()
    path = os.path.join(folder, f"net-{'cond' if conditional else 'uncond'}.pt")
    save_network_snapshot(path, G, kwargs, dict(assets, cond=conditional, render_backend="torch"), cur_nimg=0)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny conditional / unconditional snapshots, a synthetic face model, a random FR and a labelled dataset."""
    root = tmp_path_factory.mktemp("studio")
    bfm = write_synthetic_mat(str(root / "face.mat"), seed=0, grid=33)
    torch.manual_seed(2)
    net = ReconNet("resnet18", input_size=32)
    for head in net.final_layers:
        torch.nn.init.normal_(head.weight, std=0.02)
    recon = str(root / "recon.pth")
    save_recon_net(net, recon)
    data = str(root / "data.zip")
    labels = write_image_dataset(data, num=NUM_LABELS, resolution=RES, seed=3)
    assets = dict(bfm=bfm, recon_ckpt=recon, data=data)
    return dict(root=root, bfm=bfm, recon=recon, data=data, labels=labels,
                cond=_snapshot(str(root), True, assets), uncond=_snapshot(str(root), False, assets))  # fmt: skip


def _studio(env, outdir, network: str = "cond") -> st.Studio:
    G = load_network(env[network])
    cpu = torch.device("cpu")
    if not G.needs:
        return st.Studio(G, None, None, cpu, env[network], str(outdir))
    renderer = build_renderer(env["bfm"], "torch", cpu)
    return st.Studio(G, renderer, cg.load_p_bank(env["data"]), cpu, env[network], str(outdir),
                     reconstructor=lambda: build_reconstructor(env["recon"], cpu))  # fmt: skip


def _generate_png(env, tmp_path, seed: int, *extra: str) -> np.ndarray:
    """generate.py images for one seed (a batch of one) -> its per-cell PNG."""
    out = tmp_path / f"gen-{len(os.listdir(tmp_path))}"
    result = CliRunner().invoke(cli, ["images", "--network", env["cond"], "--outdir", str(out), "--seeds", str(seed),
                                      "--save-images", "--quiet", *extra])  # fmt: skip
    assert result.exit_code == 0, result.output + repr(result.exception)
    return np.asarray(PIL.Image.open(out / f"grid-seeds{seed}" / f"seed{seed:04d}.png"))


def _random_p(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=257) * 0.3).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------------
# Slider conventions (no web library needed).


def test_unmoved_sliders_keep_p_bitwise() -> None:
    for seed in range(5):
        p = _random_p(seed)
        np.testing.assert_array_equal(st.apply_controls(p, st.controls_from_p(p)), p)


def test_pose_sliders_follow_the_face_model(env) -> None:
    p = _random_p(0)
    shown = st.controls_from_p(p)
    edited = st.apply_controls(p, st.Controls(**{**shown.__dict__, "yaw": 30.0}))
    changed = np.flatnonzero(edited != p)
    assert list(changed) == [COEFF_SLICES["angle"].start + 1]  # yaw is angle[1], nothing else moves
    assert edited[changed[0]] == np.float32(math.radians(30.0))
    back = st.controls_from_p(edited)
    assert back.yaw == 30.0 and back.pitch == shown.pitch and back.roll == shown.roll
    # The slider labels' screen directions, from the face model's landmarks (y-down pixels) of a neutral face:
    # + yaw moves the nose tip right, + pitch moves it down, + roll raises the image-right eye (counter-clockwise).
    model = FaceModel.from_mat(env["bfm"])
    neutral = np.zeros(257, dtype=np.float32)
    zero = st.controls_from_p(neutral)
    posed = [st.apply_controls(neutral, st.Controls(**{**zero.__dict__, k: 30.0})) for k in ("yaw", "pitch", "roll")]
    lm = model.compute(torch.from_numpy(np.stack([neutral, *posed]))).landmarks  # [4, 68, 2]
    nose, right_eye = lm[:, 30], lm[:, 42:48].mean(dim=1)
    assert nose[1, 0] - nose[0, 0] > 10 and abs(nose[1, 1] - nose[0, 1]) < 2  # yaw: right
    assert nose[2, 1] - nose[0, 1] > 10 and abs(nose[2, 0] - nose[0, 0]) < 2  # pitch: down
    assert right_eye[0, 1] - right_eye[3, 1] > 5  # roll: the right eye goes up


def test_expression_sliders() -> None:
    p = _random_p(1)
    shown = st.controls_from_p(p)
    exp = list(shown.exp)
    exp[2] = 1.25
    edited = st.apply_controls(p, st.Controls(**{**shown.__dict__, "exp": tuple(exp)}))
    assert list(np.flatnonzero(edited != p)) == [COEFF_SLICES["exp"].start + 2]
    assert edited[COEFF_SLICES["exp"].start + 2] == np.float32(1.25)


def _irradiance(gamma: np.ndarray, normal: list[float]) -> np.ndarray:
    """Shading of a white albedo under gamma for one normal, by FaceModel.compute_color: [3] (RGB)."""
    n = torch.tensor([[normal]], dtype=torch.float32)
    return FaceModel.compute_color(torch.ones(1, 1, 3), n, torch.from_numpy(gamma)[None])[0, 0].numpy()


def test_light_sliders_against_sh_shading() -> None:
    p = _random_p(2)
    shown = st.controls_from_p(p)
    new = dict(light_strength=0.6, light_azimuth=90.0, light_elevation=0.0, ambient=1.1)
    edited = st.apply_controls(p, st.Controls(**{**shown.__dict__, **new}))
    sl = COEFF_SLICES["gamma"]
    inside = np.zeros(257, dtype=bool)
    inside[sl] = True
    np.testing.assert_array_equal(edited[~inside], p[~inside])
    g_old, g_new = p[sl].reshape(3, 9), edited[sl].reshape(3, 9)
    np.testing.assert_array_equal(g_new[:, 4:], g_old[:, 4:])  # second-order bands untouched
    np.testing.assert_allclose(g_new[:, 0].mean() + INIT_LIT, 1.1, atol=1e-6)
    np.testing.assert_allclose((g_new[:, 0] - g_old[:, 0]).std(), 0, atol=1e-6)  # tint kept
    light = st.light_vectors(edited[sl])
    np.testing.assert_allclose(light.mean(0), [0.6, 0, 0], atol=1e-6)
    np.testing.assert_allclose(light - light.mean(0), st.light_vectors(p[sl]) - st.light_vectors(p[sl]).mean(0),
                               atol=1e-6)  # fmt: skip
    # The SH shading itself: first-order bands alone, light from the right lights +x normals, not -x ones.
    first = np.zeros([3, 9], dtype=np.float32)
    first[:, 0] = -INIT_LIT  # cancel the model's ambient so only bands 1-3 shade
    first[:, 1:4] = g_new[:, 1:4].mean(0)
    right, left = _irradiance(first.reshape(-1), [1, 0, 0]), _irradiance(first.reshape(-1), [-1, 0, 0])
    np.testing.assert_allclose(right, -left, atol=1e-6)
    a1c1 = SH_CONSTANTS["a1"] * SH_CONSTANTS["c1"]
    np.testing.assert_allclose(right, a1c1 * 0.6, atol=1e-5)  # irradiance = a1 c1 (L . n)
    top = st.apply_controls(p, st.Controls(**{**shown.__dict__, "light_strength": 0.5, "light_elevation": 90.0}))
    assert st.controls_from_p(top).light_elevation == 90.0
    g_top = np.zeros([3, 9], dtype=np.float32)
    g_top[:, 0] = -INIT_LIT
    g_top[:, 1:4] = top[sl].reshape(3, 9)[:, 1:4].mean(0)
    assert (_irradiance(g_top.reshape(-1), [0, 1, 0]) > 0.5 * a1c1 - 1e-4).all()  # from above lights +y normals


def test_controls_list_order() -> None:
    c = st.controls_from_p(_random_p(3))
    assert st.Controls.from_list(c.as_list()) == c
    with pytest.raises(UserError):
        st.Controls.from_list([0.0] * 3)


def test_read_p_file(tmp_path) -> None:
    p = _random_p(4)
    np.save(tmp_path / "good.npy", p[None])
    np.testing.assert_array_equal(st.read_p_file(str(tmp_path / "good.npy")), p)
    (tmp_path / "junk.npy").write_bytes(b"\x00not a numpy file at all")
    np.save(tmp_path / "short.npy", np.zeros(100, dtype=np.float32))
    np.save(tmp_path / "nan.npy", np.full(257, np.nan, dtype=np.float32))
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, message in [("junk", "cannot read"), ("short", "expected one p of 257"), ("nan", "NaN"),
                          ("object", "cannot read"), ("missing", "cannot read")]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            st.read_p_file(str(tmp_path / f"{name}.npy"))


# ------------------------------------------------------------------------------------------------------------------
# The studio engine against generate.py.


def test_studio_image_equals_generate_py(env, tmp_path) -> None:
    studio = _studio(env, tmp_path / "saved")
    for noise, psi in [("const", 1.0), ("random", 0.7), ("none", 0.5)]:
        face = studio.face_from_bank("seed", 3)
        view = studio.render(face, st.controls_from_p(face.p), 3, psi, noise)
        expected = _generate_png(env, tmp_path, 3, "--trunc", str(psi), "--noise-mode", noise)
        np.testing.assert_array_equal(view.image, expected)
        np.testing.assert_array_equal(view.p, env["labels"][cg.p_index(3, NUM_LABELS)])
    # An edited face: yaw moved; generate.py given that p (computed here in closed form) as a one-row bank.
    shown = st.controls_from_p(face.p)
    view = studio.render(face, st.Controls(**{**shown.__dict__, "yaw": shown.yaw + 25}), 3, 1.0, "const")
    p = face.p.copy()
    p[COEFF_SLICES["angle"].start + 1] = math.radians(shown.yaw + 25)
    np.testing.assert_array_equal(view.p, p)
    np.save(tmp_path / "edited.npy", p[None])
    np.testing.assert_array_equal(view.image, _generate_png(env, tmp_path, 3, "--p-bank", tmp_path / "edited.npy"))
    assert not np.array_equal(view.image, _generate_png(env, tmp_path, 3))


def test_save_reproduces_with_generate_py(env, tmp_path) -> None:
    studio = _studio(env, tmp_path / "saved")
    face = studio.with_identity(studio.face_from_bank("dataset row", 2), "seed", 5)
    labels, row = env["labels"], cg.p_index(5, NUM_LABELS)
    for group, sl in COEFF_SLICES.items():
        np.testing.assert_array_equal(face.p[sl], labels[row if group in ("id", "tex") else 2, sl], err_msg=group)
    shown = st.controls_from_p(face.p)
    view = studio.render(face, st.Controls(**{**shown.__dict__, "pitch": 10.0, "light_azimuth": -60.0}), 7, 0.8,
                         "random", with_fr=True)  # fmt: skip
    assert view.fr_render.shape == (RES, RES, 3) and view.consistency > 0
    paths = studio.save(view, face)
    assert [os.path.basename(x) for x in paths] == ["studio-0000.png", "studio-0000-p.npy", "studio-0000-z.npy",
                                                    "studio-0000.json"]  # fmt: skip
    assert os.path.basename(studio.save(view, face)[0]) == "studio-0001.png"
    np.testing.assert_array_equal(np.load(paths[2])[0], np.random.RandomState(7).randn(8).astype(np.float32))
    again = _generate_png(env, tmp_path, 7, "--p-bank", paths[1], "--trunc", "0.8", "--noise-mode", "random")
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(paths[0])), again)
    np.testing.assert_array_equal(again, view.image)


def test_bad_input_is_a_message(env, tmp_path) -> None:
    from generation.studio import Handlers

    studio = _studio(env, tmp_path)
    handlers = Handlers(studio, keep="KEEP")
    face = studio.face_from_bank("seed", 0)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for fn, args, message in [(handlers.photo, [str(tmp_path / "broken.png")], "cannot read broken.png"),
                              (handlers.load_p, [str(tmp_path / "broken.png")], "cannot read broken.png"),
                              (handlers.load_face, ["dataset row", NUM_LABELS], "out of range"),
                              (handlers.load_face, ["seed", 1.5], "whole number"),
                              (handlers.edit, [face, None, 1.0, "const", False], "z seed")]:  # fmt: skip
        out = handlers._guard(fn, 4)(*args)
        assert out[-1].startswith("**Error:**") and message in out[-1], out[-1]
        assert all(x == "KEEP" for x in out[:-1])
    PIL.Image.fromarray(np.zeros([20, 30, 3], dtype=np.uint8)).save(tmp_path / "wide.png")
    assert "aligned square" in handlers._guard(handlers.photo, 4)(str(tmp_path / "wide.png"))[-1]
    crop = np.random.default_rng(5).integers(0, 256, [48, 48, 3], dtype=np.uint8)  # any square crop: FR's p
    PIL.Image.fromarray(crop).save(tmp_path / "crop.png")
    face, *values, status = handlers.photo(str(tmp_path / "crop.png"))
    assert face.p.shape == (257,) and face.ws is None and "crop.png" in status and len(values) == 15


def test_photo_inversion_fits_the_latent_in_the_studio(env, tmp_path) -> None:
    """With the inversion plugged in, a photo's face gets a fitted ws, and the studio's image of it is closer to the
    photo than FR's p with the default latent (which is what the page shows without an inversion)."""
    from generation.inversion import psnr

    studio = _studio(env, tmp_path)
    G = load_network(env["cond"])
    renderer = build_renderer(env["bfm"], "torch", torch.device("cpu"))
    target = studio.render(studio.face_from_bank("seed", 3), None, 7, 1.0, "const").image  # a face G made itself
    PIL.Image.fromarray(target).save(tmp_path / "made.png")
    reference = torch.from_numpy(target.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
    fr_only = studio.face_from_photo(str(tmp_path / "made.png"))
    inverter = st.inversion_inverter(G, studio.reconstructor, renderer, torch.device("cpu"), steps=60)
    fitted = inverter(PIL.Image.open(tmp_path / "made.png").convert("RGB"))
    assert fitted.p.shape == (257,) and fitted.ws.shape == (G.num_ws, G.w_dim)
    studio_inv = st.Studio(G, renderer, studio.bank, torch.device("cpu"), env["cond"], str(tmp_path),
                           reconstructor=studio.reconstructor, inverter=inverter)  # fmt: skip
    face = studio_inv.face_from_photo(str(tmp_path / "made.png"))
    assert face.ws is not None and np.array_equal(face.ws, fitted.ws)
    as_tensor = lambda view: torch.from_numpy(view.image.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
    fit_psnr = psnr(reference, as_tensor(studio_inv.render(face, None, 0, 1.0, "const")))
    fr_psnr = psnr(reference, as_tensor(studio.render(fr_only, None, 0, 1.0, "const")))
    assert fit_psnr > fr_psnr + 3, (fit_psnr, fr_psnr)


def test_unconditional_studio(env, tmp_path) -> None:
    studio = _studio(env, tmp_path, "uncond")
    assert not studio.conditional and not studio.can_invert
    view = studio.render(st.Face(None, "z only"), None, 4, 1.0, "const")
    assert view.p is None and view.render is None and view.image.shape == (RES, RES, 3)
    G = load_network(env["uncond"])
    with torch.no_grad():
        expected = cg.to_uint8(G.synthesis(G.mapping(cg.seed_z([4], 8), None), None, noise_mode="const")[0])
    np.testing.assert_array_equal(view.image, expected)
    with pytest.raises(UserError, match="unconditional"):
        studio.face_from_bank("seed", 0)


# ------------------------------------------------------------------------------------------------------------------
# The served page (needs the `studio` extra; the browser check also needs Debian's chromium).


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    """`generate.py studio` on a free localhost port in a subprocess; yields (url, outdir)."""
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    outdir = tmp_path_factory.mktemp("studio-out")
    port = _free_port()
    environment = dict(os.environ, PYTHONPATH=ROOT, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "generate.py"), "studio", "--network", env["cond"],
                             "--outdir", str(outdir), "--port", str(port), "--device", "cpu"], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the studio exited: {proc.stdout.read()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("the studio did not start within 120 s")
                time.sleep(0.5)
        yield url, outdir
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_client_edit_equals_generate_py(env, server, tmp_path) -> None:
    from gradio_client import Client, handle_file

    url, outdir = server
    client = Client(url, verbose=False)
    *shown, status = client.predict("seed", 3, api_name="/load_face")  # the face State stays on the server
    assert "seed 3" in status
    np.testing.assert_array_equal(shown, st.controls_from_p(env["labels"][cg.p_index(3, NUM_LABELS)]).as_list())

    def edit(values, z_seed=3, psi=1.0, noise="const") -> np.ndarray:
        image, render, _, status = client.predict(z_seed, psi, noise, False, *values, api_name="/edit")
        assert "updated in" in status, status
        assert np.asarray(PIL.Image.open(render)).shape == (RES, RES, 3)
        return np.asarray(PIL.Image.open(image).convert("RGB"))

    np.testing.assert_array_equal(edit(shown), _generate_png(env, tmp_path, 3))
    np.testing.assert_array_equal(edit(shown, psi=0.6, noise="random"),
                                  _generate_png(env, tmp_path, 3, "--trunc", "0.6", "--noise-mode", "random"))
    turned = [shown[0] + 30, *shown[1:]]
    p = env["labels"][cg.p_index(3, NUM_LABELS)].copy()
    p[COEFF_SLICES["angle"].start + 1] = math.radians(turned[0])
    np.save(tmp_path / "turned.npy", p[None])
    image = edit(turned)
    np.testing.assert_array_equal(image, _generate_png(env, tmp_path, 3, "--p-bank", tmp_path / "turned.npy"))
    assert not np.array_equal(image, edit(shown))
    # Bad upload: a message in the page, and the server keeps serving.
    (tmp_path / "junk.npy").write_bytes(b"junk")
    *_, status = client.predict(handle_file(str(tmp_path / "junk.npy")), api_name="/load_p")
    assert status.startswith("**Error:**") and "cannot read junk.npy" in status
    status = client.predict(3, 1.0, "const", False, *turned, api_name="/save")
    assert "studio-0000.png" in status
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(outdir / "studio-0000.png")), image)


def test_unconditional_page_has_only_z_controls(env, tmp_path) -> None:
    pytest.importorskip("gradio")
    from generation.studio import build_app

    app = build_app(_studio(env, tmp_path, "uncond"))
    labels = [c.get("props", {}).get("label") for c in app.config["components"]]
    values = " ".join(str(c.get("props", {}).get("value")) for c in app.config["components"])
    assert "z seed" in labels and "truncation psi" in labels and "noise mode" in labels
    assert not any(label and ("yaw" in label or "expression" in label) for label in labels)
    assert "unconditional" in values


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(url: str, path: str, width: int = 1280, height: int = 900, timeout: float = 120) -> None:
    """Headless Chromium screenshot of url: local traffic only, a fresh profile, no background services."""
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                        "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={width},{height}",
                        "--virtual-time-budget=15000", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_page_in_headless_chromium(env, server, tmp_path) -> None:
    if _chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    url, _ = server
    path = str(tmp_path / "studio.png")
    screenshot(url, path)
    shot = np.asarray(PIL.Image.open(path).convert("RGB"))
    # The page opens on generate.py's face for seed 0; its pixels (drawn pixelated, so exactly) are on screen.
    expected = _generate_png(env, tmp_path, 0).reshape(-1, 3)
    on_screen = {tuple(c) for c in shot.reshape(-1, 3)}
    colours = {tuple(c) for c in expected}
    found = sum(c in on_screen for c in colours) / len(colours)
    assert found > 0.9, f"only {found:.0%} of the generated image's colours are in the screenshot"


def test_outdir_defaults_to_a_folder_beside_the_snapshot(env, monkeypatch) -> None:
    pytest.importorskip("gradio")
    from generation import studio as studio_app

    served = {}
    monkeypatch.setattr(studio_app, "serve", lambda app, *args, **kwargs: served.setdefault("outdir", app.outdir))
    result = CliRunner().invoke(cli, ["studio", "--network", env["cond"], "--device", "cpu"])  # no --outdir
    assert result.exit_code == 0, result.output + repr(result.exception)
    expected = os.path.join(os.path.dirname(env["cond"]), "studio")
    assert served["outdir"] == expected and f"Save writes to {expected}" in result.output
    assert not os.path.exists(expected)  # created by the first Save, not before


def test_without_gradio_one_line(env, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the extra were not installed
    result = CliRunner().invoke(cli, ["studio", "--network", env["cond"], "--outdir", str(tmp_path)])
    assert result.exit_code == 1 and 'pip install -e ".[studio]"' in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
